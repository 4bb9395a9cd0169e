"""Colourised depth previews: a picture of a predicted depth map, comparable across images.

The colour scale is fixed (not stretched per image), so the same colour means the same distance
on every frame of a folder: log-depth from ``PREVIEW_RANGE[0]`` (bright) to ``PREVIEW_RANGE[1]``
(dark) through matplotlib's ``magma`` colour map, the convention of monocular-depth papers.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from drivemtl.prediction.files import write_picture

PREVIEW_RANGE = (1.0, 80.0)
"""Metres at the two ends of the colour scale; nearer / farther values take the end colours."""
PREVIEW_COLORMAP = "magma"


@lru_cache(maxsize=4)
def _lut(name: str) -> np.ndarray:
    """(256, 3) uint8 colour table of a matplotlib colour map (imported once, on first use)."""
    import matplotlib

    return (
        (matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255)
        .round()
        .astype(np.uint8)
    )


def colorize_depth(
    depth: np.ndarray,
    depth_range: tuple[float, float] = PREVIEW_RANGE,
    colormap: str = PREVIEW_COLORMAP,
) -> np.ndarray:
    """(H, W) metres to an (H, W, 3) uint8 picture: near is bright, far is dark.

    Pixels without a value (0, NaN) are black.
    """
    depth = np.asarray(depth, dtype=np.float32)
    lo, hi = (math.log(v) for v in depth_range)
    valid = np.isfinite(depth) & (depth > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        position = (hi - np.log(np.where(valid, depth, 1.0))) / (hi - lo)
    index = np.clip(np.rint(position * 255), 0, 255).astype(np.uint8)
    picture = _lut(colormap)[index]
    picture[~valid] = 0
    return picture


def write_depth_preview(depth: np.ndarray, path: str, max_side: int = 1280) -> str:
    """Write the colourised ``depth`` as a JPEG at ``path`` (longer side at most ``max_side``)."""
    return write_picture(colorize_depth(depth), path, max_side)
