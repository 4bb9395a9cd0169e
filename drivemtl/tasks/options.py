"""``model.tasks``: the tasks to train and their options, checked against each task's
``__init__`` signature (and its parent's, where ``**kwargs`` are passed on).

jsonargparse validates ``model.tasks`` through :class:`TaskOptions` when a config is parsed:
an unknown task, an unknown option, a value of the wrong type or one the task refuses stops
the command before anything is built, with the task's name. Each task's options come back
complete, defaults included, so ``--print_config``, the run's ``config.yaml`` and the
checkpoint's hyperparameters state every option the run used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache

from jsonargparse import ArgumentError, ArgumentParser
from jsonargparse.typing import register_type

from drivemtl.errors import DriveMTLError, optional_value_error
from drivemtl.tasks.base import TASKS, Task

DEFAULT_TASKS = {"presence": {}}
"""``model.tasks`` when a config names none."""


class TaskOptions:
    """The type of ``model.tasks`` for jsonargparse: ``{task name: {option: value} | None}``.

    A marker only; parsed values are plain dicts (checkpoints hold nothing but basic types).
    """


REQUIRED = object()
"""The default of an option the task cannot do without (:func:`task_options`)."""


def task_options(cls: type[Task]) -> dict[str, object]:
    """The task's options and their defaults (:data:`REQUIRED` where there is none).

    They are what jsonargparse parses: the named parameters of the task's ``__init__`` and, where
    it passes ``**kwargs`` on (``super().__init__(**kwargs)``), the options of the class it
    passes them to, so that a plugin subclassing a task keeps every option of its parent.
    """
    options = {}
    for action in _options_parser(cls)._actions:
        if action.dest == "help" or "." in action.dest:  # nested: an option's own fields
            continue
        options[action.dest] = REQUIRED if action.required else action.default
    return options


@cache
def _options_parser(cls: type[Task]) -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False, prog=f"model.tasks.{cls.name}")
    parser.add_class_arguments(cls)
    return parser


def complete_task_options(spec: Mapping[str, Mapping | None] | None) -> dict[str, dict]:
    """``spec`` checked and with every option of each task, defaults filled in.

    ``None`` or ``{}`` is :data:`DEFAULT_TASKS`. The tasks keep their order (the first one's
    metric selects the best checkpoint).

    Raises:
        DriveMTLError: naming the task (and option) that is wrong.
    """
    if hasattr(spec, "key") and hasattr(spec, "val"):  # jsonargparse's --model.tasks.<x>=...
        raise DriveMTLError(
            f"--model.tasks.{spec.key} cannot set one task's options: give the whole task "
            f"mapping, e.g. --model.tasks='{{{spec.key.split('.')[0]}: {{...}}, ...}}'."
        )
    if spec is None or spec == {}:  # {}: what a checkpoint of an empty task list trained
        spec = DEFAULT_TASKS
    if not isinstance(spec, Mapping):
        raise DriveMTLError(
            f"model.tasks must map task names to options ({{presence: {{}}}}), got {spec!r}."
        )
    completed = {}
    for name, options in spec.items():
        cls = TASKS.get(name)
        if cls is None:
            raise DriveMTLError(f"Unknown task {name!r} in model.tasks; known: {sorted(TASKS)}.")
        if options is not None and not isinstance(options, Mapping):
            raise DriveMTLError(
                f"Bad options for task {name!r}: expected a mapping of options, got {options!r}."
            )
        known = list(task_options(cls))
        unknown = [key for key in options or {} if key not in known]
        if unknown:
            raise DriveMTLError(
                f"Bad options for task {name!r}: unknown option(s) {', '.join(map(str, unknown))}; "
                f"{name} takes {', '.join(known) or 'none'}."
            )
        try:
            values = _options_parser(cls).parse_object(dict(options or {})).as_dict()
            cls(**values)  # the task's own checks of values (ranges, lengths)
        except ArgumentError as e:
            message = " ".join(optional_value_error(str(e)).split())
            message = message.replace('Parser key "', 'option "')
            raise DriveMTLError(_sentence(f"Bad options for task {name!r}: {message}")) from None
        except (TypeError, ValueError) as e:
            raise DriveMTLError(_sentence(f"Bad options for task {name!r}: {e}")) from None
        completed[name] = values
    return completed


def _sentence(message: str) -> str:
    """``message`` ending with a full stop: jsonargparse then adds no ``, got <the mapping>``
    after it (``errors.optional_value_error``), which would repeat every task's options."""
    return message if message.endswith(".") else f"{message}."


def build_tasks(spec: Mapping[str, Mapping | None] | None) -> dict[str, Task]:
    """Instantiate tasks from the config's ``{name: {option: value}}`` mapping (``None``:
    :data:`DEFAULT_TASKS`)."""
    return {name: TASKS[name](**o) for name, o in complete_task_options(spec).items()}


def describe_task_options() -> str:
    """Every registered task with its options and their defaults, for ``--help``."""

    def shown(value) -> str:  # YAML's spelling (true, null, lists), as configs write it
        try:
            return json.dumps(value)
        except TypeError:
            return repr(value)

    parts = []
    for name, task in TASKS.items():
        options = [
            option if default is REQUIRED else f"{option}: {shown(default)}"
            for option, default in task_options(task).items()
        ]
        parts.append(f"{name} {{{', '.join(options)}}}")
    return "; ".join(parts)


def _parse(value) -> dict[str, dict]:
    try:
        return complete_task_options(value)
    except DriveMTLError as e:
        raise ValueError(str(e)) from None


# type_check is never true: every value, already completed or not, is checked (it is cheap).
register_type(TaskOptions, serializer=dict, deserializer=_parse, type_check=lambda v, t: False)
