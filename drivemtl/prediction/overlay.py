"""Overlay pictures: the image with its present classes, probabilities and boxes drawn on it."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.io import write_jpeg
from torchvision.transforms.v2.functional import resize
from torchvision.utils import draw_bounding_boxes

from drivemtl.data.io import load_rgb

# A fixed colour per class index, readable on dark and bright scenes.
PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
]
# Label backgrounds arrived in torchvision 0.20; older versions draw text without them.
_HAS_FILL_LABELS = "fill_labels" in inspect.signature(draw_bounding_boxes).parameters


def _colour(classes: list[str], name: str) -> tuple[int, int, int]:
    index = classes.index(name) if name in classes else len(classes)
    return PALETTE[index % len(PALETTE)]


def _draw(image: torch.Tensor, boxes: list, labels: list[str], colours: list, **kwargs):
    extra = {"fill_labels": True, "label_colors": "white"} if _HAS_FILL_LABELS else {}
    return draw_bounding_boxes(
        image,
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=labels,
        colors=colours,
        **extra,
        **kwargs,
    )


def render_overlay(
    image: np.ndarray | torch.Tensor,
    row: dict,
    classes: list[str],
    max_side: int = 1280,
    min_box_score: float = 0.0,
    layers: Sequence[Callable[[np.ndarray], np.ndarray]] = (),
    caption: str = "",
) -> torch.Tensor:
    """Draw one prediction on its image.

    Args:
        image: (H, W, 3) uint8 array or (3, H, W) uint8 tensor, in original pixels.
        row: A ``predictions.jsonl`` object (its ``boxes`` are drawn).
        classes: Class order, for colours.
        max_side: Longer side of the picture; larger images are scaled down (boxes with them).
        min_box_score: Boxes scoring below this are not drawn (the detection operating point;
            ``predictions.jsonl`` also lists the low-scored boxes that AP needs).
        layers: Drawn first, in original pixels: each takes and returns the (H, W, 3) uint8
            picture (a map task's :meth:`~drivemtl.tasks.base.Task.draw_overlay`).
        caption: Text in the top-left corner (the tasks' :meth:`~drivemtl.tasks.base.Task.caption`).

    Returns:
        (3, h, w) uint8 tensor.
    """
    if layers:
        picture = image.permute(1, 2, 0).numpy() if isinstance(image, torch.Tensor) else image
        for layer in layers:
            picture = layer(picture)
        image = picture
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    height, width = image.shape[-2:]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = [max(1, round(height * scale)), max(1, round(width * scale))]
        image = resize(image, size, antialias=True)

    boxes = [b for b in row.get("boxes") or [] if len(b) < 6 or b[5] >= min_box_score]
    if boxes:
        coords = [[v * scale for v in b[:4]] for b in boxes]
        labels = [f"{b[4]} {b[5]:.2f}" if len(b) > 5 else str(b[4]) for b in boxes]
        image = _draw(image, coords, labels, [_colour(classes, b[4]) for b in boxes], width=2)

    if not caption:
        return image
    # The caption: a tiny anchor box whose label is the multi-line text.
    return _draw(image, [[2, 2, 3, 3]], [caption], ["black"], width=0)


def write_overlay(
    source: str | Path,
    row: dict,
    classes: list[str],
    out: str | Path,
    max_side: int = 1280,
    min_box_score: float = 0.0,
    layers: Sequence[Callable[[np.ndarray], np.ndarray]] = (),
    caption: str = "",
) -> str:
    """Decode ``source`` again (EXIF-rotated, as for prediction), draw ``row``, write a JPEG."""
    # Strings, not Path: pathlib would intern every distinct folder and file name for good.
    out = os.fspath(out)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    picture = render_overlay(
        load_rgb(source), row, classes, max_side, min_box_score, layers, caption
    )
    write_jpeg(picture, out, quality=90)
    return out
