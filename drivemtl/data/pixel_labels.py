"""Per-pixel label maps that manifests point to: how each is read, moved and collated.

A task whose ground truth is a map the size of the image (depth in metres, a segmentation mask
of class indices) names one of these by its manifest key (``Task.pixel_label``). The manifest
parser, the datasets, the augmentation pipeline and ``collate`` then handle every map the
same way: the data loads only the maps of the configured tasks, geometric transforms resample
them with nearest neighbour, and images without a map get one filled with ``fill``.

Kept free of torch and Lightning: manifests are read by light commands (``convert``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from drivemtl.data.io import DEPTH_PNG_SCALE, load_depth, open_image

IGNORE_INDEX = 255
"""Class index of pixels without a segmentation label."""


@dataclass(frozen=True)
class PixelLabel:
    """A per-pixel label map named by a manifest key.

    Attributes:
        key: The manifest key, and the key of the map in ``Sample.maps`` / ``Batch.maps``.
        read: ``(path, options) -> (H, W) array``; raises ``OSError`` / ``ValueError`` with a
            reason for a file that is not such a map. ``options`` are the data options
            (``depth_scale``).
        fill: The value of pixels without a label (and of the whole map of an image that has
            none).
        dtype: NumPy dtype of the map in samples (``float32`` metres, ``int64`` classes).
        zoom_scaled: Divide the map by the zoom of a scale-crop when ``depth_zoom_correction``
            is on (depth: a magnified picture looks nearer).
    """

    key: str
    read: Callable[[str, Mapping[str, Any]], np.ndarray]
    fill: float
    dtype: str
    zoom_scaled: bool = False


PIXEL_LABELS: dict[str, PixelLabel] = {}


def register_pixel_label(label: PixelLabel) -> PixelLabel:
    """Add a label map kind (a manifest key); the key must be new."""
    if label.key in PIXEL_LABELS:
        raise ValueError(f"pixel label {label.key!r} is already registered")
    PIXEL_LABELS[label.key] = label
    return label


def read_class_png(path: str | Path, options: Mapping[str, Any] | None = None) -> np.ndarray:
    """Read a segmentation mask: a single-channel 8-bit PNG of class indices, 255 = unlabelled.

    Raises:
        OSError: When the file cannot be read.
        ValueError: When it is not a single-channel 8-bit image (the message says what it is).
    """
    with open_image(path) as im:
        if im.mode not in ("L", "P"):
            raise ValueError(
                "a segmentation mask must be a single-channel 8-bit PNG of class indices "
                f"(255 = not annotated), got Pillow mode {im.mode!r} "
                f"({len(im.getbands())} channel(s))"
            )
        # Mode "P" keeps its indices (a palette PNG shows colours but stores classes).
        return np.asarray(im).copy()


def _read_depth(path: str, options: Mapping[str, Any]) -> np.ndarray:
    return load_depth(path, options.get("depth_scale", DEPTH_PNG_SCALE))


register_pixel_label(PixelLabel("depth", _read_depth, fill=0.0, dtype="float32", zoom_scaled=True))
register_pixel_label(PixelLabel("segmentation", read_class_png, fill=IGNORE_INDEX, dtype="int64"))
