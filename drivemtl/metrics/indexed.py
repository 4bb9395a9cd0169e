"""The count-once rule shared by every task metric: rows keyed by dataset index.

A distributed sampler pads the shorter ranks with repeated samples so that every process runs
the same number of steps. A metric that stored its rows blindly would count those images twice.
Each metric here stores, beside its rows, the dataset index of each image; after torchmetrics
has gathered every process's states, only the first row of each index is used.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def cat_state(state: list[Tensor] | Tensor) -> Tensor:
    """A list state as one tensor (torchmetrics leaves it a list, or one tensor after a sync)."""
    return torch.cat(state) if isinstance(state, list) else state


class IndexedMetric(Metric):
    """A torchmetrics ``Metric`` whose images count once, whatever the padding and the ranks.

    Subclasses add their own ``cat`` list states, call :meth:`add_index` with each batch's
    dataset indices in ``update`` and read their rows through :meth:`first_rows`.
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("index", default=[], dist_reduce_fx="cat")

    def add_index(self, index: Tensor, device: torch.device | None = None) -> None:
        """Record the dataset index of each image of a batch, in the order of its rows."""
        self.index.append(index.detach().long().reshape(-1).to(device or self.device))

    def first_rows(self) -> Tensor:
        """Row positions of each dataset index's first image, ordered by dataset index."""
        if isinstance(self.index, list) and not self.index:
            return torch.zeros(0, dtype=torch.long, device=self.device)
        index = cat_state(self.index)
        order = torch.argsort(index, stable=True)
        first = torch.ones_like(order, dtype=torch.bool)
        first[1:] = index[order][1:] != index[order][:-1]
        return order[first]
