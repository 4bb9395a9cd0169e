"""``drivemtl compare``: Delta_m and per-task gains against a hand computation."""

from __future__ import annotations

import json

import pytest

from drivemtl.cli import main
from drivemtl.mtl.compare import flatten, relative_gains

MULTI = {
    "presence": {
        "map": 0.8,
        "per_class": {"pedestrian": {"ap": 0.85, "f1": 0.8}, "car": {"ap": 0.75, "f1": None}},
    },
    "depth": {"abs_rel": 0.18, "rmse": 4.0, "delta1": 0.8},
}
PEDESTRIAN = {"presence": {"map": 0.8, "per_class": {"pedestrian": {"ap": 0.8}}}}
CAR = {"presence": {"map": 0.8, "per_class": {"car": {"ap": 0.8}}}}
DEPTH = {"depth": {"abs_rel": 0.2, "rmse": 5.0, "delta1": 0.75}}


def _write(folder, name, content):
    path = folder / name / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(content))
    return path


def test_flatten_drops_the_per_class_level():
    flat = flatten(MULTI)
    assert flat["presence/pedestrian/ap"] == 0.85 and flat["presence/car/f1"] is None
    assert flat["presence/map"] == 0.8 and flat["depth/abs_rel"] == 0.18


def test_delta_m_against_a_hand_computation():
    singles = {"ped": PEDESTRIAN, "car": CAR, "depth": DEPTH}
    gains, delta_m = relative_gains(MULTI, singles)
    # pedestrian AP: (0.85 - 0.8) / 0.8 = +6.25 %; car AP: (0.75 - 0.8) / 0.8 = -6.25 %;
    # depth abs_rel, lower is better: -(0.18 - 0.2) / 0.2 = +10 %. Mean: 10 / 3 %.
    assert [g.metric for g in gains] == [
        "presence/pedestrian/ap",
        "presence/car/ap",
        "depth/abs_rel",
    ]
    assert [g.relative_gain_percent for g in gains] == pytest.approx([6.25, -6.25, 10.0])
    assert [g.gain for g in gains] == pytest.approx([0.05, -0.05, 0.02])
    assert [g.lower_is_better for g in gains] == [False, False, True]
    assert delta_m == pytest.approx(10 / 3)

    gains, delta_m = relative_gains(MULTI, singles, ["depth/rmse", "depth/delta1"])
    # rmse lower is better: -(4 - 5) / 5 = +20 %; delta1: (0.8 - 0.75) / 0.75 = +6.67 %.
    assert delta_m == pytest.approx((20.0 + 0.05 / 0.75 * 100) / 2)


def test_command_prints_the_table_and_writes_json_and_markdown(tmp_path, capsys):
    multi = _write(tmp_path, "multi", MULTI)
    ped, car = _write(tmp_path, "ped", PEDESTRIAN), _write(tmp_path, "car", CAR)
    out = tmp_path / "cmp.json"
    args = ["compare", "--multi", str(multi), "--single", str(ped), str(car)]
    assert main([*args, "--output", str(out)]) == 0
    text = capsys.readouterr().out
    line = next(line for line in text.splitlines() if line.startswith("Delta_m = "))
    assert float(line.split()[2]) == pytest.approx(0.0, abs=0.01) and "over 2 task(s)" in line
    assert "higher is better" in text and "presence/pedestrian/ap" in text and "+6.25" in text
    saved = json.loads(out.read_text())
    assert saved["delta_m_percent"] == pytest.approx(0.0, abs=1e-9)
    assert saved["metrics"][0]["single_file"] == str(ped)
    md = tmp_path / "cmp.md"
    assert main([*args, "--output", str(md)]) == 0
    assert "| presence/car/ap | 0.8000 | 0.7500 | -0.0500 | -6.25 |" in md.read_text()


TWO_CLASSES = {"a": {}, "b": {}}


@pytest.mark.parametrize(
    ("multi", "single", "extra", "message"),
    [
        (MULTI, None, [], "metrics file not found"),
        (MULTI, PEDESTRIAN, ["--metrics", "depth/x"], "'depth/x' is in none of the single"),
        (DEPTH, {"presence": {"map": 0.5}}, [], "'presence/map' is missing from the multi"),
        (MULTI, {"presence": {"map": None, "per_class": TWO_CLASSES}}, [], "undefined (null)"),
        (MULTI, {"presence": {"map": 0, "per_class": TWO_CLASSES}}, [], "gain is undefined"),
        (MULTI, {"lanes": {"f1": 0.5}}, [], "no default metric for section"),
        (MULTI, PEDESTRIAN, ["--output", "x.txt"], "--output must end in .json or .md"),
        (MULTI, {"presence": 5}, [], "section(s) ['presence'] are not objects of metrics"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, capsys, multi, single, extra, message):
    multi = _write(tmp_path, "multi", multi)
    single = tmp_path / "missing.json" if single is None else _write(tmp_path, "s", single)
    code = main(["compare", "--multi", str(multi), "--single", str(single), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_every_task_names_metrics_its_report_has():
    """compare's default metrics come from each task: keys of the section a test run writes."""
    from drivemtl.mtl.compare import default_metrics, flatten
    from drivemtl.tasks import TASKS

    for name, task in TASKS.items():
        assert task.main_metrics({"per_class": {"a": {}, "b": {}}}), name
    one = {"presence": {"map": 0.4, "per_class": {"car": {"ap": 0.4}}}}
    assert default_metrics(one, "x") == ["presence/car/ap"] and "presence/car/ap" in flatten(one)
    two = {"presence": {"map": 0.5, "per_class": TWO_CLASSES}, "detection": {"map": 0.2}}
    assert default_metrics(two, "x") == ["presence/map", "detection/map"]
    assert default_metrics({"depth": {"abs_rel": 0.1}}, "x") == ["depth/abs_rel"]
    assert default_metrics({"segmentation": {"miou": 0.7}}, "x") == ["segmentation/miou"]
