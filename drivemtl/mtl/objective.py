"""The multi-task objective: per-task losses in, a training loss and its gradients out.

One object composes the three choices of a run: a loss-balancing strategy
(:mod:`~drivemtl.mtl.balancing`), an optional gradient method (:mod:`~drivemtl.mtl.gradients`)
and optional conflict diagnostics (:mod:`~drivemtl.mtl.affinity`). The LightningModule calls
:meth:`MultiTaskObjective.forward` in its training step and :meth:`MultiTaskObjective.backward`
from its ``backward`` hook, so Lightning's automatic optimisation (gradient clipping,
accumulation, mixed precision, DDP) works unchanged for every method.

**Absent tasks.** A task with no labelled entry in the global batch (all processes) is left out
of the balancing, of the Jacobian, of the diagnostics and of every weight update. Its zero loss
is still added with weight 0 so that DDP sees its head used.

**DDP.** Each process's loss of task ``i`` is scaled by ``W * n_ir / N_i`` (``n_ir`` labelled
entries on rank ``r``, ``N_i`` on all ``W`` ranks), so that DDP's gradient average is the
gradient of the task's mean over all its labelled entries: one process on the global batch
gives the same gradient (without batch-norm statistics, which stay per process). For gradient
methods, each task's gradient is computed with ``torch.autograd.grad`` (which DDP's reducer
does not see), averaged over processes with one ``all_reduce``, aggregated identically on every
process (the weights are rank 0's, broadcast), and written to ``.grad``.

**Representation-level methods** (``model.gradients: {method: ..., on: features}``): the
per-task gradients are taken with respect to the shared feature maps (the trunk's output, passed
to :meth:`MultiTaskObjective.forward`) through the heads only; the Gramian of that Jacobian is
summed over processes (each holds its own samples' columns), the weights come from it, and one
backward pass of the weighted features' gradient through the trunk gives the shared update.

**Losses after the step** (FAMO): the balancer may want each task's global mean loss after the
optimiser step, of the same batch (the module forwards it again, :meth:`end_batch`,
:meth:`after_step`) or of the next one; a step that the fp16 scaler skipped gives none.

**Mixed precision.** bf16 autocast needs nothing. With fp16 and a ``GradScaler``, per-task
gradients are taken of the scaled terms (no underflow), unscaled before aggregation, and written
back scaled, so the scaler's overflow check and unscaling see what a plain backward would give;
an overflow (inf) skips aggregation and reaches the scaler, which skips the step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from drivemtl.errors import DriveMTLError
from drivemtl.mtl.affinity import TaskAffinity
from drivemtl.mtl.balancing import Balancer, FixedWeights, build_balancer
from drivemtl.mtl.distributed import all_reduce_mean, all_reduce_sum, world_size
from drivemtl.mtl.forward import Representation
from drivemtl.mtl.gradients import GradientMethod, build_gradient_method


@dataclass
class _Step:
    """What :meth:`MultiTaskObjective.forward` leaves for the backward pass of the same batch."""

    terms: dict[str, Tensor]
    penalty: Tensor | float
    weights: Tensor
    jacobian: bool
    diagnose: bool
    representation: Representation | None


class MultiTaskObjective(nn.Module):
    """Balancing + gradient method + diagnostics for one list of tasks.

    Args:
        tasks: Task names (heads or ``head/class``), in a fixed order.
        balancer: The loss-balancing strategy (default: fixed weights 1).
        gradients: A gradient method for the shared parameters, or ``None`` (plain backward).
        diagnose_every: Log gradient cosines and accumulate the task affinity every this many
            optimiser steps; 0 turns diagnostics off.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        balancer: Balancer | None = None,
        gradients: GradientMethod | None = None,
        diagnose_every: int = 0,
    ):
        super().__init__()
        if diagnose_every < 0:
            raise ValueError(f"diagnose_every must be >= 0, got {diagnose_every}")
        self.tasks = list(tasks)
        self.balancer = balancer if balancer is not None else FixedWeights(self.tasks)
        self.gradients = gradients
        self.diagnose_every = diagnose_every
        self.affinity = TaskAffinity(self.tasks) if diagnose_every and len(self.tasks) > 1 else None
        self._pending: _Step | None = None
        self._seen: set[str] = set()
        self._step_scale: float | None = None  # the loss scale at the last optimiser step
        self._after_next_batch = False

    @property
    def wants_jacobian(self) -> bool:
        """Whether the pending batch needs per-task gradients (gradient method, diagnosis)."""
        return self._pending is not None and self._pending.jacobian

    @property
    def wants_features(self) -> bool:
        """Whether :meth:`forward` needs the shared feature maps (a representation-level method)."""
        return self.gradients is not None and self.gradients.on == "features"

    def discard(self) -> None:
        """Forget the pending batch (its backward was a plain one)."""
        self._pending = None

    def forward(
        self,
        losses: Mapping[str, tuple[Tensor, int]],
        penalty: Tensor | float = 0.0,
        *,
        step: int = 0,
        layer: Tensor | None = None,
        loss_scale: float = 1.0,
        representation: Representation | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss of one batch.

        Args:
            losses: ``{task: (loss, labelled count)}`` for every task (count 0: absent here).
            penalty: A regulariser that is not a task (soft sharing's); added after balancing.
            step: The optimiser step, for ``diagnose_every``.
            layer: The last shared layer's weight (GradNorm only).
            loss_scale: The fp16 gradient scaler's current scale (1 without one).
            representation: The shared feature maps, cut between the trunk and the heads
                (:func:`~drivemtl.mtl.forward.capture_features`; representation-level methods).

        Returns:
            The loss, and ``{"weight/<task>": weight}`` to log (when no gradient method is set;
            otherwise :meth:`backward` returns the weights actually applied).
        """
        names = self.tasks
        counts = [int(losses[n][1]) for n in names]
        world = world_size()
        balancer = self.balancer
        needs_means = balancer.needs_losses or balancer.needs_gradient_norms
        means = None
        if world > 1 or needs_means:
            means, global_counts = self._global_means(losses)
        else:
            global_counts = counts
        if self.wants_features and representation is None:
            raise ValueError(f"{self.gradients.key} needs the shared representation")

        scaled, idle = {}, []
        for name, count, total in zip(names, counts, global_counts):
            loss = losses[name][0]
            if total > 0:
                factor = world * count / total
                scaled[name] = loss if factor == 1 else loss * factor
            else:
                idle.append(loss)
        present = torch.tensor([c > 0 for c in global_counts])

        if balancer.needs_losses:
            if self._after_next_batch:  # the losses after the last step, on a new batch
                balancer.after_step(means.float(), torch.tensor(global_counts))
            self._after_next_batch = False
            balancer.observe(means.float(), torch.tensor(global_counts))
        weights = balancer.batch_weights().detach().clone()  # before any update of this batch
        terms = balancer.terms(scaled)
        if balancer.needs_gradient_norms and scaled and layer is not None:
            norms = self._layer_gradient_norms(scaled, layer, loss_scale)
            balancer.update(means.float(), norms, present)

        # Absent tasks' zero losses and the anchor keep every parameter in the graph, as DDP's
        # reducer needs; the Jacobian path does not use the reducer and skips them.
        keep = balancer.anchor() + sum(0.0 * loss for loss in idle)
        total_loss = sum(terms.values(), penalty + keep)
        if not isinstance(total_loss, Tensor):  # nothing at all requires a gradient
            total_loss = torch.tensor(float(total_loss))

        diagnose = self.affinity is not None and len(scaled) > 1 and step % self.diagnose_every == 0
        # The heads read a cut representation: only this path reaches the trunk, even for a
        # batch without any labelled entry.
        jacobian = bool(scaled) and (self.gradients is not None or diagnose) or self.wants_features
        cut = representation if self.wants_features else None
        self._pending = _Step(terms, penalty, weights, jacobian, diagnose, cut)
        self._seen.update(scaled)
        logs = {}
        if self.gradients is None:
            logs = {f"weight/{n}": weights[self.tasks.index(n)] for n in scaled}
        return total_loss, logs

    def _global_means(self, losses: Mapping[str, tuple[Tensor, int]]) -> tuple[Tensor, list]:
        """Each task's mean loss over its labelled entries on all processes, and their counts.

        One small all_reduce of the labelled counts and loss sums per task.
        """
        names = self.tasks
        device = losses[names[0]][0].device
        local = torch.tensor([int(losses[n][1]) for n in names], dtype=torch.float64, device=device)
        values = torch.stack([losses[n][0].detach().to(torch.float64) for n in names])
        stats = all_reduce_sum(torch.cat([local, values * local]))
        total_counts = stats[: len(names)]
        return stats[len(names) :] / total_counts.clamp(min=1), total_counts.tolist()

    def _layer_gradient_norms(
        self, losses: Mapping[str, Tensor], layer: Tensor, loss_scale: float
    ) -> Tensor:
        """||d loss_i / d layer|| of every task (0 for an absent one), averaged over processes."""
        rows = torch.zeros(len(self.tasks), layer.numel(), device=layer.device)
        for name, loss in losses.items():
            (grad,) = torch.autograd.grad(
                loss * loss_scale, layer, retain_graph=True, allow_unused=True
            )
            if grad is not None:
                rows[self.tasks.index(name)] = grad.reshape(-1).float()
        all_reduce_mean(rows)
        return rows.norm(dim=1) / loss_scale

    def backward(
        self,
        loss: Tensor,
        shared: Sequence[Tensor],
        others: Sequence[Tensor],
        *,
        loss_scale: float = 1.0,
        accumulate: int = 1,
    ) -> dict[str, Tensor | float]:
        """Fill ``.grad`` for the batch of the last :meth:`forward`.

        Without a gradient method (and off diagnostic steps) this is ``loss.backward()``.
        Otherwise each task's gradient is taken separately and the shared parameters get the
        aggregated update; ``.grad`` then holds ``loss_scale / accumulate`` times the update,
        as a plain backward of Lightning's (scaled, normalised) ``loss`` would.

        Args:
            loss: The loss Lightning passes to ``backward`` (scaled and normalised).
            shared: The shared parameters (``net.shared_parameters()``).
            others: Every other trainable parameter.
            loss_scale: The fp16 gradient scaler's scale (1 without one).
            accumulate: Lightning's ``accumulate_grad_batches`` (the loss is divided by it).

        Returns:
            Scalars to log: the weights applied (gradient methods) and the gradient cosines
            (diagnostic steps).
        """
        pending, self._pending = self._pending, None
        if pending is None or not pending.jacobian:
            loss.backward()
            return {}
        device = loss.device
        if pending.representation is not None:
            update, own, logs = self._features_update(pending, shared, others, loss_scale, device)
        else:
            update, own, logs = self._parameters_update(pending, shared, others, loss_scale, device)
        factor = loss_scale / accumulate
        _write_gradients(shared, update, factor)
        _write_gradients(others, own, factor)
        return logs

    def _parameters_update(
        self,
        pending: _Step,
        shared: Sequence[Tensor],
        others: Sequence[Tensor],
        loss_scale: float,
        device: torch.device,
    ) -> tuple[Tensor, Tensor, dict]:
        """The Jacobian on the shared parameters: one backward pass per task through it all.

        Returns the shared update and the other parameters' summed gradient (flat, unscaled,
        averaged over processes) and the logs.
        """
        names = list(pending.terms)
        m = len(names)
        n_shared = sum(p.numel() for p in shared)
        n_other = sum(p.numel() for p in others)
        penalty = pending.penalty
        has_penalty = isinstance(penalty, Tensor) and penalty.requires_grad
        # One flat buffer, so that DDP needs a single all_reduce: the task Jacobian on the
        # shared parameters (m x n_shared), the summed gradient of everything else, and the
        # penalty's gradient on the shared parameters (it is not a task: added after).
        buffer = torch.zeros(m * n_shared + n_other + has_penalty * n_shared, device=device)
        jacobian = buffer[: m * n_shared].view(m, n_shared)
        own = buffer[m * n_shared : m * n_shared + n_other]
        penalty_grad = buffer[m * n_shared + n_other :]
        objectives = [pending.terms[n] for n in names] + ([penalty] if has_penalty else [])
        params = [*shared, *others]
        for k, objective in enumerate(objectives):
            grads = torch.autograd.grad(
                objective * loss_scale,
                params,
                retain_graph=k < len(objectives) - 1,
                allow_unused=True,
            )
            _add_into(jacobian[k] if k < m else penalty_grad, shared, grads[: len(shared)])
            _add_into(own, others, grads[len(shared) :])
        if loss_scale != 1.0:
            buffer.div_(loss_scale)
        all_reduce_mean(buffer)

        # Everything a method needs is in the m x m Gramian; a non-finite entry anywhere in
        # the Jacobian (an fp16 overflow) shows there too.
        applied, logs = self._task_weights(pending, jacobian @ jacobian.T, n_shared > 0)
        update = applied @ jacobian
        if has_penalty:
            update += penalty_grad
        return update, own, logs

    def _features_update(
        self,
        pending: _Step,
        shared: Sequence[Tensor],
        others: Sequence[Tensor],
        loss_scale: float,
        device: torch.device,
    ) -> tuple[Tensor, Tensor, dict]:
        """The Jacobian on the shared feature maps: one backward pass per task through its head,
        then one of the weighted sum through the trunk. Returns what
        :meth:`_parameters_update` returns."""
        names = list(pending.terms)
        maps, inputs = pending.representation.maps, pending.representation.inputs
        n_shared = sum(p.numel() for p in shared)
        buffer = torch.zeros(n_shared + sum(p.numel() for p in others), device=device)
        trunk, own = buffer[:n_shared], buffer[n_shared:]
        per_task = []
        for name in names:
            grads = torch.autograd.grad(
                pending.terms[name] * loss_scale,
                [*inputs, *others],
                retain_graph=True,
                allow_unused=True,
            )
            per_task.append(grads[: len(inputs)])
            _add_into(own, others, grads[len(inputs) :])
        # One block of Jacobian columns per feature map that some head reads.
        used = [j for j in range(len(inputs)) if any(g[j] is not None for g in per_task)]
        blocks = [
            torch.stack(
                [
                    inputs[j].new_zeros(inputs[j].numel()) if g[j] is None else g[j].reshape(-1)
                    for g in per_task
                ]
            ).float()
            for j in used
        ]
        gramian = torch.zeros(len(names), len(names), device=device)
        for block in blocks:
            gramian += block @ block.T
        # Each process holds the columns of its own samples: the global Gramian is the sum of
        # the processes' Gramians, of gradients that the DDP loss factor made W times larger.
        world = world_size()
        gramian = all_reduce_mean(gramian).div_(world * loss_scale**2)
        applied, logs = self._task_weights(pending, gramian, bool(blocks))

        outputs = [maps[j] for j in used]
        grad_outputs = [
            (applied.to(block) @ block).view(maps[j].shape).to(maps[j].dtype)
            for j, block in zip(used, blocks)
        ]
        penalty = pending.penalty
        if isinstance(penalty, Tensor) and penalty.requires_grad:
            outputs.append(penalty)
            grad_outputs.append(torch.full_like(penalty, loss_scale))
        if outputs and shared:  # the one backward pass through the trunk
            grads = torch.autograd.grad(outputs, list(shared), grad_outputs, allow_unused=True)
            _add_into(trunk, shared, grads)
        if loss_scale != 1.0:
            buffer.div_(loss_scale)
        all_reduce_mean(buffer)
        return trunk, own, logs

    def _task_weights(
        self, pending: _Step, gramian: Tensor, has_columns: bool
    ) -> tuple[Tensor, dict[str, Tensor | float]]:
        """The weight of each present task's gradient, from the (global) Gramian, and the logs:
        the method's, or 1 each without a method or when the Gramian is not finite (an fp16
        overflow, which then reaches the scaler)."""
        names = list(pending.terms)
        finite = has_columns and bool(torch.isfinite(gramian).all())
        logs: dict[str, Tensor | float] = {}
        if pending.diagnose and finite:
            cosines = self.affinity.update_from_gramian(gramian, names)
            logs.update({f"cos/{k}": v for k, v in cosines.items()})
        applied = gramian.new_ones(len(names))
        if self.gradients is not None and finite:
            applied = self.gradients.weights(gramian)
            index = [self.tasks.index(n) for n in names]
            effective = pending.weights.to(applied)[index] * applied
            logs.update({f"weight/{n}": effective[k] for k, n in enumerate(names)})
        return applied, logs

    def before_optimizer_step(self, loss_scale: float = 1.0) -> None:
        """Keep the optimiser off the parameters of tasks absent since the last step.

        Args:
            loss_scale: The fp16 scaler's scale now; a lower one after the step means that the
                scaler skipped it (an overflow), see :meth:`end_batch`.
        """
        self.balancer.freeze(self._seen)
        self._seen = set()
        self._step_scale = loss_scale

    def end_batch(self, loss_scale: float = 1.0) -> bool:
        """At the end of a training batch: whether the balancer wants this batch's losses again,
        computed now that the optimiser has stepped, for :meth:`after_step`.

        Args:
            loss_scale: The fp16 scaler's scale now (1 without one).
        """
        stepped = self._step_scale is not None and loss_scale >= self._step_scale
        self._step_scale = None
        mode = self.balancer.losses_after_step
        self._after_next_batch = stepped and mode == "next_batch"
        return stepped and mode == "same_batch"

    def after_step(self, losses: Mapping[str, tuple[Tensor, int]]) -> None:
        """The losses of the step's batch after the step (see :meth:`end_batch`)."""
        means, counts = self._global_means(losses)
        self.balancer.after_step(means.float(), torch.tensor(counts))

    def on_train_epoch_start(self) -> None:
        self.balancer.on_train_epoch_start()

    def weighted_sum(self, losses: Mapping[str, tuple[Tensor, int]]) -> Tensor:
        """Sum of the current weights times the losses of present tasks (validation's loss)."""
        weights = self.balancer.weights().tolist()
        total = 0.0
        for name, (loss, count) in losses.items():
            if count > 0:
                total = total + weights[self.tasks.index(name)] * loss
        return total if isinstance(total, Tensor) else torch.tensor(total)


