"""Tasks on the shared trunk, by name. Adding a task: one module here and one registry entry."""

from __future__ import annotations

from collections.abc import Mapping

from drivemtl.errors import DriveMTLError
from drivemtl.tasks.base import Task
from drivemtl.tasks.depth import DepthTask
from drivemtl.tasks.detection import DetectionTask
from drivemtl.tasks.presence import PresenceTask, masked_bce
from drivemtl.tasks.segmentation import SegmentationTask

TASKS: dict[str, type[Task]] = {
    "presence": PresenceTask,
    "detection": DetectionTask,
    "depth": DepthTask,
    "segmentation": SegmentationTask,
}


def build_tasks(spec: Mapping[str, Mapping | None]) -> dict[str, Task]:
    """Instantiate tasks from the config's ``{name: {option: value}}`` mapping."""
    if not spec:
        raise DriveMTLError(f"model.tasks is empty: name at least one of {sorted(TASKS)}.")
    tasks = {}
    for name, options in spec.items():
        if name not in TASKS:
            raise DriveMTLError(f"Unknown task {name!r} in model.tasks; known: {sorted(TASKS)}.")
        try:
            tasks[name] = TASKS[name](**(options or {}))
        except (TypeError, ValueError) as e:
            raise DriveMTLError(f"Bad options for task {name!r}: {e}") from None
    return tasks


__all__ = [
    "TASKS",
    "DepthTask",
    "DetectionTask",
    "PresenceTask",
    "SegmentationTask",
    "Task",
    "build_tasks",
    "masked_bce",
]
