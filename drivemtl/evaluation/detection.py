"""Detection part of ``drivemtl evaluate``: predicted boxes against the manifest's boxes.

The numbers come from :func:`drivemtl.metrics.detection.detection_report`, the function the
training loop's metric calls, fed in original image pixels with the same partial-label rules:
images whose manifest entry has no ``boxes`` are left out, and so are a class's boxes (predicted
and true) on an image where that class is ``?``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from drivemtl.console import progress
from drivemtl.data.manifest import Record
from drivemtl.errors import DriveMTLError
from drivemtl.evaluation.predictions import Predictions
from drivemtl.metrics.detection import DEFAULT_SCORE_THRESHOLD, ImageBoxes, detection_report


@dataclass
class DetectionEvaluation:
    """The ``detection`` section of ``metrics.json`` and the bookkeeping behind it.

    Attributes:
        report: See :func:`drivemtl.metrics.detection.detection_report`.
        annotated_images: Matched images whose manifest entry has box annotation.
        without_prediction: Of those, images whose prediction line has no ``boxes``.
    """

    report: dict
    annotated_images: int
    without_prediction: list[str] = field(default_factory=list)


def _box_problem(box: object, classes: Sequence[str]) -> str | None:
    if not isinstance(box, list) or len(box) != 6:
        return f"box {box!r} is not [x1, y1, x2, y2, class, score]"
    *coords, name, score = box
    numbers = [*coords, score]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
        return f"box {box!r} has a non-numeric coordinate or score"
    if not all(math.isfinite(v) for v in numbers):
        return f"box {box!r} has a non-finite value"
    if name not in classes:
        return f"box {box!r} names class {name!r}, not one of {list(classes)}"
    return None


def prediction_boxes(predictions: Predictions, classes: Sequence[str]) -> dict[str, list]:
    """``image -> boxes`` of the rows that have a ``boxes`` list.

    Raises:
        DriveMTLError: For malformed boxes (up to 20 listed with their line).
    """

    def read(row: dict) -> list | None:
        boxes = row.get("boxes")
        if boxes is not None and not isinstance(boxes, list):
            raise ValueError("'boxes' must be a list")
        bad = [p for p in (_box_problem(b, classes) for b in boxes or []) if p]
        if bad:
            raise ValueError(bad[0])
        return boxes

    found = predictions.collect(
        read, "Each box is [x1, y1, x2, y2, class, score] in original image pixels."
    )
    predictions.check()
    return {image: boxes for image, boxes in zip(predictions.images, found) if boxes is not None}


def evaluate_detection(
    predictions: Predictions,
    records: Sequence[Record],
    pairs: Sequence[tuple[int, int]],
    classes: Sequence[str],
    record_classes: Sequence[str],
    named: Sequence[str],
    score_threshold: float | None = None,
) -> DetectionEvaluation | None:
    """Score predicted boxes against the manifest's, over matched box-annotated images.

    Args:
        predictions: The parsed ``predictions.jsonl`` (row ``p`` of ``pairs``).
        records: Manifest entries (index ``r`` of ``pairs``), parsed with ``record_classes``.
        pairs: Matched ``(prediction index, manifest index)``.
        classes: Classes to evaluate.
        record_classes: The class list the records' presence and box labels index.
        named: Classes the manifest names; any other class is ``?`` on every image.
        score_threshold: Operating point for precision and recall (default: the task's).

    Returns:
        ``None`` when no matched manifest entry has boxes or no prediction has boxes; else the
        evaluation.
    """
    annotated = [(p, r) for p, r in pairs if records[r].boxes is not None]
    if not annotated:
        return None
    predicted = prediction_boxes(predictions, record_classes)
    if not predicted:
        return None
    threshold = DEFAULT_SCORE_THRESHOLD if score_threshold is None else float(score_threshold)
    if not 0.0 <= threshold <= 1.0:
        raise DriveMTLError(f"The box score threshold must be in [0, 1], got {threshold:g}.")
    index = {name: i for i, name in enumerate(classes)}
    images, missing = [], []
    for p, r in progress(annotated, desc="matching boxes", unit=" img"):
        image = predictions.images[p]
        if image not in predicted:
            missing.append(image)
            continue
        record = records[r]
        known = torch.tensor(
            [
                name in named and record.presence[record_classes.index(name)] >= 0
                for name in classes
            ],
            dtype=torch.bool,
        )
        truth = [(b[:4], index.get(record_classes[b[4]])) for b in record.boxes]
        truth = [(coords, c) for coords, c in truth if c is not None]  # evaluated classes
        preds = [b for b in predicted[image] if b[4] in index]  # the evaluated classes
        images.append(
            ImageBoxes(
                torch.tensor([b[:4] for b in preds], dtype=torch.float32).reshape(-1, 4),
                torch.tensor([b[5] for b in preds], dtype=torch.float32),
                torch.tensor([index[b[4]] for b in preds], dtype=torch.long),
                torch.tensor([t[0] for t in truth], dtype=torch.float32).reshape(-1, 4),
                torch.tensor([t[1] for t in truth], dtype=torch.long),
                known,
                torch.tensor(record.ignore, dtype=torch.float32).reshape(-1, 4),
            )
        )
    report = detection_report(images, classes, threshold)
    return DetectionEvaluation(report, len(annotated), missing)
