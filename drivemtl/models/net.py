"""The multi-task network: a trunk (a sharing strategy over the backbone), one head per task."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from drivemtl.models.sharing import Trunk

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MultiTaskNet(nn.Module):
    """A trunk that gives each task its feature maps, and one head per task.

    Takes uint8 (or [0, 1] float) images and normalises them itself, so the normalisation
    travels with the weights.

    Args:
        trunk: A sharing strategy (:mod:`drivemtl.models.sharing`); with hard sharing the
            backbone runs once per batch and feeds every head.
        heads: One module per task, each taking its task's list of feature maps.
        mean: Per-channel normalisation mean, on the [0, 1] scale.
        std: Per-channel normalisation std.
    """

    def __init__(
        self,
        trunk: Trunk,
        heads: Mapping[str, nn.Module],
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ):
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleDict(heads)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        return (images - self.mean) / self.std

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        features = self.trunk(self.normalize(images))
        return {name: head(features[name]) for name, head in self.heads.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task's loss reaches: what gradient methods combine task gradients on."""
        return [p for p in self.trunk.shared_parameters() if p.requires_grad]

    def sharing_penalty(self) -> Tensor:
        """A regulariser the sharing strategy adds to the loss (zero for hard sharing)."""
        return self.trunk.penalty()
