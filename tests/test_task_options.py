"""``model.tasks`` checked and completed from each task's signature: in Python, in configs
(``--print_config``, the run's ``config.yaml``) and in the errors a user sees."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from drivemtl.cli import main
from drivemtl.errors import DriveMTLError, optional_value_error
from drivemtl.tasks import TASKS, complete_task_options

ROOT = Path(__file__).resolve().parents[1]


def test_options_are_completed_with_the_tasks_defaults_in_the_given_order():
    completed = complete_task_options({"depth": {"lam": 0.5}, "presence": None})
    assert list(completed) == ["depth", "presence"]  # the first task selects checkpoints
    assert completed["presence"] == {"pos_weight": None, "dropout": 0.2, "stages": 2}
    assert completed["depth"] == {
        "lam": 0.5,
        "sqrt": False,
        "l1_weight": 0.0,
        "width": 64,
        "output_range": (0.1, 100.0),
        "min_depth": 0.001,
        "max_depth": 80.0,
    }
    # None and {} (a checkpoint's empty task list) are the default task with its options.
    assert (
        complete_task_options(None)
        == complete_task_options({})
        == {"presence": completed["presence"]}
    )


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_completes_to_its_signature_defaults_and_completing_twice_changes_nothing(name):
    completed = complete_task_options({name: {}})[name]
    parameters = inspect.signature(TASKS[name].__init__).parameters
    defaults = {k: p.default for k, p in parameters.items() if k != "self"}
    assert list(completed) == list(defaults)
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in completed.items()}
    assert plain == {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}
    assert complete_task_options({name: completed}) == {name: completed}


@pytest.mark.parametrize(
    "spec, says",
    [
        ({"segmentaton": {}}, r"Unknown task 'segmentaton' in model.tasks; known: \["),
        ({"presence": {"dropuot": 0.1}}, r"'presence': unknown option\(s\) dropuot; presence "
         r"takes pos_weight, dropout, stages\."),
        ({"presence": {"dropout": "high"}}, r"'presence': option \"dropout\": Expected a .*float"),
        ({"detection": {"levels": "2, 3"}}, r"'detection': option \"levels\""),
        ({"presence": {"stages": 9}}, r"'presence': presence stages must be 1 to 4, got 9"),
        ({"depth": [1, 2]}, r"'depth': expected a mapping of options, got \[1, 2\]"),
        (["presence"], r"model.tasks must map task names to options"),
        ([], r"model.tasks must map task names to options"),
    ],
)  # fmt: skip
def test_bad_task_options_name_the_task_and_the_option(spec, says):
    with pytest.raises(DriveMTLError, match=says):
        complete_task_options(spec)


def _printed_config(capsys, *argv: str) -> dict:
    with pytest.raises(SystemExit) as stop:
        main(["fit", *argv, "--print_config"])
    assert stop.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_print_config_shows_every_option_of_every_configured_task(capsys):
    config = _printed_config(capsys, f"--config={ROOT / 'configs' / 'demo_all.yaml'}")
    tasks = config["model"]["tasks"]
    assert list(tasks) == ["presence", "detection", "depth"]
    assert tasks["detection"]["levels"] == [2, 3, 4] and tasks["detection"]["nms_iou"] == 0.6
    assert tasks["depth"]["output_range"] == [0.1, 100.0]
    for name, options in tasks.items():
        signature = inspect.signature(TASKS[name].__init__).parameters
        assert list(options) == [p for p in signature if p != "self"], name
    # With no task named, the default task and its options.
    tasks = _printed_config(capsys)["model"]["tasks"]
    assert tasks == {"presence": {"pos_weight": None, "dropout": 0.2, "stages": 2}}


def test_a_bad_task_option_on_the_command_line_is_one_line_naming_it(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--model.tasks={presence: {dropout: high}}"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Bad options for task 'presence': option \"dropout\": Expected a" in err
    assert "Union" not in err and "NoneType" not in err


def _jsonargparse_error(typehint, value: str) -> str:
    from jsonargparse import ArgumentError, ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--x", type=typehint)
    with pytest.raises(ArgumentError) as error:
        parser.parse_args([f"--x={value}"])
    return str(error.value)


def test_optional_value_error_keeps_the_one_error_that_matters():
    # jsonargparse's own messages: the None alternative goes, the value given stays.
    message = _jsonargparse_error(float | None, "abc")
    assert "NoneType" in message  # what is removed
    assert optional_value_error(message) == (
        "Parser key \"x\": Expected a <class 'float'>, got abc"
    )
    message = optional_value_error(_jsonargparse_error(list[str] | None, "road"))
    assert message == "Parser key \"x\": Expected a <class 'list'>, got road"
    # Nested: the outer and the inner None alternatives both go.
    nested = _jsonargparse_error(dict[str, int | None] | None, "{a: b}")
    assert "NoneType" not in optional_value_error(nested)
    assert "Union" not in optional_value_error(nested) and "b" in optional_value_error(nested)
    # Two real alternatives, or any other message: unchanged.
    two = _jsonargparse_error(int | list[int], "abc")
    assert optional_value_error(two) == two
    plain = _jsonargparse_error(int, "abc")
    assert optional_value_error(plain) == plain


def test_bad_optional_task_options_are_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model.tasks={segmentation: {classes: road}}"])
    err = capsys.readouterr().err
    assert "'segmentation': option \"classes\": Expected a <class 'list'>, got road" in err
    assert "Union" not in err and "NoneType" not in err


@pytest.mark.parametrize(
    ("tasks", "ending"),
    [
        (
            "{presence: {bogus: 1}}",
            "unknown option(s) bogus; presence takes pos_weight, dropout, stages.",
        ),
        # A task's own check whose message has no full stop of its own.
        ("{detection: {max_detections: 0}}", "max_detections and topk_candidates must be >= 1."),
    ],
)
def test_a_bad_task_option_is_one_sentence_on_the_command_line(capsys, tasks, ending):
    with pytest.raises(SystemExit):
        main(["fit", f"--model.tasks={tasks}"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    # The task's own message, without jsonargparse's ", got <the whole mapping>" after it.
    assert err.endswith(ending)


def test_one_tasks_options_cannot_be_set_alone(capsys):
    # Setting model.tasks.<task> would replace the whole list without its other tasks.
    with pytest.raises(SystemExit):
        main(["fit", "--model.tasks.presence={stages: 1}"])
    err = capsys.readouterr().err
    assert "--model.tasks.presence cannot set one task's options: give the whole" in err


def test_the_python_api_stores_the_completed_options():
    from drivemtl.module import MultiTaskModule

    model = MultiTaskModule(tasks={"presence": {"stages": 1}}, image_size=(64, 96))
    assert model.hparams.tasks == {"presence": {"pos_weight": None, "dropout": 0.2, "stages": 1}}
    assert MultiTaskModule(image_size=(64, 96)).hparams.tasks == complete_task_options(None)


def test_a_plugin_task_that_passes_kwargs_on_keeps_its_parents_options():
    """A plugin subclassing a task with ``**kwargs``: its own option and every parent option
    are accepted, completed, checked and listed in ``--help``."""
    from drivemtl.tasks import build_tasks, describe_task_options, register_task

    class Deeper(TASKS["depth"]):
        name = "deeper"

        def __init__(self, extra: float = 1.0, **kwargs):
            super().__init__(**kwargs)
            self.extra = extra

    register_task(Deeper)
    try:
        completed = complete_task_options({"deeper": {"lam": 0.5, "extra": 2.0}})["deeper"]
        assert completed == {
            "extra": 2.0,
            **complete_task_options({"depth": {"lam": 0.5}})["depth"],
        }
        built = build_tasks({"deeper": {"lam": 0.5, "extra": 2.0}})["deeper"]
        assert (built.extra, built.lam, built.width) == (2.0, 0.5, 64)
        with pytest.raises(
            DriveMTLError, match=r"unknown option\(s\) lamda; deeper takes extra, lam"
        ):
            complete_task_options({"deeper": {"lamda": 0.5}})
        with pytest.raises(DriveMTLError, match=r"depth lam must be in \[0, 1\]"):
            complete_task_options({"deeper": {"lam": 2.0}})  # the parent's own check
        assert "deeper {extra: 1.0, lam: 0.85, sqrt: false," in describe_task_options()
    finally:
        TASKS.pop("deeper")
