"""Parameter-sharing strategies: how the tasks' feature extractors relate to each other.

Every strategy is a trunk that maps normalised images to one list of feature maps (strides 4,
8, 16, 32, as many as the task reads) per task, so any head works with any strategy:

- ``hard`` (default): one backbone for all tasks.
- ``partial``: the first ``k`` backbone stages are shared, each task has its own copy of the
  rest; ``k`` per task, so tasks branch at different depths.
- ``soft``: one backbone per task, tied by an L2 penalty between corresponding parameters
  (Duong et al. 2015).
- ``mmoe``: multi-gate mixture of experts (Ma et al. 2018): ``k`` shared stem stages, then
  ``experts`` copies of the remaining stages; each task mixes the experts' feature maps with
  a softmax gate computed from the stem's pooled features.

Copies start from the same weights as the shared backbone (identical initialisation), so a
soft-sharing penalty starts at zero and a ``weights`` file initialises every copy.

A task may read fewer than the four stages (detection on strides 4-16 by default); a stage that
no task's head reads is neither built nor run, so every parameter takes part in the loss (as
DDP requires), and each task receives at least the maps it reads.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from drivemtl.errors import DriveMTLError
from drivemtl.models.backbones import Backbone

NUM_STAGES = 4


class Trunk(nn.Module, ABC):
    """Images to per-task feature maps.

    Args:
        backbone: The backbone whose stages the strategy shares, copies or trims.
        tasks: Task names (each reads all four stages), or how many stages, from the first,
            each task reads (``Task.stages_read``).

    Attributes:
        channels: Channels of the backbone's four feature maps (a task receives the first
            ``reads[task]`` of them, or more).
        tasks: Task names, in order.
        reads: Stages read, per task.
    """

    def __init__(self, backbone: Backbone, tasks: Sequence[str] | Mapping[str, int]):
        super().__init__()
        self.channels = list(backbone.channels)
        reads = tasks if isinstance(tasks, Mapping) else dict.fromkeys(tasks, NUM_STAGES)
        for name, n in reads.items():
            if not 1 <= n <= NUM_STAGES:
                raise ValueError(f"task {name!r} reads {n} stages; a trunk has 1 to 4")
        self.reads = dict(reads)
        self.tasks = list(reads)

    @abstractmethod
    def forward(self, x: Tensor) -> dict[str, list[Tensor]]:
        """Each task's feature maps, from stride 4: at least the ``reads[task]`` it reads."""

    @abstractmethod
    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters that every task's loss reaches (empty when no parameter is shared)."""

    def penalty(self) -> Tensor:
        """A regulariser added to the training loss; zero unless the strategy ties copies."""
        return next(self.parameters()).new_zeros(())

    @abstractmethod
    def backbone_stages(self) -> list[tuple[int, nn.Module]]:
        """Every backbone stage module of the trunk, copies included, with its index 0-3
        (what fine-tuning freezes or trains at a smaller learning rate)."""


class HardSharing(Trunk):
    """One backbone, run once, whose features feed every head."""

    def __init__(self, backbone: Backbone, tasks: Sequence[str] | Mapping[str, int]):
        super().__init__(backbone, tasks)
        del backbone.stages[max(self.reads.values()) :]
        self.backbone = backbone

    def forward(self, x: Tensor) -> dict[str, list[Tensor]]:
        features = self.backbone(x)
        return dict.fromkeys(self.tasks, features)

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def backbone_stages(self) -> list[tuple[int, nn.Module]]:
        return list(enumerate(self.backbone.stages))


