"""Torchvision classifiers as backbones: named weights (downloaded) or a local state dict."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from drivemtl.errors import DriveMTLError
from drivemtl.models.weights import load_backbone_weights, names_a_file

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
        "regnet_y_400mf, convnext_tiny), or a timm model as timm/<name>."
    )


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


def _named_weights(name: str, weights: str | None):
    """The torchvision weights enum member ``weights`` names (``None``: the default one)."""
    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError) as e:
        raise DriveMTLError(f"Unknown backbone {name!r}: {e}") from None
    if weights is None or weights == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[weights]
    except KeyError:
        known = ", ".join(dict.fromkeys(["DEFAULT", *enum.__members__]))
        raise DriveMTLError(
            f"Unknown weights {weights!r} for {name}: give one of {known}, or the path of a "
            "local state-dict file."
        ) from None


class TorchvisionBackbones:
    """The torchvision provider: ``model.backbone: resnet18`` (or ``torchvision/resnet18``)."""

    def names(self) -> list[str]:
        names = torchvision.models.list_models(module=torchvision.models)
        return sorted(n for n in names if n.startswith(SUPPORTED_FAMILIES))

    def build(self, name: str, weights: str | None):
        """Four stages, and the normalisation of the weights (or of the default weights)."""
        _family(name)
        named = None if weights is None or names_a_file(weights) else weights
        reference = _named_weights(name, named)  # its transforms define the normalisation
        if named is None:
            model = torchvision.models.get_model(name, weights=None)
        else:
            try:
                model = torchvision.models.get_model(name, weights=reference)
            except OSError as e:  # URLError is an OSError: no network.
                raise DriveMTLError(
                    f"Could not download weights {weights!r} for {name} ({e}). Download them "
                    "on a machine with network access (README: Pretrained backbones) and pass "
                    "the local file path as model.weights."
                ) from None
        stages = _split_stages(_layers(name, model))
        if weights is not None and named is None:
            load_backbone_weights(model, nn.ModuleList(stages), weights, name)
        transform = reference.transforms()
        return stages, tuple(transform.mean), tuple(transform.std)
