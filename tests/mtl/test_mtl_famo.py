"""FAMO against its closed-form update, against TorchJD's implementation, and with absent tasks."""

from __future__ import annotations

import math

import pytest
import torch

from drivemtl.errors import DriveMTLError
from drivemtl.mtl.balancing import FAMO, build_balancer
from drivemtl.mtl.objective import MultiTaskObjective


def _observe(famo, losses, counts=None):
    counts = counts if counts is not None else [1] * len(losses)
    famo.observe(torch.tensor(losses), torch.tensor(counts))


def _after(famo, losses, counts=None):
    counts = counts if counts is not None else [1] * len(losses)
    famo.after_step(torch.tensor(losses), torch.tensor(counts))


def _adam(grads, lr, beta1=0.9, beta2=0.999, eps=1e-8):
    """torch.optim.Adam's parameter change after each gradient of a scalar, by hand."""
    m = v = 0.0
    changes = []
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        changes.append(-lr * (m / (1 - beta1**t)) / (math.sqrt(v / (1 - beta2**t)) + eps))
    return changes


def test_two_task_weights_and_update_follow_the_closed_form():
    famo = FAMO(["a", "b"], lr=0.1, weight_decay=0.0)
    # z = (1/2, 1/2), equal losses: the weights are those of fixed weights, (1, 1).
    _observe(famo, [1.0, 1.0])
    assert famo.batch_weights().tolist() == pytest.approx([1.0, 1.0])
    # a's loss halved, b's did not move: delta = (log 2, 0), z . delta = log(2) / 2, so
    # g = z * (delta - z . delta) = (log 2 / 4, -log 2 / 4).
    _after(famo, [0.5, 1.0])
    g1 = [math.log(2) / 4, -math.log(2) / 4]
    step1 = [_adam([g], 0.1)[0] for g in g1]  # the first Adam step is lr * sign(g)
    assert step1 == pytest.approx([-0.1, 0.1], rel=1e-6)
    assert famo.logits.tolist() == pytest.approx(step1, abs=1e-6)
    # The weight moved to b, the task that improved less: w_i = 2 (z_i / L_i) / sum_j z_j / L_j.
    _observe(famo, [2.0, 1.0])
    za, zb = math.exp(-0.1) / (math.exp(-0.1) + math.exp(0.1)), 1 / (1 + math.exp(-0.2))
    ra, rb = za / 2.0, zb / 1.0
    assert famo.batch_weights().tolist() == pytest.approx([2 * ra / (ra + rb), 2 * rb / (ra + rb)])
    # The weighted losses: their gradient is c * sum_i z_i grad log L_i, times K = 2.
    terms = famo.terms({"a": torch.tensor(2.0), "b": torch.tensor(1.0)})
    assert sum(t.item() for t in terms.values()) == pytest.approx(2 / (ra + rb) * (za + zb))
    # Second update: a halves again; Adam's moments and bias correction carry over.
    _after(famo, [1.0, 1.0])
    dot = za * math.log(2)
    g2 = [za * (math.log(2) - dot), zb * (0.0 - dot)]
    expected = [step1[i] + _adam([g1[i], g2[i]], 0.1)[1] for i in range(2)]
    assert famo.logits.tolist() == pytest.approx(expected, abs=1e-6)
    assert famo.steps.tolist() == [2.0, 2.0]
    assert famo.weights().tolist() == pytest.approx((2 * torch.softmax(famo.logits, 0)).tolist())


def test_matches_torchjd_famo_when_every_task_is_present():
    torchjd_famo = pytest.importorskip("torchjd.scalarization").FAMO
    torch.manual_seed(0)
    ours = FAMO(["a", "b", "c"], lr=0.05, weight_decay=0.01)
    reference = torchjd_famo(3, lr=0.05, weight_decay=0.01)
    for _ in range(6):
        before, after = torch.rand(3) + 0.1, torch.rand(3) + 0.1
        values = before.clone().requires_grad_(True)
        reference(values).backward()  # d/dL_i of c * sum z_i log L_i = c z_i / L_i
        _observe(ours, before.tolist())
        assert (ours.batch_weights() / 3).tolist() == pytest.approx(values.grad.tolist(), rel=1e-5)
        reference.update(after)
        _after(ours, after.tolist())
        assert ours.logits.tolist() == pytest.approx(reference._w.tolist(), abs=1e-6)
    assert not torch.allclose(ours.logits, torch.zeros(3))


