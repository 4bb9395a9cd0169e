"""Masked presence loss and per-class metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from drivemtl.metrics.presence import PresenceMetric, presence_report
from drivemtl.tasks.presence import masked_bce


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_masked_bce_matches_hand_computation():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.5]])
    labels = torch.tensor([[1, -1], [0, 1]])
    # BCE(x, y) = softplus(x) - y * x, over the three labelled entries only.
    expected = ((softplus(0.0) - 0.0) + softplus(-1.0) + (softplus(0.5) - 0.5)) / 3
    loss, count = masked_bce(logits, labels)
    assert count == 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_masked_bce_positive_weight():
    logits = torch.tensor([[0.3, -0.2]])
    labels = torch.tensor([[1, 0]])
    # pos_weight multiplies the positive term only: w * softplus(-x) for y = 1.
    expected = (3.0 * softplus(-0.3) + softplus(-0.2)) / 2
    loss, _ = masked_bce(logits, labels, pos_weight=torch.tensor([3.0, 5.0]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_all_unknown_batch_gives_zero_loss_and_finite_gradients():
    logits = torch.tensor([[50.0, -80.0], [1e4, 0.0]], requires_grad=True)
    loss, count = masked_bce(logits, torch.full((2, 2), -1))
    loss.backward()
    assert count == 0 and loss.item() == 0.0
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()


def test_unknown_entries_do_not_change_the_loss():
    logits = torch.randn(4, 3)
    labels = torch.tensor([[1, 0, -1], [0, -1, 1], [-1, -1, -1], [1, 1, 0]])
    loss, _ = masked_bce(logits, labels)
    keep = labels >= 0
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[keep], labels[keep].float()
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


CLASSES = ["a", "b", "c", "d"]


def test_report_against_hand_values():
    # Class a: scores 0.9 0.8 0.7 0.6 with labels 1 0 1 0; the two unknown rows score high and
    # must be ignored. AP = 1/2 * 1 + 1/2 * 2/3. Best F1 predicting scores >= 0.7 positive
    # (TP 2, FP 1, FN 0); the threshold sits halfway to the next score down, 0.6.
    # Class b: a tie. Scores 0.9 0.8 0.8 0.1, labels 1 1 0 0: AP = 1/2 * 1 + 1/2 * 2/3.
    # Class c: labelled but no positive -> AP, F1, recall undefined.
    # Class d: all unknown.
    scores = torch.tensor(
        [
            [0.9, 0.9, 0.6, 0.5],
            [0.8, 0.8, 0.4, 0.5],
            [0.7, 0.8, 0.2, 0.5],
            [0.6, 0.1, 0.1, 0.5],
            [0.99, 0.99, 0.99, 0.5],
            [0.95, 0.95, 0.95, 0.5],
        ]
    )
    labels = torch.tensor(
        [[1, 1, 0, -1], [0, 1, 0, -1], [1, 0, 0, -1], [0, 0, 0, -1], [-1, -1, -1, -1], [-1] * 4]
    )
    report = presence_report(scores, labels, CLASSES)
    a, b, c, d = (report["per_class"][k] for k in CLASSES)
    assert a["ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert a["threshold"] == pytest.approx(0.65)
    assert (a["f1"], a["precision"], a["recall"]) == pytest.approx((0.8, 2 / 3, 1.0))
    assert (a["positives"], a["labelled"], a["unknown"]) == (2, 4, 2)
    assert b["ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # F1 at 0.9: 2/3; at 0.8 (the tie): TP 2, FP 1 -> 0.8. Best is the tie, halfway to 0.1.
    assert b["threshold"] == pytest.approx(0.45) and b["f1"] == pytest.approx(0.8)
    assert c["ap"] is None and c["f1"] is None and c["recall"] is None
    assert c["positives"] == 0 and c["labelled"] == 4
    # Default threshold 0.5 predicts one false positive (0.6): precision 0 is defined.
    assert c["precision"] == 0.0
    assert d["ap"] is None and d["labelled"] == 0 and d["unknown"] == 6 and d["precision"] is None
    assert report["map"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_fixed_thresholds_are_applied_not_rechosen():
    scores = torch.tensor([[0.9], [0.8], [0.7], [0.6]])
    labels = torch.tensor([[1], [0], [1], [0]])
    report = presence_report(scores, labels, ["a"], thresholds=[0.85])
    a = report["per_class"]["a"]
    # At 0.85 only 0.9 is predicted: TP 1, FP 0, FN 1.
    assert a["threshold"] == 0.85
    assert (a["precision"], a["recall"], a["f1"]) == pytest.approx((1.0, 0.5, 2 / 3))


def test_metric_counts_each_sample_once_despite_padding_duplicates():
    scores = torch.tensor([[0.9], [0.8], [0.7], [0.6]])
    labels = torch.tensor([[1], [0], [1], [0]])
    metric = PresenceMetric(["a"])
    metric.update(scores[:3], labels[:3], torch.tensor([0, 1, 2]))
    # A distributed sampler pads the last rank with repeats of the first samples.
    metric.update(torch.tensor([[0.6], [0.9]]), torch.tensor([[0], [1]]), torch.tensor([3, 0]))
    report = metric.report()
    assert report["per_class"]["a"]["labelled"] == 4
    assert report == presence_report(scores, labels, ["a"])
