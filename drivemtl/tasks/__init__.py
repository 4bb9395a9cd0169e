"""Tasks on the shared trunk, by name. Adding a task: one module with a ``@register_task``
class, imported here; other packages add theirs through the ``drivemtl.tasks`` entry-point
group (``[project.entry-points."drivemtl.tasks"] mytask = "mypkg.tasks:MyTask"``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points

from drivemtl.errors import DriveMTLError
from drivemtl.tasks.base import TASKS, Task, register_task

# isort: split
# Presence registers first: the registry's order is the order of the tasks' sections in
# ``evaluate``'s metrics.json, the class-level task before the others.
from drivemtl.tasks.presence import PresenceTask, masked_bce

# isort: split
from drivemtl.tasks.depth import DepthTask
from drivemtl.tasks.detection import DetectionTask
from drivemtl.tasks.segmentation import SegmentationTask

ENTRY_POINT_GROUP = "drivemtl.tasks"

DEFAULT_TASKS = {"presence": {}}
"""``model.tasks`` when a config names none."""


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
    "DEFAULT_TASKS",
    "TASKS",
    "DepthTask",
    "DetectionTask",
    "PresenceTask",
    "SegmentationTask",
    "Task",
    "build_tasks",
    "kinds_of",
    "load_task_plugins",
    "register_task",
    "masked_bce",
]
