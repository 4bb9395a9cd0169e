"""Image and depth-map decoding that accepts what users actually have on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEPTH_PNG_SCALE = 256.0
"""KITTI convention: uint16 PNG value = metres x 256, 0 = no measurement."""


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image to (H, W, 3) uint8 RGB.

    Grayscale, palette and RGBA images are converted (alpha dropped); 16-bit images are scaled
    to 8 bits rather than clipped; EXIF orientation is applied.

    Raises:
        OSError: When the file is not a readable image.
    """
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(im, dtype=np.float64)
            array = (array / max(array.max(), 1.0) * 255.0).astype(np.uint8)
            return np.repeat(array[..., None], 3, axis=2)
        return np.asarray(im.convert("RGB"))


EXIF_ORIENTATION = 0x0112
EXIF_TRANSPOSED = (5, 6, 7, 8)
"""EXIF orientations that turn the stored image by 90 degrees (width and height swap)."""


def displayed_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of the image as :func:`load_rgb` returns it (EXIF applied), from
    the file header only (no pixel decoding).

    Raises:
        OSError: When the file is not a readable image.
    """
    with Image.open(path) as im:
        turned = im.getexif().get(EXIF_ORIENTATION) in EXIF_TRANSPOSED
        return im.size[::-1] if turned else im.size


_DEPTH_PNG_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
"""Pillow modes of single-channel 16-bit (and 32-bit integer) images."""


def load_depth(path: str | Path, scale: float = DEPTH_PNG_SCALE) -> np.ndarray:
    """Read a depth map in metres (float32 (H, W), 0 = no measurement).

    Args:
        path: A single-channel 16-bit PNG (value = metres x ``scale``, 0 = no measurement;
            KITTI's convention with the default 256) or a ``.npy`` float array in metres
            ((H, W), (1, H, W) or (H, W, 1)); NaN, inf and values <= 0 there mean no
            measurement.
        scale: Units per metre of PNG values.

    Raises:
        OSError: When the file cannot be read.
        ValueError: When it is not a single-channel depth map (the message says what it is).
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        depth = np.load(path, allow_pickle=False)
        if depth.ndim == 3 and 1 in (depth.shape[0], depth.shape[-1]):
            depth = depth.reshape(depth.shape[1:] if depth.shape[0] == 1 else depth.shape[:2])
        if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.number):
            raise ValueError(
                f"a .npy depth map must be a 2-D numeric array (H, W) of metres, "
                f"got shape {depth.shape} and dtype {depth.dtype}"
            )
        depth = depth.astype(np.float32)
        return np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
    with Image.open(path) as im:
        if im.mode not in _DEPTH_PNG_MODES:
            raise ValueError(
                f"a depth image must be single-channel 16-bit (metres x {scale:g}, 0 = no "
                f"measurement), got Pillow mode {im.mode!r} ({len(im.getbands())} channel(s)); "
                "save metres as a .npy float array instead, or as a uint16 PNG"
            )
        raw = np.asarray(im)
    return raw.astype(np.float32) / scale


def save_depth_png(depth: np.ndarray, path: str | Path) -> None:
    """Write metres as a KITTI-convention uint16 PNG (values clipped to the uint16 range)."""
    raw = np.clip(np.round(depth * DEPTH_PNG_SCALE), 0, 65535).astype(np.uint16)
    Image.fromarray(raw).save(path, compress_level=1)
