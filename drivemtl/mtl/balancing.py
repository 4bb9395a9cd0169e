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
    losses_after_step: str | None = None
    """Whether :meth:`after_step` wants the global mean losses after each optimiser step:
    ``"same_batch"`` (the step's last batch, forwarded again) or ``"next_batch"`` (the next
    training batch, before its own step); ``None``: no."""

    def __init__(self, tasks: Sequence[str]):
        super().__init__()
        self.tasks = list(tasks)
        self.index = {name: i for i, name in enumerate(self.tasks)}

    def weights(self) -> Tensor:
        """Current weight of each task's loss, shape (m,), without gradient."""
        raise NotImplementedError

    def batch_weights(self) -> Tensor:
        """The weight of each task's loss in the batch just observed (what is logged)."""
        return self.weights()

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

    def after_step(self, mean_losses: Tensor, counts: Tensor) -> None:
        """The global mean loss per task after an optimiser step (see :attr:`losses_after_step`)."""

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


class FAMO(Balancer):
    """Fast adaptive multitask optimisation (Liu, Feng, Stone and Liu, NeurIPS 2023).

    FAMO keeps a logit ``xi_i`` per task. Over the tasks ``P`` present in a batch (``K_P`` of
    them), with ``z = softmax(xi_P)``, the global mean losses ``L_i`` and their lower bounds
    ``b_i``, each loss is weighted by::

        d_i = max(L_i - b_i, 0) + 1e-8
        w_i = K_P * (z_i / d_i) / sum_j (z_j / d_j)

    whose gradient is the paper's ``c sum_i z_i grad log d_i`` (``c`` held constant) times
    ``K_P``: the weights sum to ``K_P``, like fixed weights of 1, where the paper's sum to 1 (a
    constant factor, which Adam-type optimisers do not see). After the optimiser step, with
    ``d'_i`` the losses of the same batch again (``update: same_batch``, the paper's: one
    forward pass without gradient) or of the next batch (``update: next_batch``: free, but the
    change then mixes in the difference between two batches)::

        delta_i = log d_i - log d'_i                  (how much task i's log-loss decreased)
        g       = z * (delta - z . delta)             (the softmax's Jacobian times delta)

    and ``xi_P`` takes one Adam step along ``-g`` (with L2 weight decay, as ``torch.optim.Adam``
    does it): weight moves to the tasks whose loss decreased least. Cost: O(1) in the number of
    tasks, one backward pass per step.

    Partial labels: a task with no labelled entry in the batch (all processes together) is
    outside ``P``: no term, and its logit and Adam moments do not move (its log-loss change is
    undefined there). DDP: ``L_i`` are global means, so every process computes the same weights
    and update. The logits, per-task Adam moments and step counts, and the last losses are
    buffers: a checkpoint carries them and a resumed run continues them.

    Not TorchJD's ``torchjd.scalarization.FAMO`` (the same update otherwise): it keeps its softmax
    and Adam over a fixed set of tasks, so an absent task's logit would move, and its Adam state
    is not in the state dict, so a resumed run would restart it.

    Args:
        tasks: Task names.
        lr: Adam step size of the logits (0.025 in the paper).
        weight_decay: L2 regularisation of the logits (the paper's ``gamma``).
        min_losses: Lower bound ``b_i`` of each task's loss, by name (0 for a task not named).
        update: ``same_batch`` or ``next_batch``: which losses measure the step's progress.
    """

    name = "famo"
    needs_losses = True
    _EPS = 1e-8
    _BETAS = (0.9, 0.999)
    _ADAM_EPS = 1e-8

    def __init__(
        self,
        tasks: Sequence[str],
        lr: float = 0.025,
        weight_decay: float = 0.001,
        min_losses: Mapping[str, float] | None = None,
        update: str = "same_batch",
    ):
        super().__init__(tasks)
        if lr <= 0 or weight_decay < 0:
            raise ValueError(f"lr must be positive and weight_decay >= 0, got {lr}, {weight_decay}")
        if update not in ("same_batch", "next_batch"):
            raise ValueError(f"update must be 'same_batch' or 'next_batch', got {update!r}")
        unknown = sorted(set(min_losses or {}) - set(self.tasks))
        if unknown:
            raise ValueError(f"min_losses names tasks not trained: {unknown}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.losses_after_step = update
        m = len(self.tasks)
        bounds = [float((min_losses or {}).get(t, 0.0)) for t in self.tasks]
        self.register_buffer("min_losses", torch.tensor(bounds))
        self.register_buffer("logits", torch.zeros(m))
        self.register_buffer("exp_avg", torch.zeros(m))
        self.register_buffer("exp_avg_sq", torch.zeros(m))
        self.register_buffer("steps", torch.zeros(m))
        # The global mean losses of the last batch, NaN where a task was absent.
        self.register_buffer("before", torch.full((m,), float("nan")))
        self.register_buffer("applied", torch.zeros(m), persistent=False)

    def weights(self) -> Tensor:
        """``K * softmax(xi)``: FAMO's task weighting over all ``K`` tasks, 1 each at the start
        (the validation loss's weights; a batch's loss weights also divide by each loss)."""
        return len(self.tasks) * torch.softmax(self.logits, dim=0)

    def batch_weights(self) -> Tensor:
        return self.applied

    def _shifted(self, losses: Tensor) -> Tensor:
        """``max(L - b, 0) + eps`` of every task (shape (m,)): what FAMO takes the log of."""
        return (losses.to(self.logits) - self.min_losses).clamp(min=0) + self._EPS

    def observe(self, mean_losses: Tensor, counts: Tensor) -> None:
        present = counts.to(self.logits.device) > 0
        losses = mean_losses.to(self.logits)
        self.before.copy_(torch.where(present, losses, torch.full_like(losses, float("nan"))))
        self.applied.zero_()
        if bool(present.any()):
            ratio = torch.softmax(self.logits[present], dim=0) / self._shifted(losses)[present]
            self.applied[present] = int(present.sum()) * ratio / ratio.sum()

    def terms(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        weights = self.applied.tolist()
        return {name: weights[self.index[name]] * loss for name, loss in losses.items()}

    def after_step(self, mean_losses: Tensor, counts: Tensor) -> None:
        after = mean_losses.to(self.logits)
        present = torch.isfinite(self.before) & (counts.to(after.device) > 0)
        if not bool(present.any()):
            return
        delta = torch.log(self._shifted(self.before)[present]) - torch.log(
            self._shifted(after)[present]
        )
        if not bool(torch.isfinite(delta).all()):
            return  # an fp16 overflow in the losses: no information this step
        z = torch.softmax(self.logits[present], dim=0)
        grad = z * (delta - (z * delta).sum()) + self.weight_decay * self.logits[present]
        # One Adam step (torch.optim.Adam's arithmetic) on the present tasks' logits only.
        beta1, beta2 = self._BETAS
        steps = self.steps[present] + 1
        exp_avg = beta1 * self.exp_avg[present] + (1 - beta1) * grad
        exp_avg_sq = beta2 * self.exp_avg_sq[present] + (1 - beta2) * grad * grad
        # Bias corrections in float64, as torch's Adam: 1 - 0.999^t cancels badly in float32.
        correction1 = (1 - beta1 ** steps.double()).to(grad)
        correction2 = (1 - beta2 ** steps.double()).to(grad)
        denominator = (exp_avg_sq / correction2).sqrt() + self._ADAM_EPS
        self.logits[present] -= self.lr * exp_avg / correction1 / denominator
        self.exp_avg[present] = exp_avg
        self.exp_avg_sq[present] = exp_avg_sq
        self.steps[present] = steps

    def extra_repr(self) -> str:
        return (
            f"tasks={self.tasks}, lr={self.lr}, weight_decay={self.weight_decay}, "
            f"update={self.losses_after_step}"
        )


BALANCERS: dict[str, type[Balancer]] = {
    cls.name: cls
    for cls in (FixedWeights, UncertaintyWeighting, DynamicWeightAverage, GradNorm, FAMO)
}


def build_balancer(
    spec: str | Mapping[str, Any] | None,
    tasks: Sequence[str],
    loss_weights: Mapping[str, float] | None = None,
    default_weights: Mapping[str, float] | None = None,
) -> Balancer:
    """The strategy named by ``model.balancing``.

    Args:
        spec: ``fixed`` (default), ``uncertainty``, ``dwa``, ``gradnorm``, ``famo``, or a
            mapping ``{method: dwa, temperature: 2.0}``.
        tasks: Task names.
        loss_weights: Weights of the ``fixed`` strategy, by task name (``model.loss_weights``).
        default_weights: The ``fixed`` strategy's weight of a task that ``loss_weights`` does
            not name (the tasks' defaults); 1 for a task in neither.

    Raises:
        DriveMTLError: For an unknown method or option, or weights given to another method.
    """
    method, options = parse_spec(spec, "model.balancing")
    method = method or "fixed"
    if method == "fixed":
        options = {"weights": {**(default_weights or {}), **(loss_weights or {})}, **options}
    elif loss_weights:
        raise DriveMTLError(
            f"model.loss_weights are the weights of model.balancing 'fixed'; {method!r} sets "
            "its own. Remove one of the two."
        )
    return instantiate(BALANCERS, method, options, "model.balancing", list(tasks))
