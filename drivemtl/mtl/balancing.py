"""Loss balancing: how the per-task losses of a batch become one training loss.

Each strategy is a small ``nn.Module``. Its state lives in buffers and parameters, so a checkpoint
carries it and a resumed run continues it. The training loop hands it only the tasks that have a
labelled entry in the (global) batch: an absent task's loss, term and weight update are left out.

All strategies weight each task's loss; :meth:`Balancer.terms` gives the weighted term of each
task, which gradient methods (:mod:`drivemtl.mtl.gradients`) treat as that task's objective, and
:meth:`Balancer.combine` their sum.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from drivemtl.errors import DriveMTLError
from drivemtl.mtl._config import instantiate, parse_spec


class Balancer(nn.Module):
    """Base class: a weight per task, and the hooks the training loop calls.

    Args:
        tasks: Task names, in the order of every per-task tensor.
    """

    name: ClassVar[str]
    needs_losses: ClassVar[bool] = False
    """Whether :meth:`observe` wants the global mean loss of every task at every batch."""
    needs_gradient_norms: ClassVar[bool] = False
    """Whether :meth:`update` wants per-task gradient norms on the last shared layer."""

    def __init__(self, tasks: Sequence[str]):
        super().__init__()
        self.tasks = list(tasks)
        self.index = {name: i for i, name in enumerate(self.tasks)}

    def weights(self) -> Tensor:
        """Current weight of each task's loss, shape (m,), without gradient."""
        raise NotImplementedError

    def terms(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The weighted term of each task in ``losses`` (present tasks only)."""
        weights = self.weights().tolist()
        return {name: weights[self.index[name]] * loss for name, loss in losses.items()}

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        """The training loss: the sum of :meth:`terms` (0 when no task is present)."""
        return sum(self.terms(losses).values(), torch.zeros(()))

    def observe(self, mean_losses: Tensor, counts: Tensor) -> None:
        """One training batch's global mean loss per task (shape (m,); count 0: absent)."""

    def update(self, mean_losses: Tensor, norms: Tensor, present: Tensor) -> None:
        """Per-task gradient norms on the last shared layer, for :class:`GradNorm`."""

    def on_train_epoch_start(self) -> None:
        """Called at the start of every training epoch."""

    def anchor(self) -> Tensor | float:
        """A zero that depends on every learnable parameter of the strategy.

        Added to the loss so that DDP sees every parameter used even when its task is absent.
        """
        return 0.0

    def freeze(self, present: Iterable[str]) -> None:
        """Before an optimiser step: drop the gradient of every parameter of a task that was
        absent since the last step, so that no optimiser (momentum, weight decay) moves it."""

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}"


class FixedWeights(Balancer):
    """Constant weights: ``loss = sum_i w_i L_i``, the baseline every comparison needs.

    Args:
        tasks: Task names.
        weights: Weight per task (``model.loss_weights``); 1 for a task not named.
    """

    name = "fixed"

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | None = None):
        super().__init__(tasks)
        values = [float((weights or {}).get(t, 1.0)) for t in self.tasks]
        # Python floats for the loss (no device round trip), a buffer for logging.
        self._floats = values
        self.register_buffer("_weights", torch.tensor(values), persistent=False)

    def weights(self) -> Tensor:
        return self._weights

    def terms(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {name: self._floats[self.index[name]] * loss for name, loss in losses.items()}


class UncertaintyWeighting(Balancer):
    """Homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018).

    With a learnable ``s_i = log sigma_i^2`` per task (initialised to ``init``), task ``i``
    contributes::

        term_i = exp(-s_i) * L_i + s_i

    which is twice Kendall et al.'s regression form ``L_i / (2 sigma_i^2) + log sigma_i`` (a
    uniform factor, so the same optimum). The weight is ``exp(-s_i)``; for a fixed ``L_i`` the
    term is minimal at ``s_i = log L_i``, i.e. weight ``1 / L_i``. The ``s_i`` train with the
    network's optimiser (no weight decay); an absent task's ``s_i`` gets no gradient and is not
    moved by the optimiser.

    Args:
        tasks: Task names.
        init: Initial ``s_i`` (0: every weight starts at 1, like fixed weights).
    """

    name = "uncertainty"

    def __init__(self, tasks: Sequence[str], init: float = 0.0):
        super().__init__(tasks)
        # One scalar parameter per task, so that an absent task's can be left out of a step.
        self.log_vars = nn.ParameterList(
            [nn.Parameter(torch.tensor(float(init))) for _ in self.tasks]
        )

    def weights(self) -> Tensor:
        return torch.exp(-torch.stack([s.detach() for s in self.log_vars]))

    def terms(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for name, loss in losses.items():
            s = self.log_vars[self.index[name]]
            out[name] = torch.exp(-s) * loss + s
        return out

    def anchor(self) -> Tensor:
        return sum(0.0 * s for s in self.log_vars)

    def freeze(self, present: Iterable[str]) -> None:
        present = set(present)
        for name, s in zip(self.tasks, self.log_vars):
            if name not in present:
                s.grad = None


class DynamicWeightAverage(Balancer):
    """Dynamic weight averaging (Liu, Johns and Davison, CVPR 2019).

    With ``L_i(e)`` the mean loss of task ``i`` over training epoch ``e`` (a mean over its
    labelled entries, all processes together) and ``K`` tasks, the weights of epoch ``t`` are::

        r_i = L_i(t-1) / L_i(t-2)
        w_i = K * exp(r_i / T) / sum_j exp(r_j / T)

    A task whose two previous epoch means are not both known (the first two epochs, or a task
    absent all epoch) has ``r_i = 1``. An epoch in which a task is absent leaves its history as
    it was. The epoch's losses are folded in at the start of the next epoch, so that a checkpoint
    written at the end of an epoch resumes to the same weights.

    Args:
        tasks: Task names.
        temperature: ``T``; larger is smoother (2 in the paper).
    """

    name = "dwa"
    needs_losses = True

    def __init__(self, tasks: Sequence[str], temperature: float = 2.0):
        super().__init__(tasks)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        m = len(self.tasks)
        # history[0] = L(t-2), history[1] = L(t-1); NaN: unknown.
        self.register_buffer("history", torch.full((2, m), float("nan"), dtype=torch.float64))
        self.register_buffer("epoch_sum", torch.zeros(m, dtype=torch.float64))
        self.register_buffer("epoch_count", torch.zeros(m, dtype=torch.float64))
        self.register_buffer("current", torch.ones(m))

    def weights(self) -> Tensor:
        return self.current

    def observe(self, mean_losses: Tensor, counts: Tensor) -> None:
        counts = counts.to(self.epoch_count)
        self.epoch_sum += mean_losses.to(self.epoch_sum) * counts
        self.epoch_count += counts

    def on_train_epoch_start(self) -> None:
        self.end_epoch()

    def end_epoch(self) -> None:
        """Fold the epoch's mean losses into the history and recompute the weights."""
        seen = self.epoch_count > 0
        if not bool(seen.any()):
            return
        means = self.epoch_sum / self.epoch_count.clamp(min=1)
        previous = self.history[1].clone()
        self.history[0] = torch.where(seen, previous, self.history[0])
        self.history[1] = torch.where(seen, means, previous)
        self.epoch_sum.zero_()
        self.epoch_count.zero_()
        ratio = self.history[1] / self.history[0]
        ratio = torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))
        weights = len(self.tasks) * torch.softmax(ratio / self.temperature, dim=0)
        self.current.copy_(weights.to(self.current))

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}, temperature={self.temperature}"


