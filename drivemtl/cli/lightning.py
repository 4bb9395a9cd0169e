"""LightningCLI for fit / validate / test / predict: the run folder, safe checkpoint reads, loggers
that add, and the closing report.

Imported by :func:`drivemtl.cli.main` only for those four subcommands, so that ``convert``,
``inspect``, ``evaluate``, ``compare`` and every ``--help`` but theirs start without torch and
Lightning.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

from jsonargparse import DefaultHelpFormatter
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn

from drivemtl.checkpoint_io import SafeCheckpointIO
from drivemtl.cli import RUN_DIR_ENV
from drivemtl.console import hide_unactionable_messages, setup_console
from drivemtl.data.datamodule import DriveDataModule
from drivemtl.errors import DriveMTLError, optional_value_error
from drivemtl.models.factory import NO_INITIAL_WEIGHTS
from drivemtl.module import MultiTaskModule
from drivemtl.prediction import (
    LIGHTNING_CKPT_NAMES,
    PredictionWriter,
    add_predict_arguments,
    align_data_with_checkpoint,
    build_writer,
    check_predict_config,
)
from drivemtl.reporting import format_report, write_metrics
from drivemtl.tasks import TASKS, complete_task_options, describe_task_options


def task_pixel_labels(tasks: dict | None) -> dict[str, dict]:
    """The per-pixel label maps (``Task.pixel_label``) a ``model.tasks`` mapping trains on,
    each with its task's reader options (``Task.pixel_label_options``).

    ``None`` is the module's default (presence only). An unknown name or bad options are left
    for the model to report.
    """
    labels = {}
    for name, options in (tasks or {}).items():
        task = TASKS.get(name)
        if task is None or not task.pixel_label:
            continue
        try:
            labels[task.pixel_label] = task(**(options or {})).pixel_label_options()
        except (TypeError, ValueError):
            labels[task.pixel_label] = {}
    return labels


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


class YAMLDefaultsHelpFormatter(DefaultHelpFormatter):
    """``--help`` with mapping, list and bool defaults as a config writes them (``null``, ``true``,
    ``{task: {option: value}}``), not as Python reprs (``None``, ``True``)."""

    def _get_help_string(self, action) -> str:
        text = super()._get_help_string(action)
        # jsonargparse has set action.default to the parser's default before this call.
        if isinstance(action.default, (dict, list, bool)):
            try:
                shown = json.dumps(action.default).replace("%", "%%")  # a template: % escaped
            except TypeError:
                return text
            text = text.replace("default: %(default)s", f"default: {shown}")
        return text


class DriveArgumentParser(LightningArgumentParser):
    """LightningCLI's parser with a one-line usage on errors (not every option it has),
    shorter messages for optional values and defaults in YAML's spelling in ``--help``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", YAMLDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def print_usage(self, file=None) -> None:
        prog = self.prog.replace(" [options]", "")
        print(f"usage: {prog} [options]", file=file or sys.stderr)

    def error(self, message: str, ex: Exception | None = None):
        super().error(optional_value_error(message), ex)


def run_loggers(run_dir: Path, configured) -> list[Logger]:
    """The loggers of a run: CSV and TensorBoard in the run folder, plus the configured ones.

    ``configured`` is ``trainer.logger`` as instantiated: ``None`` / ``True`` (the defaults
    only), one logger or a list (wandb, MLflow, ...: added to the defaults). A list that names
    a ``CSVLogger`` or ``TensorBoardLogger`` lays out the logging itself and is used as given.
    """
    given = [] if configured in (None, True) else configured
    given = list(given) if isinstance(given, (list, tuple)) else [given]
    if any(isinstance(logger, (CSVLogger, TensorBoardLogger)) for logger in given):
        return given
    # name="" and version="": the files land in the run folder itself.
    return [
        CSVLogger(run_dir, name="", version=""),
        TensorBoardLogger(run_dir, name="", version="", default_hp_metric=False),
        *given,
    ]


class RunTrainer(Trainer):
    """Lightning's Trainer with one run folder, whatever the loggers.

    Lightning writes ``config.yaml`` (and profiler reports) into ``log_dir``, the first
    logger's folder: for wandb or MLflow not the run folder. Here ``log_dir`` is always
    ``default_root_dir``, the folder the CLI creates and prints. Settings Lightning would take
    and then fail on (or train wrongly with) are refused here, before anything is built.
    """

    def __init__(self, *args, **kwargs) -> None:
        accumulate = kwargs.get("accumulate_grad_batches", 1)
        if isinstance(accumulate, int) and accumulate < 1:  # Lightning divides by it
            raise DriveMTLError(
                f"trainer.accumulate_grad_batches must be 1 or more, got {accumulate}."
            )
        clip = kwargs.get("gradient_clip_val")
        if clip is not None and not clip >= 0:  # a negative clip reverses the gradients
            raise DriveMTLError(
                f"trainer.gradient_clip_val must be 0 or more (0 or null: no clipping), got {clip}."
            )
        try:
            super().__init__(*args, **kwargs)
        except ValueError as e:  # Lightning's checks of names it looks up (strategy, plugins)
            raise DriveMTLError(f"Bad trainer setting: {e}") from e

    @property
    def log_dir(self) -> str:
        return self.default_root_dir


