"""What the multi-task methods need from the network's forward passes.

Representation-level gradient methods need the shared feature maps of the training forward pass,
cut between the trunk and the heads (:func:`capture_features`); FAMO needs the same batch's
losses after the optimiser step, from a forward pass that must not move batch-norm statistics
(:func:`buffers_kept`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import Tensor, nn

from drivemtl.errors import DriveMTLError


@dataclass
class Representation:
    """The shared feature maps of one forward pass, cut between the trunk and the heads.

    Attributes:
        maps: The trunk's output feature maps, in the trunk's graph.
        inputs: Detached copies of ``maps`` that the heads read: a task's gradient with respect
            to them is the partial derivative through the heads only (an earlier map also
            feeds the later ones inside the trunk, a path that the one backward pass through
            the trunk takes once, for the weighted sum).
    """

    maps: list[Tensor] = field(default_factory=list)
    inputs: list[Tensor] = field(default_factory=list)


@contextmanager
def capture_features(trunk: nn.Module, enabled: bool = True) -> Iterator[Representation | None]:
    """Cut the shared representation out of the forward pass run inside the block.

    The trunk returns each task's list of feature maps; with hard sharing every task reads the
    same tensors, the shared representation. The heads then read detached copies of them.

    Args:
        trunk: The network's trunk (``MultiTaskNet.trunk``).
        enabled: Leave the forward pass alone (and yield ``None``) when false.

    Raises:
        DriveMTLError: When the tasks read different feature maps (no shared representation).
    """
    if not enabled:
        yield None
        return
    captured = Representation()

    def hook(module: nn.Module, inputs: object, output: dict[str, list[Tensor]]) -> dict:
        maps = list(output.values())
        if any(len(m) != len(maps[0]) or any(a is not b for a, b in zip(m, maps[0])) for m in maps):
            raise DriveMTLError(
                "model.gradients on: features needs one representation that every head reads "
                "(model.sharing: hard); this trunk gives each task its own feature maps. Use "
                "on: parameters with this sharing strategy."
            )
        captured.maps = list(maps[0])
        captured.inputs = [m.detach().requires_grad_() for m in captured.maps]
        return dict.fromkeys(output, captured.inputs)

    handle = trunk.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@contextmanager
def buffers_kept(module: nn.Module) -> Iterator[None]:
    """Restore every buffer of ``module`` (batch-norm running statistics) after the block."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        for buffer, value in saved:
            buffer.copy_(value)
