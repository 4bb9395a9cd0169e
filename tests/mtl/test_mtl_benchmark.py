"""The benchmark's summary (experiments/mtl_benchmark.py) on hand-made results."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "mtl_benchmark.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("mtl_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["mtl_benchmark"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["mtl_benchmark"]


def _report(car: float | None, abs_rel: float | None) -> dict:
    report = {}
    if car is not None:
        report["presence"] = {"per_class": {"car": {"ap": car}}}
    if abs_rel is not None:
        report["depth"] = {"abs_rel": abs_rel}
    return report


def _run(car, abs_rel, step=1.0, seconds=None):
    return {"metrics": _report(car, abs_rel), "step_s": step, "run_s": seconds}


def test_summary_gives_delta_m_spread_rank_and_step_ratio(bench):
    setup = bench.Setup(
        "t",
        "test",
        [],
        ["presence/car/ap", "depth/abs_rel"],
        {"presence/car": "presence/car/ap", "depth": "depth/abs_rel"},
        seeds=(0, 1),
    )
    singles = {"presence/car": _run(0.8, None, seconds=40), "depth": _run(None, 0.2, seconds=60)}
    per_seed = {
        0: {
            "singles": singles,
            "shared": {"fixed": _run(0.88, 0.22, 1, 100), "famo": _run(0.8, 0.18, 1.1, 110)},
        },
        1: {
            "singles": singles,
            "shared": {"fixed": _run(0.8, 0.2, 1, 90), "famo": _run(0.84, 0.2, 1.3, 130)},
        },
    }
    summary = bench.summarise(setup, ["fixed", "famo"], per_seed)
    # Seed 0: fixed (+10 % car, -10 % depth) = 0; famo (0, +10 %) = +5. Seed 1: fixed 0,
    # famo (+5 %, 0) = +2.5.
    assert summary["fixed"]["delta_m"] == pytest.approx(0.0)
    assert summary["famo"]["delta_m"] == pytest.approx(3.75)
    assert summary["famo"]["delta_m_std"] == pytest.approx(statistics.stdev([5.0, 2.5]))
    assert summary["famo"]["delta_m_per_seed"] == {"0": pytest.approx(5.0), "1": pytest.approx(2.5)}
    assert json.loads(json.dumps(summary)) == summary  # --json writes what the table reads
    assert summary["famo"]["metrics"]["depth/abs_rel"]["mean"] == pytest.approx(0.19)
    # Car AP: fixed 0.84 = famo 0.82 -> fixed first; depth (lower is better): famo first.
    assert summary["fixed"]["mean_rank"] == summary["famo"]["mean_rank"] == 1.5
    assert summary["famo"]["step_time_ratio"] == pytest.approx(1.2)
    baseline = summary[bench.SINGLE]["metrics"]
    assert baseline["presence/car/ap"] == {"mean": 0.8, "std": 0.0}
    # Seconds: famo (110 + 130) / 2, a single network (40 + 60 + 40 + 60) / 4; all 8 runs
    # 2 * 100 + 100 + 90 + 110 + 130.
    assert summary["famo"]["run_s"] == 120
    assert summary[bench.SINGLE]["run_s"] == 50
    assert bench.total_run_seconds(per_seed) == 630
    per_seed[1]["shared"]["famo"]["run_s"] = None  # reused from a run that did not time itself
    assert bench.total_run_seconds(per_seed) is None
    assert bench.summarise(setup, ["fixed", "famo"], per_seed)["famo"]["run_s"] is None
    table = bench.table(summary)
    row = "| famo | 0.820 +- 0.028 | 0.190 +- 0.014 | +3.8 +- 1.8 (+5.0 / +2.5) | 1.5 | 1.20x |"
    assert row in table
    assert table.index("| famo |") < table.index("| fixed |")  # sorted by Delta_m


def test_a_single_task_value_of_zero_is_left_out_of_delta_m(bench):
    setup = bench.Setup(
        "t",
        "test",
        [],
        ["presence/car/ap", "depth/abs_rel"],
        {"presence/car": "presence/car/ap", "depth": "depth/abs_rel"},
        seeds=(0,),
    )
    singles = {"presence/car": _run(0.0, None), "depth": _run(None, 0.2)}
    per_seed = {0: {"singles": singles, "shared": {"fixed": _run(0.5, 0.18)}}}
    summary = bench.summarise(setup, ["fixed"], per_seed)
    assert summary["fixed"]["delta_m"] == pytest.approx(10.0)  # depth alone
    assert summary["fixed"]["metrics"]["presence/car/ap"]["mean"] == 0.5
    assert summary[bench.SINGLE]["left_out_of_delta_m"] == ["presence/car/ap"]
    table = bench.table(summary)
    assert "Left out of Delta_m" in table
    # One seed has no spread: none is printed, and the JSON says null rather than 0.
    assert summary["fixed"]["delta_m_std"] is None
    assert '"delta_m_std": null' in json.dumps(summary["fixed"])
    assert "| fixed | 0.500 | 0.180 | +10.0 | 1.0 | 1.00x |" in table
    assert "| single-task networks | 0.000 | 0.200 | 0 | | |" in table


def test_tied_values_share_their_mean_rank_and_nan_ranks_last(bench):
    values = {"a": 1.0, "b": 0.5, "c": 1.0, "d": math.nan, "e": 0.2}
    assert bench.ranks(values, lower=False) == {"a": 1.5, "c": 1.5, "b": 3, "e": 4, "d": 5}
    assert bench.ranks(values, lower=True) == {"e": 1, "b": 2, "a": 3.5, "c": 3.5, "d": 5}
    assert bench.ranks({"x": math.nan, "y": math.nan}, lower=False) == {"x": 1.5, "y": 1.5}


def test_parallel_runs_are_filed_under_their_seed_and_method(bench, monkeypatch, tmp_path):
    setup = bench.Setup(
        "t",
        "test",
        [],
        ["presence/car/ap", "depth/abs_rel"],
        {"presence/car": "presence/car/ap", "depth": "depth/abs_rel"},
        seeds=(0, 1),
    )
    calls = []

    def fake_run(setup, name, flags, seed, out, threads):
        calls.append((name, seed, threads))
        if name.startswith("single"):
            return _run(0.8, None) if "car" in name else _run(None, 0.2)
        # Each shared network's car AP encodes its seed and method: a mix-up changes Delta_m.
        car = 0.8 * (1 + 0.1 * (seed + 1)) if name == "fixed" else 0.8
        return _run(car, 0.2)

    monkeypatch.setattr(bench, "run", fake_run)
    monkeypatch.setattr(bench, "_cores", lambda: 4)
    summary, seconds = bench.benchmark(setup, ["fixed", "famo"], tmp_path, jobs=2)
    assert seconds is None  # the fake runs record no time
    # fixed: car +10 % (seed 0) and +20 % (seed 1), depth 0 -> Delta_m 5 and 10.
    assert summary["fixed"]["delta_m"] == pytest.approx(7.5)
    assert summary["famo"]["delta_m"] == pytest.approx(0.0)
    assert sorted(calls) == sorted(
        (name, seed, 2)
        for seed in (0, 1)
        for name in ("single presence/car", "single depth", "fixed", "famo")
    )


def test_runs_start_longest_first(bench, monkeypatch, tmp_path):
    setup = bench.Setup("t", "test", [], ["depth/abs_rel"], {"depth": "depth/abs_rel"})
    calls = []

    def fake_run(setup, name, flags, seed, out, threads):
        calls.append((name, seed))
        return _run(None, 0.2, seconds=1.5)

    monkeypatch.setattr(bench, "run", fake_run)
    _, seconds = bench.benchmark(setup, ["fixed", "pcgrad", "famo"], tmp_path, jobs=1)
    # One backward pass per task first, then the other shared networks, the baselines last.
    assert calls == [
        *(("pcgrad", seed) for seed in (0, 1, 2)),
        *((name, seed) for seed in (0, 1, 2) for name in ("fixed", "famo")),
        *(("single depth", seed) for seed in (0, 1, 2)),
    ]
    assert seconds == 12 * 1.5


def test_a_reused_run_reports_the_seconds_it_recorded(bench, tmp_path):
    setup = bench.Setup("t", "test", [], ["depth/abs_rel"], {"depth": "depth/abs_rel"})
    folder = tmp_path / "t" / "seed0" / "fixed"
    (folder / "test").mkdir(parents=True)
    (folder / "test" / "metrics.json").write_text('{"depth": {"abs_rel": 0.2}}')
    (folder / "step_time.json").write_text('{"median_s": 0.5, "steps": 10}')
    reused = bench.run(setup, "fixed", [], 0, tmp_path)
    assert reused == {"metrics": {"depth": {"abs_rel": 0.2}}, "step_s": 0.5, "run_s": None}
    (folder / "run_time.json").write_text('{"seconds": 97.3, "threads": 1}')
    assert bench.run(setup, "fixed", [], 0, tmp_path)["run_s"] == 97.3
