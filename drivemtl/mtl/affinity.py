"""Task-conflict diagnostics: gradient cosines, a task-affinity matrix, and a suggested grouping.

Every ``model.diagnose_every`` training steps, the cosine similarity between every two tasks'
gradients on the shared parameters is logged (``train/cos/<a>~<b>``): a negative value means that
a step for one task is, to first order, a step against the other (negative transfer). The
affinity of two tasks over a run is the **mean of these cosines** over the diagnosed steps where
both tasks had labelled entries. (It is not the lookahead inter-task affinity of Fifty et al.,
2021, which needs an extra forward pass per task pair.)

The suggested grouping is the partition of the tasks into networks that maximises the total
within-group affinity (the sum of the affinities of every two tasks trained together; singletons
score 0), so that tasks with positive affinity share a network and tasks that conflict do not.
Up to 8 tasks every partition is scored; above that, groups are merged greedily while a merge
raises the total. Ties go to fewer networks.
"""

from __future__ import annotations

import itertools
import json
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

DEFINITION = (
    "mean cosine similarity between the two tasks' gradients on the shared parameters, over the "
    "diagnosed training steps where both tasks had labelled entries"
)
GROUPING_RULE = (
    "partition of the tasks maximising the sum of within-group pairwise affinities (undefined "
    "affinities count 0; ties go to fewer groups)"
)
EXHAUSTIVE_MAX_TASKS = 8


class TaskAffinity:
    """Accumulates gradient cosines between tasks over training.

    Args:
        tasks: Task names, in the order of the Jacobian rows given to :meth:`update`.
    """

    def __init__(self, tasks: Sequence[str]):
        self.tasks = list(tasks)
        m = len(self.tasks)
        self.sums = torch.zeros(m, m, dtype=torch.float64)
        self.counts = torch.zeros(m, m, dtype=torch.long)

    def update(self, jacobian: Tensor, names: Sequence[str]) -> dict[str, float]:
        """Add one step's cosines, from the gradients ``jacobian`` (k, n) of tasks ``names``."""
        return self.update_from_gramian(jacobian.float() @ jacobian.float().T, names)

    def update_from_gramian(self, gramian: Tensor, names: Sequence[str]) -> dict[str, float]:
        """Add one step's cosines.

        Args:
            gramian: (k, k) inner products of the gradients of the tasks ``names`` (a subset of
                :attr:`tasks`).
            names: The task of each row.

        Returns:
            ``{"<a>~<b>": cosine}`` for every pair whose gradients are both non-zero.
        """
        cos = cosine_from_gramian(gramian).cpu().double()
        index = [self.tasks.index(n) for n in names]
        out = {}
        for a, b in itertools.combinations(range(len(names)), 2):
            value = float(cos[a, b])
            if math.isnan(value):
                continue  # a zero gradient has no direction
            i, j = sorted((index[a], index[b]))
            self.sums[i, j] += value
            self.counts[i, j] += 1
            out[f"{self.tasks[i]}~{self.tasks[j]}"] = value
        return out

    def matrix(self) -> Tensor:
        """(m, m) mean cosines, symmetric, 1 on the diagonal, NaN for a pair never seen."""
        # Only the upper triangle accumulates, so adding the transpose mirrors it.
        counts = self.pair_counts()
        sums = self.sums + self.sums.T
        mean = torch.where(counts > 0, sums / counts.clamp(min=1), math.nan)
        mean.fill_diagonal_(1.0)
        return mean

    def pair_counts(self) -> Tensor:
        """(m, m) symmetric number of steps behind each affinity."""
        return self.counts + self.counts.T

    def state_dict(self) -> dict:
        return {"tasks": self.tasks, "sums": self.sums.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict) -> bool:
        """Restore a saved state; returns False (and keeps this one) for another task list."""
        if list(state.get("tasks", [])) != self.tasks:
            return False
        self.sums = state["sums"].clone().double()
        self.counts = state["counts"].clone().long()
        return True


def cosine_from_gramian(gramian: Tensor) -> Tensor:
    """(k, k) cosines from the Gramian of k vectors; NaN where a vector is zero."""
    gramian = gramian.double()
    norms = torch.diagonal(gramian).clamp(min=0).sqrt()
    cos = (gramian / (norms[:, None] * norms[None, :])).clamp(-1.0, 1.0)
    zero = norms == 0
    return cos.masked_fill(zero[:, None] | zero[None, :], math.nan)


