"""What ``drivemtl evaluate`` hands each task's offline evaluator, and what it gets back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivemtl.data.manifest import Record


@dataclass
class EvaluationInputs:
    """A predictions file matched to manifest entries.

    Attributes:
        predictions: The ``predictions.jsonl``; map paths in it are relative to its folder.
        prediction_images: Image of each prediction row (index ``p`` of ``pairs``).
        records: Manifest entries (index ``r`` of ``pairs``), parsed with ``record_classes``.
        pairs: Matched ``(prediction index, manifest index)``.
        classes: The presence classes evaluated.
        record_classes: The class list the records' presence and box labels index.
        named: Classes the manifest names; any other class is ``?`` on every image.
        run_info: ``run.json`` beside the predictions (empty without one).
        options: The command's task options (``min_depth``, ``box_score_threshold``, ...).
    """

    predictions: Path
    prediction_images: Sequence[str]
    records: Sequence[Record]
    pairs: Sequence[tuple[int, int]]
    classes: Sequence[str]
    record_classes: Sequence[str]
    named: Sequence[str]
    run_info: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class TaskEvaluation:
    """One task's part of an evaluation.

    Attributes:
        report: Its ``metrics.json`` section.
        matching: Its entry in ``matching.json`` (counts).
        lists: Names for ``matching.json``'s ``lists`` (every one, not only those shown).
    """

    report: dict
    matching: dict
    lists: dict[str, list[str]] = field(default_factory=dict)
