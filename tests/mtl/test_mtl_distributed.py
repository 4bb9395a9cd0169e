"""Two CPU processes (gloo) compute the same update as one process on the global batch.

A tiny network without batch norm, two tasks whose labels are spread unevenly over the ranks:
task ``a`` has 3 labelled samples on rank 0 and 1 on rank 1, task ``b`` none on rank 0 and 3 on
rank 1. Each task's loss is a mean over its labelled samples, so the global-batch gradient is
what both ranks must apply (the objective weights each rank's loss by its share of the labels).
The representation-level method sums the ranks' Gramians of their own samples' feature
Jacobians; FAMO weights and updates from the global mean losses, after an SGD step.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from drivemtl.mtl.forward import Representation
from drivemtl.mtl.objective import build_objective

X = torch.linspace(-1, 1, 24).reshape(8, 3)
NAN = float("nan")
Y_A = torch.tensor([0.5, -1.0, 2.0, NAN, 1.0, NAN, NAN, NAN])
Y_B = torch.tensor([NAN, NAN, NAN, NAN, NAN, 0.3, -0.2, 1.5])
SETUPS = {
    "pcgrad+uncertainty": {"balancing": "uncertainty", "gradients": "pcgrad"},
    "mgda@features+uncertainty": {
        "balancing": "uncertainty",
        "gradients": {"method": "mgda", "on": "features"},
    },
    "famo, plain backward": {"balancing": {"method": "famo", "lr": 0.1}},
    "uncertainty, plain backward": {"balancing": "uncertainty"},
    "fixed, plain backward": {"loss_weights": {"b": 2.0}},
}


def _model() -> nn.ModuleDict:
    torch.manual_seed(0)
    return nn.ModuleDict({"trunk": nn.Linear(3, 4), "a": nn.Linear(4, 1), "b": nn.Linear(4, 1)})


def _masked_mse(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
    known = ~torch.isnan(target)
    error = torch.where(known, (pred - target.nan_to_num()) ** 2, torch.zeros_like(pred))
    return error.sum() / max(int(known.sum()), 1), int(known.sum())


def _losses(model: nn.ModuleDict, rows: slice, cut: bool = False) -> tuple[dict, Representation]:
    """The task losses; ``cut``: the heads read a detached copy of the features."""
    features = torch.tanh(model["trunk"](X[rows]))
    representation = Representation([features], [features.detach().requires_grad_()])
    read = representation.inputs[0] if cut else features
    losses = {
        "a": _masked_mse(model["a"](read).squeeze(1), Y_A[rows]),
        "b": _masked_mse(model["b"](read).squeeze(1), Y_B[rows]),
    }
    return losses, representation


def _gradients(setup: str, rows: slice) -> dict[str, torch.Tensor]:
    """One training step's gradients on the samples ``rows`` of this process, and the
    objective's buffers after an SGD step and FAMO's update from the same batch."""
    model = _model()
    objective = build_objective(["a", "b"], **SETUPS[setup])
    cut = objective.wants_features
    losses, representation = _losses(model, rows, cut)
    total, _ = objective(losses, representation=representation if cut else None)
    shared = list(model["trunk"].parameters())
    others = [*model["a"].parameters(), *model["b"].parameters(), *objective.parameters()]
    objective.backward(total, shared, others)
    if not objective.gradients and dist.is_initialized():
        for p in [*shared, *others]:  # what DDP's reducer does after a plain backward
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()
    named = {**dict(model.named_parameters()), **dict(objective.named_parameters())}
    result = {n: p.grad.clone() for n, p in named.items() if p.grad is not None}
    objective.before_optimizer_step()
    with torch.no_grad():
        for p in [*shared, *others]:
            if p.grad is not None:
                p -= 0.5 * p.grad
        if objective.end_batch():
            objective.after_step(_losses(model, rows)[0])
    result.update({f"buffer.{n}": b.clone() for n, b in objective.named_buffers()})
    return result


def _worker(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        rows = slice(0, 4) if rank == 0 else slice(4, 8)
        result = {setup: _gradients(setup, rows) for setup in SETUPS}
        torch.save(result, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_apply_the_global_batch_update(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for setup in SETUPS:
        expected = _gradients(setup, slice(0, 8))  # one process, the whole batch
        zero, one = ranks[0][setup], ranks[1][setup]
        assert zero.keys() == one.keys() == expected.keys(), setup
        for name, grad in expected.items():
            assert torch.equal(zero[name], one[name]), (setup, name)  # bit-identical ranks
            assert torch.allclose(zero[name], grad, atol=1e-6, equal_nan=True), (setup, name)
    # The check has teeth: the tasks conflict, so PCGrad and MGDA changed the shared gradient,
    # and FAMO moved its logits.
    plain = _gradients("uncertainty, plain backward", slice(0, 8))["trunk.weight"]
    for setup in ("pcgrad+uncertainty", "mgda@features+uncertainty"):
        assert not torch.allclose(plain, ranks[0][setup]["trunk.weight"], atol=1e-3), setup
    logits = ranks[0]["famo, plain backward"]["buffer.balancer.logits"]
    assert logits.abs().min() > 0.05


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
