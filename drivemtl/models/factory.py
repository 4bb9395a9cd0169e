"""The bare network and its tasks from plain-data hyperparameters, without Lightning.

One builder for training (:class:`~drivemtl.module.MultiTaskModule`), the Python predictor and
export: a checkpoint's ``hyper_parameters`` (or the metadata inside an exported file) rebuild
exactly the network its weights belong to.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from drivemtl.errors import DriveMTLError
from drivemtl.models.backbones import Backbone
from drivemtl.models.net import MultiTaskNet
from drivemtl.models.sharing import Trunk, build_trunk
from drivemtl.mtl.granularity import TaskTerm, task_terms
from drivemtl.tasks import build_tasks
from drivemtl.tasks.base import Task


@dataclass
class Network:
    """A built network and what it was built from.

    Attributes:
        net: The bare network (trunk and one head per task in :attr:`tasks`).
        configured: Every task of the config, by name.
        tasks: The tasks that have a head: all of them, or the one of a single-task baseline.
        terms: The tasks that balancing and gradient methods see (heads or ``head/class``).
        classes: The class list.
        single_class: ``(head, class)`` of a single-class baseline, whose reports and
            predictions keep that class only; ``None`` otherwise.
        mean: The normalisation mean used ([0, 1] scale).
        std: The normalisation std used.
    """

    net: MultiTaskNet
    configured: dict[str, Task]
    tasks: dict[str, Task]
    terms: list[TaskTerm]
    classes: list[str]
    single_class: tuple[str, str] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def trunk(self) -> Trunk:
        return self.net.trunk


def build_network(
    classes: list[str],
    backbone: str = "resnet18",
    weights: str | None = None,
    tasks: Mapping[str, dict | None] | None = None,
    sharing: Mapping[str, dict | None] | None = None,
    granularity: str = "head",
    single_task: str | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    channels_last: bool = True,
) -> Network:
    """Build the network that the arguments of :class:`~drivemtl.module.MultiTaskModule`
    with the same names describe (see there for their meaning).

    Raises:
        DriveMTLError: For an unknown task, backbone, sharing strategy or head option.
    """
    classes = list(classes)
    configured, chosen, terms, single_class = select_tasks(classes, tasks, granularity, single_task)
    trunk_backbone = Backbone(backbone, weights)
    mean = tuple(trunk_backbone.mean if mean is None else mean)
    std = tuple(trunk_backbone.std if std is None else std)
    reads = {name: task.stages_read() for name, task in chosen.items()}
    trunk = build_trunk(sharing, trunk_backbone, reads)
    try:
        heads = {name: task.build_head(trunk.channels, classes) for name, task in chosen.items()}
    except ValueError as e:
        raise DriveMTLError(str(e)) from None
    net = MultiTaskNet(trunk, heads, mean, std)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    return Network(net, configured, chosen, terms, classes, single_class, mean, std)


def select_tasks(
    classes: list[str],
    tasks: Mapping[str, dict | None] | None = None,
    granularity: str = "head",
    single_task: str | None = None,
) -> tuple[dict[str, Task], dict[str, Task], list[TaskTerm], tuple[str, str] | None]:
    """The configured tasks, those that get a head, the balanced terms and the single class
    (see :class:`Network`); plain data in, no network built.

    Raises:
        DriveMTLError: For an unknown task, task option, granularity or single task.
    """
    configured = build_tasks(tasks)
    terms = task_terms(configured, classes, granularity, single_task)
    # A single-task baseline builds its one head only.
    chosen = configured if single_task is None else {terms[0].head: configured[terms[0].head]}
    term = terms[0]
    single_class = (
        (term.head, classes[term.class_index])
        if single_task is not None and term.class_index is not None
        else None
    )
    return configured, chosen, terms, single_class


def tasks_from_hparams(hparams: Mapping[str, Any]) -> tuple[dict[str, Task], tuple | None]:
    """The tasks with a head and the single class of a checkpoint's hyperparameters."""
    _, chosen, _, single_class = select_tasks(
        list(hparams["classes"]),
        hparams.get("tasks"),
        hparams.get("granularity", "head"),
        hparams.get("single_task"),
    )
    return chosen, single_class


NO_INITIAL_WEIGHTS = {"weights": None, "init_from": None}
"""Hyperparameters of a model rebuilt around trained weights (no initial weights to read)."""

_BUILD_ARGUMENTS = tuple(inspect.signature(build_network).parameters)


def network_from_hparams(hparams: Mapping[str, Any]) -> Network:
    """The network a checkpoint's hyperparameters describe, with random weights.

    Initial weights (``weights``, ``init_from``) are never read: the caller loads the trained
    state dict. Hyperparameters of training only (optimiser, balancing) are ignored.

    Raises:
        DriveMTLError: Without a class list, or for hyperparameters this version cannot build.
    """
    if "classes" not in hparams:
        raise DriveMTLError("The hyperparameters have no class list: not written by drivemtl.")
    chosen = {k: hparams[k] for k in _BUILD_ARGUMENTS if k in hparams}
    chosen["weights"] = None
    return build_network(**chosen)
