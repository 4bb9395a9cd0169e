"""Gradient methods: one update on the shared parameters from the per-task gradients.

The aggregators are TorchJD's (https://github.com/TorchJD/torchjd); this module is the glue. Each
row of the Jacobian ``J`` (m tasks x n shared parameters) is one task's gradient (of its balanced
term, see :mod:`drivemtl.mtl.balancing`); an aggregator turns ``J`` into weights ``a`` and the
shared parameters step along ``a @ J``. Task-specific parameters (heads) keep the plain sum of
their tasks' gradients.

Supported methods and their options (``model.gradients``):

- ``pcgrad``: PCGrad (Yu et al., 2020): each task's gradient loses its component along any
  other task's gradient it conflicts with (negative dot product), in a random order.
- ``mgda``: MGDA (Sener and Koltun, 2018): the minimum-norm point of the convex hull of the task
  gradients (Frank-Wolfe). Options ``epsilon`` (0.001), ``max_iters`` (100).
- ``upgrad``: UPGrad (Quinton and Rey, 2024): each gradient projected onto the dual cone of all of
  them, then averaged; never conflicts with any task. Options ``norm_eps``, ``reg_eps`` (1e-4).
- ``cagrad``: CAGrad (Liu et al., 2021): the update that maximises the worst task's improvement
  within a ball around the mean gradient. Option ``c`` (0.4). Needs ``cvxpy``
  (``pip install "drivemtl[solvers]"``).

Nash-MTL is not offered: TorchJD's implementation keeps a solver built for a fixed number of
tasks, while here a task that has no labelled entry in a batch is left out of that batch's ``J``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn
from torchjd.aggregation import MGDA, CAGrad, GramianWeightedAggregator, PCGrad, UPGrad
from torchjd.linalg import QuadprogProjector

from drivemtl.errors import DriveMTLError
from drivemtl.mtl._config import instantiate, parse_spec
from drivemtl.mtl.distributed import broadcast


def _pcgrad() -> GramianWeightedAggregator:
    return PCGrad()


def _mgda(epsilon: float = 0.001, max_iters: int = 100) -> GramianWeightedAggregator:
    return MGDA(epsilon=epsilon, max_iters=max_iters)


def _upgrad(norm_eps: float = 0.0001, reg_eps: float = 0.0001) -> GramianWeightedAggregator:
    return UPGrad(projector=QuadprogProjector(norm_eps=norm_eps, reg_eps=reg_eps))


def _cagrad(c: float = 0.4) -> GramianWeightedAggregator:
    return CAGrad(c=c)


AGGREGATORS: dict[str, Callable[..., GramianWeightedAggregator]] = {
    "pcgrad": _pcgrad,
    "mgda": _mgda,
    "upgrad": _upgrad,
    "cagrad": _cagrad,
}


class GradientMethod(nn.Module):
    """Weights for the rows of a task Jacobian, the same on every process.

    Args:
        name: The method's name in the config.
        aggregator: A TorchJD aggregator whose weights depend on the Jacobian ``J`` through its
            Gramian ``J J^T`` only (``GramianWeightedAggregator``: every method above), so the
            glue computes the m x m Gramian once and never hands the aggregator the n columns.
    """

    def __init__(
        self,
        name: str,
        aggregator: GramianWeightedAggregator | None,
        unavailable: str | None = None,
    ):
        super().__init__()
        self.name = name
        self.aggregator = aggregator
        self.unavailable = unavailable
        """Why the aggregator could not be built (a missing optional solver), or ``None``."""

    def check(self) -> None:
        """Raise the missing-solver error now (before training), if there is one."""
        if self.unavailable is not None:
            raise DriveMTLError(self.unavailable)

    def weights(self, gramian: Tensor) -> Tensor:
        """The weight of each task, from the Gramian ``J J^T`` (m, m) of the task Jacobian ``J``;
        the update is ``weights @ J``.

        Every process holds the same (all-reduced) Jacobian, but a method may draw random numbers
        (PCGrad's order) or run a solver: rank 0's weights are broadcast so that every process
        applies exactly the same update.
        """
        self.check()
        if gramian.shape[0] == 1:
            return gramian.new_ones(1)
        weights = self.aggregator.gramian_weighting(gramian.float()).to(gramian)
        return broadcast(weights.contiguous())

    def aggregate(self, jacobian: Tensor) -> Tensor:
        """The combined update direction ``weights @ J``, shape (n,)."""
        return self.weights(jacobian @ jacobian.T) @ jacobian

    def extra_repr(self) -> str:
        return f"{self.name}: {self.aggregator!r}" if self.aggregator else f"{self.name}: missing"


def build_gradient_method(spec: str | Mapping[str, Any] | None) -> GradientMethod | None:
    """The method named by ``model.gradients`` (``None``: plain backward of the summed loss).

    Raises:
        DriveMTLError: For an unknown method or option, or a missing optional solver.
    """
    method, options = parse_spec(spec, "model.gradients")
    if method in (None, "none", "sum"):
        return None
    try:
        return GradientMethod(method, instantiate(AGGREGATORS, method, options, "model.gradients"))
    except ImportError as e:
        # Not an error yet: a checkpoint trained with it must still load for predict; training
        # raises it before the first step (GradientMethod.check).
        message = (
            f"model.gradients {method!r} needs an optional solver: {e}. "
            'Install it with: pip install "drivemtl[solvers]"'
        )
        return GradientMethod(method, None, unavailable=message)


__all__ = ["AGGREGATORS", "GradientMethod", "build_gradient_method"]