class PartialSharing(Trunk):
    """The first ``branch[task]`` stages shared, a private copy of the remaining ones per task.

    Args:
        backbone: The backbone whose stages are shared or copied.
        tasks: Task names.
        branch: Shared stages per task, 0 (a separate network) to 4 (hard sharing);
            tasks left out share all four.
    """

    def __init__(
        self,
        backbone: Backbone,
        tasks: Sequence[str] | Mapping[str, int],
        branch: Mapping[str, int] | None = None,
    ):
        super().__init__(backbone, tasks)
        branch = dict(branch or {})
        unknown = sorted(set(branch) - set(self.tasks))
        if unknown:
            raise ValueError(f"partial sharing: branch names tasks not trained: {unknown}")
        for name, k in branch.items():
            if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= NUM_STAGES:
                raise ValueError(f"partial sharing: branch[{name!r}] must be 0 to 4, got {k!r}")
        self.branch = {t: branch.get(t, NUM_STAGES) for t in self.tasks}
        # A task's private copy ends at the last stage it reads (none when it branches later);
        # the shared stages end at the last one some task reads before branching.
        self.private = nn.ModuleDict(
            {t: copy.deepcopy(backbone.stages[k : self.reads[t]]) for t, k in self.branch.items()}
        )
        self.shared = backbone.stages[: max(self._shared_read(t) for t in self.tasks)]

    def _shared_read(self, task: str) -> int:
        """How many shared stages the task reads."""
        return min(self.branch[task], self.reads[task])

    def forward(self, x: Tensor) -> dict[str, list[Tensor]]:
        shared = []
        h = x
        for stage in self.shared:
            h = stage(h)
            shared.append(h)
        out = {}
        for task in self.tasks:
            features = shared[: self._shared_read(task)]
            h = features[-1] if features else x
            for stage in self.private[task]:
                h = stage(h)
                features = [*features, h]
            out[task] = features
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        reached_by_all = min(self.branch.values())
        return [p for stage in self.shared[:reached_by_all] for p in stage.parameters()]

    def backbone_stages(self) -> list[tuple[int, nn.Module]]:
        private = [
            (k + j, stage)
            for task, k in self.branch.items()
            for j, stage in enumerate(self.private[task])
        ]
        return list(enumerate(self.shared)) + private


