"""Torchvision backbones by name, as multi-scale feature extractors (strides 4, 8, 16, 32)."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from drivemtl.checkpoints import load_checkpoint
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


def _layers(name: str, model: nn.Module) -> list[nn.Module]:
    """The classifier's feature layers in forward order (pooling and classifier left out)."""
    family = _family(name)
    if family in ("resnet", "resnext", "wide_resnet"):
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        return [getattr(model, n) for n in names]
    if family == "regnet":
        return [model.stem, *model.trunk_output]
    return list(model.features)  # mobilenet_v3, efficientnet, convnext


def _split_stages(layers: list[nn.Module]) -> list[nn.Sequential]:
    """Cut the layers into four stages that end at strides 4, 8, 16 and 32.

    Probing the output size after each layer finds the cuts for every family alike; a stage
    ends at the last layer of its stride, so stride-changing layers open the next stage.
    """
    size, x = 64, torch.zeros(1, 3, 64, 64)
    last_at_size: dict[int, int] = {}
    with torch.no_grad():
        for i, layer in enumerate(layers):
            was_training = layer.training
            x = layer.eval()(x)
            layer.train(was_training)
            last_at_size[x.shape[-1]] = i
    ends = [last_at_size[size // stride] for stride in (4, 8, 16, 32)]
    starts = [0] + [e + 1 for e in ends[:-1]]
    return [nn.Sequential(*layers[a : b + 1]) for a, b in zip(starts, ends)]


def _load_weights(name: str, weights: str | None) -> nn.Module:
    if weights is None:
        return torchvision.models.get_model(name, weights=None)
    if Path(weights).is_file():
        model = torchvision.models.get_model(name, weights=None)
        state = load_checkpoint(weights, "model.weights file")
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
    """A torchvision classifier cut into four feature stages (strides 4, 8, 16, 32).

    The stages are plain modules in :attr:`stages`, so sharing strategies can share the first
    ones between tasks and copy the rest.

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
        self.stages = nn.ModuleList(_split_stages(_layers(name, model)))
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
