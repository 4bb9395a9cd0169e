"""Loss balancing strategies against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from drivemtl.errors import DriveMTLError
from drivemtl.mtl.balancing import (
    DynamicWeightAverage,
    FixedWeights,
    GradNorm,
    UncertaintyWeighting,
    build_balancer,
)

TASKS = ["a", "b"]


def test_fixed_weights_scale_each_loss():
    balancer = FixedWeights(TASKS, {"b": 0.5})
    terms = balancer.terms({"a": torch.tensor(2.0), "b": torch.tensor(4.0)})
    assert terms["a"].item() == 2.0 and terms["b"].item() == 2.0
    assert balancer.combine({"a": torch.tensor(2.0), "b": torch.tensor(4.0)}).item() == 4.0
    assert balancer.weights().tolist() == [1.0, 0.5]


def test_uncertainty_term_and_its_gradient():
    balancer = UncertaintyWeighting(TASKS)
    with torch.no_grad():
        balancer.log_vars[0].fill_(0.5)
    loss = torch.tensor(2.0)
    (term,) = balancer.terms({"a": loss}).values()
    # term = exp(-s) L + s; d term / ds = 1 - exp(-s) L.
    assert term.item() == pytest.approx(math.exp(-0.5) * 2.0 + 0.5)
    term.backward()
    assert balancer.log_vars[0].grad.item() == pytest.approx(1 - math.exp(-0.5) * 2.0)
    assert balancer.log_vars[1].grad is None  # absent: no term at all


def test_uncertainty_weights_reach_their_closed_form():
    # For fixed losses, exp(-s) L + s is minimal at s = log L: weight exp(-s) = 1 / L.
    balancer = UncertaintyWeighting(TASKS)
    optimizer = torch.optim.SGD(balancer.parameters(), lr=0.5)
    losses = {"a": torch.tensor(4.0), "b": torch.tensor(0.5)}
    for _ in range(60):  # near the optimum each step halves the error
        optimizer.zero_grad()
        balancer.combine(losses).backward()
        optimizer.step()
    assert [s.item() for s in balancer.log_vars] == pytest.approx([math.log(4.0), math.log(0.5)])
    assert balancer.weights().tolist() == pytest.approx([0.25, 2.0], rel=1e-4)


def test_uncertainty_leaves_an_absent_task_untouched_by_the_optimiser():
    balancer = UncertaintyWeighting(TASKS)
    optimizer = torch.optim.AdamW(balancer.parameters(), lr=0.1, weight_decay=0.5)
    for present in (["a", "b"], ["a"], ["a"]):
        optimizer.zero_grad()
        losses = {n: torch.tensor(3.0) for n in present}
        # The anchor gives absent tasks a zero gradient (DDP needs every parameter used) ...
        (balancer.combine(losses) + balancer.anchor()).backward()
        before = balancer.log_vars[1].item()
        # ... and freeze() drops it so that momentum and weight decay cannot move them.
        balancer.freeze(present)
        optimizer.step()
    assert balancer.log_vars[1].grad is None
    assert balancer.log_vars[1].item() == before
    assert balancer.log_vars[0].item() != balancer.log_vars[1].item()
    assert all(math.isfinite(s.item()) for s in balancer.log_vars)


def _epoch(balancer, batches):
    balancer.on_train_epoch_start()
    for means, counts in batches:
        balancer.observe(torch.tensor(means), torch.tensor(counts, dtype=torch.float))


def test_dwa_weights_from_hand_computed_loss_ratios():
    balancer = DynamicWeightAverage(TASKS, temperature=2.0)
    # Epoch 1: a's mean over its 8 labelled entries is 1.5, b's is 3.0 (2 entries).
    _epoch(balancer, [([1.0, 3.0], [4, 2]), ([2.0, 0.0], [4, 0])])
    balancer.on_train_epoch_start()  # epoch 2: one epoch of history, weights stay 1
    assert balancer.weights().tolist() == [1.0, 1.0]
    _epoch(balancer, [([0.75, 2.7], [3, 5])])
    balancer.on_train_epoch_start()  # epoch 3: r = (0.75 / 1.5, 2.7 / 3.0) = (0.5, 0.9)
    ea, eb = math.exp(0.5 / 2), math.exp(0.9 / 2)
    expected = [2 * ea / (ea + eb), 2 * eb / (ea + eb)]
    assert balancer.weights().tolist() == pytest.approx(expected)
    terms = balancer.terms({"a": torch.tensor(1.0)})
    assert terms["a"].item() == pytest.approx(expected[0])
    # Epoch 3: a has no labelled entry at all; its history (and ratio) stay as they were.
    _epoch(balancer, [([0.0, 2.43], [0, 4])])
    balancer.on_train_epoch_start()  # b: 2.43 / 2.7 = 0.9 again
    assert balancer.weights().tolist() == pytest.approx(expected)
    assert balancer.history[:, 0].tolist() == pytest.approx([1.5, 0.75])


def test_gradnorm_lowers_the_weight_of_the_task_with_the_larger_gradient():
    balancer = GradNorm(TASKS, alpha=1.5, lr=0.1)
    present = torch.tensor([True, True])
    # First step: L(0) = L, so both training rates are 1 and the target is the mean G = 1.5.
    # G = (2, 1): dL_grad/dw = sign(G - 1.5) * ||grad|| = (+2, -1); w = (0.8, 1.1) before
    # renormalising to a sum of 2.
    balancer.update(torch.tensor([2.0, 4.0]), torch.tensor([2.0, 1.0]), present)
    assert balancer.weights().tolist() == pytest.approx([0.8 * 2 / 1.9, 1.1 * 2 / 1.9])
    assert balancer.initial.tolist() == [2.0, 4.0]


def test_gradnorm_raises_the_weight_of_the_task_that_trains_slower():
    balancer = GradNorm(TASKS, alpha=1.5, lr=0.1)
    present = torch.tensor([True, True])
    balancer.update(torch.tensor([2.0, 4.0]), torch.tensor([1.0, 1.0]), present)
    assert balancer.weights().tolist() == [1.0, 1.0]  # equal G, equal rates: no change
    # a halved its loss, b did not: rates (0.5, 1) -> relative (2/3, 4/3). Equal norms 1, so
    # G = (1, 1) and targets (2/3)^1.5 < 1 < (4/3)^1.5: a goes down by lr, b up by lr.
    balancer.update(torch.tensor([1.0, 4.0]), torch.tensor([1.0, 1.0]), present)
    assert balancer.weights().tolist() == pytest.approx([0.9, 1.1])


def test_gradnorm_skips_absent_tasks_and_overflows():
    balancer = GradNorm(["a", "b", "c"], lr=0.1)
    balancer.update(
        torch.tensor([1.0, 2.0, 0.0]), torch.tensor([3.0, 1.0, 0.0]), torch.tensor([1, 1, 0]) > 0
    )
    weights = balancer.weights().tolist()
    assert weights[2] == 1.0 and math.isnan(balancer.initial[2].item())
    assert sum(weights[:2]) == pytest.approx(2.0) and weights[0] < 1.0 < weights[1]
    balancer.update(
        torch.tensor([1.0, 2.0, 1.0]),
        torch.tensor([math.inf, 1.0, 1.0]),
        torch.tensor([True, True, True]),
    )
    assert balancer.weights().tolist() == weights  # an fp16 overflow changes nothing


@pytest.mark.parametrize("method", ["uncertainty", "dwa", "gradnorm"])
def test_state_round_trips_through_a_state_dict(method):
    balancer = build_balancer(method, TASKS)
    if method == "uncertainty":
        with torch.no_grad():
            balancer.log_vars[1].fill_(0.7)
    elif method == "dwa":
        _epoch(balancer, [([1.0, 2.0], [1, 1])])
        _epoch(balancer, [([0.5, 2.0], [1, 1])])
        balancer.on_train_epoch_start()
    else:
        balancer.update(
            torch.tensor([1.0, 1.0]), torch.tensor([2.0, 1.0]), torch.tensor([1, 1]) > 0
        )
    assert balancer.weights().tolist() != [1.0, 1.0]
    fresh = build_balancer(method, TASKS)
    fresh.load_state_dict(balancer.state_dict())
    assert fresh.weights().tolist() == balancer.weights().tolist()


def test_bad_specs_are_clear_errors():
    with pytest.raises(DriveMTLError, match="Unknown model.balancing method 'equal'"):
        build_balancer("equal", TASKS)
    with pytest.raises(
        DriveMTLError, match=r"no option \['temp'\]; its options are \['temperature'\]"
    ):
        build_balancer({"method": "dwa", "temp": 1.0}, TASKS)
    with pytest.raises(DriveMTLError, match="temperature must be positive"):
        build_balancer({"method": "dwa", "temperature": 0}, TASKS)
    with pytest.raises(DriveMTLError, match="needs a 'method'"):
        build_balancer({"temperature": 1.0}, TASKS)
    with pytest.raises(DriveMTLError, match="loss_weights are the weights of"):
        build_balancer("uncertainty", TASKS, {"a": 2.0})
    assert isinstance(
        build_balancer({"method": "DWA", "temperature": 1.0}, TASKS), DynamicWeightAverage
    )
