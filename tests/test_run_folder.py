"""Loggers that add, one run folder whatever the loggers, model.lr and the LR finder, a quiet
console (one table, bars only on a terminal)."""

from __future__ import annotations

import io
import json

import pytest
import torch
from lightning.pytorch.loggers import Logger

from drivemtl import console
from drivemtl.cli import main
from drivemtl.module import MultiTaskModule
from tests.conftest import CLASSES

TINY = [
    "--data.image_size=[32, 48]",
    "--data.batch_size=8",
    "--data.num_workers=0",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.max_epochs=1",
]
RUN_FILES = ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "config.yaml", "metrics.json")


class FakeLogger(Logger):
    """A logger like wandb's: a folder of its own; what it receives goes to ``record``.

    (jsonargparse imports this module afresh, so the test reads the record file.)
    """

    def __init__(self, record: str, folder: str = "."):
        super().__init__()
        self.record = record
        self.folder = folder

    @property
    def name(self) -> str:
        return "fake"

    @property
    def version(self) -> str:
        return "0"

    @property
    def save_dir(self) -> str:
        return self.folder

    def _write(self, kind: str, value) -> None:
        with open(self.record, "a") as f:
            f.write(json.dumps([kind, value]) + "\n")

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self._write("metrics", sorted(metrics))

    def log_image(self, key: str, images: list, step=None) -> None:
        self._write("image", [key, list(images[0].shape)])


def _fit(tmp_path, make, *extra):
    train, val = make("train", 16, seed=1), make("val", 8, seed=2)
    run = tmp_path / "run"
    args = [f"--data.train_manifest={train}", f"--data.val_manifest={val}"]
    assert main(["fit", *TINY, *args, f"--trainer.default_root_dir={run}", *extra]) == 0
    return run


def test_an_extra_logger_is_added_and_the_run_files_stay_in_the_run_folder(
    tmp_path, tiny_presence_set
):
    elsewhere, record = tmp_path / "elsewhere", tmp_path / "record.jsonl"
    fake = {"record": str(record), "folder": str(elsewhere)}
    logger = {"class_path": "tests.test_run_folder.FakeLogger", "init_args": fake}
    run = _fit(tmp_path, tiny_presence_set, f"--trainer.logger={json.dumps(logger)}")
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    # CSV and TensorBoard are still there, beside the extra logger.
    assert (run / "metrics.csv").is_file() and list(run.glob("events.out.tfevents.*"))
    assert not elsewhere.exists()
    received = [json.loads(line) for line in record.read_text().splitlines()]
    metrics = {key for kind, keys in received if kind == "metrics" for key in keys}
    assert {"val/presence/map", "val/loss"} <= metrics
    images = {value[0]: value[1] for kind, value in received if kind == "image"}
    height, width, channels = images["val/presence_ap_f1"]
    assert channels == 3 and height > 100 and width > 100


def test_a_csv_logger_elsewhere_replaces_the_defaults_and_the_run_folder_keeps_its_files(
    tmp_path, tiny_presence_set
):
    other = tmp_path / "other"
    run = _fit(
        tmp_path,
        tiny_presence_set,
        "--trainer.logger=CSVLogger",
        f"--trainer.logger.save_dir={other}",
    )
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    assert not (run / "metrics.csv").exists() and not list(run.glob("events.out.tfevents.*"))
    logged = list(other.rglob("metrics.csv"))
    assert len(logged) == 1  # the user's own logger, in the user's own folder
    assert not list(other.rglob("*.ckpt")) and not list(other.rglob("metrics.json"))
    assert not list(other.rglob("config.yaml"))


def test_no_logger_at_all_still_leaves_the_run_files(tmp_path, tiny_presence_set):
    run = _fit(tmp_path, tiny_presence_set, "--trainer.logger=false")
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    assert not (run / "metrics.csv").exists()


def test_the_tensorboard_events_hold_the_ap_f1_picture(tmp_path, tiny_presence_set):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _fit(tmp_path, tiny_presence_set)
    tags = set()
    for events in run.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["images"])
    assert "val/presence_ap_f1" in tags


