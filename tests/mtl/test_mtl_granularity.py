"""Task granularity: heads or one task per presence class; single-task selection."""

from __future__ import annotations

import math

import pytest
import torch

from drivemtl.data.batch import Batch
from drivemtl.errors import DriveMTLError
from drivemtl.module import MultiTaskModule
from drivemtl.mtl.granularity import (
    resolve_loss_weights,
    restrict_report,
    task_terms,
    term_losses,
)
from drivemtl.tasks import build_tasks
from drivemtl.tasks.depth import DepthTask
from drivemtl.tasks.presence import PresenceTask
from tests.conftest import CLASSES


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def bce(x: float, y: int) -> float:
    return softplus(x) - y * x


def _batch(labels: torch.Tensor) -> Batch:
    n = len(labels)
    return Batch(
        images=torch.zeros(n, 3, 8, 8, dtype=torch.uint8),
        presence=labels,
        index=torch.arange(n),
        paths=[f"{i}.png" for i in range(n)],
        original_sizes=torch.tensor([[8, 8]] * n),
        boxes=[None] * n,
        box_labels=[None] * n,
        ignore=[None] * n,
    )


LOGITS = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.5, 0.3, -0.7, 1.0], [-2.0, 0.8, 0.1, -0.4]])
LABELS = torch.tensor([[1, 0, -1, -1], [0, -1, 1, -1], [1, 1, 0, -1]])


def test_class_granularity_gives_one_hand_computed_loss_per_class():
    tasks = build_tasks({"presence": {}})
    terms = task_terms(tasks, CLASSES, "class")
    assert [t.name for t in terms] == [f"presence/{c}" for c in CLASSES]
    logits = LOGITS.clone().requires_grad_(True)
    losses = term_losses(terms, tasks, {"presence": logits}, _batch(LABELS))
    # Each class: BCE = softplus(x) - y x averaged over that class's labelled entries.
    expected = {
        "pedestrian": ((bce(0.5, 1) + bce(1.5, 0) + bce(-2.0, 1)) / 3, 3),
        "car": ((bce(-1.0, 0) + bce(0.8, 1)) / 2, 2),
        "stop_sign": ((bce(-0.7, 1) + bce(0.1, 0)) / 2, 2),
    }
    for cls, (value, count) in expected.items():
        loss, n = losses[f"presence/{cls}"]
        assert n == count and loss.item() == pytest.approx(value, rel=1e-6)
    # traffic_light: no labelled entry -> absent: zero loss, count 0, zero finite gradient.
    loss, n = losses["presence/traffic_light"]
    assert n == 0 and loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[:, 3] == 0).all()


def test_head_granularity_keeps_the_whole_head_loss():
    tasks = build_tasks({"presence": {}})
    terms = task_terms(tasks, CLASSES, "head")
    assert [t.name for t in terms] == ["presence"]
    (loss, count), *_ = term_losses(terms, tasks, {"presence": LOGITS}, _batch(LABELS)).values()
    assert count == 7


def test_single_task_selects_a_head_or_a_class():
    tasks = build_tasks({"presence": {}})
    (term,) = task_terms(tasks, CLASSES, "head", single_task="presence/car")
    assert (term.name, term.head, term.class_index) == ("presence/car", "presence", 1)
    (term,) = task_terms(tasks, CLASSES, "class", single_task="presence")
    assert term.class_index is None
    with pytest.raises(DriveMTLError, match="'presence/truck' is not a configured task"):
        task_terms(tasks, CLASSES, single_task="presence/truck")
    with pytest.raises(DriveMTLError, match="model.granularity must be one of"):
        task_terms(tasks, CLASSES, "pixel")


def test_loss_weights_by_head_or_class():
    tasks = build_tasks({"presence": {}})
    terms = task_terms(tasks, CLASSES, "class")
    weights = resolve_loss_weights({"presence": 2.0, "presence/car": 5.0}, tasks, CLASSES, terms)
    assert weights == {
        "presence/pedestrian": 2.0,
        "presence/car": 5.0,
        "presence/stop_sign": 2.0,
        "presence/traffic_light": 2.0,
    }
    with pytest.raises(DriveMTLError, match=r"names tasks not trained: \['depth'\]"):
        resolve_loss_weights({"depth": 1.0}, tasks, CLASSES, terms)


def test_a_task_not_named_takes_its_default_weight(monkeypatch):
    monkeypatch.setattr(PresenceTask, "loss_weight", 0.5)
    monkeypatch.setattr(DepthTask, "loss_weight", 4.0)
    module = MultiTaskModule(
        tasks={"presence": {}, "depth": {}},
        granularity="class",
        loss_weights={"presence/car": 2.0},
    )
    weights = dict(zip(module.objective.tasks, module.objective.balancer.weights().tolist()))
    assert weights == {
        "presence/pedestrian": 0.5,
        "presence/car": 2.0,
        "presence/stop_sign": 0.5,
        "presence/traffic_light": 0.5,
        "depth": 4.0,
    }
    # The defaults are fixed weights: a method that sets its own weights takes none of them.
    famo = MultiTaskModule(tasks={"presence": {}, "depth": {}}, balancing="famo")
    assert famo.objective.balancer.weights().tolist() == [1.0, 1.0]  # its own start


def test_restricted_report_scores_the_trained_class_only():
    report = {
        "map": 0.5,
        "per_class": {"a": {"ap": 0.9, "f1": 0.8}, "b": {"ap": 0.1, "f1": 0.2}},
    }
    assert restrict_report(report, "a") == {"map": 0.9, "per_class": {"a": {"ap": 0.9, "f1": 0.8}}}


def test_module_with_class_granularity_trains_four_tasks():
    model = MultiTaskModule(image_size=(32, 48), granularity="class", balancing="dwa")
    assert model.objective.tasks == [f"presence/{c}" for c in CLASSES]
    single = MultiTaskModule(image_size=(32, 48), single_task="presence/car", balancing="dwa")
    assert single.objective.tasks == ["presence/car"] and single.single_class == ("presence", "car")
    assert single.objective.balancer.name == "fixed"  # a baseline is trained plainly


def test_single_class_model_predicts_its_class_only():
    model = MultiTaskModule(
        image_size=(32, 48), backbone="mobilenet_v3_small", single_task="presence/car"
    ).eval()
    batch = _batch(LABELS)
    batch.images = torch.randint(0, 256, (3, 3, 32, 48), dtype=torch.uint8)
    with torch.no_grad():
        rows = model.predict_step(batch, 0)
    assert [set(row["presence"]) for row in rows] == [{"car"}] * 3
    assert all(set(row["present"]) <= {"car"} for row in rows)


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf"), "high"])
def test_loss_weights_must_be_finite_and_not_negative(weight):
    with pytest.raises(DriveMTLError, match="finite numbers >= 0"):
        MultiTaskModule(loss_weights={"presence": weight})
