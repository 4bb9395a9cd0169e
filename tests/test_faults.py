"""Faults with nothing lost: processes killed with SIGKILL mid-fit, mid-save, mid-generation,
and training steps whose loss is not finite."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch

from drivemtl.checkpoint_io import SafeCheckpointIO
from drivemtl.checkpoints import load_checkpoint
from drivemtl.cli import main
from drivemtl.data.datamodule import DriveDataModule, SyntheticSplits
from drivemtl.errors import DriveMTLError
from drivemtl.module import MultiTaskModule
from tests.conftest import run_in_fork

TINY = [
    "--data.image_size=[32, 48]",
    "--data.batch_size=8",
    "--data.num_workers=0",
    "--model.backbone=resnet18",
    "--trainer.accelerator=cpu",
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--seed_everything=3",
]


class KillAt(L.Callback):
    """SIGKILLs its own process when batch ``batch`` of epoch ``epoch`` starts."""

    def __init__(self, epoch: int = 1, batch: int = 2):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


def test_a_fit_killed_mid_epoch_resumes_to_the_same_result(tmp_path, tiny_presence_set):
    train = tiny_presence_set("train", 48, seed=1, unknown_rate=0.2)
    val = tiny_presence_set("val", 16, seed=2)

    def fit(run: Path, *extra: str) -> int:
        return main(
            [
                "fit",
                *TINY,
                f"--data.train_manifest={train}",
                f"--data.val_manifest={val}",
                "--trainer.max_epochs=3",
                f"--trainer.default_root_dir={run}",
                *extra,
            ]
        )

    assert fit(tmp_path / "whole") == 0
    killer = [{"class_path": f"{__name__}.KillAt", "init_args": {"epoch": 1, "batch": 2}}]
    killed = tmp_path / "killed"
    code = run_in_fork(fit, killed, f"--trainer.callbacks={json.dumps(killer)}")
    assert code == -signal.SIGKILL
    last = killed / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["epoch"] == 0  # epoch 1's two batches are lost, as documented
    assert not (killed / "metrics.json").exists()

    assert fit(killed, "--ckpt_path=last") == 0
    whole, resumed = (
        json.loads((run / "metrics.json").read_text()) for run in (tmp_path / "whole", killed)
    )
    assert (
        load_checkpoint(last)["epoch"]
        == load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.ckpt")["epoch"]
    )
    assert load_checkpoint(last)["global_step"] == 18  # 3 epochs of 6 batches, none twice
    # Shuffling and augmentation state travel in the checkpoint: the same run, exactly.
    for name, values in whole["presence"]["per_class"].items():
        for key in ("ap", "f1", "threshold"):
            got, want = resumed["presence"]["per_class"][name][key], values[key]
            assert (got is None and want is None) or math.isclose(got, want, abs_tol=1e-6), (
                name,
                key,
            )


def test_a_kill_while_a_checkpoint_is_written_leaves_the_old_one(tmp_path):
    target = tmp_path / "last.ckpt"
    io = SafeCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, target)

    def die_mid_write() -> None:
        original = torch.save

        def half_then_die(obj, f, *args, **kwargs):
            f.write(b"PK\x03\x04 half a zip archive")  # the first bytes of a checkpoint
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = half_then_die
        try:
            io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, target)
        finally:
            torch.save = original

    assert run_in_fork(die_mid_write) == -signal.SIGKILL
    kept = load_checkpoint(target)  # whole and readable: the previous epoch's
    assert kept["epoch"] == 1 and torch.equal(kept["state_dict"]["w"], torch.ones(3))
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, target)
    assert load_checkpoint(target)["epoch"] == 2


def test_a_kill_during_synthetic_generation_never_leaves_half_a_cache(tmp_path, monkeypatch):
    splits = SyntheticSplits(train=6, val=2, test=2, width=64, height=48)
    data = DriveDataModule(synthetic=splits, cache_dir=str(tmp_path), image_size=(32, 48))
    import drivemtl.data.synthetic as synthetic

    real = synthetic.generate_dataset

    def generate_then_die(out_dir, *args, **kwargs):
        kwargs["workers"] = 1
        real(out_dir, *args, **kwargs)  # every file written, the rename still to come
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(synthetic, "generate_dataset", generate_then_die)
    assert run_in_fork(data.prepare_data) == -signal.SIGKILL
    root = data.synthetic_dir()
    assert not (root / "train").exists()  # only a partial folder, which no reader takes
    assert [p.name.split("-")[0] for p in root.iterdir()] == [".train.partial"]

    monkeypatch.setattr(synthetic, "generate_dataset", real)
    data.prepare_data()  # the killed run's partial folder is removed, the cache completed
    assert sorted(p.name for p in root.iterdir()) == ["test", "train", "val"]
    assert len((root / "train" / "manifest.jsonl").read_text().splitlines()) == 6


def _nan_head_fit(tmp_path, tiny_presence_set, **options) -> MultiTaskModule:
    train = tiny_presence_set("train", 16, seed=1)
    data = DriveDataModule(
        train_manifest=str(train),
        val_manifest=str(train),
        image_size=(32, 48),
        batch_size=8,
        num_workers=0,
    )
    model = MultiTaskModule(image_size=(32, 48), **options)
    with torch.no_grad():
        next(model.net.heads["presence"].parameters()).fill_(math.nan)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, data)
    return model


def test_a_non_finite_loss_stops_the_run_naming_step_task_and_images(tmp_path, tiny_presence_set):
    with pytest.raises(DriveMTLError) as caught:
        _nan_head_fit(tmp_path, tiny_presence_set)
    message = str(caught.value)
    assert "not finite at step 0 (epoch 0, batch 0): presence = nan" in message
    assert "train/0" in message and "--model.nonfinite_loss skip" in message


def test_a_non_finite_loss_can_skip_the_step_instead(tmp_path, tiny_presence_set):
    torch.manual_seed(0)
    before = dict(MultiTaskModule(image_size=(32, 48)).net.trunk.named_parameters())
    torch.manual_seed(0)
    model = _nan_head_fit(tmp_path, tiny_presence_set, nonfinite_loss="skip")
    assert model._skipped_steps == 2  # both batches of the epoch, no update made
    after = dict(model.net.trunk.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before)
