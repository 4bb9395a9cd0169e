"""Multi-label presence metrics with unknown labels masked out, per class.

One function, :func:`presence_report`, defines the numbers; the training loop (through
:class:`PresenceMetric`) and ``drivemtl evaluate`` both call it, so they agree by construction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_average_precision,
    binary_precision_recall_curve,
)

from drivemtl.metrics.indexed import IndexedMetric, cat_state

DEFAULT_THRESHOLD = 0.5


def best_f1_threshold(scores: Tensor, labels: Tensor) -> float:
    """The score threshold that maximises F1 (predict positive when ``score >= threshold``).

    The threshold sits halfway between the lowest score that must be positive and the next
    lower score, so a tiny change in a score (another batch size, another device) does not flip
    an image that sits exactly on it.

    Args:
        scores: Probabilities of labelled entries, shape (N,).
        labels: 0/1 labels of the same entries.

    Returns:
        The threshold, or 0.5 when there is no positive (F1 is then undefined).
    """
    if labels.sum() == 0:
        return DEFAULT_THRESHOLD
    precision, recall, thresholds = binary_precision_recall_curve(scores, labels.long())
    # The last precision/recall pair (1, 0) has no threshold; thresholds ascend.
    p, r = precision[:-1], recall[:-1]
    f1 = torch.where(p + r > 0, 2 * p * r / (p + r), torch.zeros_like(p))
    best = int(torch.argmax(f1))
    below = float(thresholds[best - 1]) if best > 0 else 0.0
    return (float(thresholds[best]) + below) / 2


def _ratio(num: int, den: int) -> float | None:
    return num / den if den > 0 else None


def class_report(scores: Tensor, labels: Tensor, threshold: float | None = None) -> dict:
    """Metrics of one class over its entries; ``labels`` holds 1, 0 or -1 (unknown).

    Undefined values (no positive, or no predicted positive for precision) are ``None``.
    """
    known = labels >= 0
    s, y = scores[known].float(), labels[known].long()
    positives = int(y.sum())
    if threshold is None:
        threshold = best_f1_threshold(s, y)
    predicted = s >= threshold
    tp = int((predicted & (y == 1)).sum())
    fp = int((predicted & (y == 0)).sum())
    fn = positives - tp
    ap = float(binary_average_precision(s, y)) if positives > 0 else None
    return {
        "ap": ap,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn) if positives > 0 else None,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, positives),
        "threshold": float(threshold),
        "positives": positives,
        "labelled": int(known.sum()),
        "unknown": int((~known).sum()),
    }


def presence_report(
    scores: Tensor,
    labels: Tensor,
    classes: Sequence[str],
    thresholds: Sequence[float] | None = None,
) -> dict:
    """Per-class AP, F1, precision, recall and counts, plus the macro mAP.

    Args:
        scores: Probabilities, shape (N, C).
        labels: 1, 0 or -1 (unknown), shape (N, C).
        classes: C class names.
        thresholds: Fixed decision thresholds per class; ``None`` picks each class's max-F1
            threshold on these scores.

    Returns:
        ``{"map": float | None, "per_class": {name: {...}}}`` as in the metrics.json contract.
    """
    per_class = {}
    for c, name in enumerate(classes):
        t = None if thresholds is None else float(thresholds[c])
        per_class[name] = class_report(scores[:, c], labels[:, c], t)
    aps = [m["ap"] for m in per_class.values() if m["ap"] is not None]
    return {"map": sum(aps) / len(aps) if aps else None, "per_class": per_class}


class PresenceMetric(IndexedMetric):
    """Accumulates presence scores over an epoch, synchronised across processes; every image
    counts once (:class:`~drivemtl.metrics.indexed.IndexedMetric`)."""

    def __init__(self, classes: Sequence[str], **kwargs):
        super().__init__(**kwargs)
        self.classes = list(classes)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, labels: Tensor, index: Tensor) -> None:
        self.add_index(index, scores.device)
        self.scores.append(scores.detach().float())
        self.labels.append(labels.detach())

    def compute(self) -> tuple[Tensor, Tensor]:
        """Deduplicated ``(scores, labels)`` of all processes, ordered by dataset index.

        torchmetrics gathers the states of every process before calling this.
        """
        first = self.first_rows()
        return cat_state(self.scores)[first], cat_state(self.labels)[first]

    def report(self, thresholds: Sequence[float] | None = None) -> dict:
        """:func:`presence_report` over everything accumulated (all processes)."""
        scores, labels = self.compute()
        return presence_report(scores.cpu(), labels.cpu(), self.classes, thresholds)
