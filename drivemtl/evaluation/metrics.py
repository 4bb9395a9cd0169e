"""Presence metrics of a predictions file: AP from probabilities, F1 from its decisions.

Both come from :func:`drivemtl.metrics.presence_report`, the one definition the training loop
uses too, so ``drivemtl test`` and ``drivemtl evaluate`` agree on the same images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from drivemtl.metrics.presence import presence_report

# Probabilities in a predictions file are rounded (6 decimals by drivemtl predict).
ROUNDING_TOLERANCE = 1e-6


def _consistent(scores: Tensor, present: Tensor, threshold: float) -> bool:
    """Whether ``present == (score >= threshold)`` on every image, up to rounding."""
    too_low = present & (scores < threshold - ROUNDING_TOLERANCE)
    too_high = ~present & (scores >= threshold + ROUNDING_TOLERANCE)
    return not bool((too_low | too_high).any())


def decision_threshold(
    scores: Tensor, present: Tensor, stated: float | None = None
) -> float | None:
    """The threshold that reproduces a system's decisions on one class, or ``None``.

    Args:
        scores: (N,) probabilities of every image in the file.
        present: (N,) decisions.
        stated: The threshold the producing run recorded (``run.json``), if any.

    Returns:
        ``stated`` when the decisions follow it; otherwise the smallest probability among
        images decided present, when every image at or above it is decided present;
        ``None`` when nothing is decided present or no single threshold explains the
        decisions.
    """
    if stated is not None and _consistent(scores, present, stated):
        return float(stated)
    if not bool(present.any()):
        return None
    lowest = float(scores[present].min())
    clean = not bool((~present & (scores >= lowest)).any())
    return lowest if clean else None


def presence_metrics(
    scores: Tensor,
    present: Tensor,
    labels: Tensor,
    classes: Sequence[str],
    thresholds: Mapping[str, float | None] | None = None,
) -> dict:
    """The ``presence`` section of ``metrics.json`` for matched images.

    Args:
        scores: (N, C) probabilities.
        present: (N, C) bool decisions of the producing system.
        labels: (N, C) 1 / 0 / -1 (``?``, excluded per class).
        classes: C class names.
        thresholds: The value to report per class as ``threshold`` (see
            :func:`decision_threshold`); missing classes report ``None``.

    Returns:
        ``{"map": ..., "per_class": {class: {ap, f1, precision, recall, threshold,
        positives, labelled, unknown}}}``.
    """
    n = len(classes)
    half = [0.5] * n
    # AP needs only the ranking; the threshold given here does not affect it.
    ranked = presence_report(scores.float(), labels, classes, half)
    # Decisions as 0/1 scores at 0.5: presence_report's F1/precision/recall of `present`.
    decided = presence_report(present.float(), labels, classes, half)
    per_class = {}
    for name in classes:
        a, d = ranked["per_class"][name], decided["per_class"][name]
        per_class[name] = {
            "ap": a["ap"],
            "f1": d["f1"],
            "precision": d["precision"],
            "recall": d["recall"],
            "threshold": (thresholds or {}).get(name),
            "positives": a["positives"],
            "labelled": a["labelled"],
            "unknown": a["unknown"],
        }
    return {"map": ranked["map"], "per_class": per_class}


def stack_labels(rows: Sequence[Sequence[int]], columns: Sequence[int | None]) -> Tensor:
    """(N, C) labels from manifest presence tuples; a ``None`` column is all unknown."""
    table = torch.tensor(rows, dtype=torch.long).reshape(len(rows), -1)
    out = torch.full((len(rows), len(columns)), -1, dtype=torch.long)
    for c, column in enumerate(columns):
        if column is not None:
            out[:, c] = table[:, column]
    return out
