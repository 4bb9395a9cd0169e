"""Fine-tuning controls: start from a drivemtl checkpoint, freeze stages, a smaller backbone step.

- ``model.init_from: CKPT`` copies every tensor of a drivemtl checkpoint that fits the new
  model (same name and shape; a head only when the class list is the same) and reports what
  was loaded, skipped and newly initialised. Weights only: optimiser, schedule and the
  multi-task objective's state start fresh.
- ``model.freeze``: ``backbone`` (all four stages) or ``k`` (the first ``k``) stop training;
  their batch-norm layers keep their statistics too.
- ``model.freeze_bn_stats``: every backbone batch-norm layer keeps its running statistics
  (for small per-device batches), while its scale and shift still train.
- ``model.backbone_lr_scale``: the backbone's learning rate relative to the heads' (a
  pretrained trunk wants a smaller step than new heads).

Every stage copy of a sharing strategy (:meth:`Trunk.backbone_stages`) counts as the stage
it copies.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from drivemtl.checkpoints import load_checkpoint
from drivemtl.errors import DriveMTLError
from drivemtl.models.sharing import NUM_STAGES, Trunk

WHAT = "model.init_from checkpoint"


def frozen_stage_count(freeze: int | str | None) -> int:
    """How many leading backbone stages ``model.freeze`` freezes (0 to 4).

    Raises:
        DriveMTLError: For anything but ``backbone``, ``none`` or an integer 0-4.
    """
    if freeze in (None, "none"):
        return 0
    if freeze == "backbone":
        return NUM_STAGES
    if isinstance(freeze, bool) or not isinstance(freeze, int) or not 0 <= freeze <= NUM_STAGES:
        raise DriveMTLError(
            f"model.freeze must be 'backbone' or the number of leading stages, 0-4: {freeze!r}"
        )
    return freeze


def freeze_stages(trunk: Trunk, count: int) -> None:
    """Stop the first ``count`` backbone stages (every copy) from training."""
    for index, stage in trunk.backbone_stages():
        if index < count:
            stage.requires_grad_(False)


def hold_norm_statistics(trunk: Trunk, count: int) -> None:
    """Put the batch-norm layers of the first ``count`` backbone stages in eval mode.

    Called after every ``train()``: a layer in eval mode normalises with, and keeps, its
    running statistics.
    """
    for index, stage in trunk.backbone_stages():
        if index < count:
            for module in stage.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()


def parameter_groups(
    model: nn.Module, trunk: Trunk, own: Iterable[nn.Parameter], backbone_lr_scale: float
) -> list[dict]:
    """Optimiser parameter groups: backbone, the rest, and the objective's own weights.

    Frozen parameters are left out. The backbone group is tagged ``lr_scale`` (applied to the
    optimiser's learning rate by :func:`scale_learning_rates`); the objective's weights (e.g.
    uncertainty's log-variances) get no weight decay, which would pull them towards 1.

    Raises:
        DriveMTLError: For a scale that is not positive.
    """
    if not backbone_lr_scale > 0:
        raise DriveMTLError(f"model.backbone_lr_scale must be > 0: {backbone_lr_scale}")
    own = list(own)
    backbone_ids = {id(p) for _, stage in trunk.backbone_stages() for p in stage.parameters()}
    own_ids = {id(p) for p in own}
    trainable = [p for p in model.parameters() if p.requires_grad]
    backbone = [p for p in trainable if id(p) in backbone_ids and id(p) not in own_ids]
    rest = [p for p in trainable if id(p) not in backbone_ids and id(p) not in own_ids]
    if backbone_lr_scale == 1:  # one group, as without this option (resumable optimiser state)
        backbone, rest = [], [p for p in trainable if id(p) not in own_ids]
    groups = [
        {"params": backbone, "lr_scale": backbone_lr_scale},
        {"params": rest},
        {"params": own, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def scale_learning_rates(optimizer: torch.optim.Optimizer) -> None:
    """Multiply each group's learning rate by its ``lr_scale`` (before any scheduler)."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_scale", 1.0)


def _part(key: str) -> str:
    """The part of the network a state-dict key belongs to: ``trunk`` or ``head <task>``."""
    parts = key.split(".")
    if parts[:2] == ["net", "heads"] and len(parts) > 2:
        return f"head {parts[2]}"
    return parts[1] if len(parts) > 1 else key


def _summary(keys: list[str]) -> str:
    counts = Counter(_part(k) for k in keys)
    return ", ".join(f"{part} {n}" for part, n in counts.items())


def init_from_checkpoint(module: nn.Module, path: str, classes: list[str]) -> dict[str, list[str]]:
    """Copy the tensors of a drivemtl checkpoint that fit ``module``'s network.

    A tensor is loaded when the checkpoint has it under the same name with the same shape;
    head tensors only when the checkpoint's class list is ``classes`` (outputs of another
    class list mean other things, even where the shapes agree).

    Returns:
        ``{"loaded": [...], "skipped": [...], "new": [...]}`` state-dict keys: skipped are
        in the checkpoint but do not fit; new are not in it.

    Raises:
        DriveMTLError: For an unreadable file, a file that is not a drivemtl checkpoint, or
            one of which nothing fits.
    """
    checkpoint = load_checkpoint(path, WHAT)
    state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not isinstance(hparams, Mapping):
        raise DriveMTLError(
            f"{WHAT} {path} is not a drivemtl checkpoint (no state_dict and hyperparameters); "
            "a backbone state dict goes to model.weights."
        )
    same_classes = list(hparams.get("classes") or []) == list(classes)
    own = {k: v for k, v in module.state_dict().items() if k.startswith("net.")}
    loaded, skipped, new, reasons = [], [], [], []
    for key, tensor in own.items():
        stored = state.get(key)
        if not isinstance(stored, torch.Tensor):
            new.append(key)
        elif key.startswith("net.heads.") and not same_classes:
            skipped.append(key)
        elif stored.shape != tensor.shape:
            skipped.append(key)
            reasons.append(f"{key}: {tuple(stored.shape)} there, {tuple(tensor.shape)} here")
        else:
            loaded.append(key)
    if not any(k.startswith("net.trunk.") for k in loaded):
        raise DriveMTLError(
            f"{WHAT} {path}: no trunk tensor fits this model; it has another backbone or "
            "sharing strategy (model.weights takes a backbone's own state dict)."
        )
    module.load_state_dict({k: state[k] for k in loaded}, strict=False)
    lines = [f"{WHAT} {path}: loaded {len(loaded)} tensors ({_summary(loaded)})"]
    if skipped:
        why = (
            f"class list {list(hparams.get('classes') or [])} there, {list(classes)} here"
            if not same_classes
            else f"e.g. {reasons[0]}"
        )
        lines.append(f"  skipped {len(skipped)} that do not fit ({_summary(skipped)}; {why})")
    if new or skipped:
        fresh = sorted(set(new) | set(skipped), key=list(own).index)
        lines.append(f"  newly initialised {len(fresh)} ({_summary(fresh)})")
    rank_zero_info("\n".join(lines))
    return {"loaded": loaded, "skipped": skipped, "new": new}
