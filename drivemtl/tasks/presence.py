"""Multi-label presence: is each class in the image? Unknown (``?``) labels are masked out."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drivemtl.data.batch import Batch
from drivemtl.evaluation.inputs import EvaluationInputs, TaskEvaluation
from drivemtl.evaluation.predictions import Predictions
from drivemtl.metrics.presence import DEFAULT_THRESHOLD, PresenceMetric
from drivemtl.reporting import cell, fixed_width, markdown_table, per_class_rows
from drivemtl.tasks.base import Task, register_task

PRESENCE_DEFINITIONS = """\
## Presence definitions

- Per class, only images where the class is labelled `1` or `0` count; `?` is excluded
  (`unknown`). `labelled` = `1` + `0` entries, `positives` = `1` entries.
- **AP**: average precision from the probabilities (area under the precision-recall step
  curve, ties in score grouped, as torchmetrics computes it); `null` without a positive.
- **F1, precision, recall**: from the decisions in `present` (the producing system's
  thresholds). F1 and recall are `null` without a positive; precision is `null` when the
  class is never decided present.
- **threshold**: the decision threshold the producing run recorded (`run.json`) when the
  decisions follow it; else the smallest probability among images decided present, when
  every image at or above it is decided present; else `null`.
"""

PRESENCE_COLUMNS = (
    "ap",
    "f1",
    "precision",
    "recall",
    "threshold",
    "positives",
    "labelled",
    "unknown",
)
"""The per-class columns of presence tables, in order."""

PROBABILITY_TOLERANCE = 1e-4
"""Largest presence probability difference an exported file may show against the eager model."""


def masked_bce(
    logits: Tensor, labels: Tensor, pos_weight: Tensor | None = None
) -> tuple[Tensor, int]:
    """Binary cross-entropy summed over labelled entries and divided by their count.

    Args:
        logits: (B, C).
        labels: (B, C) with 1, 0 or -1 (unknown, masked out).
        pos_weight: Optional (C,) weight of positive entries.

    Returns:
        The loss (0 with zero, finite gradients when nothing is labelled) and the count.
    """
    mask = labels >= 0
    per_entry = F.binary_cross_entropy_with_logits(
        logits, labels.clamp(min=0).to(logits.dtype), pos_weight=pos_weight, reduction="none"
    )
    count = int(mask.sum())
    # where() rather than multiply: a masked entry can never leak a NaN or inf into the sum.
    loss = torch.where(mask, per_entry, torch.zeros_like(per_entry)).sum() / max(count, 1)
    return loss, count


def masked_bce_per_class(
    logits: Tensor, labels: Tensor, pos_weight: Tensor | None = None
) -> list[tuple[Tensor, int]]:
    """:func:`masked_bce` of each class (column) over that class's labelled entries.

    Returns:
        One ``(loss, count)`` per class; a class with no labelled entry gives 0 and count 0.
    """
    mask = labels >= 0
    per_entry = F.binary_cross_entropy_with_logits(
        logits, labels.clamp(min=0).to(logits.dtype), pos_weight=pos_weight, reduction="none"
    )
    sums = torch.where(mask, per_entry, torch.zeros_like(per_entry)).sum(dim=0)
    counts = mask.sum(dim=0).tolist()
    return [(sums[c] / max(n, 1), int(n)) for c, n in enumerate(counts)]


@dataclass
class PresencePredictions:
    """The presence fields of a predictions file, one row per image.

    Attributes:
        classes: Class names, in the order of the first line's ``presence`` object.
        scores: (N, C) probabilities.
        present: (N, C) the producing system's decisions (``present`` lists).
    """

    classes: list[str]
    scores: Tensor
    present: Tensor


def _probability(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and 0.0 <= value <= 1.0 else None


def _presence_row(row: dict, classes: list[str] | None) -> tuple[list[float], list[str]]:
    """One line's probabilities (in ``classes`` order, else its own) and decisions.

    Raises:
        ValueError: What is wrong with the line.
    """
    probs, chosen = row.get("presence"), row.get("present")
    if not isinstance(probs, dict) or not probs:
        raise ValueError("'presence' must be an object {class: probability}")
    names = classes or [str(c) for c in probs]
    if set(probs) != set(names):
        raise ValueError(f"'presence' has classes {sorted(probs)}, line 1 has {names}")
    scores = [_probability(probs[c]) for c in names]
    bad = [c for c, p in zip(names, scores) if p is None]
    if bad:
        raise ValueError(f"'presence' of {bad} is not a probability in [0, 1]")
    if not isinstance(chosen, list) or not all(isinstance(c, str) for c in chosen):
        raise ValueError("'present' must be a list of class names")
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise ValueError(f"'present' names {unknown}, not in 'presence'")
    return scores, chosen


def read_presence(predictions: Predictions) -> PresencePredictions | None:
    """The ``presence`` / ``present`` fields of every row, checked; ``None`` without any.

    Line 1 decides whether the file has presence (a model with a presence head); the other
    lines must agree, with the same classes.

    Bad lines are added to ``predictions.problems``.
    """
    with_presence = "presence" in predictions.rows[0]
    first = predictions.rows[0].get("presence")
    names = [str(c) for c in first] if isinstance(first, dict) else []

    def read(row: dict) -> tuple[list[float], list[str]] | None:
        if with_presence != ("presence" in row):
            has = "has" if with_presence else "has no"
            raise ValueError(f"'presence' is missing or extra: line 1 {has} 'presence'")
        return _presence_row(row, names or None) if with_presence else None

    rows = predictions.collect(
        read,
        'From a model with a presence head, each line needs "presence": {class: probability}, '
        '"present": [classes].',
    )
    if not with_presence or None in rows:
        return None  # bad lines: evaluate reports them with check()
    return PresencePredictions(
        names,
        torch.tensor([s for s, _ in rows], dtype=torch.float32).reshape(len(rows), len(names)),
        torch.tensor([[c in chosen for c in names] for _, chosen in rows], dtype=torch.bool),
    )


def evaluate_presence(inputs: EvaluationInputs, fields: PresencePredictions) -> TaskEvaluation:
    """AP from the probabilities and F1 from the decisions of the matched images, per
    evaluated class, with each class's threshold (run.json's, else inferred)."""
    from drivemtl.evaluation.metrics import decision_threshold, presence_metrics, stack_labels
    from drivemtl.evaluation.plots import plot_presence

    classes = list(inputs.classes)
    columns = [fields.classes.index(c) for c in classes]
    p_index = [p for p, _ in inputs.pairs]
    label_columns = [  # a class the manifest never names is ? everywhere
        list(inputs.record_classes).index(c) if c in inputs.named else None for c in classes
    ]
    labels = stack_labels([inputs.records[r].presence for _, r in inputs.pairs], label_columns)
    scores = fields.scores[p_index][:, columns]
    stated = inputs.predictions.run_info.get("thresholds")
    stated = stated if isinstance(stated, dict) else {}
    thresholds = {}
    for c, column in zip(classes, columns):
        value = stated.get(c)
        # Over every line of the file: the threshold describes the producing system.
        thresholds[c] = decision_threshold(
            fields.scores[:, column],
            fields.present[:, column],
            float(value) if isinstance(value, (int, float)) else None,
        )
    report = presence_metrics(
        scores, fields.present[p_index][:, columns], labels, classes, thresholds
    )
    plot = partial(plot_presence, scores, labels, report["per_class"], classes)
    return TaskEvaluation(report, {}, plot=plot)


class PresenceHead(nn.Module):
    """Average and max pooling of the last feature maps, then one logit per class.

    Max pooling keeps a small object's evidence that averaging over the image would dilute, and
    the stride-16 map resolves objects a few pixels tall that the stride-32 map blurs away.
    The per-class decision thresholds live here as a buffer, so checkpoints carry them.

    Args:
        in_channels: Channels of the pooled feature maps (the last ``len(in_channels)`` stages).
        num_classes: Number of logits.
        dropout: Dropout before the classifier.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, dropout: float = 0.2):
        super().__init__()
        self.num_stages = len(in_channels)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * sum(in_channels), num_classes)
        self.register_buffer("thresholds", torch.full((num_classes,), DEFAULT_THRESHOLD))

    def forward(self, features: list[Tensor]) -> Tensor:
        pooled = []
        for x in features[-self.num_stages :]:
            pooled += [x.mean(dim=(2, 3)), x.amax(dim=(2, 3))]
        return self.fc(self.dropout(torch.cat(pooled, dim=1)))


