"""Command line: LightningCLI for fit / validate / test / predict, plus convert, evaluate, compare.

``main(args=None)`` is what the ``drivemtl`` script and ``python -m drivemtl`` call; tests call it
directly with a list of arguments.
"""

from __future__ import annotations

import os
import re
import sys
import time
import warnings
from pathlib import Path

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn

from drivemtl.checkpoints import SafeCheckpointIO
from drivemtl.data.datamodule import DriveDataModule
from drivemtl.errors import DriveMTLError
from drivemtl.module import NO_INITIAL_WEIGHTS, MultiTaskModule
from drivemtl.prediction import (
    PredictionWriter,
    add_predict_arguments,
    align_data_with_checkpoint,
    build_writer,
    check_predict_config,
)
from drivemtl.reporting import format_report, write_metrics

RUN_DIR_ENV = "DRIVEMTL_RUN_DIR"
"""Carries the run folder to DDP worker processes, which re-run the command line."""


def tasks_need_depth(tasks: dict | None) -> bool:
    """Whether a ``model.tasks`` mapping names a task that trains on depth maps.

    ``None`` is the module's default (presence only). An unknown name is left for the model
    to report.
    """
    from drivemtl.tasks import TASKS

    return any(getattr(TASKS.get(name), "needs_depth", False) for name in tasks or {})


def warn_model_options_ignored(subcommand: str, section, argv) -> None:
    """Warn that ``--model.*`` flags do nothing when a checkpoint defines the model.

    Lightning rebuilds the model from the checkpoint's hyperparameters for validate, test and
    predict, so a flag such as ``--model.backbone`` would otherwise be dropped without a word.
    """
    if subcommand == "fit" or not section.get("ckpt_path"):
        return
    given = sorted({str(a).split("=", 1)[0] for a in argv if str(a).startswith("--model.")})
    if given:
        rank_zero_warn(
            f"{', '.join(given)} ignored: {subcommand} builds the model the checkpoint "
            f"{section.get('ckpt_path')} describes (backbone, tasks and their options)."
        )


def with_safe_checkpoint_io(plugins) -> list:
    """The configured trainer plugins, with every checkpoint read through the safe loader.

    A user's own ``CheckpointIO`` plugin is refused: it would bypass the ``weights_only`` load.
    """
    plugins = [] if plugins is None else list(plugins if isinstance(plugins, list) else [plugins])
    if any(isinstance(p, CheckpointIO) for p in plugins):
        raise DriveMTLError(
            "trainer.plugins: a CheckpointIO plugin is not supported; drivemtl reads every "
            "checkpoint through its own safe loader (drivemtl.checkpoints)."
        )
    return [*plugins, SafeCheckpointIO()]


