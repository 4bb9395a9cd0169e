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
from drivemtl.mtl.gradients import GradientMethod, build_gradient_method


@dataclass
class _Step:
    """What :meth:`MultiTaskObjective.forward` leaves for the backward pass of the same batch."""

    terms: dict[str, Tensor]
    penalty: Tensor | float
    weights: Tensor
    jacobian: bool
    diagnose: bool


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

    @property
    def wants_jacobian(self) -> bool:
        """Whether the pending batch needs per-task gradients (gradient method, diagnosis)."""
        return self._pending is not None and self._pending.jacobian

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
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss of one batch.

        Args:
            losses: ``{task: (loss, labelled count)}`` for every task (count 0: absent here).
            penalty: A regulariser that is not a task (soft sharing's); added after balancing.
            step: The optimiser step, for ``diagnose_every``.
            layer: The last shared layer's weight (GradNorm only).
            loss_scale: The fp16 gradient scaler's current scale (1 without one).

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
            # One small all_reduce: global labelled counts and loss sums per task.
            device = losses[names[0]][0].device
            local = torch.tensor(counts, dtype=torch.float64, device=device)
            values = torch.stack([losses[n][0].detach().to(torch.float64) for n in names])
            stats = all_reduce_sum(torch.cat([local, values * local]))
            total_counts = stats[: len(names)]
            means = stats[len(names) :] / total_counts.clamp(min=1)
            global_counts = total_counts.tolist()
        else:
            global_counts = counts

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
            balancer.observe(means.float(), torch.tensor(global_counts))
        weights = balancer.weights().detach().clone()  # before any update of this batch
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
        jacobian = bool(scaled) and (self.gradients is not None or diagnose)
        self._pending = _Step(terms, penalty, weights, jacobian, diagnose)
        self._seen.update(scaled)
        logs = {}
        if self.gradients is None:
            logs = {f"weight/{n}": weights[self.tasks.index(n)] for n in scaled}
        return total_loss, logs

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
        names = list(pending.terms)
        m = len(names)
        shared_sizes = [p.numel() for p in shared]
        other_sizes = [p.numel() for p in others]
        n_shared, n_other = sum(shared_sizes), sum(other_sizes)
        penalty = pending.penalty
        has_penalty = isinstance(penalty, Tensor) and penalty.requires_grad
        # One flat buffer, so that DDP needs a single all_reduce: the task Jacobian on the
        # shared parameters (m x n_shared), the summed gradient of everything else, and the
        # penalty's gradient on the shared parameters (it is not a task: added after).
        buffer = torch.empty(m * n_shared + n_other + has_penalty * n_shared, device=loss.device)
        jacobian = buffer[: m * n_shared].view(m, n_shared)
        rest = buffer[m * n_shared :]
        rest.zero_()
        own = rest[:n_other]
        penalty_grad = rest[n_other:]
        objectives = [pending.terms[n] for n in names] + ([penalty] if has_penalty else [])
        params = [*shared, *others]
        for k, objective in enumerate(objectives):
            grads = torch.autograd.grad(
                objective * loss_scale,
                params,
                retain_graph=k < len(objectives) - 1,
                allow_unused=True,
            )
            row = jacobian[k] if k < m else penalty_grad
            offset = 0
            for p, g, size in zip(shared, grads, shared_sizes):
                target = row[offset : offset + size].view(p.shape)
                if g is None:
                    target.zero_()
                else:
                    target.copy_(g)  # one strided copy, whatever p's layout
                offset += size
            offset = 0
            for p, g, size in zip(others, grads[len(shared) :], other_sizes):
                if g is not None:
                    own[offset : offset + size].view(p.shape).add_(g)
                offset += size
        if loss_scale != 1.0:
            buffer.div_(loss_scale)
        all_reduce_mean(buffer)

        # Everything a method needs is in the m x m Gramian; a non-finite entry anywhere in
        # the Jacobian (an fp16 overflow) shows there too.
        gramian = jacobian @ jacobian.T
        finite = n_shared > 0 and bool(torch.isfinite(gramian).all())
        logs: dict[str, Tensor | float] = {}
        if pending.diagnose and finite:
            cosines = self.affinity.update_from_gramian(gramian, names)
            logs.update({f"cos/{k}": v for k, v in cosines.items()})
        applied = jacobian.new_ones(m)
        if self.gradients is not None and finite:
            applied = self.gradients.weights(gramian)
            index = [self.tasks.index(n) for n in names]
            effective = pending.weights.to(applied)[index] * applied
            logs.update({f"weight/{n}": effective[k] for k, n in enumerate(names)})

        factor = loss_scale / accumulate
        update = applied @ jacobian
        if has_penalty:
            update += penalty_grad
        for params_, flat, sizes in ((shared, update, shared_sizes), (others, own, other_sizes)):
            offset = 0
            for p, size in zip(params_, sizes):
                g = flat[offset : offset + size].view(p.shape)
                offset += size
                if p.grad is None:
                    p.grad = torch.empty_like(p).copy_(g).mul_(factor)  # keeps p's layout
                else:
                    p.grad.add_(g, alpha=factor)
        return logs

    def before_optimizer_step(self) -> None:
        """Keep the optimiser off the parameters of tasks absent since the last step."""
        self.balancer.freeze(self._seen)
        self._seen = set()

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
) -> MultiTaskObjective:
    """The objective from the module's plain-data options (see ``MultiTaskModule``).

    Raises:
        DriveMTLError: For a bad method, option or ``diagnose_every``.
    """
    if diagnose_every < 0:
        raise DriveMTLError(f"model.diagnose_every must be >= 0 (0: off), got {diagnose_every}.")
    return MultiTaskObjective(
        tasks,
        build_balancer(balancing, tasks, loss_weights),
        build_gradient_method(gradients),
        diagnose_every,
    )
