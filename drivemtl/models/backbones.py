"""Torchvision backbones by name, as multi-scale feature extractors (strides 4, 8, 16, 32)."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from drivemtl.errors import DriveMTLError

SUPPORTED_FAMILIES = (
    "resnet",
    "resnext",
    "wide_resnet",
    "mobilenet_v3",
    "efficientnet",
    "regnet",
    "convnext",
)


def _family(name: str) -> str:
    for family in SUPPORTED_FAMILIES:
        if name.startswith(family):
            return family
    raise DriveMTLError(
        f"Unsupported backbone {name!r}: use a torchvision model of the families "
        f"{', '.join(SUPPORTED_FAMILIES)} (e.g. resnet18, mobilenet_v3_large, efficientnet_b0, "
        "regnet_y_400mf, convnext_tiny)."
    )


def available_backbones() -> list[str]:
    """Torchvision classification models usable as a backbone."""
    names = torchvision.models.list_models(module=torchvision.models)
    return sorted(n for n in names if n.startswith(SUPPORTED_FAMILIES))


def _stage_nodes(name: str, model: nn.Module) -> list[str]:
    """Graph nodes that end each stride stage (the last block at strides 4, 8, 16, 32)."""
    family = _family(name)
    if family in ("resnet", "resnext", "wide_resnet"):
        return ["layer1", "layer2", "layer3", "layer4"]
    if family == "regnet":
        return [f"trunk_output.block{i}" for i in range(1, 5)]
    # mobilenet_v3, efficientnet, convnext: a `features` Sequential; probe where stride changes.
    x = torch.zeros(1, 3, 64, 64)
    last_at_size: dict[int, int] = {}
    with torch.no_grad():
        for i, block in enumerate(model.features):
            x = block(x)
            last_at_size[x.shape[-1]] = i
    sizes = [64 // s for s in (4, 8, 16, 32)]
    return [f"features.{last_at_size[s]}" for s in sizes]


def _load_weights(name: str, weights: str | None) -> nn.Module:
    if weights is None:
        return torchvision.models.get_model(name, weights=None)
    if Path(weights).is_file():
        model = torchvision.models.get_model(name, weights=None)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        # Classifier layers do not matter for a backbone; everything else must match.
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(("fc.", "classifier."))]
        if missing or unexpected:
            raise DriveMTLError(
                f"Weights file {weights} does not fit backbone {name}: "
                f"{len(missing)} missing keys (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})."
            )
        return model
    try:
        return torchvision.models.get_model(name, weights=weights)
    except (ValueError, KeyError) as e:
        raise DriveMTLError(
            f"Unknown weights {weights!r} for {name}: give a torchvision weights name such as "
            f"'DEFAULT' or 'IMAGENET1K_V1', or the path of a local state-dict file ({e})."
        ) from None
    except OSError as e:  # URLError is an OSError: no network.
        raise DriveMTLError(
            f"Could not download weights {weights!r} for {name} ({e}). Download them on a "
            "machine with network access and pass the local file path as 'weights'."
        ) from None


class Backbone(nn.Module):
    """A torchvision classifier cut into four feature stages.

    Args:
        name: Torchvision model name, e.g. ``resnet18``.
        weights: ``None`` (random init), a torchvision weights name, or a local state-dict file.

    Attributes:
        channels: Channels of the four stages, from stride 4 to stride 32.
    """

    def __init__(self, name: str = "resnet18", weights: str | None = None):
        super().__init__()
        _family(name)
        try:
            model = _load_weights(name, weights)
        except ValueError as e:
            raise DriveMTLError(f"Unknown backbone {name!r}: {e}") from None
        nodes = _stage_nodes(name, model)
        self.body = create_feature_extractor(model, {n: str(i) for i, n in enumerate(nodes)})
        with torch.no_grad():
            was_training = self.body.training
            self.body.eval()
            feats = self.body(torch.zeros(1, 3, 64, 64))
            self.body.train(was_training)
        self.channels = [f.shape[1] for f in feats.values()]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x).values())
