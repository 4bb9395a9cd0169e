"""What a manifest holds: labels per class, boxes against the detection strides, label maps,
files.

Box sizes are measured where the detector sees them: in network-input pixels, after the plain
resize of evaluation (each axis scaled by input size / image size), against the location grid
of every configured stride (:func:`drivemtl.models.fcos.boxes_without_centre`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from drivemtl.data.labels import NEGATIVE, POSITIVE, UNKNOWN
from drivemtl.data.manifest import Record
from drivemtl.inspection.scan import FileCheck, map_tasks
from drivemtl.models.fcos import boxes_without_centre


@dataclass(frozen=True)
class InspectSettings:
    """The training settings a manifest is inspected against.

    Attributes:
        classes: The configured class list.
        image_size: Network input (height, width).
        strides: Detection strides (the location grids boxes are measured against).
        depth_scale: Units per metre of 16-bit depth PNGs.
    """

    classes: tuple[str, ...]
    image_size: tuple[int, int]
    strides: tuple[int, ...]
    depth_scale: float

    def size_edges(self) -> list[float]:
        """Histogram edges of a box's shorter side: 0, the smallest stride doubling up to the
        input's longer side, and an open end."""
        edges, edge = [0.0], float(min(self.strides))
        while edge < max(self.image_size):
            edges.append(edge)
            edge *= 2
        return [*edges, edge, math.inf]


@dataclass
class Summary:
    """The statistics of one source (or of all together).

    ``report`` is the JSON-ready part (``inspect.json``); the arrays feed ``labels.png``.
    """

    report: dict
    box_class: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """(M,) class index of every measured box."""
    box_geometry: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    """(M, 4) centre x, centre y, width, height of every measured box, as image fractions."""
    box_side: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """(M,) shorter side of every measured box in network-input pixels."""
    map_histograms: dict[str, tuple[np.ndarray, str, str]] = field(default_factory=dict)
    """Per label map: ``(values, x label, title)`` of its histogram (``Task.map_histogram``)."""


def summarise(
    records: Sequence[Record],
    checks: Sequence[FileCheck],
    settings: InspectSettings,
    problems: Sequence[str] = (),
) -> Summary:
    """Counts per class, box sizes against the strides, ignore regions, label maps, files.

    Args:
        records: Parsed manifest entries.
        checks: The decode result of each record (same order).
        settings: Classes, input size and strides.
        problems: Every problem found for these records (parse and decode), as messages.
    """
    classes = list(settings.classes)
    labels = np.array([r.presence for r in records], dtype=np.int64).reshape(-1, len(classes))
    input_h, input_w = settings.image_size

    box_class, geometry, input_boxes, unmeasured = [], [], [], 0
    for record, check in zip(records, checks):
        if not record.boxes:
            continue
        if check.width <= 0:
            unmeasured += len(record.boxes)
            continue
        boxes = np.array([b[:4] for b in record.boxes], dtype=np.float64)
        box_class.extend(b[4] for b in record.boxes)
        scale = np.array([check.width, check.height] * 2, dtype=np.float64)
        x1, y1, x2, y2 = (boxes / scale).T
        geometry.append(np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=1))
        input_boxes.append(boxes / scale * np.array([input_w, input_h] * 2))
    box_class = np.array(box_class, dtype=np.int64)
    geometry = np.concatenate(geometry) if geometry else np.zeros((0, 4))
    input_boxes = np.concatenate(input_boxes) if input_boxes else np.zeros((0, 4))
    side = np.minimum(input_boxes[:, 2] - input_boxes[:, 0], input_boxes[:, 3] - input_boxes[:, 1])
    no_centre = {
        s: boxes_without_centre(torch.from_numpy(input_boxes), settings.image_size, s).numpy()
        for s in settings.strides
    }
    edges = settings.size_edges()

    per_class = {}
    for c, name in enumerate(classes):
        mine = box_class == c
        counts, _ = np.histogram(side[mine], bins=edges)
        per_class[name] = {
            "positive": int((labels[:, c] == POSITIVE).sum()),
            "negative": int((labels[:, c] == NEGATIVE).sum()),
            "unknown": int((labels[:, c] == UNKNOWN).sum()),
            "boxes": int(sum(b[4] == c for r in records for b in r.boxes or ())),
            "box_side_px": _quantiles(side[mine]),
            "size_histogram": [int(n) for n in counts],
            "no_centre": {str(s): int(no_centre[s][mine].sum()) for s in settings.strides},
        }

    decoded = [c for c in checks if c.problem is None]
    maps = {}
    for key, task in map_tasks().items():
        measures = [c.maps[key] for c in decoded if key in c.maps]
        maps[key] = {
            "images": sum(r.map_path(key) is not None for r in records),
            "decoded": len(measures),
            **task.summarise_maps(measures),
        }
    report = {
        "images": len(records),
        "decoded": len(decoded),
        "problems": len(problems),
        "classes": per_class,
        "boxes": {
            "images_annotated": sum(r.boxes is not None for r in records),
            "total": sum(len(r.boxes or ()) for r in records),
            "measured": len(side),
            "unmeasured": unmeasured,
            "size_edges_px": [e if math.isfinite(e) else None for e in edges],
        },
        "ignore_regions": {
            "total": sum(len(r.ignore) for r in records),
            "images": sum(bool(r.ignore) for r in records),
        },
        **maps,
        "image_sizes": dict(Counter(f"{c.width}x{c.height}" for c in decoded).most_common()),
        "modes": dict(Counter(c.mode for c in decoded).most_common()),
    }
    histograms = {}
    for key, task in map_tasks().items():
        found = task.map_histogram([c.maps[key] for c in decoded if key in c.maps])
        if found is not None:
            histograms[key] = found
    return Summary(report, box_class, geometry, side, histograms)


def _quantiles(values: np.ndarray) -> dict | None:
    """Min, median and max of box sides (``None`` without boxes)."""
    if not len(values):
        return None
    low, mid, high = np.quantile(values, [0.0, 0.5, 1.0])
    return {
        "min": round(float(low), 2),
        "median": round(float(mid), 2),
        "max": round(float(high), 2),
    }