@register_task
class PresenceTask(Task):
    """Presence of every configured class.

    Args:
        pos_weight: Optional weight of positive labels per class (same order as the classes),
            for rare classes.
        dropout: Dropout before the classifier.
        stages: How many of the last backbone stages the head pools (1: stride 32 only).
    """

    name = "presence"
    monitor = "map"
    report_title = "Presence per class"
    report_rank = 0
    definitions = PRESENCE_DEFINITIONS

    @classmethod
    def _footer(cls, section: dict) -> tuple[str, ...]:
        return ("macro mAP", cell(section.get("map")), *[""] * (len(PRESENCE_COLUMNS) - 1))

    @classmethod
    def main_metrics(cls, section: dict) -> list[str]:
        """A single-class run (a baseline of one class): its own AP; else the mean AP."""
        classes = list(section.get("per_class", {}))
        return [f"{classes[0]}/ap"] if len(classes) == 1 else ["map"]

    @classmethod
    def report_figures(cls, section: dict) -> dict:
        """AP and F1 bars per class."""
        from drivemtl.evaluation.plots import ap_f1_figure

        return {"ap_f1": ap_f1_figure(section["per_class"])}

    @classmethod
    def text_table(cls, section: dict) -> str:
        rows = per_class_rows(section["per_class"], PRESENCE_COLUMNS)
        return "presence\n" + fixed_width([*rows, cls._footer(section)])

    @classmethod
    def markdown(cls, section: dict) -> str:
        """The per-class presence table in Markdown."""
        rows = per_class_rows(section["per_class"], PRESENCE_COLUMNS)
        return markdown_table(rows, cls._footer(section))

    @classmethod
    def read_predictions(cls, predictions: Predictions) -> PresencePredictions | None:
        return read_presence(predictions)

    @classmethod
    def predicted_classes(cls, fields: PresencePredictions | None) -> list[str]:
        return fields.classes if fields is not None else []

    @classmethod
    def evaluate_files(cls, inputs: EvaluationInputs) -> TaskEvaluation | None:
        """The probabilities and decisions against the manifest's 1 / 0 / ? labels."""
        return None if inputs.fields is None else evaluate_presence(inputs, inputs.fields)

    splits_by_class = True
    class_thresholds = True
    prediction_fields = ("presence", "present")

    def __init__(
        self, pos_weight: Sequence[float] | None = None, dropout: float = 0.2, stages: int = 2
    ):
        if not 1 <= stages <= 4:
            raise ValueError(f"presence stages must be 1 to 4, got {stages}")
        self.pos_weight = None if pos_weight is None else torch.tensor(pos_weight)
        self.dropout = dropout
        self.stages = stages

    def build_head(self, channels: Sequence[int], classes: Sequence[str]) -> nn.Module:
        if self.pos_weight is not None and len(self.pos_weight) != len(classes):
            raise ValueError(
                f"presence pos_weight has {len(self.pos_weight)} values for {len(classes)} classes"
            )
        return PresenceHead(channels[-self.stages :], len(classes), self.dropout)

    def loss(self, output: Tensor, batch: Batch) -> tuple[Tensor, int]:
        weight = None if self.pos_weight is None else self.pos_weight.to(output.device)
        return masked_bce(output, batch.presence, weight)

    def class_losses(self, output: Tensor, batch: Batch) -> list[tuple[Tensor, int]]:
        weight = None if self.pos_weight is None else self.pos_weight.to(output.device)
        return masked_bce_per_class(output, batch.presence, weight)

    def build_metric(self, classes: Sequence[str]) -> PresenceMetric:
        return PresenceMetric(classes)

    def update_metric(self, metric: PresenceMetric, output: Tensor, batch: Batch) -> None:
        metric.update(torch.sigmoid(output.float()), batch.presence, batch.index)

    def report(self, metric: PresenceMetric, head: nn.Module, choose_thresholds: bool) -> dict:
        thresholds = None if choose_thresholds else head.thresholds.tolist()
        report = metric.report(thresholds)
        if choose_thresholds:
            chosen = [report["per_class"][c]["threshold"] for c in metric.classes]
            head.thresholds.copy_(torch.tensor(chosen, dtype=head.thresholds.dtype))
        return report

    def csv_columns(self, classes: Sequence[str]) -> list[str]:
        return [*classes, "present"]

    def csv_cells(self, row: dict) -> dict[str, str]:
        """A probability per class and the present classes, ``;``-separated."""
        return {
            **{c: str(p) for c, p in row["presence"].items()},
            "present": ";".join(row["present"]),
        }

    def caption(self, row: dict) -> str:
        """The present classes with their probabilities, else the most likely one."""
        probs, present = row["presence"], row["present"]
        if present:
            return "\n".join(f"{c} {probs.get(c, float('nan')):.2f}" for c in present)
        top = max(probs, key=probs.get)
        return f"none present (top: {top} {probs[top]:.2f})"

    def keep_class(self, row: dict, kept: str) -> None:
        row["presence"] = {kept: row["presence"][kept]}
        row["present"] = [c for c in row["present"] if c == kept]

    def agreement(
        self, expected: Sequence[dict], actual: Sequence[dict]
    ) -> dict[str, tuple[float, float]]:
        """Largest probability difference (limit 1e-4; decisions follow from the thresholds)."""
        gap = max(
            (
                abs(e["presence"][c] - a["presence"].get(c, float("inf")))
                for e, a in zip(expected, actual)
                for c in e["presence"]
            ),
            default=0.0,
        )
        return {"presence probability, max abs difference": (gap, PROBABILITY_TOLERANCE)}

    def decode(
        self, output: Tensor, head: nn.Module, batch: Batch, classes: Sequence[str]
    ) -> list[dict]:
        probs = torch.sigmoid(output.float()).cpu()
        present = probs >= head.thresholds.cpu()
        return [
            {
                "presence": {c: round(float(p[i]), 6) for i, c in enumerate(classes)},
                "present": [c for i, c in enumerate(classes) if bool(row[i])],
            }
            for p, row in zip(probs, present)
        ]
