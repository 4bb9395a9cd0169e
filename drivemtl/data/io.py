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


def load_depth(path: str | Path, scale: float = DEPTH_PNG_SCALE) -> np.ndarray:
    """Read a depth map in metres (float32, 0 = no measurement) from a 16-bit PNG or a .npy."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        depth = np.load(path).astype(np.float32)
        return np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
    with Image.open(path) as im:
        raw = np.asarray(im)
    return raw.astype(np.float32) / scale


def save_depth_png(depth: np.ndarray, path: str | Path) -> None:
    """Write metres as a KITTI-convention uint16 PNG (values clipped to the uint16 range)."""
    raw = np.clip(np.round(depth * DEPTH_PNG_SCALE), 0, 65535).astype(np.uint16)
    Image.fromarray(raw).save(path, compress_level=1)