class DriveCLI(LightningCLI):
    """LightningCLI with the class list linked once, one folder per run, and a closing report."""

    def add_arguments_to_parser(self, parser) -> None:
        # The class list and input size are configured once, in the data section.
        parser.link_arguments("data.classes", "model.classes")
        parser.link_arguments("data.image_size", "model.image_size")
        # Depth maps are decoded only when a task trains on them, and the user never says so
        # twice: the task list decides (also when it comes from a --ckpt_path).
        parser.link_arguments("model.tasks", "data.load_depth", compute_fn=tasks_need_depth)

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        # LightningCLI has no per-subcommand hook; the output options belong to predict only.
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            add_predict_arguments(parser)
        return parser

    def parse_arguments(self, parser, args) -> None:
        """Parse, then let a ``--ckpt_path`` supply the data section's classes and image size.

        Lightning then reads the model's hyperparameters from the checkpoint; the linked
        ``model.classes`` / ``model.image_size`` follow the data section, so it must agree.
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        section = self.config[subcommand]
        defaults = self._subcommand_parsers[subcommand].get_defaults()
        align_data_with_checkpoint(section, defaults)
        warn_model_options_ignored(subcommand, section, sys.argv[1:] if args is None else args)
        if subcommand == "predict":
            check_predict_config(section)  # before any model is built

    def before_instantiate_classes(self) -> None:
        """A ``--ckpt_path`` holds the trained weights: the model it rebuilds (validate,
        test, predict, a resumed fit) reads no ``model.weights`` / ``model.init_from``."""
        section = self.config.get(self.subcommand) if self.subcommand else None
        if section is not None and section.get("ckpt_path"):
            for key, value in NO_INITIAL_WEIGHTS.items():
                section.model[key] = value

    def _run_dir(self) -> Path:
        given = self._get(self.config, "trainer.default_root_dir")
        if self.subcommand == "predict":
            given = self._get(self.config, "output_dir") or given
        if given:
            return Path(given)
        if RUN_DIR_ENV not in os.environ:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            os.environ[RUN_DIR_ENV] = str(Path("runs") / f"{self.subcommand}-{stamp}")
        return Path(os.environ[RUN_DIR_ENV])

    def instantiate_trainer(self, **kwargs):
        run_dir = self._run_dir()
        kwargs["default_root_dir"] = str(run_dir)
        kwargs["plugins"] = with_safe_checkpoint_io(self._get(self.config_init, "trainer.plugins"))
        if self.subcommand == "predict":
            # Predicting logs and saves nothing: keep the output folder to the outputs.
            kwargs["enable_checkpointing"] = False
            if self._get(self.config_init, "trainer.logger") is None:
                kwargs["logger"] = False
            if self._get(self.config_init, "trainer.devices") == "auto":
                kwargs["devices"] = 1  # one process writes one predictions.jsonl
        elif self._get(self.config_init, "trainer.logger") in (None, True):
            # name="" and version="": logs, config.yaml and checkpoints/ land in the run folder.
            kwargs["logger"] = [
                CSVLogger(run_dir, name="", version=""),
                TensorBoardLogger(run_dir, name="", version="", default_hp_metric=False),
            ]
        # A copy: Lightning appends its default ModelCheckpoint to the configured list itself.
        configured = list(self._get(self.config_init, "trainer.callbacks") or [])
        trainer = super().instantiate_trainer(**kwargs)
        if trainer.checkpoint_callback and not any(
            isinstance(c, ModelCheckpoint) for c in configured
        ):
            # Replace Lightning's default checkpointing by best.ckpt on our metric and a
            # last.ckpt of every epoch (save_last=True would only write it with a new best).
            trainer.callbacks[:] = [
                c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)
            ]
            best = ModelCheckpoint(
                monitor=self.model.monitor,
                mode=self.model.monitor_mode,
                filename="best",
                enable_version_counter=False,
            )
            last = ModelCheckpoint(filename="last", enable_version_counter=False)
            trainer.callbacks += [best, last]
        return trainer

    def _get_ckpt(self) -> ModelCheckpoint | None:
        """The first checkpoint callback: ours keeps the best on the monitored metric."""
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

    def before_predict(self) -> None:
        writer = build_writer(self.config[self.subcommand], self.trainer.default_root_dir)
        self.trainer.callbacks.append(writer)

    def predict(self, model, datamodule, return_predictions=None, **kwargs) -> None:
        """Run prediction; the writer streams every batch to disk, so nothing is returned
        (returned predictions would hold the whole folder's results in memory)."""
        with warnings.catch_warnings():
            # Checkpointing is off while predicting; the checkpoint's callback state is moot.
            warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`")
            self.trainer.predict(model, datamodule=datamodule, return_predictions=False, **kwargs)

    def after_predict(self) -> None:
        """Print the closing summary; fail only when no image has a prediction."""
        writer = next(c for c in self.trainer.callbacks if isinstance(c, PredictionWriter))
        print()
        print(writer.summary())
        if writer.total_predicted() == 0:
            raise DriveMTLError(
                f"No image could be read: all {writer.stats.failed} failed "
                f"(reasons in {writer.errors_path})."
            )

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


def user_message(error: DriveMTLError) -> str:
    """The error's own message, without the worker traceback that a DataLoader worker adds.

    PyTorch re-raises a worker's exception in the main process with the worker's formatted
    traceback as its message; the user needs only the last part, what went wrong.
    """
    text = str(error)
    _, marker, trace = text.partition("Original Traceback (most recent call last):\n")
    if not marker:
        return text
    # The traceback's frames are indented; the exception line ("pkg.Error: message") is not.
    found = re.search(r"^[A-Za-z_][\w.]*: ", trace, flags=re.MULTILINE)
    return trace[found.end() :].rstrip() if found else text


SUBCOMMANDS = ("fit", "validate", "test", "predict", "convert", "evaluate", "compare")

USAGE = """\
usage: drivemtl {fit,validate,test,predict,convert,evaluate,compare} ...

Multi-task learning on driving scenes (presence, detection, depth) with PyTorch Lightning.

subcommands (drivemtl <subcommand> --help for its options):
  fit        train a model from a config (LightningCLI: --config configs/demo.yaml)
  validate   metrics of a checkpoint on the validation data (--ckpt_path)
  test       metrics of a checkpoint on the test data (--ckpt_path)
  predict    predictions.jsonl (+ overlays, depth maps) for a folder of images
  convert    COCO, YOLO, VOC, BDD100K, KITTI or Cityscapes annotations -> manifest
  evaluate   score a predictions.jsonl against a manifest, per class
  compare    multi-task gain over single-task runs (Delta_m) from their metrics.json
"""


DEBUG_ENV = "DRIVEMTL_DEBUG"
"""Set to 1 (or pass ``--debug``) to see the traceback behind an error message."""


def main(args: list[str] | None = None) -> int:
    """Entry point of ``drivemtl``; returns the exit status.

    Errors a user can cause end in one ``drivemtl: error:`` message and exit status 2; an
    unexpected one (a bug) in a message with exit status 1. ``--debug`` or ``DRIVEMTL_DEBUG=1``
    lets the exception through with its traceback.
    """
    argv = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if debug:
        os.environ[DEBUG_ENV] = "1"  # DDP workers re-run the command line without the flag
    if args is None:
        sys.argv[1:] = argv  # LightningCLI reads sys.argv itself
    try:
        return _dispatch(argv, None if args is None else argv)
    except Exception as e:
        if debug:
            raise
        if isinstance(e, DriveMTLError):
            print(f"drivemtl: error: {user_message(e)}", file=sys.stderr)
            return 2
        if isinstance(e, OSError):  # a file the user named: missing, unreadable, disk full
            where = f"{e.filename}: " if e.filename else ""
            print(f"drivemtl: error: {where}{e.strerror or user_message(e)}", file=sys.stderr)
            return 2
        print(
            f"drivemtl: error: unexpected {type(e).__name__}: {user_message(e)}\n"
            f"This is probably a bug in drivemtl: run again with --debug (or {DEBUG_ENV}=1) "
            "for the traceback, and report it.",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print("drivemtl: interrupted", file=sys.stderr)
        return 130


def _dispatch(argv: list[str], lightning_args: list[str] | None) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        # LightningCLI's own top-level help would list only its four subcommands.
        print(USAGE, end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in SUBCOMMANDS and not argv[0].startswith("-"):
        print(f"{USAGE}\ndrivemtl: error: unknown subcommand {argv[0]!r}", file=sys.stderr)
        return 2
    owns_run_dir = RUN_DIR_ENV not in os.environ
    try:
        if argv[0] == "convert":
            from drivemtl.converters import main as convert

            return convert(argv[1:])
        if argv[0] == "evaluate":
            from drivemtl.evaluation import main as evaluate

            return evaluate(argv[1:])
        if argv[0] == "compare":
            from drivemtl.mtl.compare import main as compare

            return compare(argv[1:])
        # None lets LightningCLI read sys.argv itself (and not warn about being given both).
        run_lightning(lightning_args)
    finally:
        if owns_run_dir:  # the next run in this process gets a folder of its own
            os.environ.pop(RUN_DIR_ENV, None)
    return 0