def test_an_absent_task_gets_no_weight_and_keeps_its_state():
    famo = FAMO(["a", "b", "c"], lr=0.1)
    _observe(famo, [2.0, 0.0, 1.0], counts=[4, 0, 2])
    weights = famo.batch_weights().tolist()
    # Two present tasks: z = (1/2, 1/2) over them, weights 2 (z_i / L_i) / sum = (2/3, 4/3).
    assert weights == pytest.approx([2 / 3, 0.0, 4 / 3])
    terms = famo.terms({"a": torch.tensor(2.0), "c": torch.tensor(1.0)})
    assert set(terms) == {"a", "c"}
    _after(famo, [1.0, 0.0, 1.0], counts=[4, 0, 2])
    assert famo.logits[1].item() == 0.0 and famo.exp_avg[1].item() == 0.0
    assert famo.exp_avg_sq[1].item() == 0.0 and famo.steps.tolist() == [1.0, 0.0, 1.0]
    assert famo.logits[0].item() < 0 < famo.logits[2].item()
    # Present before the step but not in the losses after it (next-batch update): skipped.
    _observe(famo, [1.0, 1.0, 1.0])
    _after(famo, [0.5, 0.5, 0.5], counts=[1, 0, 0])
    assert famo.steps.tolist() == [2.0, 0.0, 1.0]
    state = [famo.logits, famo.exp_avg, famo.exp_avg_sq, famo.steps, famo.batch_weights()]
    assert all(torch.isfinite(t).all() for t in state)


def test_the_objective_feeds_famo_the_losses_after_each_step():
    famo = FAMO(["a", "b"], lr=0.1, weight_decay=0.0)
    objective = MultiTaskObjective(["a", "b"], famo)
    theta = torch.ones(2, requires_grad=True)
    losses = {"a": (2.0 * theta[0], 3), "b": (theta[1] * 0.0 + 1.0, 0)}  # b: absent
    total, logs = objective(losses)
    assert set(logs) == {"weight/a"} and float(logs["weight/a"]) == 1.0  # K_P = 1
    assert total.item() == pytest.approx(2.0)
    objective.backward(total, [theta], [])
    objective.before_optimizer_step(loss_scale=1.0)
    assert objective.end_batch(loss_scale=1.0)  # stepped: the module forwards the batch again
    objective.after_step({"a": (torch.tensor(1.0), 3), "b": (torch.tensor(0.0), 0)})
    assert famo.steps.tolist() == [1.0, 0.0]
    # A step that the fp16 scaler skipped (it halved its scale) asks for nothing.
    objective(losses)
    objective.before_optimizer_step(loss_scale=1024.0)
    assert not objective.end_batch(loss_scale=512.0)
    # No optimiser step in this batch (gradient accumulation): nothing either.
    objective(losses)
    assert not objective.end_batch(loss_scale=1.0)


def test_next_batch_update_uses_the_next_batch_losses():
    famo = build_balancer({"method": "famo", "update": "next_batch", "lr": 0.1}, ["a", "b"])
    objective = MultiTaskObjective(["a", "b"], famo)
    first = {"a": (torch.tensor(1.0), 2), "b": (torch.tensor(1.0), 2)}
    objective(first)
    objective.before_optimizer_step()
    assert not objective.end_batch()  # no second forward pass ...
    objective({"a": (torch.tensor(0.5), 2), "b": (torch.tensor(1.0), 2)})
    # ... the next batch's losses gave the update: a improved, its logit went down by lr.
    assert famo.logits.tolist() == pytest.approx([-0.1, 0.1], abs=1e-6)
    objective({"a": (torch.tensor(0.1), 2), "b": (torch.tensor(1.0), 2)})  # no step between
    assert famo.steps.tolist() == [1.0, 1.0]


def test_state_round_trips_and_bad_options_are_clear():
    famo = FAMO(["a", "b"], min_losses={"b": 0.5})
    _observe(famo, [1.0, 1.0])
    _after(famo, [0.5, 0.9])
    fresh = build_balancer("famo", ["a", "b"])
    fresh.load_state_dict(famo.state_dict())
    for name in ("logits", "exp_avg", "exp_avg_sq", "steps", "min_losses"):
        assert torch.equal(getattr(fresh, name), getattr(famo, name)), name
    # d_i = L_i - b_i: b's loss 1.0 over a bound 0.5 counts as 0.5.
    _observe(famo, [1.0, 1.0])
    z = torch.softmax(famo.logits, 0).tolist()
    ratio = [z[0] / 1.0, z[1] / 0.5]
    assert famo.batch_weights().tolist() == pytest.approx([2 * r / sum(ratio) for r in ratio])
    with pytest.raises(DriveMTLError, match="update must be 'same_batch' or 'next_batch'"):
        build_balancer({"method": "famo", "update": "later"}, ["a"])
    with pytest.raises(DriveMTLError, match=r"min_losses names tasks not trained: \['c'\]"):
        build_balancer({"method": "famo", "min_losses": {"c": 0.1}}, ["a"])