def cosine_matrix(rows: Tensor) -> Tensor:
    """(k, k) cosine similarity of the rows of ``rows``; NaN where a row is zero."""
    rows = rows.double()
    return cosine_from_gramian(rows @ rows.T)


def _partitions(n: int):
    """Every partition of range(n), as restricted growth strings (a group index per task)."""
    labels = [0] * n

    def fill(i: int, used: int):
        if i == n:
            yield tuple(labels)
            return
        for g in range(used + 1):
            labels[i] = g
            yield from fill(i + 1, max(used, g + 1))

    if n == 0:
        yield ()
        return
    labels[0] = 0
    yield from fill(1, 1)


def _score(affinity: Tensor, groups: list[list[int]]) -> float:
    return float(sum(affinity[i, j] for g in groups for i, j in itertools.combinations(g, 2)))


def suggest_groups(affinity: Tensor, tasks: Sequence[str]) -> tuple[list[list[str]], float]:
    """The grouping of tasks into networks with the highest total within-group affinity.

    Args:
        affinity: (m, m) symmetric affinities; NaN (undefined) counts as 0.
        tasks: Task names.

    Returns:
        The groups (each in task order, groups ordered by their first task) and their score.
    """
    a = torch.as_tensor(affinity, dtype=torch.float64).nan_to_num(0.0)
    m = len(tasks)
    if m <= EXHAUSTIVE_MAX_TASKS:
        best, best_key = None, None
        for labels in _partitions(m):
            groups = [[i for i in range(m) if labels[i] == g] for g in range(max(labels) + 1)]
            score = _score(a, groups)
            key = (round(score, 12), -len(groups))  # rounding: ties are ties
            if best_key is None or key > best_key:
                best, best_key = groups, key
        groups = best
    else:
        groups = [[i] for i in range(m)]
        while True:
            gains = [
                (float(a[g][:, h].sum()), x, y)
                for (x, g), (y, h) in itertools.combinations(enumerate(groups), 2)
            ]
            gain, x, y = max(gains, default=(-1.0, 0, 0))
            if gain < 0:
                break
            groups[x] = sorted(groups[x] + groups[y])
            del groups[y]
    groups = sorted(groups, key=lambda g: g[0])
    return [[tasks[i] for i in g] for g in groups], _score(a, groups)


def affinity_report(affinity: TaskAffinity, every: int) -> dict:
    """The content of ``task_affinity.json``."""
    matrix = affinity.matrix()
    groups, score = suggest_groups(matrix, affinity.tasks)
    counts = affinity.pair_counts()
    tasks = affinity.tasks

    def cell(value: float):
        return None if math.isnan(value) else round(value, 6)

    negative = [
        {"tasks": [tasks[i], tasks[j]], "affinity": round(float(matrix[i, j]), 6)}
        for i, j in itertools.combinations(range(len(tasks)), 2)
        if float(matrix[i, j]) < 0
    ]
    return {
        "definition": DEFINITION,
        "diagnose_every": every,
        "tasks": tasks,
        "affinity": [[cell(float(v)) for v in row] for row in matrix],
        "steps": counts.tolist(),
        "grouping": {"rule": GROUPING_RULE, "groups": groups, "score": round(score, 6)},
        "negative_pairs": sorted(negative, key=lambda p: p["affinity"]),
    }


def write_affinity(report: dict, folder: str | Path) -> tuple[Path, Path]:
    """Write ``task_affinity.json`` and the heat map ``task_affinity.png`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "task_affinity.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    png_path = folder / "task_affinity.png"
    plot_affinity(report, png_path)
    return json_path, png_path


def plot_affinity(report: dict, path: str | Path) -> None:
    """Heat map of the affinity matrix (red: conflict, blue: agreement), values written in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = report["tasks"]
    values = np.array(
        [[np.nan if v is None else v for v in row] for row in report["affinity"]], dtype=float
    )
    size = 1.5 + 0.9 * len(tasks)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu", vmin=-1, vmax=1)
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    for i in range(len(tasks)):
        for j in range(len(tasks)):
            text = "-" if np.isnan(values[i, j]) else f"{values[i, j]:.2f}"
            dark = not np.isnan(values[i, j]) and abs(values[i, j]) > 0.6
            ax.text(j, i, text, ha="center", va="center", color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label="mean gradient cosine")
    networks = [f"[{', '.join(g)}]" for g in report["grouping"]["groups"]]
    lines = textwrap.wrap("suggested networks: " + " ".join(networks), width=60)
    ax.set_title("\n".join(["Task affinity", *lines]), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
