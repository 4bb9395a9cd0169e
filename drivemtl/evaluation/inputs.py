"""What ``drivemtl evaluate`` hands each task's offline evaluator, and what it gets back."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivemtl.data.manifest import Record

if TYPE_CHECKING:
    from drivemtl.evaluation.predictions import Predictions


@dataclass
class EvaluationInputs:
    """A predictions file matched to manifest entries.

    Attributes:
        predictions: The parsed ``predictions.jsonl`` (its rows, ``run.json`` beside it); row
            ``p`` of ``pairs`` is ``predictions.rows[p]``.
        records: Manifest entries (index ``r`` of ``pairs``), parsed with ``record_classes``.
        pairs: Matched ``(prediction index, manifest index)``.
        classes: The classes evaluated.
        record_classes: The class list the records' presence and box labels index.
        named: Classes the manifest names; any other class is ``?`` on every image.
        fields: What the task's :meth:`~drivemtl.tasks.Task.read_predictions` read, if any.
        options: The command's task options (``min_depth``, ``box_score_threshold``, ...).
    """

    predictions: Predictions
    records: Sequence[Record]
    pairs: Sequence[tuple[int, int]]
    classes: Sequence[str]
    record_classes: Sequence[str]
    named: Sequence[str]
    fields: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class TaskEvaluation:
    """One task's part of an evaluation.

    Attributes:
        report: Its ``metrics.json`` section.
        matching: Its entry in ``matching.json`` (counts; none when empty).
        lists: Names for ``matching.json``'s ``lists`` (every one, not only those shown).
        plot: Writes the task's figures into a folder, returns ``{caption: PNG}``.
    """

    report: dict
    matching: dict
    lists: dict[str, list[str]] = field(default_factory=dict)
    plot: Callable[[Path], dict[str, Path]] | None = None
