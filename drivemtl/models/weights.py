"""Local backbone weights files: read them safely, check that they fit, load what the trunk uses.

A weights file is a state dict in the backbone's own layout (torchvision's or timm's classifier
model), with or without its classifier: ``.pth`` / ``.pt`` (read through
:func:`drivemtl.checkpoints.load_checkpoint`, tensors and plain data only) or ``.safetensors``.
Only the tensors of the four trunk stages are needed; the layers after them (classifier, head
convolution) may be missing or of another shape (a 21k-class classifier).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from drivemtl.checkpoints import check_file, load_checkpoint, local_path
from drivemtl.errors import DriveMTLError

WEIGHTS_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")
WRAPPER_KEYS = ("state_dict", "model", "module")
"""Keys under which training scripts nest the state dict (Lightning, timm, DeiT, ...)."""

WHAT = "model.weights file"


def names_a_file(weights: str) -> bool:
    """Whether ``model.weights`` names a local file rather than a weights name or tag."""
    text = str(weights)
    if text.startswith("file://") or Path(text).suffix.lower() in WEIGHTS_SUFFIXES:
        return True
    return "/" in text or "\\" in text or Path(text).is_file()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pth`` / ``.pt`` / ``.bin`` or ``.safetensors`` state dict.

    Raises:
        DriveMTLError: For a missing, empty, unreadable or unsafe file, or one without tensors.
    """
    path = check_file(local_path(path, WHAT), WHAT)
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise DriveMTLError(
                f"{WHAT} {path} is not a readable safetensors file ({e})."
            ) from None
    else:
        state = load_checkpoint(path, WHAT)
    for key in WRAPPER_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    tensors = (
        {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        if isinstance(state, Mapping)
        else {}
    )
    if not tensors:
        raise DriveMTLError(f"{WHAT} {path} holds no state dict (no named tensors).")
    return tensors


def _examples(items: list[str]) -> str:
    return f"{len(items)} (e.g. {', '.join(items[:3])})"


def load_backbone_weights(
    model: nn.Module, stages: nn.Module, path: str | Path, backbone: str
) -> None:
    """Load a weights file into ``model`` for the tensors that ``stages`` (part of it) use.

    Args:
        model: The classifier model the stages were cut from, in the file's layout.
        stages: The trunk stages, whose tensors must all be in the file with their shapes.
        path: The weights file.
        backbone: The backbone name, for messages.

    Raises:
        DriveMTLError: When a stage tensor is missing or of another shape, or the file holds
            tensors the model does not have (it is of another architecture).
    """
    state = read_state_dict(path)
    expected = model.state_dict(keep_vars=True)
    used_ids = {id(t) for t in stages.state_dict(keep_vars=True).values()}
    used = {k for k, t in expected.items() if id(t) in used_ids}
    missing = sorted(used - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in the model"
        for k in sorted(used & set(state))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{label} {_examples(items)}"
            for label, items in (
                ("missing tensors", missing),
                ("unexpected tensors", unexpected),
                ("tensors of another shape", shapes),
            )
            if items
        ]
        hint = (
            " It looks like a drivemtl checkpoint: use model.init_from for those."
            if any(k.startswith("net.") for k in state)
            else " Give a state dict of this very architecture, as its library saves it."
        )
        raise DriveMTLError(
            f"{WHAT} {path} does not fit backbone {backbone}: {'; '.join(parts)}.{hint}"
        )
    unused = sorted(set(state) - used)
    model.load_state_dict({k: state[k] for k in used}, strict=False)
    note = f"; {len(unused)} unused (classifier / head, e.g. {unused[0]})" if unused else ""
    from lightning.pytorch.utilities import rank_zero_info  # only when weights are read

    rank_zero_info(f"{WHAT} {path}: loaded {len(used)} tensors into {backbone}{note}.")