class SoftSharing(Trunk):
    """One backbone per task; ``weight`` times the summed squared distance of every pair.

    Args:
        backbone: Copied once per task.
        tasks: Task names.
        weight: Strength of the L2 penalty between corresponding parameters.
    """

    def __init__(
        self, backbone: Backbone, tasks: Sequence[str] | Mapping[str, int], weight: float = 1e-3
    ):
        super().__init__(backbone, tasks)
        if weight < 0:
            raise ValueError(f"soft sharing: weight must be >= 0, got {weight}")
        self.weight = float(weight)
        self.backbones = nn.ModuleDict({t: copy.deepcopy(backbone) for t in self.tasks})
        for task, net in self.backbones.items():
            del net.stages[self.reads[task] :]

    def forward(self, x: Tensor) -> dict[str, list[Tensor]]:
        return {task: net(x) for task, net in self.backbones.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return []

    def backbone_stages(self) -> list[tuple[int, nn.Module]]:
        return [(i, s) for net in self.backbones.values() for i, s in enumerate(net.stages)]

    def penalty(self) -> Tensor:
        nets = list(self.backbones.values())
        total = next(self.parameters()).new_zeros(())
        for i, a in enumerate(nets):
            for b in nets[i + 1 :]:
                # Parameters come stage by stage, so a copy that stops earlier pairs its own.
                for p, q in zip(a.parameters(), b.parameters()):
                    total = total + (p - q).pow(2).sum()
        return self.weight * total


class MixtureOfExperts(Trunk):
    """Multi-gate mixture of experts over a shared stem.

    Args:
        backbone: Its first ``stem_stages`` stages form the shared stem; the rest is copied
            into each expert.
        tasks: Task names; each gets its own gate.
        experts: Number of experts.
        stem_stages: Stages in the shared stem, 1 to 3 (the gate reads the stem's output).
    """

    def __init__(
        self,
        backbone: Backbone,
        tasks: Sequence[str] | Mapping[str, int],
        experts: int = 3,
        stem_stages: int = 1,
    ):
        super().__init__(backbone, tasks)
        if isinstance(experts, bool) or not isinstance(experts, int) or experts < 1:
            raise ValueError(f"mmoe: experts must be a positive integer, got {experts!r}")
        if not 1 <= stem_stages <= NUM_STAGES - 1:
            raise ValueError(f"mmoe: stem_stages must be 1 to 3, got {stem_stages!r}")
        deepest = max(self.reads.values())
        self.stem = backbone.stages[: min(stem_stages, deepest)]
        self.experts = nn.ModuleList(
            [copy.deepcopy(backbone.stages[stem_stages:deepest]) for _ in range(experts)]
        )
        # A task that reads the stem only mixes no expert, and has no gate.
        gated = [t for t in self.tasks if self.reads[t] > stem_stages]
        self.gates = nn.ModuleDict(
            {t: nn.Linear(self.channels[stem_stages - 1], experts) for t in gated}
        )

    def gate_weights(self, stem_output: Tensor) -> dict[str, Tensor]:
        """Per task, (B, experts) softmax weights from the stem's globally pooled features."""
        pooled = stem_output.mean(dim=(2, 3)).float()
        return {t: torch.softmax(gate(pooled), dim=1) for t, gate in self.gates.items()}

    def forward(self, x: Tensor) -> dict[str, list[Tensor]]:
        stem = []
        for stage in self.stem:
            x = stage(x)
            stem.append(x)
        per_expert = []  # per_expert[e][j]: expert e's j-th feature map
        for expert in self.experts:
            h, maps = x, []
            for stage in expert:
                h = stage(h)
                maps.append(h)
            per_expert.append(maps)
        out = {t: stem[: self.reads[t]] for t in self.tasks}
        for task, weights in self.gate_weights(x).items():
            mixed = []
            for j in range(self.reads[task] - len(stem)):
                stacked = torch.stack([maps[j] for maps in per_expert], dim=1)  # (B, E, C, H, W)
                w = weights.to(stacked.dtype).view(*weights.shape, 1, 1, 1)
                mixed.append((w * stacked).sum(dim=1))
            out[task] = stem + mixed
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.stem.parameters()) + list(self.experts.parameters())

    def backbone_stages(self) -> list[tuple[int, nn.Module]]:
        n = len(self.stem)
        copies = [(n + j, stage) for expert in self.experts for j, stage in enumerate(expert)]
        return list(enumerate(self.stem)) + copies


SHARING: dict[str, type[Trunk]] = {
    "hard": HardSharing,
    "partial": PartialSharing,
    "soft": SoftSharing,
    "mmoe": MixtureOfExperts,
}


def build_trunk(
    spec: Mapping[str, Mapping | None] | None,
    backbone: Backbone,
    tasks: Sequence[str] | Mapping[str, int],
) -> Trunk:
    """The trunk named by the config's ``{strategy: {option: value}}`` (default: hard sharing).

    Args:
        spec: ``model.sharing``.
        backbone: Shared, copied or trimmed by the strategy.
        tasks: Task names, or the stages each task reads (see :class:`Trunk`).
    """
    spec = dict(spec or {"hard": {}})
    if len(spec) != 1:
        raise DriveMTLError(
            f"model.sharing names one strategy, e.g. {{partial: {{branch: {{depth: 2}}}}}}; "
            f"got {sorted(spec)}. Strategies: {sorted(SHARING)}."
        )
    ((name, options),) = spec.items()
    if name not in SHARING:
        raise DriveMTLError(f"Unknown sharing strategy {name!r}; known: {sorted(SHARING)}.")
    try:
        return SHARING[name](backbone, tasks, **(options or {}))
    except (TypeError, ValueError) as e:
        raise DriveMTLError(f"Bad options for sharing strategy {name!r}: {e}") from None
