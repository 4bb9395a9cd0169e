"""The Trainer's checkpoint IO: every read through the safe loader, every save atomic."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from drivemtl.checkpoints import _URL, load_checkpoint
from drivemtl.errors import DriveMTLError


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with every load through :func:`load_checkpoint`.

    The Trainer reads ``ckpt_path`` (fit resume, validate, test, predict; ``last`` and
    ``best`` once resolved) through its strategy's checkpoint IO, so this covers them all.
    Saves go to a file beside the target, then replace it in one rename, so a run killed
    while writing never leaves a truncated ``best.ckpt`` / ``last.ckpt`` behind.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        # Lightning's own save goes through a temporary file in /tmp and a move, which is a
        # copy (not atomic) when /tmp is another file system.
        if storage_options is not None or _URL.match(str(path)):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        with open(partial, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        checkpoint = load_checkpoint(path, map_location=map_location or "cpu")
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise DriveMTLError(f"Checkpoint {path} is not a Lightning checkpoint (no weights).")
        return checkpoint