class GradNorm(Balancer):
    """GradNorm (Chen, Badrinarayanan, Lee and Rabinovich, ICML 2018).

    At every batch, on the last shared layer ``W`` (the last weight tensor of
    ``net.shared_parameters()``), with ``G_i = w_i * ||grad_W L_i||``, ``G_mean`` their mean,
    ``L~_i = L_i / L_i(0)`` (``L_i(0)``: the task's first observed loss) and
    ``r_i = L~_i / mean_j L~_j``::

        L_grad = sum_i | G_i - G_mean * r_i ** alpha |     (target treated as a constant)
        w_i   <- w_i - lr * dL_grad/dw_i = w_i - lr * sign(G_i - target_i) * ||grad_W L_i||

    then the weights are renormalised to keep their sum (``K`` at the start). Only the tasks
    present in the batch take part; an absent task's weight is left as it is. The step is a
    plain gradient step with its own ``lr`` (no optimiser state); the weights used for the
    network's update of a batch are those before the batch's GradNorm step.

    Args:
        tasks: Task names.
        alpha: Restoring force towards balanced training rates (1.5 in the paper).
        lr: Step size of the weights.
    """

    name = "gradnorm"
    needs_gradient_norms = True

    def __init__(self, tasks: Sequence[str], alpha: float = 1.5, lr: float = 0.025):
        super().__init__(tasks)
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.alpha = float(alpha)
        self.lr = float(lr)
        m = len(self.tasks)
        self.register_buffer("current", torch.ones(m))
        self.register_buffer("initial", torch.full((m,), float("nan")))

    def weights(self) -> Tensor:
        return self.current

    def update(self, mean_losses: Tensor, norms: Tensor, present: Tensor) -> None:
        present = present.to(self.current.device)
        mean_losses = mean_losses.to(self.current)
        norms = norms.to(self.current)
        if not bool(present.any()) or not bool(torch.isfinite(norms[present]).all()):
            return  # nothing to balance, or an fp16 overflow: skip this batch
        first = present & torch.isnan(self.initial)
        self.initial[first] = mean_losses[first]
        w, norm = self.current[present], norms[present]
        rate = mean_losses[present] / self.initial[present]
        rate = torch.where(torch.isfinite(rate) & (rate > 0), rate, torch.ones_like(rate))
        relative = rate / rate.mean()
        g = w * norm
        target = g.mean() * relative**self.alpha
        step = torch.sign(g - target) * norm
        new = (w - self.lr * step).clamp(min=1e-6 * float(w.sum()))
        self.current[present] = new * (w.sum() / new.sum())

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}, alpha={self.alpha}, lr={self.lr}"


BALANCERS: dict[str, type[Balancer]] = {
    cls.name: cls for cls in (FixedWeights, UncertaintyWeighting, DynamicWeightAverage, GradNorm)
}


def build_balancer(
    spec: str | Mapping[str, Any] | None,
    tasks: Sequence[str],
    loss_weights: Mapping[str, float] | None = None,
) -> Balancer:
    """The strategy named by ``model.balancing``.

    Args:
        spec: ``fixed`` (default), ``uncertainty``, ``dwa``, ``gradnorm``, or a mapping
            ``{method: dwa, temperature: 2.0}``.
        tasks: Task names.
        loss_weights: Weights of the ``fixed`` strategy, by task name.

    Raises:
        DriveMTLError: For an unknown method or option, or weights given to another method.
    """
    method, options = parse_spec(spec, "model.balancing")
    method = method or "fixed"
    if method == "fixed":
        options = {"weights": dict(loss_weights or {}), **options}
    elif loss_weights:
        raise DriveMTLError(
            f"model.loss_weights are the weights of model.balancing 'fixed'; {method!r} sets "
            "its own. Remove one of the two."
        )
    return instantiate(BALANCERS, method, options, "model.balancing", list(tasks))
