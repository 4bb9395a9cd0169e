"""Gradient methods: one update on the shared network from the per-task gradients.

The aggregators are TorchJD's (https://github.com/TorchJD/torchjd); this module is the glue. Each
row of a task Jacobian ``J`` (m tasks x n) is one task's gradient (of its balanced term, see
:mod:`drivemtl.mtl.balancing`); an aggregator turns the Gramian ``J J^T`` into weights ``a``, and
the shared network steps along the weighted sum of the task gradients. Task-specific parameters
(heads) keep the plain sum of their tasks' gradients.

Where the Jacobian is taken (option ``on``):

- ``parameters`` (default): ``J`` is taken with respect to the shared parameters, one backward
  pass per task through the whole trunk (the methods' papers).
- ``features``: ``J`` is taken with respect to the shared representation, the trunk's output
  feature maps that the heads read (MGDA-UB, Sener and Koltun, 2018; Aligned-MTL-UB, Senushkin
  et al., 2023): one backward pass per task through its head only, then one backward pass of the
  weighted sum ``sum_i a_i L_i`` through the trunk. Needs hard sharing (one representation that
  every head reads).

Supported methods and their options (``model.gradients``, e.g. ``{method: mgda, on: features}``):

- ``pcgrad``: PCGrad (Yu et al., 2020): each task's gradient loses its component along any
  other task's gradient it conflicts with (negative dot product), in a random order.
- ``mgda``: MGDA (Sener and Koltun, 2018): the minimum-norm point of the convex hull of the task
  gradients (Frank-Wolfe). Options ``epsilon`` (0.001), ``max_iters`` (100).
- ``aligned_mtl``: Aligned-MTL (Senushkin et al., 2023): the task gradients made orthogonal and
  of equal norm (the condition number of ``J`` brought to 1), then summed. Option
  ``scale_mode`` (``min``, ``median`` or ``rmse``: which singular value sets the scale).
- ``upgrad``: UPGrad (Quinton and Rey, 2024): each gradient projected onto the dual cone of all of
  them, then averaged; never conflicts with any task. Options ``norm_eps``, ``reg_eps`` (1e-4).
  Needs a QP solver: ``pip install "drivemtl[upgrad]"`` (quadprog, GPL-2.0-or-later).
- ``cagrad``: CAGrad (Liu et al., 2021): the update that maximises the worst task's improvement
  within a ball around the mean gradient. Option ``c`` (0.4). Needs a conic solver:
  ``pip install "drivemtl[cagrad]"`` (cvxpy).

TorchJD is imported when a method is built, never by the training loop itself, and a method whose
solver is missing stops ``fit`` before its first step with the install command (a checkpoint
trained with it still loads for ``predict``).

Nash-MTL is not offered: TorchJD's implementation keeps a solver built for a fixed number of
tasks, while here a task that has no labelled entry in a batch is left out of that batch's ``J``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from drivemtl.errors import DriveMTLError
from drivemtl.mtl._config import instantiate, parse_spec
from drivemtl.mtl.distributed import broadcast

LEVELS = ("parameters", "features")
"""Where the task Jacobian is taken: the shared parameters or the shared representation."""


def _pcgrad():
    from torchjd.aggregation import PCGrad

    return PCGrad()


def _mgda(epsilon: float = 0.001, max_iters: int = 100):
    from torchjd.aggregation import MGDA

    return MGDA(epsilon=epsilon, max_iters=max_iters)


def _aligned_mtl(scale_mode: str = "min"):
    from torchjd.aggregation import AlignedMTL

    if scale_mode not in ("min", "median", "rmse"):
        raise ValueError(f"scale_mode must be 'min', 'median' or 'rmse', got {scale_mode!r}")
    return AlignedMTL(scale_mode=scale_mode)


def _upgrad(norm_eps: float = 0.0001, reg_eps: float = 0.0001):
    from torchjd.aggregation import UPGrad
    from torchjd.linalg import QuadprogProjector

    return UPGrad(projector=QuadprogProjector(norm_eps=norm_eps, reg_eps=reg_eps))


def _cagrad(c: float = 0.4):
    from torchjd.aggregation import CAGrad

    return CAGrad(c=c)


AGGREGATORS: dict[str, Callable[..., Any]] = {
    "pcgrad": _pcgrad,
    "mgda": _mgda,
    "aligned_mtl": _aligned_mtl,
    "upgrad": _upgrad,
    "cagrad": _cagrad,
}
"""Each method's factory of a TorchJD ``GramianWeightedAggregator``, by config name."""

