"""Gradient methods and diagnostics through the objective, on losses with known gradients.

Task losses are linear in a 2-D shared parameter, ``L_i = g_i . theta``, so their gradients
are exactly the hand-picked vectors ``g_i``.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import yaml

from drivemtl.errors import DriveMTLError
from drivemtl.mtl.balancing import FixedWeights
from drivemtl.mtl.forward import Representation
from drivemtl.mtl.gradients import AGGREGATORS, build_gradient_method
from drivemtl.mtl.objective import MultiTaskObjective, build_objective

G1 = torch.tensor([1.0, 0.0])
G2 = torch.tensor([-1.0, 1.0])  # conflicts with G1: G1 . G2 = -1


def _problem(g1=G1, g2=G2, counts=(3, 2)):
    theta = torch.zeros(2, requires_grad=True)
    head = torch.zeros((), requires_grad=True)  # task-specific: only task a uses it
    losses = {
        "a": ((g1 * theta).sum() + 3.0 * head, counts[0]),
        "b": ((g2 * theta).sum(), counts[1]),
    }
    return theta, head, losses


def _step(objective, losses, theta, head, **kwargs):
    total, logs = objective(losses)
    more = objective.backward(total, [theta], [head], **kwargs)
    return total, {**logs, **more}


def test_pcgrad_removes_the_conflicting_component():
    theta, head, losses = _problem()
    objective = MultiTaskObjective(["a", "b"], gradients=build_gradient_method("pcgrad"))
    _, logs = _step(objective, losses, theta, head)
    # g1' = g1 - (g1.g2 / |g2|^2) g2 = (0.5, 0.5); g2' = g2 - (g2.g1 / |g1|^2) g1 = (0, 1).
    g1p, g2p = torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0])
    assert float(g1p @ G2) == 0.0 and float(g2p @ G1) == 0.0
    assert theta.grad.tolist() == pytest.approx((g1p + g2p).tolist())
    # The head keeps its task's plain gradient.
    assert head.grad.item() == 3.0
    # Effective weights: theta.grad = 1.5 g1 + 1.5 g2... solved by hand: (0.5, 1.5) = a g1 + b g2
    # -> b = 1.5, a = 2.0.
    assert float(logs["weight/a"]) == pytest.approx(2.0)
    assert float(logs["weight/b"]) == pytest.approx(1.5)


def test_pcgrad_leaves_agreeing_gradients_alone():
    theta, head, losses = _problem(g2=torch.tensor([1.0, 1.0]))
    objective = MultiTaskObjective(["a", "b"], gradients=build_gradient_method("pcgrad"))
    _step(objective, losses, theta, head)
    assert theta.grad.tolist() == pytest.approx([2.0, 1.0])


def test_mgda_takes_the_minimum_norm_point_of_the_convex_hull():
    theta, head, losses = _problem()
    objective = MultiTaskObjective(["a", "b"], gradients=build_gradient_method("mgda"))
    _step(objective, losses, theta, head)
    # min |t g1 + (1 - t) g2|: t = (g2 - g1).g2 / |g1 - g2|^2 = 3 / 5.
    assert theta.grad.tolist() == pytest.approx((0.6 * G1 + 0.4 * G2).tolist(), abs=1e-4)


def test_upgrad_never_conflicts_and_averages_agreeing_gradients():
    theta, head, losses = _problem()
    objective = MultiTaskObjective(["a", "b"], gradients=build_gradient_method("upgrad"))
    _step(objective, losses, theta, head)
    update = theta.grad
    assert float(update @ G1) >= -1e-6 and float(update @ G2) >= -1e-6
    # Each gradient projected onto the dual cone, then averaged: g1 -> (0.5, 0.5), g2 stays.
    assert update.tolist() == pytest.approx([0.25, 0.75], abs=1e-3)

    theta, head, losses = _problem(g2=torch.tensor([1.0, 1.0]))
    objective = MultiTaskObjective(["a", "b"], gradients=build_gradient_method("upgrad"))
    _step(objective, losses, theta, head)
    assert theta.grad.tolist() == pytest.approx([1.0, 0.5], abs=1e-3)  # plain mean


@pytest.mark.skipif(importlib.util.find_spec("cvxpy") is None, reason="cvxpy not installed")
def test_cagrad_with_c_zero_is_the_mean_gradient():
    theta, head, losses = _problem()
    method = build_gradient_method({"method": "cagrad", "c": 0.0})
    _step(MultiTaskObjective(["a", "b"], gradients=method), losses, theta, head)
    assert theta.grad.tolist() == pytest.approx(((G1 + G2) / 2).tolist(), abs=1e-4)


def test_scaled_and_accumulated_gradients_match_a_plain_backward():
    # Under fp16 the loss Lightning back-propagates is scaled by the GradScaler and divided by
    # the accumulation; .grad must hold the update times the same factor.
    theta, head, losses = _problem()
    objective = MultiTaskObjective(["a", "b"], gradients=build_gradient_method("pcgrad"))
    _step(objective, losses, theta, head, loss_scale=1024.0, accumulate=4)
    assert theta.grad.tolist() == pytest.approx([0.5 * 256, 1.5 * 256])
    assert head.grad.item() == 3.0 * 256
    # Accumulation adds to existing gradients.
    again = {"a": ((G1 * theta).sum() + 3.0 * head, 3), "b": ((G2 * theta).sum(), 2)}
    _step(objective, again, theta, head)
    assert theta.grad.tolist() == pytest.approx([0.5 * 257, 1.5 * 257])


@pytest.mark.parametrize("method", ["pcgrad", "mgda", "aligned_mtl", "upgrad", "cagrad"])
def test_an_absent_task_is_left_out_of_the_aggregation(method):
    if method == "cagrad" and importlib.util.find_spec("cvxpy") is None:
        pytest.skip("cvxpy not installed")
    theta, head, losses = _problem(counts=(0, 2))
    objective = MultiTaskObjective(["a", "b"], gradients=build_gradient_method(method))
    total, logs = _step(objective, losses, theta, head)
    # Only b is present: its gradient alone, a's weight not logged, nothing NaN.
    assert theta.grad.tolist() == pytest.approx(G2.tolist(), abs=1e-5)
    assert set(logs) == {"weight/b"} and torch.isfinite(total)
    assert head.grad.item() == 0.0


def test_diagnostics_log_the_cosine_and_keep_the_plain_sum():
    theta, head, losses = _problem()
    objective = MultiTaskObjective(["a", "b"], diagnose_every=2)
    total, logs = objective(losses, step=4)
    assert objective.wants_jacobian
    logs |= objective.backward(total, [theta], [head])
    assert logs["cos/a~b"] == pytest.approx(-1 / math.sqrt(2))
    assert float(logs["weight/a"]) == 1.0
    assert theta.grad.tolist() == pytest.approx((G1 + G2).tolist())
    assert objective.affinity.counts[0, 1].item() == 1
    # Off-steps are a plain backward.
    theta, head, losses = _problem()
    total, _ = objective(losses, step=5)
    assert not objective.wants_jacobian


def test_penalty_is_added_after_balancing_not_aggregated():
    theta, head, losses = _problem()
    objective = MultiTaskObjective(
        ["a", "b"], FixedWeights(["a", "b"]), build_gradient_method("pcgrad")
    )
    penalty = 0.5 * (theta**2).sum() + (theta * torch.tensor([2.0, 0.0])).sum()
    total, _ = objective(losses, penalty)
    objective.backward(total, [theta], [head])
    # PCGrad's (0.5, 1.5) plus the penalty's gradient at theta = 0: (2, 0).
    assert theta.grad.tolist() == pytest.approx([2.5, 1.5])


class _Trunk(torch.autograd.Function):
    """The identity, counting the backward passes that reach the trunk."""

    passes = 0

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        _Trunk.passes += 1
        return grad


def _feature_problem(g1=G1, g2=G2, counts=(3, 2), cut=True):
    """Features ``z = W x`` (the trunk), task losses linear in z: ``dL_i / dz = g_i`` exactly.

    ``cut``: the heads read a detached copy of z (as ``capture_features`` makes them)."""
    x = torch.tensor([1.0, 2.0])
    weight = torch.eye(2).requires_grad_(True)
    head = torch.zeros((), requires_grad=True)
    z = _Trunk.apply(weight @ x)
    representation = Representation([z], [z.detach().requires_grad_()]) if cut else None
    read = representation.inputs[0] if cut else z
    losses = {
        "a": ((g1 * read).sum() + 3.0 * head, counts[0]),
        "b": ((g2 * read).sum(), counts[1]),
    }
    return weight, head, representation, x, losses


def _feature_step(spec, problem, **kwargs):
    weight, head, representation, _, losses = problem
    objective = MultiTaskObjective(["a", "b"], gradients=build_gradient_method(spec))
    _Trunk.passes = 0
    total, logs = objective(losses, representation=representation)
    logs |= objective.backward(total, [weight], [head], **kwargs)
    return logs


def test_mgda_on_features_takes_its_weights_from_the_feature_jacobian():
    problem = _feature_problem()
    weight, head, _, x, _ = problem
    logs = _feature_step({"method": "mgda", "on": "features"}, problem)
    # The Jacobian w.r.t. z has rows g1 = (1, 0), g2 = (-1, 1): Gramian [[1, -1], [-1, 2]],
    # min |t g1 + (1 - t) g2| at t = (g2 - g1) . g2 / |g1 - g2|^2 = 3 / 5.
    assert float(logs["weight/a"]) == pytest.approx(0.6, abs=1e-4)
    assert float(logs["weight/b"]) == pytest.approx(0.4, abs=1e-4)
    # One backward pass of 0.6 g1 + 0.4 g2 through the trunk: dW = (0.2, 0.4) x^T.
    assert _Trunk.passes == 1
    assert weight.grad.flatten().tolist() == pytest.approx(
        torch.outer(torch.tensor([0.2, 0.4]), x).flatten().tolist()
    )
    assert head.grad.item() == 3.0  # the head keeps its task's plain gradient
    # The parameter level reaches the trunk once per task.
    weight, head, _, _, losses = _feature_problem(cut=False)
    _Trunk.passes = 0
    objective = MultiTaskObjective(["a", "b"], gradients=build_gradient_method("mgda"))
    _step(objective, losses, weight, head)
    assert _Trunk.passes == 2
    assert weight.grad.flatten().tolist() == pytest.approx(
        torch.outer(torch.tensor([0.2, 0.4]), x).flatten().tolist(), abs=1e-4
    )


def test_aligned_mtl_on_features_equalises_orthogonal_gradients():
    problem = _feature_problem(g1=torch.tensor([2.0, 0.0]), g2=torch.tensor([0.0, 1.0]))
    weight, _, _, x, _ = problem
    logs = _feature_step({"method": "aligned_mtl", "on": "features"}, problem)
    # Gramian diag(4, 1): each gradient scaled to the smallest singular value (1), then
    # averaged: weights (1/2 * 1/2, 1/2 * 1) and update (0.5, 0.5).
    assert float(logs["weight/a"]) == pytest.approx(0.25)
    assert float(logs["weight/b"]) == pytest.approx(0.5)
    assert weight.grad.flatten().tolist() == pytest.approx(
        torch.outer(torch.tensor([0.5, 0.5]), x).flatten().tolist()
    )


@pytest.mark.parametrize("method", ["pcgrad", "mgda", "aligned_mtl", "upgrad"])
def test_an_absent_task_is_left_out_on_features(method):
    problem = _feature_problem(counts=(0, 2))
    weight, head, _, x, _ = problem
    logs = _feature_step({"method": method, "on": "features"}, problem)
    assert weight.grad.flatten().tolist() == pytest.approx(
        torch.outer(G2, x).flatten().tolist(), abs=1e-5
    )
    assert set(logs) == {"weight/b"} and head.grad.item() == 0.0
    assert torch.isfinite(weight.grad).all()


def test_features_scale_accumulation_and_penalty_match_a_plain_backward():
    weight, head, representation, x, losses = _feature_problem()
    objective = MultiTaskObjective(
        ["a", "b"], gradients=build_gradient_method({"method": "mgda", "on": "features"})
    )
    penalty = 0.5 * (weight**2).sum()  # gradient W = I at W = I; not a task: added after
    total, _ = objective(losses, penalty, representation=representation)
    objective.backward(total, [weight], [head], loss_scale=1024.0, accumulate=4)
    expected = torch.outer(torch.tensor([0.2, 0.4]), x) + torch.eye(2)
    assert weight.grad.flatten().tolist() == pytest.approx(
        (256 * expected).flatten().tolist(), rel=1e-3
    )
    assert head.grad.item() == pytest.approx(3.0 * 256)


def test_a_map_that_feeds_a_later_one_counts_once():
    # Two levels, z2 computed from z1 inside the trunk, a head reading both: with one task
    # present (weight 1) the update must be the plain gradient, the z1 -> z2 path taken once.
    x = torch.tensor([1.0, -2.0])
    w = torch.tensor([[0.5, 1.0], [-1.0, 0.3]], requires_grad=True)
    v = torch.tensor([[1.0, 0.2], [0.4, -0.7]], requires_grad=True)

    def forward(cut):
        z1 = w @ x
        z2 = torch.tanh(v @ z1)
        representation = (
            Representation([z1, z2], [z1.detach().requires_grad_(), z2.detach().requires_grad_()])
            if cut
            else None
        )
        a1, a2 = representation.inputs if cut else (z1, z2)
        loss = (a1 * torch.tensor([0.3, -1.0])).sum() + (a2**2).sum()
        return representation, {"a": (loss, 2), "b": ((a2 * 2.0).sum(), 0)}

    _, losses = forward(cut=False)
    plain = torch.autograd.grad(losses["a"][0], [w, v])
    representation, losses = forward(cut=True)
    method = build_gradient_method({"method": "mgda", "on": "features"})
    objective = MultiTaskObjective(["a", "b"], gradients=method)
    total, _ = objective(losses, representation=representation)
    objective.backward(total, [w, v], [])
    assert w.grad.flatten().tolist() == pytest.approx(plain[0].flatten().tolist())
    assert v.grad.flatten().tolist() == pytest.approx(plain[1].flatten().tolist())


def test_gradnorm_and_features_are_a_clear_error():
    with pytest.raises(DriveMTLError, match="gradnorm measures each task's gradient"):
        build_objective(
            ["a", "b"], balancing="gradnorm", gradients={"method": "mgda", "on": "features"}
        )


def test_bad_gradient_specs_are_clear_errors():
    assert build_gradient_method(None) is None and build_gradient_method("none") is None
    with pytest.raises(DriveMTLError, match="Unknown model.gradients method 'nashmtl'"):
        build_gradient_method("nashmtl")
    with pytest.raises(DriveMTLError, match=r"has no option \['alpha'\]"):
        build_gradient_method({"method": "pcgrad", "alpha": 1})
    with pytest.raises(DriveMTLError, match="diagnose_every must be >= 0"):
        build_objective(["a"], diagnose_every=-1)
    with pytest.raises(DriveMTLError, match="'on' must be one of \\['parameters', 'features'\\]"):
        build_gradient_method({"method": "mgda", "on": "heads"})
    with pytest.raises(DriveMTLError, match="scale_mode must be"):
        build_gradient_method({"method": "aligned_mtl", "scale_mode": "max"})
    assert build_gradient_method({"method": "MGDA", "on": "Features"}).key == "mgda@features"
    # YAML 1.1 reads the key `on` as true: `{method: mgda, on: features}` still means it.
    spec = yaml.safe_load("{method: mgda, on: features}")
    assert True in spec and build_gradient_method(spec).on == "features"


def test_a_missing_solver_stops_fit_but_not_loading(monkeypatch):
    def missing(c: float = 0.4):
        raise ImportError("CAGradWeighting requires ['cvxpy'] to be installed")

    monkeypatch.setitem(AGGREGATORS, "cagrad", missing)
    from drivemtl.module import MultiTaskModule

    # A checkpoint trained with CAGrad still rebuilds (predict needs no solver) ...
    model = MultiTaskModule(image_size=(32, 48), backbone="mobilenet_v3_small", gradients="cagrad")
    model.setup("predict")
    # ... and fit stops before the first step with the install command of its extra.
    with pytest.raises(
        DriveMTLError, match=r"needs an optional .*pip install \"drivemtl\[cagrad\]\""
    ):
        model.setup("fit")
