"""Test-only callbacks that the DDP test loads by class path in its worker processes."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


class SaveParameters(L.Callback):
    """At the end of fit, every rank saves its parameters and MTL buffers to ``folder``."""

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, self.folder / f"rank{trainer.global_rank}.pt")
