"""What the multi-task methods need from the network's forward passes.

Representation-level gradient methods need the shared feature maps of the training forward pass
(:func:`capture_features`); FAMO needs the same batch's losses after the optimiser step, from a
forward pass that must not move batch-norm statistics (:func:`buffers_kept`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from drivemtl.errors import DriveMTLError


@contextmanager
def capture_features(trunk: nn.Module, enabled: bool = True) -> Iterator[list[Tensor]]:
    """Collect the trunk's output feature maps of the forward pass run inside the block.

    The trunk returns each task's list of feature maps; with hard sharing every task reads the
    same tensors, which are the shared representation (each listed once).

    Args:
        trunk: The network's trunk (``MultiTaskNet.trunk``).
        enabled: Capture nothing (an empty list) when false.

    Raises:
        DriveMTLError: When the tasks read different feature maps (no shared representation).
    """
    captured: list[Tensor] = []
    if not enabled:
        yield captured
        return

    def hook(module: nn.Module, inputs: object, output: dict[str, list[Tensor]]) -> None:
        maps = list(output.values())
        if any(len(m) != len(maps[0]) or any(a is not b for a, b in zip(m, maps[0])) for m in maps):
            raise DriveMTLError(
                "model.gradients on: features needs one representation that every head reads "
                "(model.sharing: hard); this trunk gives each task its own feature maps. Use "
                "on: parameters with this sharing strategy."
            )
        captured[:] = maps[0]

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
