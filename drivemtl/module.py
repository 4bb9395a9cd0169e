"""The LightningModule: tasks on a shared trunk, one training loop for all of them."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from drivemtl import finetune
from drivemtl.checkpoints import check_state_fits, drop_unread_stages, load_checkpoint
from drivemtl.data.batch import Batch
from drivemtl.data.labels import DEFAULT_CLASSES
from drivemtl.deploy.decode import decode_outputs
from drivemtl.errors import DriveMTLError
from drivemtl.models.factory import NO_INITIAL_WEIGHTS, build_network
from drivemtl.models.sharing import NUM_STAGES, HardSharing
from drivemtl.mtl.affinity import affinity_report, write_affinity
from drivemtl.mtl.forward import buffers_kept, capture_features
from drivemtl.mtl.granularity import (
    default_loss_weights,
    resolve_loss_weights,
    restrict_report,
    term_losses,
)
from drivemtl.mtl.objective import build_objective
from drivemtl.tasks import TaskOptions, complete_task_options

EVAL_STAGES = ("val", "test")


class MultiTaskModule(L.LightningModule):
    """Trains, evaluates and runs a :class:`MultiTaskNet` with any set of tasks.

    Every hyperparameter is plain data, so a checkpoint alone rebuilds the model (predict
    needs no config).

    Args:
        classes: Class names; linked from ``data.classes`` by the CLI.
        backbone: A torchvision name (resnet, mobilenet_v3, efficientnet, regnet, convnext)
            or ``timm/<name>`` (any timm model with stride 4-32 feature maps).
        weights: ``None`` (random init), a torchvision weights name or timm pretrained tag
            (downloads), or a local ``.pth`` / ``.pt`` / ``.safetensors`` state dict. Read
            once, when the model is built for training: a checkpoint holds the trained
            weights and never needs this again.
        init_from: A drivemtl checkpoint to start from (weights only): every tensor that
            fits is loaded, heads only for the same class list; see :mod:`drivemtl.finetune`.
        freeze: ``backbone`` or the number of leading backbone stages (0-4) not trained.
        freeze_bn_stats: Keep every backbone batch-norm layer's running statistics (small
            per-device batches); its scale and shift still train.
        backbone_lr_scale: The backbone's learning rate relative to the optimiser's.
        tasks: ``{task name: {option: value}}`` in training order (the first task's metric
            selects the best checkpoint); the default trains presence only. A config's tasks and
            options are checked when it is parsed.
        sharing: ``{strategy: {option: value}}``, one of ``hard`` (default), ``partial``
            (``branch: {task: shared stages}``), ``soft`` (``weight``) or ``mmoe``
            (``experts``, ``stem_stages``); see :mod:`drivemtl.models.sharing`.
        loss_weights: Fixed weight per task, by head or ``head/class``; the weights of
            ``balancing: fixed``. A task not named keeps its default (``Task.loss_weight``).
        granularity: ``head``: each head is one task; ``class``: presence splits into one task
            per class (``presence/pedestrian``, ...) for balancing, gradient methods and
            diagnostics.
        single_task: Train one task alone, a head (``depth``) or a class (``presence/car``):
            the single-task baseline, from the same config. Other heads are not built; a
            single class is scored (``metrics.json``) and predicted alone. It trains with a
            fixed weight of 1 and no gradient method or diagnostics.
        balancing: Loss balancing: ``fixed`` (default), ``uncertainty`` (Kendall et al.),
            ``dwa`` (dynamic weight averaging), ``gradnorm``, ``famo`` (Liu et al. 2023), or a
            mapping with options, e.g. ``{method: dwa, temperature: 2.0}``,
            ``{method: gradnorm, alpha: 1.5, lr: 0.025}``, ``{method: famo, lr: 0.025}``.
            See ``drivemtl.mtl.balancing``.
        gradients: A gradient method: ``pcgrad``, ``mgda``, ``aligned_mtl``, ``upgrad`` (needs
            ``drivemtl[upgrad]``), ``cagrad`` (needs ``drivemtl[cagrad]``), or a mapping with
            options, e.g. ``{method: cagrad, c: 0.4}``, ``{method: mgda, on: features}``;
            ``null``: plain backward. ``on: parameters`` (default) costs one backward pass per
            task through the trunk; ``on: features`` (hard sharing) one per task through the
            heads and one through the trunk. See ``drivemtl.mtl.gradients``.
        diagnose_every: Every this many steps, log the cosine between task gradients on the
            shared parameters, or on the shared representation with ``on: features``
            (``train/cos/<a>~<b>``), and accumulate the task affinity written
            to ``task_affinity.json`` / ``.png`` at the end of fit; 0: off.
        image_size: Network input (height, width); linked from ``data.image_size``.
        mean: Normalisation mean on the [0, 1] scale; ``None``: what the backbone's
            (default) pretrained weights expect. The checkpoint stores the values used.
        std: Normalisation std; ``None``: the backbone's, likewise.
        optimizer: Optimiser class and its arguments (default AdamW).
        lr: Learning rate; when given it replaces the optimiser's own ``lr`` in every parameter
            group. The attribute Lightning's ``LearningRateFinder`` tunes (``None``: the
            optimiser's rate, e.g. ``optimizer.init_args.lr``).
        lr_scheduler: Scheduler class and its arguments; default: linear warm-up then cosine
            decay to zero over the whole run, stepped per batch.
        warmup_steps: Warm-up length of the default scheduler.
        channels_last: Run convolutions in channels-last layout: with bf16 or fp16 mixed
            precision this is what lets oneDNN (CPU, AMX) and cuDNN (tensor cores) run fast.
        nonfinite_loss: What a training step whose loss is NaN or infinite does: ``stop`` the
            run with a message naming the step, the task and the batch's images, or ``skip``
            the step (no update; counted in ``train/skipped_steps``). Under DDP every process
            skips a step that any of them could not use.
    """

    def __init__(
        self,
        classes: list[str] = list(DEFAULT_CLASSES),
        backbone: str = "resnet18",
        weights: str | None = None,
        init_from: str | None = None,
        freeze: int | Literal["backbone"] = 0,
        freeze_bn_stats: bool = False,
        backbone_lr_scale: float = 1.0,
        tasks: TaskOptions | None = None,
        sharing: dict[str, dict | None] | None = None,
        loss_weights: dict[str, float] | None = None,
        granularity: Literal["head", "class"] = "head",
        single_task: str | None = None,
        balancing: str | dict[str, Any] = "fixed",
        gradients: str | dict[str, Any] | None = None,
        diagnose_every: int = 0,
        image_size: tuple[int, int] = (192, 320),
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr: float | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup_steps: int = 50,
        channels_last: bool = True,
        nonfinite_loss: Literal["stop", "skip"] = "stop",
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        built = build_network(
            classes,
            backbone,
            weights,
            tasks,
            sharing,
            granularity,
            single_task,
            mean,
            std,
            channels_last,
        )
        self.classes = built.classes
        self.terms = built.terms
        """The tasks that balancing, gradient methods and diagnostics see (heads or classes)."""
        self.tasks = built.tasks
        self.single_class = built.single_class
        """``(head, class)`` of a single-class baseline, whose reports and predictions keep
        that class only."""
        # The values used travel in the checkpoint: a later default cannot change the model.
        self.hparams["mean"], self.hparams["std"] = built.mean, built.std
        self.hparams["tasks"] = complete_task_options(tasks)
        if single_task is None:
            fixed = resolve_loss_weights(loss_weights, built.configured, self.classes, self.terms)
            self.objective = build_objective(
                [t.name for t in self.terms],
                fixed,
                balancing,
                gradients,
                diagnose_every,
                default_loss_weights(built.tasks, self.terms),
            )
        else:
            # The baseline: weight 1, nothing that only makes sense for several tasks.
            if balancing not in (None, "fixed") or gradients is not None or diagnose_every:
                rank_zero_info(
                    f"model.single_task={single_task}: trained alone with weight 1; "
                    "model.balancing, model.gradients and model.diagnose_every do not apply."
                )
            self.objective = build_objective([single_task])
        frozen = finetune.frozen_stage_count(freeze)
        trunk = built.trunk
        if self.objective.wants_features and not isinstance(trunk, HardSharing):
            raise DriveMTLError(
                "model.gradients on: features needs model.sharing hard (one representation "
                "that every head reads); use on: parameters with this sharing strategy."
            )
        self.net = built.net
        if init_from is not None:
            finetune.init_from_checkpoint(self, init_from, self.classes)
        finetune.freeze_stages(trunk, frozen)
        self._held_norm_stages = NUM_STAGES if freeze_bn_stats else frozen
        self.train()  # Lightning trains in the mode a module is built in
        if self.objective.balancer.needs_gradient_norms and self._last_shared_layer() is None:
            raise DriveMTLError(
                "model.balancing gradnorm needs a shared layer, and this network shares no "
                "weight tensor (net.shared_parameters())."
            )
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {n: t.build_metric(self.classes) for n, t in self.tasks.items()}
                )
                for stage in EVAL_STAGES
            }
        )
        self.optimizer = optimizer
        self.lr = lr
        self.lr_scheduler = lr_scheduler
        self.reports: dict[str, dict] = {}
        self.runtime = None
        """An exported file's runtime that ``predict`` runs instead of :attr:`net`
        (:meth:`use_exported`); ``None``: the net."""
        self._skipped_steps = 0
        """The last report of each stage ("val", "test"): the sections of ``metrics.json``."""

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path,
        map_location=None,
        hparams_file=None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs,
    ) -> MultiTaskModule:
        """The model a checkpoint describes, with its weights (``eval()`` is up to the caller).

        Read through :func:`drivemtl.checkpoints.load_checkpoint` (a local file, tensors and
        plain data only); ``kwargs`` override stored hyperparameters, as in Lightning.
        """
        if hparams_file is not None:
            raise DriveMTLError("hparams_file is not supported: the checkpoint holds them all.")
        checkpoint = load_checkpoint(checkpoint_path, map_location=map_location or "cpu")
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise DriveMTLError(f"checkpoint {checkpoint_path} is not a Lightning checkpoint.")
        stored = checkpoint.get(cls.CHECKPOINT_HYPER_PARAMS_KEY) or {}
        # LightningCLI stores its instantiator; the hyperparameters themselves are plain data.
        hparams = {k: v for k, v in stored.items() if not k.startswith("_")}
        # The state dict holds every trained tensor: initial weights are never read again.
        model = cls(**{**hparams, **NO_INITIAL_WEIGHTS, **kwargs})
        model.on_load_checkpoint({**checkpoint, "_source": str(checkpoint_path)})
        model.load_state_dict(checkpoint["state_dict"], strict=True if strict is None else strict)
        return model

    @property
    def monitor(self) -> str:
        """The logged metric that selects the best checkpoint: the first task's main metric."""
        task = next(iter(self.tasks.values()))
        return f"val/{task.name}/{task.monitor}"

    @property
    def monitor_mode(self) -> str:
        """``"max"`` or ``"min"``: whether a higher or a lower :attr:`monitor` is better."""
        return next(iter(self.tasks.values())).monitor_mode

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def _last_shared_layer(self) -> Tensor | None:
        """The last shared weight tensor (not a bias or norm scale): GradNorm's layer."""
        return next((p for p in reversed(self.net.shared_parameters()) if p.ndim >= 2), None)

    def _loss_scale(self) -> float:
        """The fp16 gradient scaler's current scale; 1 without one (fp32, bf16)."""
        scaler = getattr(self._trainer, "scaler", None)
        return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0

    def _parameter_split(self) -> tuple[list[Tensor], list[Tensor]]:
        """Trainable parameters: shared (combined by gradient methods) and all the others."""
        shared = [p for p in self.net.shared_parameters() if p.requires_grad]
        ids = {id(p) for p in shared}
        return shared, [p for p in self.parameters() if p.requires_grad and id(p) not in ids]

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        with capture_features(self.net.trunk, self.objective.wants_features) as representation:
            outputs = self(batch.images)
        losses = term_losses(self.terms, self.tasks, outputs, batch)
        if not self._losses_finite(losses, batch, batch_idx):
            return None  # Lightning skips backward and the optimiser step
        gradnorm = self.objective.balancer.needs_gradient_norms
        total, weights = self.objective(
            losses,
            self.net.sharing_penalty(),
            step=self.trainer.global_step,
            layer=self._last_shared_layer() if gradnorm else None,
            loss_scale=self._loss_scale() if gradnorm else 1.0,
            representation=representation,
        )
        self._batch_size = len(batch)
        logs = {}
        for name, (loss, count) in losses.items():
            logs[f"{name}/loss"] = loss.detach()
            logs[f"{name}/labelled"] = float(count)
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=len(batch))
        self.log_dict({f"train/{k}": v for k, v in (logs | weights).items()}, batch_size=len(batch))
        return total

    def _losses_finite(self, losses: dict, batch: Batch, batch_idx: int) -> bool:
        """Whether every task loss is finite; stops the run (or counts a skip) otherwise."""
        values = torch.stack([loss.detach().float() for loss, _ in losses.values()])
        finite = bool(torch.isfinite(values).all())
        if self.trainer.world_size > 1:  # all processes skip, or none: the updates stay equal
            finite = not self.trainer.strategy.reduce_boolean_decision(not finite, all=False)
        if finite:
            return True
        if self.hparams.nonfinite_loss == "skip":
            self._skipped_steps += 1
            self.log("train/skipped_steps", float(self._skipped_steps), batch_size=len(batch))
            return False
        bad = ", ".join(
            f"{name} = {loss.item()}" for name, (loss, _) in losses.items() if not loss.isfinite()
        )
        images = ", ".join(batch.paths[:3]) + (" ..." if len(batch.paths) > 3 else "")
        raise DriveMTLError(
            f"Training stopped: the loss is not finite at step {self.trainer.global_step} "
            f"(epoch {self.current_epoch}, batch {batch_idx}): {bad or 'on another process'}. "
            f"Images of this batch: {images}. Lower the learning rate, check these images' "
            "labels, or pass --model.nonfinite_loss skip to skip such steps. "
            "checkpoints/last.ckpt, if an epoch finished, holds the last one."
        )

    def backward(self, loss: Tensor, *args, **kwargs) -> None:
        """Lightning's backward hook: a plain backward, or (gradient methods, diagnostic steps)
        per-task gradients combined on the shared parameters by the multi-task objective."""
        if not self.objective.wants_jacobian:
            self.objective.discard()
            loss.backward(*args, **kwargs)
            return
        shared, others = self._parameter_split()
        logs = self.objective.backward(
            loss,
            shared,
            others,
            loss_scale=self._loss_scale(),
            accumulate=self.trainer.accumulate_grad_batches,
        )
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=self._batch_size)

    def train(self, mode: bool = True) -> MultiTaskModule:
        """Train mode, except for the batch-norm layers whose statistics are held."""
        super().train(mode)
        held = getattr(self, "_held_norm_stages", 0)  # 0 while __init__ runs
        if mode and held:
            finetune.hold_norm_statistics(self.net.trunk, held)
        return self

    def setup(self, stage: str) -> None:
        if self._held_norm_stages:  # held batch norms are in eval mode on purpose
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        if stage == "fit" and self.objective.gradients is not None:
            self.objective.gradients.check()  # a missing solver stops fit before any step

    def on_before_optimizer_step(self, optimizer) -> None:
        self.objective.before_optimizer_step(self._loss_scale())

    def on_train_batch_end(self, outputs, batch: Batch, batch_idx: int) -> None:
        if self.objective.end_batch(self._loss_scale()):
            # FAMO: the batch's losses after the step, with no gradient and no change of state.
            context = self.trainer.precision_plugin.forward_context()
            with torch.no_grad(), context, buffers_kept(self.net):
                losses = term_losses(self.terms, self.tasks, self(batch.images), batch)
            self.objective.after_step(losses)

    def on_train_epoch_start(self) -> None:
        self.objective.on_train_epoch_start()

    def on_train_end(self) -> None:
        """Write the task affinity and the suggested grouping into the run folder."""
        affinity = self.objective.affinity
        if affinity is None:
            return
        # log_dir is a collective call under DDP: every rank asks, rank 0 writes.
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if not self.trainer.is_global_zero or int(affinity.counts.sum()) == 0:
            return
        report = affinity_report(affinity, self.objective.diagnose_every)
        json_path, _ = write_affinity(report, folder)
        groups = " | ".join(", ".join(g) for g in report["grouping"]["groups"])
        rank_zero_info(f"Task affinity: {json_path} (suggested networks: {groups})")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The global random state (dropout) at the end of the epoch, so that a resumed run
        # continues as the interrupted one would have (the data's state: the DataModule's).
        checkpoint["random_state"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["random_state"]["cuda"] = torch.cuda.get_rng_state_all()
        # The trained weights are inside: rebuilding this model (validate, test, predict,
        # resume) must not read, download or need the initial ones again. Where they came
        # from is kept apart, as a record.
        hparams = checkpoint.get(self.CHECKPOINT_HYPER_PARAMS_KEY)
        if isinstance(hparams, dict):
            record = {k: hparams.get(k) for k in NO_INITIAL_WEIGHTS if hparams.get(k)}
            if record:
                checkpoint["initialised_from"] = record
            checkpoint[self.CHECKPOINT_HYPER_PARAMS_KEY] = {**hparams, **NO_INITIAL_WEIGHTS}
        if self.objective.affinity is not None:
            checkpoint["task_affinity"] = self.objective.affinity.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Check the weights against the model the hyperparameters built (before loading)."""
        source = getattr(self._trainer, "ckpt_path", None) or checkpoint.get("_source")
        what = f"checkpoint {source}" if source else "the checkpoint"
        state = checkpoint.get("state_dict") or {}
        dropped = drop_unread_stages(state, self.state_dict(), what)
        check_state_fits(state, self.state_dict(), what)
        fitting = self._trainer is not None and self._trainer.state.fn == "fit"
        if dropped and fitting and checkpoint.get("optimizer_states"):
            raise DriveMTLError(
                f"{what} carries {dropped} tensors of a backbone stage that no head reads "
                "(written before such stages were left out): its weights load, for validate, "
                "test, predict and export, but its optimiser state does not fit this model. "
                f"To train on, start a new fit from its weights: --model.init_from {source}."
            )
        random_state = checkpoint.get("random_state") or {}
        if self._trainer is not None and "torch" in random_state:  # a Trainer restores it
            torch.set_rng_state(random_state["torch"])
            cuda = random_state.get("cuda") or []
            if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
        if self.objective.affinity is not None and "task_affinity" in checkpoint:
            self.objective.affinity.load_state_dict(checkpoint["task_affinity"])

    def _eval_step(self, batch: Batch, stage: str) -> None:
        outputs = self(batch.images)
        losses = term_losses(self.terms, self.tasks, outputs, batch)
        total = self.objective.weighted_sum(losses)
        self.log(f"{stage}/loss", total, sync_dist=True, batch_size=len(batch))
        for name, task in self.tasks.items():
            task.update_metric(self.metrics[stage][name], outputs[name], batch)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_epoch_end(self, stage: str) -> None:
        # Thresholds are chosen on validation data and only applied on test data.
        choose = stage == "val" and not self.trainer.sanity_checking
        report, scalars = {}, {}
        for name, task in self.tasks.items():
            metric = self.metrics[stage][name]
            report[name] = task.report(metric, self.net.heads[name], choose_thresholds=choose)
            metric.reset()
            if self.single_class is not None and self.single_class[0] == name:
                report[name] = restrict_report(report[name], self.single_class[1])
            scalars.update(task.scalars(report[name]))
        if stage == "val":
            # Undefined (no labelled positive): logged as NaN, never as a fake 0.
            scalars.setdefault(self.monitor.split("/", 1)[1], math.nan)
        for key, value in scalars.items():
            self.log(f"{stage}/{key}", value, sync_dist=True)
        self.reports[stage] = report

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def use_exported(self, path: str | Path) -> None:
        """Predict with an exported file (``drivemtl export``) in place of :attr:`net`: its
        runtime computes the head outputs, its model card's decision state (thresholds)
        goes into the heads that decoding reads."""
        from drivemtl.deploy.card import load_decision_state
        from drivemtl.deploy.runtimes import OnnxRuntime, TorchScriptRuntime, file_kind

        kind = file_kind(path)
        runtime = OnnxRuntime(path) if kind == "onnx" else TorchScriptRuntime(path)
        load_decision_state(self.net.heads, runtime.card.decision_state)
        self.runtime = runtime

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict]:
        # An exported file (drivemtl predict --ckpt_path model.onnx) runs in place of the net.
        outputs = self(batch.images) if self.runtime is None else self.runtime(batch.images)
        return decode_outputs(
            outputs, batch, self.tasks, self.net.heads, self.classes, self.single_class
        )

    def configure_optimizers(self):
        own = self.objective.parameters()  # uncertainty's log-variances
        groups = finetune.parameter_groups(
            self, self.net.trunk, own, self.hparams.backbone_lr_scale
        )
        optimizer = self.optimizer(groups)
        if self.lr is not None:  # before any scheduler records the initial rates
            for group in optimizer.param_groups:
                group["lr"] = self.lr
        finetune.scale_learning_rates(optimizer)
        if self.lr_scheduler is not None:
            return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler(optimizer)}
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(self.hparams.warmup_steps, total // 4)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
