"""Per-class decision thresholds at prediction time.

The head of the task that decides per class (presence) stores the thresholds chosen on
validation data (saved in the checkpoint); a user may override some of them for one run, e.g.
a lower one for a safety-critical class.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from drivemtl.errors import DriveMTLError
from drivemtl.tasks.base import Task

ThresholdSpec = dict[str, float] | str | None
"""A mapping ``{class: threshold}``, a string ``"car=0.3,stop_sign=0.6"``, or ``None``."""


def parse_thresholds(spec: ThresholdSpec) -> dict[str, float]:
    """Normalise a threshold override to ``{class: float}``.

    Args:
        spec: ``None``, a mapping (YAML config, ``--thresholds.car=0.3``) or a
            ``"class=value,class=value"`` string (``--thresholds car=0.3,stop_sign=0.6``).

    Raises:
        DriveMTLError: For a malformed entry or a value outside [0, 1].
    """
    if spec is None:
        return {}
    if isinstance(spec, str):
        items = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, value = part.partition("=")
            if not sep or not name.strip():
                raise DriveMTLError(
                    f"--thresholds: {part!r} is not CLASS=VALUE (e.g. car=0.3,stop_sign=0.6)."
                )
            items[name.strip()] = value.strip()
        spec = items
    out = {}
    for name, value in spec.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DriveMTLError(f"--thresholds: {name}={value!r} is not a number.") from None
        if not 0.0 <= number <= 1.0:
            raise DriveMTLError(f"--thresholds: {name}={number} is outside [0, 1].")
        out[str(name)] = number
    return out


def apply_thresholds(
    tasks: Mapping[str, Task],
    heads: Mapping[str, nn.Module],
    classes: list[str],
    overrides: Mapping[str, float],
) -> dict[str, float]:
    """Write overrides into the ``thresholds`` buffer of the head of the task that decides
    per class (``Task.class_thresholds``), which decoding reads.

    Args:
        tasks: The model's tasks by name.
        heads: The model's heads by task name.
        classes: The model's class list (order of the buffer).
        overrides: ``{class: threshold}`` to change; other classes keep the checkpoint's.

    Returns:
        The thresholds now in effect, per class (empty without such a task).

    Raises:
        DriveMTLError: For an unknown class, or overrides without such a task.
    """
    deciding = [name for name, task in tasks.items() if task.class_thresholds]
    if not deciding:
        if overrides:
            from drivemtl.tasks import kinds_of

            kind = kinds_of(lambda task: task.class_thresholds)
            raise DriveMTLError(f"--thresholds needs a model with a {kind} head.")
        return {}
    head = heads[deciding[0]]
    unknown = sorted(set(overrides) - set(classes))
    if unknown:
        raise DriveMTLError(
            f"--thresholds names class(es) {unknown} that the checkpoint does not have; "
            f"its classes are {classes}."
        )
    buffer = head.thresholds
    with torch.no_grad():
        for name, value in overrides.items():
            buffer[classes.index(name)] = value
    return {c: float(t) for c, t in zip(classes, buffer.tolist())}