def build_objective(
    tasks: Sequence[str],
    loss_weights: Mapping[str, float] | None = None,
    balancing: str | Mapping | None = None,
    gradients: str | Mapping | None = None,
    diagnose_every: int = 0,
    default_weights: Mapping[str, float] | None = None,
) -> MultiTaskObjective:
    """The objective from the module's plain-data options (see ``MultiTaskModule``).

    ``default_weights``: the fixed weight of each task ``loss_weights`` does not name.

    Raises:
        DriveMTLError: For a bad method, option or ``diagnose_every``.
    """
    if diagnose_every < 0:
        raise DriveMTLError(f"model.diagnose_every must be >= 0 (0: off), got {diagnose_every}.")
    balancer = build_balancer(balancing, tasks, loss_weights, default_weights)
    method = build_gradient_method(gradients)
    if balancer.needs_gradient_norms and method is not None and method.on == "features":
        raise DriveMTLError(
            "model.balancing gradnorm measures each task's gradient on the last shared layer, "
            "which on: features keeps out of the per-task passes; use on: parameters, or "
            "another balancing (famo, dwa, uncertainty)."
        )
    return MultiTaskObjective(tasks, balancer, method, diagnose_every)


def _add_into(flat: Tensor, params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    """Add each gradient to its parameter's slice of ``flat`` (the parameters end to end)."""
    offset = 0
    for p, g in zip(params, grads):
        size = p.numel()
        if g is not None:
            flat[offset : offset + size].view(p.shape).add_(g)  # one strided pass, any layout
        offset += size


def _write_gradients(params: Sequence[Tensor], flat: Tensor, factor: float) -> None:
    """Add ``factor`` times each parameter's slice of ``flat`` to its ``.grad``."""
    offset = 0
    for p in params:
        size = p.numel()
        g = flat[offset : offset + size].view(p.shape)
        offset += size
        if p.grad is None:
            p.grad = torch.empty_like(p).copy_(g).mul_(factor)  # keeps p's layout
        else:
            p.grad.add_(g, alpha=factor)
