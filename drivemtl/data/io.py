"""Image and depth-map decoding that accepts what users actually have on disk."""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEPTH_PNG_SCALE = 256.0
"""KITTI convention: uint16 PNG value = metres x 256, 0 = no measurement."""
DEFAULT_MIN_DEPTH = 1e-3
DEFAULT_MAX_DEPTH = 80.0
"""The depth range scored by default, in metres (KITTI's evaluation caps at 80 m)."""

MAX_PIXELS_ENV = "DRIVEMTL_MAX_IMAGE_PIXELS"
"""Largest image (width x height) decoded; 0 = no limit. Default: Pillow's limit."""


class ImageTooLarge(OSError):
    """An image over the pixel limit: a decompression bomb, or a genuine huge image."""


def max_image_pixels() -> int | None:
    """The pixel limit: ``$DRIVEMTL_MAX_IMAGE_PIXELS`` (0: none), else Pillow's default.

    Pillow refuses images over twice its limit while opening them, to stop decompression
    bombs (a small file that decodes to gigabytes); drivemtl refuses anything over the limit
    itself, with a message, and the variable raises (or removes) it for every subcommand and
    loader worker alike.
    """
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return Image.MAX_IMAGE_PIXELS
    try:
        limit = int(value)
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_ENV}={value!r} is not a whole number of pixels") from None
    return limit if limit > 0 else None


def _too_large(path: str | Path, pixels: int | str, limit: int | None) -> ImageTooLarge:
    return ImageTooLarge(
        f"{path}: {pixels} pixels is over the limit of {limit} (a guard against "
        f"decompression bombs); if the image is genuine, raise it with {MAX_PIXELS_ENV}=N "
        "(0: no limit)"
    )


@contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """Open an image file (header only) safely: never blocks, never decodes a bomb.

    The file is opened non-blocking and must be a regular file, so a named pipe or a device
    given as an image is refused instead of hanging the run; images over
    :func:`max_image_pixels` are refused before any pixel is decoded.

    Raises:
        OSError: When the file is not a regular, readable image (:class:`ImageTooLarge` when
            it is too large).
    """
    limit = max_image_pixels()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file (a pipe, device or socket)")
        saved = Image.MAX_IMAGE_PIXELS
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                Image.MAX_IMAGE_PIXELS = limit  # Pillow's own check, at our limit
                im = Image.open(f)
        except Image.DecompressionBombError:
            raise _too_large(path, "its", limit) from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved
        with im:
            width, height = im.size
            if limit is not None and width * height > limit:
                raise _too_large(path, f"{width}x{height} = {width * height}", limit)
            yield im


EXIF_ORIENTATION = 0x0112
EXIF_TRANSPOSED = (5, 6, 7, 8)
"""EXIF orientations that turn the stored image by 90 degrees (width and height swap)."""


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image to (H, W, 3) uint8 RGB.

    Grayscale, palette and RGBA images are converted (alpha dropped); 16-bit images are scaled
    to 8 bits rather than clipped; EXIF orientation is applied.

    Raises:
        OSError: When the file is not a readable image.
    """
    return load_rgb_reduced(path, None)[0]


def load_rgb_reduced(
    path: str | Path, at_least: tuple[int, int] | None
) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`load_rgb`, decoding a JPEG at 1/2, 1/4 or 1/8 scale when that is still at least
    ``at_least`` (height, width) pixels: a fraction of the decoding cost, for a network input
    much smaller than the photo.

    Returns:
        The image as it was decoded, and the (height, width) of the whole image upright (what
        box coordinates and predictions refer to).

    Raises:
        OSError: When the file is not a readable image.
    """
    with open_image(path) as im:
        orientation = im.getexif().get(EXIF_ORIENTATION, 1)
        turned = orientation in EXIF_TRANSPOSED
        width, height = im.size[::-1] if turned else im.size
        if at_least is not None and im.format == "JPEG":
            need_h, need_w = at_least
            im.draft("RGB", (need_h, need_w) if turned else (need_w, need_h))
        # Only when turned: exif_transpose copies even an upright image, and the copies cost
        # more than decoding (see benchmarks/data_scale.py).
        if orientation not in (1, None):
            im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(im, dtype=np.float64)
            array = (array / max(array.max(), 1.0) * 255.0).astype(np.uint8)
            return np.repeat(array[..., None], 3, axis=2), (height, width)
        return np.asarray(im if im.mode == "RGB" else im.convert("RGB")), (height, width)


def displayed_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of the image as :func:`load_rgb` returns it (EXIF applied), from
    the file header only (no pixel decoding).

    Raises:
        OSError: When the file is not a readable image.
    """
    with open_image(path) as im:
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
    with open_image(path) as im:
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
    import cv2  # here: light commands (convert) read depth maps without loading OpenCV

    raw = np.clip(np.round(depth * DEPTH_PNG_SCALE), 0, 65535).astype(np.uint16)
    # OpenCV's encoder at zlib level 1 with the "up" row filter (depth changes slowly down an
    # image): smaller files than Pillow's adaptive filters in about 60 % of the time
    # (benchmarks/predict_runtimes.py). Written from bytes, so any path works.
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.11
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    done, encoded = cv2.imencode(".png", raw, params)
    if not done:
        raise OSError(f"could not encode the depth map for {path}")
    Path(path).write_bytes(encoded.tobytes())
