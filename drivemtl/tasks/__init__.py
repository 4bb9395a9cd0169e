"""Tasks on the shared trunk, by name. Adding a task: one module with a ``@register_task``
class, imported here; other packages add theirs through the ``drivemtl.tasks`` entry-point
group (``[project.entry-points."drivemtl.tasks"] mytask = "mypkg.tasks:MyTask"``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib.metadata import entry_points

from drivemtl.tasks.base import TASKS, Task, register_task

# isort: split
# Presence registers first: the registry's order is the order of the tasks' sections in
# ``evaluate``'s metrics.json, the class-level task before the others.
from drivemtl.tasks.presence import PresenceTask, masked_bce

# isort: split
from drivemtl.tasks.depth import DepthTask
from drivemtl.tasks.detection import DetectionTask
from drivemtl.tasks.options import (
    DEFAULT_TASKS,
    TaskOptions,
    build_tasks,
    complete_task_options,
    describe_task_options,
)
from drivemtl.tasks.segmentation import SegmentationTask

ENTRY_POINT_GROUP = "drivemtl.tasks"


def load_task_plugins() -> list[str]:
    """Register the tasks other installed packages declare in :data:`ENTRY_POINT_GROUP`.

    A plugin that fails to import is skipped with a warning naming it (one broken package
    must not stop every run); returns the names registered.
    """
    found = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = point.load()
            if not (isinstance(cls, type) and issubclass(cls, Task)):
                raise TypeError(f"{point.value} is not a drivemtl Task class")
            register_task(cls)
        except Exception as e:  # any import error of a third-party package
            warnings.warn(
                f"Task plugin {point.name!r} ({point.value}) was not loaded: "
                f"{type(e).__name__}: {e}",
                stacklevel=2,
            )
            continue
        found.append(cls.name)
    return found


load_task_plugins()


def kinds_of(predicate: Callable[[type[Task]], bool]) -> str:
    """The registered tasks that satisfy ``predicate``, for messages (``"presence or ..."``)."""
    return " or ".join(name for name, cls in TASKS.items() if predicate(cls)) or "suitable"


__all__ = [
    "DEFAULT_TASKS",
    "TASKS",
    "DepthTask",
    "DetectionTask",
    "PresenceTask",
    "SegmentationTask",
    "Task",
    "TaskOptions",
    "build_tasks",
    "complete_task_options",
    "describe_task_options",
    "kinds_of",
    "load_task_plugins",
    "register_task",
    "masked_bce",
]