def test_model_lr_replaces_the_optimiser_rate():
    def constant(optimizer):
        return torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0)

    model = MultiTaskModule(classes=CLASSES, image_size=(32, 32), lr=0.0123, lr_scheduler=constant)
    optimizer = model.configure_optimizers()["optimizer"]
    assert [g["lr"] for g in optimizer.param_groups] == [0.0123]
    default = MultiTaskModule(classes=CLASSES, image_size=(32, 32), lr_scheduler=constant)
    assert default.configure_optimizers()["optimizer"].param_groups[0]["lr"] == 0.001  # AdamW's


@pytest.mark.slow
def test_the_learning_rate_finder_runs_on_the_demo_config(tmp_path):
    # 20 finder steps need 20 batches in the epoch (it stops at the epoch's end): about a
    # minute on 2 cores, hence slow.
    run = tmp_path / "run"
    code = main(
        [
            "fit",
            "--config=configs/demo.yaml",
            "--data.synthetic.train=40",
            "--data.synthetic.val=8",
            "--data.synthetic.test=8",
            "--data.synthetic.width=64",
            "--data.synthetic.height=64",
            "--data.image_size=[64, 64]",
            "--data.batch_size=2",
            "--data.num_workers=0",
            f"--data.cache_dir={tmp_path / 'cache'}",
            "--trainer.precision=32-true",
            "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.callbacks+=LearningRateFinder",
            "--trainer.callbacks.num_training_steps=20",
            f"--trainer.default_root_dir={run}",
        ]
    )
    assert code == 0
    found = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    # The finder's suggestion lies between its bounds (1e-8 .. 1) and replaced the rate.
    assert isinstance(found["lr"], float) and 1e-8 < found["lr"] < 1.0
    assert not list(run.glob(".lr_find_*"))  # its temporary checkpoint is cleaned up


def test_validate_prints_one_table(tmp_path, tiny_presence_set, capsys):
    run = _fit(tmp_path, tiny_presence_set)
    capsys.readouterr()
    val = tmp_path / "val.jsonl"
    code = main(
        [
            "validate",
            *TINY,
            f"--data.val_manifest={val}",
            f"--ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
            f"--trainer.default_root_dir={tmp_path / 'again'}",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out.count("macro mAP") == 1
    assert "DataLoader 0" not in captured.out + captured.err  # Lightning's own table
    assert "Tip:" not in captured.out + captured.err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_only_on_a_terminal_and_never_when_quiet(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.delenv(console.QUIET_ENV, raising=False)
    console.set_quiet(False)
    list(console.progress(range(3), desc="counting", delay=0))
    assert "counting" in terminal.getvalue()

    for quiet in ("flag", "env"):
        terminal.seek(0)
        terminal.truncate()
        if quiet == "flag":
            console.set_quiet(True)
        else:
            console.set_quiet(False)
            monkeypatch.setenv(console.QUIET_ENV, "1")
        list(console.progress(range(3), desc="counting", delay=0))
        assert terminal.getvalue() == "", quiet
    console.set_quiet(False)
    monkeypatch.delenv(console.QUIET_ENV)

    pipe = io.StringIO()  # not a terminal
    monkeypatch.setattr("sys.stderr", pipe)
    list(console.progress(range(3), desc="counting", delay=0))
    assert pipe.getvalue() == ""


@pytest.mark.parametrize("quiet", [False, True])
def test_convert_draws_its_bar_on_a_terminal_unless_quiet(tmp_path, monkeypatch, quiet):
    from tests.conftest import write_image

    write_image(tmp_path / "images" / "a.jpg")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "names.txt").write_text("person\n")
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(console, "PROGRESS_DELAY_S", 0.0)
    args = ["convert", "yolo", "--labels", str(tmp_path / "labels"), "--images"]
    args += [str(tmp_path / "images"), "--names", str(tmp_path / "names.txt")]
    args += ["--out", str(tmp_path / "m.jsonl")] + (["--quiet"] if quiet else [])
    assert main(args) == 0
    console.set_quiet(False)
    assert ("converting yolo" in terminal.getvalue()) is not quiet
