"""The LightningModule: tasks on a shared trunk, one training loop for all of them."""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from drivemtl.data.batch import Batch
from drivemtl.data.labels import DEFAULT_CLASSES
from drivemtl.errors import DriveMTLError
from drivemtl.models.backbones import Backbone
from drivemtl.models.net import IMAGENET_MEAN, IMAGENET_STD, MultiTaskNet
from drivemtl.tasks import build_tasks

EVAL_STAGES = ("val", "test")


class MultiTaskModule(L.LightningModule):
    """Trains, evaluates and runs a :class:`MultiTaskNet` with any set of tasks.

    Every hyperparameter is plain data, so a checkpoint alone rebuilds the model (predict
    needs no config).

    Args:
        classes: Class names; linked from ``data.classes`` by the CLI.
        backbone: Torchvision backbone name (resnet, mobilenet_v3, efficientnet, regnet, convnext).
        weights: ``None`` (random init), a torchvision weights name, or a local state-dict file.
        tasks: ``{task name: {option: value}}``; the default trains presence only.
        loss_weights: Fixed weight per task (default 1 each).
        image_size: Network input (height, width); linked from ``data.image_size``.
        mean: Normalisation mean on the [0, 1] scale.
        std: Normalisation std.
        optimizer: Optimiser class and its arguments (default AdamW).
        lr_scheduler: Scheduler class and its arguments; default: linear warm-up then cosine
            decay to zero over the whole run, stepped per batch.
        warmup_steps: Warm-up length of the default scheduler.
        channels_last: Run convolutions in channels-last layout: with bf16 or fp16 mixed
            precision this is what lets oneDNN (CPU, AMX) and cuDNN (tensor cores) run fast.
    """

    def __init__(
        self,
        classes: list[str] = list(DEFAULT_CLASSES),
        backbone: str = "resnet18",
        weights: str | None = None,
        tasks: dict[str, dict | None] | None = None,
        loss_weights: dict[str, float] | None = None,
        image_size: tuple[int, int] = (192, 320),
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup_steps: int = 50,
        channels_last: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.classes = list(classes)
        self.tasks = build_tasks(tasks or {"presence": {}})
        self.loss_weights = {name: 1.0 for name in self.tasks} | dict(loss_weights or {})
        unknown = set(self.loss_weights) - set(self.tasks)
        if unknown:
            raise DriveMTLError(f"model.loss_weights names tasks not trained: {sorted(unknown)}")
        trunk = Backbone(backbone, weights)
        try:
            heads = {n: t.build_head(trunk.channels, self.classes) for n, t in self.tasks.items()}
        except ValueError as e:
            raise DriveMTLError(str(e)) from None
        self.net = MultiTaskNet(trunk, heads, mean, std)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {n: t.build_metric(self.classes) for n, t in self.tasks.items()}
                )
                for stage in EVAL_STAGES
            }
        )
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.reports: dict[str, dict] = {}
        """The last report of each stage ("val", "test"): the sections of ``metrics.json``."""

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

    def _losses(self, outputs: dict[str, Tensor], batch: Batch) -> tuple[Tensor, dict]:
        total, logs = 0.0, {}
        for name, task in self.tasks.items():
            loss, count = task.loss(outputs[name], batch)
            total = total + self.loss_weights[name] * loss
            logs[f"{name}/loss"] = loss.detach()
            logs[f"{name}/labelled"] = float(count)
        return total, logs

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        total, logs = self._losses(self(batch.images), batch)
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=len(batch))
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=len(batch))
        return total

    def _eval_step(self, batch: Batch, stage: str) -> None:
        outputs = self(batch.images)
        total, _ = self._losses(outputs, batch)
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

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict]:
        outputs = self(batch.images)
        rows = [{"image": path} for path in batch.paths]
        for name, task in self.tasks.items():
            fields = task.decode(outputs[name], self.net.heads[name], batch, self.classes)
            for row, extra in zip(rows, fields):
                row.update(extra)
        return rows

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
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
