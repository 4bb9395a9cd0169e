"""What the multi-task methods call a task: a head, or one class of a head that splits by class.

``model.granularity: head`` makes each head one task (``presence``, ``detection``, ``depth``).
``model.granularity: class`` splits every head whose loss splits by class (presence) into one task
per class (``presence/pedestrian``, ``presence/car``, ...): the textbook's four tasks. Balancing,
gradient methods, diagnostics and logs then see those names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor

from drivemtl.data.batch import Batch
from drivemtl.errors import DriveMTLError
from drivemtl.tasks.base import Task

GRANULARITIES = ("head", "class")


@dataclass(frozen=True)
class TaskTerm:
    """One loss term that the multi-task methods treat as a task.

    Attributes:
        name: ``head`` or ``head/class``; the key in ``model.loss_weights`` and in logs.
        head: The head (a key of ``model.tasks``) that computes it.
        class_index: The class of a per-class term, ``None`` for a whole head.
    """

    name: str
    head: str
    class_index: int | None = None


def _class_terms(name: str, classes: Sequence[str]) -> list[TaskTerm]:
    return [TaskTerm(f"{name}/{c}", name, i) for i, c in enumerate(classes)]


def task_terms(
    tasks: Mapping[str, Task],
    classes: Sequence[str],
    granularity: str = "head",
    single_task: str | None = None,
) -> list[TaskTerm]:
    """The tasks that training balances, in config order.

    Args:
        tasks: The configured heads.
        classes: The class list.
        granularity: ``"head"`` or ``"class"``.
        single_task: Train this one task alone: a head name or ``head/class`` (the granularity is
            then irrelevant).

    Raises:
        DriveMTLError: For an unknown granularity or single task.
    """
    if granularity not in GRANULARITIES:
        raise DriveMTLError(
            f"model.granularity must be one of {list(GRANULARITIES)}, got {granularity!r}."
        )
    terms = []
    for name, task in tasks.items():
        split = granularity == "class" and task.splits_by_class
        terms += _class_terms(name, classes) if split else [TaskTerm(name, name)]
    if single_task is None:
        return terms
    choices = {}
    for name, task in tasks.items():
        choices[name] = TaskTerm(name, name)
        if task.splits_by_class:
            choices.update({t.name: t for t in _class_terms(name, classes)})
    if single_task not in choices:
        raise DriveMTLError(
            f"model.single_task {single_task!r} is not a configured task; choose one of "
            f"{sorted(choices)}."
        )
    return [choices[single_task]]


def term_losses(
    terms: Sequence[TaskTerm],
    tasks: Mapping[str, Task],
    outputs: Mapping[str, object],
    batch: Batch,
) -> dict[str, tuple[Tensor, int]]:
    """``{term name: (loss, labelled count)}`` for one batch; count 0 means absent."""
    losses, split = {}, {}
    for term in terms:
        task = tasks[term.head]
        if term.class_index is None:
            losses[term.name] = task.loss(outputs[term.head], batch)
            continue
        if term.head not in split:  # one pass over the head's output gives every class
            split[term.head] = task.class_losses(outputs[term.head], batch)
        losses[term.name] = split[term.head][term.class_index]
    return losses


def restrict_report(report: dict, class_name: str) -> dict:
    """A presence-style report (``map`` + ``per_class``) cut down to one trained class.

    A single-class model is scored on what it was trained for: its ``map`` is that class's AP.
    """
    per_class = {class_name: report["per_class"][class_name]}
    return {**report, "map": per_class[class_name].get("ap"), "per_class": per_class}


def resolve_loss_weights(
    loss_weights: Mapping[str, float] | None,
    tasks: Mapping[str, Task],
    classes: Sequence[str],
    terms: Sequence[TaskTerm],
) -> dict[str, float]:
    """Fixed weights by task term; a head's weight applies to each of its class terms.

    Args:
        loss_weights: ``model.loss_weights``: keys are heads or ``head/class``.
        tasks: Every configured head (a single-task run still accepts the full config's keys).
        classes: The class list.
        terms: The terms trained.

    Raises:
        DriveMTLError: For a key that names no configured head or class term, or a weight
            that is negative or not a finite number.
    """
    loss_weights = dict(loss_weights or {})
    valid = set(tasks) | {
        f"{name}/{c}" for name, task in tasks.items() if task.splits_by_class for c in classes
    }
    unknown = set(loss_weights) - valid
    if unknown:
        raise DriveMTLError(
            f"model.loss_weights names tasks not trained: {sorted(unknown)}; "
            f"configured: {sorted(valid)}."
        )
    bad = {k: v for k, v in loss_weights.items() if not _is_weight(v)}
    if bad:
        raise DriveMTLError(
            f"model.loss_weights must be finite numbers >= 0 (0 switches a task off): {bad}."
        )
    out = {}
    for term in terms:
        if term.name in loss_weights:
            out[term.name] = float(loss_weights[term.name])
        elif term.head in loss_weights:
            out[term.name] = float(loss_weights[term.head])
    return out


def default_loss_weights(tasks: Mapping[str, Task], terms: Sequence[TaskTerm]) -> dict[str, float]:
    """Each term's default fixed weight: its task's :attr:`Task.loss_weight`."""
    return {term.name: float(tasks[term.head].loss_weight) for term in terms}


def _is_weight(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value >= 0