def log_run_images(
    trainer: Trainer, report: dict, run_dir: Path, stage: str, fitted: bool = False
) -> None:
    """Each task's figures of the report and, after a fit, its task-affinity map into the
    image loggers."""
    from drivemtl.image_logging import figure_array, log_images, png_array

    if not trainer.loggers:
        return
    images = {}
    for name, section in report.items():
        task = TASKS.get(name)
        for key, figure in (task.report_figures(section) if task else {}).items():
            images[f"{stage}/{name}_{key}"] = figure_array(figure)
    affinity = run_dir / "task_affinity.png"
    if fitted and affinity.is_file():
        images["train/task_affinity"] = png_array(affinity)
    if images:
        log_images(trainer.loggers, images, step=trainer.global_step)


class DriveCLI(LightningCLI):
    """LightningCLI with the class list linked once, one folder per run, and a closing report."""

    def add_arguments_to_parser(self, parser) -> None:
        # The class list and input size are configured once, in the data section.
        parser.link_arguments("data.classes", "model.classes")
        parser.link_arguments("data.image_size", "model.image_size")
        # Label maps are decoded only when a task trains on them, and the user never says so
        # twice: the task list decides (also when it comes from a --ckpt_path).
        parser.link_arguments("model.tasks", "data.pixel_labels", compute_fn=task_pixel_labels)
        # The default task list with every option, as --print_config and config.yaml show it.
        parser.set_defaults({"model.tasks": complete_task_options(None)})
        for action in parser._actions:  # --help lists every registered task with its options
            if action.dest == "model.tasks":
                action.help = f"{action.help} Tasks and their options: {describe_task_options()}."

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        # LightningCLI has no per-subcommand hook; the output options belong to predict only.
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            add_predict_arguments(parser)
        if subcommand in ("validate", "test"):
            parser.set_defaults(verbose=False)  # the closing per-class table says it once
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
        ckpt_path = section.get("ckpt_path")
        if subcommand in ("validate", "test") and str(ckpt_path) in LIGHTNING_CKPT_NAMES:
            # "best" / "last" name a checkpoint of the current fit; these commands run none.
            raise DriveMTLError(
                f"{subcommand} --ckpt_path {ckpt_path}: give --ckpt_path the checkpoint file, "
                "e.g. RUN/checkpoints/best.ckpt."
            )
        align_data_with_checkpoint(section, defaults)
        warn_model_options_ignored(subcommand, section, sys.argv[1:] if args is None else args)
        if subcommand == "predict":
            check_predict_config(section)  # before any model is built

    def _parse_ckpt_path(self) -> None:
        """Lightning reads the model's hyperparameters from ``--ckpt_path`` with
        ``torch.load``; an exported file (``drivemtl predict --ckpt_path model.onnx``) holds
        them in its model card instead, and its network runs in place of the model's."""
        self._exported = None
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return super()._parse_ckpt_path()
        from drivemtl.deploy.runtimes import file_kind, read_card

        kind = file_kind(ckpt_path)
        if kind == "checkpoint":
            return super()._parse_ckpt_path()
        if subcommand != "predict":  # torch.load would fail, advising an unsafe retry
            raise DriveMTLError(
                f"{subcommand} --ckpt_path {ckpt_path}: this is an exported "
                f"{dict(onnx='ONNX', torchscript='TorchScript')[kind]} file; "
                f"{subcommand} needs the checkpoint it was exported from (e.g. "
                "RUN/checkpoints/best.ckpt). drivemtl predict --ckpt_path and drivemtl.load() "
                "run exported files."
            )
        self._exported = str(ckpt_path)
        hparams = {subcommand: {"model": dict(read_card(ckpt_path).hparams)}}
        self.config = self.parser.parse_object(hparams, self.config)
        return None

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
        logger = self._get(self.config_init, "trainer.logger")
        # Our bars (manifests, synthetic data, inspection) follow Lightning's.
        setup_console(bars=self._get(self.config_init, "trainer.enable_progress_bar") is not False)
        if self.subcommand in ("validate", "test"):
            # They save no checkpoint: that the loaded one's folder is not theirs is moot.
            warnings.filterwarnings("ignore", message="The dirpath has changed from")
        if self.subcommand == "predict":
            # Predicting logs and saves nothing: keep the output folder to the outputs.
            kwargs["enable_checkpointing"] = False
            if logger is None:
                kwargs["logger"] = False
            if self._get(self.config_init, "trainer.devices") == "auto":
                kwargs["devices"] = 1  # one process writes one predictions.jsonl
        elif logger is not False:
            kwargs["logger"] = run_loggers(run_dir, logger)
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
        for callback in trainer.callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(run_dir / "checkpoints")  # not the first logger's folder
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
        if self._exported:
            self.model.use_exported(self._exported)

    def predict(self, model, datamodule, return_predictions=None, **kwargs) -> None:
        """Run prediction; the writer streams every batch to disk, so nothing is returned
        (returned predictions would hold the whole folder's results in memory)."""
        if self._exported:
            kwargs["ckpt_path"] = None  # no weights to load: the exported file runs
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
        log_run_images(self.trainer, report, run_dir, stage, fitted=self.subcommand == "fit")
        print()
        print(format_report(report))
        print()
        if checkpoint:
            print(f"Checkpoint: {checkpoint}")
        print(f"Metrics:    {path}")
        print(f"Run folder: {run_dir}")


def run_lightning(args: list[str] | None) -> None:
    hide_unactionable_messages()  # before LightningCLI seeds and builds the Trainer
    DriveCLI(
        MultiTaskModule,
        DriveDataModule,
        parser_class=DriveArgumentParser,
        parser_kwargs={"prog": "drivemtl"},  # not "__main__.py" under python -m drivemtl
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
        trainer_class=RunTrainer,
    )
