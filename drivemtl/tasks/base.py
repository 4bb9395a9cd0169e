"""The task interface: the unit of extension.

A task owns its head, its loss over labelled entries only, its metric and its decoding of
outputs for prediction files. The LightningModule loops over tasks and knows none of them.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor, nn
from torchmetrics import Metric

from drivemtl.data.batch import Batch
from drivemtl.data.pixel_labels import PixelLabel, register_pixel_label
from drivemtl.evaluation.inputs import EvaluationInputs, TaskEvaluation
from drivemtl.evaluation.predictions import Predictions


class Task(ABC):
    """One task on the shared trunk.

    Attributes:
        name: Key of the task in configs, logs and ``metrics.json``.
        monitor: The metric (within the task's report) that selects the best checkpoint.
        monitor_mode: ``"max"`` when a higher ``monitor`` is better (AP), ``"min"`` when
            lower is (a depth error).
        label_map: The per-pixel label map the task trains on (how it is read and collated),
            or ``None``; registered with the task, and the CLI tells the data to load it.
        pixel_label: ``label_map``'s key (set from it): the manifest key, the prediction
            field and the folder of predicted maps.
        splits_by_class: Whether :meth:`class_losses` splits the loss into one term per
            class, so that ``model.granularity: class`` makes each class a task of its own.
    """

    name: str
    monitor: str
    monitor_mode: str = "max"
    pixel_label: str | None = None
    label_map: PixelLabel | None = None
    splits_by_class: bool = False
    default_strides: tuple[int, ...] = ()
    """Strides of the location grids the task detects on with its default options, if any
    (``inspect`` measures boxes against them)."""
    prediction_fields: tuple[str, ...] = ()
    """The fields ``decode`` puts in a ``predictions.jsonl`` line (a map task's is its
    ``pixel_label``, left out here)."""
    prediction_options: tuple[str, ...] = ()
    """The ``predict`` options the task reads in :meth:`run_info` (others refuse them)."""
    class_thresholds: bool = False
    """Whether the head holds a ``thresholds`` buffer of per-class decisions, which
    ``--thresholds`` overrides at prediction time."""
    map_format: str = "PNG"
    """How ``predict``'s summary describes the task's map files (``pixel_label`` tasks)."""
    report_title: str = ""
    """The heading of the task's section in ``evaluate``'s report.md (default: its name)."""
    report_rank: int = 100
    """Where report.md and the terminal show the task's section (lower: earlier)."""
    definitions: str = ""
    """The task's part of report.md's definitions (Markdown), if any."""
    loss_weight: float = 1.0
    """The task's weight under ``model.balancing: fixed`` where ``model.loss_weights`` does not
    name it; each class term of a head that splits by class takes the head's."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.pixel_label = cls.label_map.key if cls.label_map is not None else None

    # ``output`` below is whatever the task's head returns: a tensor, or a dict of tensors
    # for heads with several outputs (detection's per-level logits and boxes).

    @abstractmethod
    def build_head(self, channels: Sequence[int], classes: Sequence[str]) -> nn.Module:
        """The head over the backbone's feature maps (channels from stride 4 to 32)."""

    def stages_read(self) -> int:
        """How many of the trunk's four stages, from the first, the head reads (default: all).

        The trunk neither builds nor runs a stage that no head reads: under DDP every
        parameter must take part in the loss. The head then receives at least this many maps.
        """
        return 4

    @abstractmethod
    def loss(self, output: Any, batch: Batch) -> tuple[Tensor, int]:
        """The task loss over labelled entries, and how many labelled entries it saw.

        A batch with no labelled entry must give a zero loss with finite gradients.
        """

    def class_losses(self, output: Any, batch: Batch) -> list[tuple[Tensor, int]]:
        """One ``(loss, labelled count)`` per class, each over that class's labelled entries.

        Only for tasks with ``splits_by_class``; a class with no labelled entry gives a zero
        loss with finite gradients and count 0.
        """
        raise NotImplementedError(f"task {self.name!r} does not split its loss by class")

    @abstractmethod
    def build_metric(self, classes: Sequence[str]) -> Metric:
        """A fresh metric that accumulates over an epoch, synchronised across processes."""

    @abstractmethod
    def update_metric(self, metric: Metric, output: Any, batch: Batch) -> None:
        """Feed one batch of outputs to the metric."""

    @abstractmethod
    def report(self, metric: Metric, head: nn.Module, choose_thresholds: bool) -> dict:
        """The task's section of ``metrics.json`` for the epoch.

        Args:
            metric: The task's accumulated metric.
            head: The task's head, whose stored decision thresholds apply.
            choose_thresholds: On validation, choose thresholds on this data and store them
                in the head; on test, use the stored ones.
        """

    @abstractmethod
    def decode(
        self, output: Any, head: nn.Module, batch: Batch, classes: Sequence[str]
    ) -> list[dict]:
        """Per-image prediction fields (original image pixels) for ``predictions.jsonl``."""

    def keep_class(self, row: dict, kept: str) -> None:  # noqa: B027 (optional hook)
        """Drop every class but ``kept`` from the task's fields of a decoded row, in place
        (a single-class baseline, whose other outputs were never trained)."""

    def agreement(
        self, expected: Sequence[dict], actual: Sequence[dict]
    ) -> dict[str, tuple[float, float]]:
        """How far two decodings of the same images lie apart (an exported file against the
        eager model): ``{measure: (value, largest value allowed)}`` over this task's fields.
        """
        return {}

    def pixel_label_options(self) -> dict:
        """Options for the reader of the task's label map (segmentation: ``num_classes``)."""
        return {}

    def run_info(self, options: Mapping[str, Any]) -> dict:
        """What ``run.json`` records of the task beside the predictions (its class list, its
        operating point), given ``predict``'s options (``None`` where not given)."""
        return {}

    # Predicted maps, for tasks with a ``pixel_label``: ``decode`` puts an (H, W) array in
    # the row's ``pixel_label`` field; ``predict`` writes it with these and puts its path there.

    def save_map(self, value: np.ndarray, path: str) -> None:
        """Write a predicted map (original size) to ``path`` (a ``.png``)."""
        raise NotImplementedError(f"task {self.name!r} has no map to save")

    def preview(self, value: np.ndarray) -> np.ndarray:
        """An (H, W, 3) uint8 colour picture of a predicted map."""
        raise NotImplementedError(f"task {self.name!r} has no map to preview")

    def csv_columns(self, classes: Sequence[str]) -> list[str]:
        """The task's columns of ``predictions.csv`` (default: its ``prediction_fields``, else
        its ``pixel_label``: the map's path)."""
        return list(self.prediction_fields or ([self.pixel_label] if self.pixel_label else []))

    def csv_cells(self, row: dict) -> dict[str, str]:
        """A prediction row's cells in those columns (default: JSON for lists and objects,
        paths as they are, empty for ``null``)."""
        cells = {}
        for key in self.csv_columns(()):
            value = row.get(key)
            if value is None:
                cells[key] = ""
            else:
                cells[key] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        return cells

    def caption(self, row: dict) -> str:
        """The task's lines of an overlay's caption for a prediction row (default: none)."""
        return ""

    def draw_overlay(self, picture: np.ndarray, value: np.ndarray) -> np.ndarray:
        """The (H, W, 3) uint8 ``picture`` with the predicted map drawn on it (default: as is)."""
        return picture

    # ``drivemtl inspect``: what a manifest's label maps hold (class-level, for tasks with a
    # ``label_map``; measures travel between processes, so plain data).

    @classmethod
    def measure_map(cls, value: np.ndarray) -> dict:
        """Numbers of one decoded label map (depth: measured pixels, range)."""
        return {}

    @classmethod
    def summarise_maps(cls, measures: list[dict]) -> dict:
        """The task's ``inspect.json`` section from every decoded map's measures (after
        ``images`` and ``decoded``, which every map section has)."""
        return {}

    @classmethod
    def map_line(cls, section: dict) -> str:
        """The task's line of ``inspect``'s table, from its section."""
        return f"{cls.pixel_label}: {section['decoded']} of {section['images']} map(s) decoded"

    @classmethod
    def map_histogram(cls, measures: list[dict]) -> tuple[np.ndarray, str, str] | None:
        """``(values per map, x label, title)`` for ``labels.png``, or ``None``."""
        return None

    # Offline evaluation (``drivemtl evaluate``): class-level, no model is built.

    @classmethod
    def read_predictions(cls, predictions: Predictions) -> Any:
        """Read and check the task's fields of every row of a predictions file, before any
        matching (``None`` when the file has none); ``evaluate_files`` gets it as
        ``inputs.fields``. Tasks that check their fields against the manifest's classes do so
        in ``evaluate_files`` instead."""
        return None

    @classmethod
    def predicted_classes(cls, fields: Any) -> list[str]:
        """The class list the task's predicted fields state (presence: its probabilities'
        keys), which ``evaluate`` prefers to ``run.json``'s list."""
        return []

    @classmethod
    def evaluate_files(cls, inputs: EvaluationInputs) -> TaskEvaluation | None:
        """Score the task's fields of a predictions file against the manifest, with the
        task's own metric; ``None`` when either side has nothing of the task."""
        return None

    @classmethod
    def evaluation_lines(cls, matching: dict, lists: dict) -> list[str]:
        """Lines about what was scored, for the terminal and report.md, from the task's
        ``matching.json`` entry and the ``lists``."""
        return []

    @classmethod
    def main_metrics(cls, section: dict) -> list[str]:
        """The metrics ``compare`` scores a single-task run of the task on, as keys within
        its section (``per_class`` left out); default: the checkpoint's ``monitor``."""
        return [cls.monitor]

    @classmethod
    def report_figures(cls, section: dict) -> dict[str, Any]:
        """Matplotlib figures of the task's report section for the image loggers, by name."""
        return {}

    @classmethod
    def text_table(cls, section: dict) -> str:
        """The task's section of a report for the terminal (default: its numbers on one line
        and its per-class table, if any)."""
        from drivemtl.reporting import section_text

        return section_text(cls.name, section)

    @classmethod
    def markdown(cls, section: dict) -> str:
        """The task's section of report.md (default: the terminal's table, as code)."""
        return "```\n" + cls.text_table(section) + "\n```"

    def scalars(self, report: dict) -> dict[str, float]:
        """Flat scalars to log from a report; undefined (``None``) values are left out."""
        out = {}

        def walk(prefix: str, value) -> None:
            if isinstance(value, dict):
                for key, inner in value.items():
                    walk(f"{prefix}/{key}", inner)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                out[prefix] = float(value)

        walk(self.name, report)
        return out


TASKS: dict[str, type[Task]] = {}
"""Registered tasks by name (``model.tasks`` keys), in registration order."""


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available under its ``name`` in ``model.tasks``."""
    for attribute in ("name", "monitor"):  # no default: every task names its own
        if not isinstance(getattr(cls, attribute, None), str) or not getattr(cls, attribute):
            raise ValueError(f"task class {cls.__name__} has no {attribute} (a string)")
    known = TASKS.get(cls.name)
    if known is not None and known is not cls:
        raise ValueError(
            f"task name {cls.name!r} is taken by {known.__module__}.{known.__qualname__}"
        )
    if cls.label_map is not None:
        register_pixel_label(cls.label_map)
    TASKS[cls.name] = cls
    return cls
