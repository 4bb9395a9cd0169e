"""Command line: LightningCLI for fit / validate / test / predict, plus convert and evaluate.

``main(args=None)`` is what the ``drivemtl`` script and ``python -m drivemtl`` call; tests call it
directly with a list of arguments.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from drivemtl.data.datamodule import DriveDataModule
from drivemtl.errors import DriveMTLError
from drivemtl.module import MultiTaskModule
from drivemtl.reporting import format_report, write_metrics

RUN_DIR_ENV = "DRIVEMTL_RUN_DIR"
"""Carries the run folder to DDP worker processes, which re-run the command line."""


class DriveCLI(LightningCLI):
    """LightningCLI with the class list linked once, one folder per run, and a closing report."""

    def add_arguments_to_parser(self, parser) -> None:
        # The class list and input size are configured once, in the data section.
        parser.link_arguments("data.classes", "model.classes")
        parser.link_arguments("data.image_size", "model.image_size")

    def _run_dir(self) -> Path:
        given = self._get(self.config, "trainer.default_root_dir")
        if given:
            return Path(given)
        if RUN_DIR_ENV not in os.environ:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            os.environ[RUN_DIR_ENV] = str(Path("runs") / f"{self.subcommand}-{stamp}")
        return Path(os.environ[RUN_DIR_ENV])

    def instantiate_trainer(self, **kwargs):
        run_dir = self._run_dir()
        kwargs["default_root_dir"] = str(run_dir)
        if self._get(self.config_init, "trainer.logger") in (None, True):
            # name="" and version="": logs, config.yaml and checkpoints/ land in the run folder.
            kwargs["logger"] = [
                CSVLogger(run_dir, name="", version=""),
                TensorBoardLogger(run_dir, name="", version="", default_hp_metric=False),
            ]
        checkpoint = ModelCheckpoint(
            monitor=self.model.monitor,
            mode="max",
            filename="best",
            save_last=True,
            enable_version_counter=False,
        )
        trainer = super().instantiate_trainer(**kwargs)
        configured = self._get(self.config_init, "trainer.callbacks") or []
        if trainer.checkpoint_callback and not any(
            isinstance(c, ModelCheckpoint) for c in configured
        ):
            # Replace Lightning's default checkpointing by best.ckpt / last.ckpt on our metric.
            trainer.callbacks[:] = [
                c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)
            ]
            trainer.callbacks.append(checkpoint)
        return trainer

    def _get_ckpt(self) -> ModelCheckpoint | None:
        return next((c for c in self.trainer.callbacks if isinstance(c, ModelCheckpoint)), None)

    def after_fit(self) -> None:
        """Re-validate the best checkpoint, then write its metrics.json and print the table."""
        checkpoint = self._get_ckpt()
        best = checkpoint.best_model_path if checkpoint else ""
        self.trainer.validate(
            self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=False
        )
        self._finish("val", best)

    def after_validate(self) -> None:
        self._finish("val", self._get(self.config, "ckpt_path") or "")

    def after_test(self) -> None:
        self._finish("test", self._get(self.config, "ckpt_path") or "")

    def _finish(self, stage: str, checkpoint: str) -> None:
        # log_dir is a collective call under DDP: every rank must ask, only rank 0 writes.
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if not self.trainer.is_global_zero:
            return
        report = self.model.reports.get(stage, {})
        path = write_metrics(report, run_dir / "metrics.json")
        print()
        print(format_report(report))
        print()
        if checkpoint:
            print(f"Checkpoint: {checkpoint}")
        print(f"Metrics:    {path}")
        print(f"Run folder: {run_dir}")


def run_lightning(args: list[str] | None) -> None:
    DriveCLI(
        MultiTaskModule,
        DriveDataModule,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
    )


def main(args: list[str] | None = None) -> int:
    """Entry point of ``drivemtl``; returns the exit status."""
    argv = list(sys.argv[1:] if args is None else args)
    owns_run_dir = RUN_DIR_ENV not in os.environ
    try:
        if argv and argv[0] == "convert":
            from drivemtl.converters import main as convert

            return convert(argv[1:])
        if argv and argv[0] == "evaluate":
            from drivemtl.evaluation import main as evaluate

            return evaluate(argv[1:])
        run_lightning(argv)
    except DriveMTLError as e:
        print(f"drivemtl: error: {e}", file=sys.stderr)
        return 2
    finally:
        if owns_run_dir:  # the next run in this process gets a folder of its own
            os.environ.pop(RUN_DIR_ENV, None)
    return 0
