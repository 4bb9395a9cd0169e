"""timm models as backbones: ``model.backbone: timm/<name>`` for any model with feature maps at
strides 4, 8, 16 and 32 (what ``features_only`` returns).

The classifier model is built (its state-dict layout is the one weights files use) and cut at
the modules that timm's ``feature_info`` names for those strides: every layer up to the
stride-4 feature (the stride-2 stem included) is stage 1, and so on. A cut only holds where the
model's forward runs those layers one after the other, so the cut model is checked against the
channels and strides timm declares before it is used.
"""

from __future__ import annotations

import torch
from torch import nn

from drivemtl.errors import DriveMTLError
from drivemtl.models.weights import load_backbone_weights, names_a_file

STRIDES = (4, 8, 16, 32)


def _timm():
    try:
        import timm
    except ImportError:  # a core dependency; only a broken install lacks it
        raise DriveMTLError("timm backbones need the timm package: pip install timm") from None
    return timm


def _ordered_layers(model: nn.Module, ends: list[str]) -> list[tuple[str, nn.Module]]:
    """The model's layers in forward order, as (dotted name, module), up to the last end.

    Top-level children, with any ``nn.Sequential`` that holds a cut expanded into its own
    children (``blocks`` -> ``blocks.0``, ``blocks.1``, ...) until every end is one layer.
    """
    layers = list(model.named_children())
    while True:
        inner = next(
            (i for i, (n, _) in enumerate(layers) if any(e.startswith(n + ".") for e in ends)),
            None,
        )
        if inner is None:
            break
        name, module = layers[inner]
        if not isinstance(module, nn.Sequential):
            raise ValueError(f"a feature map lies inside {name} ({type(module).__name__})")
        layers[inner : inner + 1] = [(f"{name}.{n}", m) for n, m in module.named_children()]
    names = [n for n, _ in layers]
    missing = [e for e in ends if e not in names]
    if missing:
        raise ValueError(f"feature modules {missing} are not layers of the forward sequence")
    return layers[: names.index(ends[-1]) + 1]


def cut_stages(model: nn.Module) -> list[nn.Sequential]:
    """Four stages of a timm classifier ending at its stride-4, 8, 16 and 32 feature maps.

    Raises:
        ValueError: When the model has no such feature maps, or they cannot be reached by
            running its layers in sequence.
    """
    info = list(getattr(model, "feature_info", None) or [])
    last_at = {f["reduction"]: f for f in info}  # the deepest feature map of each stride
    absent = [s for s in STRIDES if s not in last_at]
    if absent:
        strides = sorted(last_at) or "none"
        raise ValueError(f"no feature maps at strides {absent} (it has strides {strides})")
    ends = [last_at[s]["module"] for s in STRIDES]
    layers = _ordered_layers(model, ends)
    names = [n for n, _ in layers]
    bounds = [names.index(e) + 1 for e in ends]
    if bounds != sorted(bounds):
        raise ValueError(f"its feature modules {ends} are out of forward order")
    stages = [
        nn.Sequential(*[m for _, m in layers[a:b]]) for a, b in zip([0, *bounds[:-1]], bounds)
    ]
    _check_stages(stages, [last_at[s]["num_chs"] for s in STRIDES])
    return stages


def _check_stages(stages: list[nn.Module], channels: list[int], size: int = 64) -> None:
    """The stages give the channels and strides timm declares (a wrong cut would not)."""
    x = torch.zeros(1, 3, size, size)
    modes = [(m, m.training) for stage in stages for m in stage.modules()]
    with torch.no_grad():
        for stage, stride, chs in zip(stages, STRIDES, channels):
            x = stage.eval()(x)
            if x.ndim != 4 or tuple(x.shape[1:]) != (chs, size // stride, size // stride):
                raise ValueError(
                    f"running its layers in sequence gives {tuple(x.shape)} at stride {stride}, "
                    f"not (1, {chs}, {size // stride}, {size // stride})"
                )
    for module, mode in modes:
        module.training = mode


def _model_name(name: str, weights: str | None) -> tuple[str, bool]:
    """timm's ``name.tag`` to create, and whether to download its pretrained weights."""
    if weights is None or names_a_file(weights):
        return name, False
    if weights in ("DEFAULT", "default"):
        return name, True
    if "." in name:
        raise DriveMTLError(
            f"model.backbone timm/{name} already names a pretrained tag; model.weights "
            f"{weights!r} would be a second one. Use model.weights DEFAULT for {name}'s own."
        )
    return f"{name}.{weights}", True


class TimmBackbones:
    """The timm provider: ``model.backbone: timm/<name>`` (``timm/<name>.<tag>`` also works).

    ``model.weights`` is a pretrained tag (``in1k``; ``DEFAULT``: the model's default tag),
    downloaded from timm's hub on a machine with network access, or a local state-dict file in
    timm's layout for ``<name>``.
    """

    def names(self) -> list[str]:
        return [f"timm/{n}" for n in _timm().list_models()]

    def build(self, name: str, weights: str | None):
        """Four stages, and the normalisation of the (default) pretrained configuration."""
        timm = _timm()
        full_name, pretrained = _model_name(name, weights)
        try:
            model = timm.create_model(full_name, pretrained=False)
        except RuntimeError as e:  # unknown model or tag
            raise DriveMTLError(
                f"Unknown timm backbone {full_name!r} ({e}). List names with "
                "timm.list_models('pattern*') and tags with timm.list_pretrained('name*')."
            ) from None
        if pretrained:
            try:
                model = timm.create_model(full_name, pretrained=True)
            except Exception as e:  # hub and network errors come in many types
                first = (str(e).strip().splitlines() or [""])[0][:200]
                raise DriveMTLError(
                    f"Could not download timm weights {full_name!r} ({type(e).__name__}: "
                    f"{first}). Download them on a machine with network access (README: "
                    "Pretrained backbones) and pass the local file as model.weights."
                ) from None
        try:
            stages = cut_stages(model)
        except ValueError as e:
            raise DriveMTLError(
                f"timm model {name!r} cannot be cut into four stages at strides 4-32: {e}. "
                "Use a convolutional model with features_only support, e.g. "
                "timm/tf_efficientnet_lite0, timm/resnet50d or timm/convnext_nano."
            ) from None
        if weights is not None and not pretrained:
            load_backbone_weights(model, nn.ModuleList(stages), weights, f"timm/{name}")
        cfg = model.pretrained_cfg
        return stages, tuple(cfg["mean"]), tuple(cfg["std"])
