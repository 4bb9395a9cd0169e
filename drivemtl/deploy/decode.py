"""Raw head outputs to the per-image fields of ``predictions.jsonl``: the one decoding path.

``drivemtl predict`` (through the LightningModule), the Python predictor and exported files all
decode here, so they cannot disagree on a field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from drivemtl.data.batch import Batch
from drivemtl.tasks.base import Task


def decode_outputs(
    outputs: Mapping[str, Any],
    batch: Batch,
    tasks: Mapping[str, Task],
    heads: Mapping[str, nn.Module],
    classes: Sequence[str],
    single_class: tuple[str, str] | None = None,
) -> list[dict]:
    """One row per image: ``{"image": path, <each task's fields>}``.

    Args:
        outputs: Each task's raw head output for the batch.
        batch: The batch the outputs are of (input size, original sizes, paths).
        tasks: The tasks, by name.
        heads: Each task's head, or a module holding its decision state (thresholds).
        classes: The class list.
        single_class: ``(head, class)`` of a single-class baseline: each task's fields keep
            that class only (:meth:`Task.keep_class`; the other outputs were never trained).
    """
    rows = [{"image": path} for path in batch.paths]
    for name, task in tasks.items():
        fields = task.decode(outputs[name], heads[name], batch, classes)
        for row, extra in zip(rows, fields):
            row.update(extra)
    if single_class is not None:
        for task in tasks.values():
            for row in rows:
                task.keep_class(row, single_class[1])
    return rows
