"""Per-pixel label maps that manifests point to: how each is read, moved and collated.

A task whose ground truth is a map the size of the image (depth in metres, a segmentation mask
of class indices) names one of these by its manifest key (``Task.pixel_label``). The manifest
parser, the datasets, the augmentation pipeline and ``collate`` then handle every map the
same way: the data loads only the maps of the configured tasks, geometric transforms resample
them with nearest neighbour, and images without a map get one filled with ``fill``.

Each task declares its map (``Task.label_map``) and registering the task registers it, so a
task of another package brings its manifest key with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from drivemtl.data.io import open_image

IGNORE_INDEX = 255
"""Class index of pixels without a segmentation label."""


@dataclass(frozen=True)
class PixelLabel:
    """A per-pixel label map named by a manifest key.

    Attributes:
        key: The manifest key, and the key of the map in ``Sample.maps`` / ``Batch.maps``.
        read: ``(path, options) -> (H, W) array``; raises ``OSError`` / ``ValueError`` with a
            reason for a file that is not such a map. ``options`` are the data options
            (``depth_scale``) and the task's (``Task.pixel_label_options``: ``num_classes``).
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
"""Registered label maps by key; tasks register theirs (``Task.label_map``), so read it
through :func:`pixel_labels`."""


def pixel_labels() -> dict[str, PixelLabel]:
    """Every label map the registered tasks declare (third-party tasks included)."""
    import drivemtl.tasks  # noqa: F401  (registering a task registers its label map)

    return PIXEL_LABELS


def register_pixel_label(label: PixelLabel) -> PixelLabel:
    """Add a label map kind (a manifest key); the key must be new (or the same label) and not
    one of the keys every manifest has (``image``, ``boxes``, ...)."""
    from drivemtl.data.manifest import BASE_KEYS  # here: the manifest reads this module

    if label.key in BASE_KEYS:
        raise ValueError(
            f"pixel label {label.key!r} would take a manifest key of its own meaning "
            f"({', '.join(BASE_KEYS)}); choose another key"
        )
    if PIXEL_LABELS.get(label.key, label) is not label:
        raise ValueError(f"pixel label {label.key!r} is already registered")
    PIXEL_LABELS[label.key] = label
    return label


def read_class_png(path: str | Path, options: Mapping[str, Any] | None = None) -> np.ndarray:
    """Read a segmentation mask: a single-channel 8-bit PNG of class indices, 255 = unlabelled.

    Args:
        path: The mask.
        options: ``num_classes``: refuse an index that is neither a class nor 255.

    Raises:
        OSError: When the file cannot be read.
        ValueError: When it is not a single-channel 8-bit PNG, or holds an index beyond the
            classes (the message says what it is).
    """
    with open_image(path) as im:
        if im.format != "PNG" or im.mode not in ("L", "P"):
            what = f"a {im.format or 'unknown'} image of Pillow mode {im.mode!r}"
            raise ValueError(
                "a segmentation mask must be a single-channel 8-bit PNG of class indices "
                f"(255 = not annotated), got {what} ({len(im.getbands())} channel(s)); a "
                "lossy format (JPEG) would invent indices at class borders"
            )
        # Mode "P" keeps its indices (a palette PNG shows colours but stores classes).
        mask = np.asarray(im).copy()
    classes = (options or {}).get("num_classes")
    if classes:
        bad = mask[(mask >= classes) & (mask != IGNORE_INDEX)]
        if bad.size:
            raise ValueError(
                f"holds class index {int(bad.max())}, but the task has {classes} classes "
                f"(indices 0-{classes - 1}, 255 = not annotated): masks index into "
                "model.tasks.segmentation.classes; give the class list they were made with"
            )
    return mask
