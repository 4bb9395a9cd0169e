"""Backbones by name, from a registry of providers, as four feature stages (strides 4-32).

``model.backbone`` is ``<provider>/<name>`` or a plain torchvision name:

- ``resnet18``, ``torchvision/convnext_tiny``: torchvision classifiers
  (:mod:`drivemtl.models.torchvision_backbones`);
- ``timm/tf_efficientnet_lite0``, ``timm/resnet50d``: timm models
  (:mod:`drivemtl.models.timm_backbones`).

A provider builds the classifier, loads ``weights`` into it (its own named weights or tags, or
a local state-dict file), cuts it into four stages and says which normalisation its weights
expect. A new source of backbones is one class with ``build`` and ``names`` and one entry in
:data:`PROVIDERS`.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from drivemtl.errors import DriveMTLError
from drivemtl.models.timm_backbones import TimmBackbones
from drivemtl.models.torchvision_backbones import TorchvisionBackbones

Stats = tuple[float, float, float]


class BackboneProvider(Protocol):
    def build(self, name: str, weights: str | None) -> tuple[list[nn.Module], Stats, Stats]:
        """The four stages, and the normalisation mean and std ([0, 1] scale)."""

    def names(self) -> list[str]:
        """The backbone names this provider offers."""


PROVIDERS: dict[str, BackboneProvider] = {
    "torchvision": TorchvisionBackbones(),
    "timm": TimmBackbones(),
}
DEFAULT_PROVIDER = "torchvision"


def split_name(spec: str) -> tuple[str, str]:
    """``(provider, name)`` of a ``model.backbone`` value."""
    provider, slash, name = str(spec).partition("/")
    if not slash:
        return DEFAULT_PROVIDER, spec
    if provider not in PROVIDERS or not name:
        raise DriveMTLError(
            f"model.backbone {spec!r}: use <provider>/<name> with a provider of "
            f"{sorted(PROVIDERS)} (e.g. timm/tf_efficientnet_lite0), or a torchvision name."
        )
    return provider, name


def available_backbones(provider: str = DEFAULT_PROVIDER) -> list[str]:
    """Names a provider offers as ``model.backbone``."""
    return PROVIDERS[provider].names()


class Backbone(nn.Module):
    """A classifier cut into four feature stages (strides 4, 8, 16, 32).

    The stages are plain modules in :attr:`stages`, so sharing strategies can share the first
    ones between tasks and copy the rest.

    Args:
        name: ``resnet18``, ``torchvision/<name>`` or ``timm/<name>``.
        weights: ``None`` (random init), the provider's weights name or tag (downloads), or a
            local state-dict file (``.pth``, ``.pt``, ``.safetensors``).

    Attributes:
        channels: Channels of the four stages, from stride 4 to stride 32.
        mean: Normalisation mean that the (default) pretrained weights expect, [0, 1] scale.
        std: Normalisation std, likewise.
    """

    def __init__(self, name: str = "resnet18", weights: str | None = None):
        super().__init__()
        provider, model_name = split_name(name)
        stages, self.mean, self.std = PROVIDERS[provider].build(model_name, weights)
        self.stages = nn.ModuleList(stages)
        with torch.no_grad():
            features = self.eval()(torch.zeros(1, 3, 64, 64))
        self.train()
        self.channels = [f.shape[1] for f in features]

    def forward(self, x: torch.Tensor, start: int = 0, stop: int = 4) -> list[torch.Tensor]:
        """Feature maps of stages ``start`` to ``stop - 1``, fed ``x`` (the image when start=0)."""
        features = []
        for stage in self.stages[start:stop]:
            x = stage(x)
            features.append(x)
        return features