EXTRAS: dict[str, str] = {"upgrad": "upgrad", "cagrad": "cagrad"}
"""The ``drivemtl`` extra that brings a method's solver (methods not listed need none)."""


class GradientMethod(nn.Module):
    """Weights for the rows of a task Jacobian, the same on every process.

    Args:
        name: The method's name in the config.
        aggregator: A TorchJD aggregator whose weights depend on the Jacobian ``J`` through its
            Gramian ``J J^T`` only (``GramianWeightedAggregator``: every method above), so the
            glue computes the m x m Gramian once and never hands the aggregator the n columns.
        on: ``parameters`` or ``features``: where the Jacobian is taken (see the module).
        unavailable: Why the aggregator could not be built (a missing optional solver).
    """

    def __init__(
        self,
        name: str,
        aggregator: Any | None,
        on: str = "parameters",
        unavailable: str | None = None,
    ):
        super().__init__()
        if on not in LEVELS:
            raise ValueError(f"on must be one of {list(LEVELS)}, got {on!r}")
        self.name = name
        self.aggregator = aggregator
        self.on = on
        self.unavailable = unavailable
        """Why the aggregator could not be built (a missing optional solver), or ``None``."""

    @property
    def key(self) -> str:
        """The method's name as benchmarks report it: ``mgda``, ``mgda@features``."""
        return self.name if self.on == "parameters" else f"{self.name}@{self.on}"

    def check(self) -> None:
        """Raise the missing-solver error now (before training), if there is one."""
        if self.unavailable is not None:
            raise DriveMTLError(self.unavailable)

    def weights(self, gramian: Tensor) -> Tensor:
        """The weight of each task, from the Gramian ``J J^T`` (m, m) of the task Jacobian ``J``;
        the update is ``weights @ J``.

        Every process holds the same (all-reduced) Gramian, but a method may draw random numbers
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
        what = repr(self.aggregator) if self.aggregator is not None else "missing"
        return f"{self.key}: {what}"


def build_gradient_method(spec: str | Mapping[str, Any] | None) -> GradientMethod | None:
    """The method named by ``model.gradients`` (``None``: plain backward of the summed loss).

    Args:
        spec: A method name, or ``{method: name, on: parameters | features, option: value}``.

    Raises:
        DriveMTLError: For an unknown method, option or level. A missing optional solver is
            not raised here but by :meth:`GradientMethod.check`, before training.
    """
    method, options = parse_spec(spec, "model.gradients")
    if method in (None, "none", "sum"):
        return None
    if True in options:  # YAML 1.1 (PyYAML, jsonargparse) reads the key `on` as the boolean true
        options.setdefault("on", options.pop(True))
    on = str(options.pop("on", "parameters")).lower()
    if on not in LEVELS:
        raise DriveMTLError(
            f"model.gradients 'on' must be one of {list(LEVELS)} (where the task Jacobian is "
            f"taken), got {on!r}."
        )
    try:
        aggregator = instantiate(AGGREGATORS, method, options, "model.gradients")
    except ImportError as e:
        # Not an error yet: a checkpoint trained with it must still load for predict; training
        # raises it before the first step (GradientMethod.check).
        extra = EXTRAS.get(method)
        install = f'pip install "drivemtl[{extra}]"' if extra else 'pip install "torchjd<0.19"'
        message = (
            f"model.gradients {method!r} needs an optional dependency that is not installed "
            f"({e}). Install it with: {install}"
        )
        return GradientMethod(method, None, on, unavailable=message)
    return GradientMethod(method, aggregator, on)


__all__ = ["AGGREGATORS", "EXTRAS", "LEVELS", "GradientMethod", "build_gradient_method"]
