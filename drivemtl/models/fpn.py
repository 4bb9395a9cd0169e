"""A light FPN-style top-down decoder: the trunk's four levels merged into one stride-4 map.

Shared by the dense heads (depth, segmentation): each adds its own prediction layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class FPNDecoder(nn.Module):
    """Top-down over strides 32 -> 4: each level projected to ``width`` channels, the coarser
    map upsampled and added, and a 3x3 convolution mixing them.

    Subclasses call :meth:`merge` in their ``forward`` and add their own layers on its output.

    Args:
        in_channels: Channels of the backbone's feature maps, stride 4 to 32.
        width: Channels of the decoder.
    """

    def __init__(self, in_channels: Sequence[int], width: int = 64):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.smooth = nn.ModuleList(conv_bn_relu(width, width) for _ in in_channels[:-1])

    def merge(self, features: list[Tensor]) -> Tensor:
        """(B, width, H/4, W/4) from the stride-4..32 feature maps."""
        x = self.lateral[-1](features[-1])
        for level in range(len(features) - 2, -1, -1):
            skip = self.lateral[level](features[level])
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.smooth[level](x + skip)
        return x
