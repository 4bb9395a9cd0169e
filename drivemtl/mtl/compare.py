"""``drivemtl compare``: the gain of a multi-task model over its single-task baselines.

For each compared metric ``i`` with multi-task value ``M_mt`` and single-task value ``M_st``::

    gain_i     = (-1)^l_i (M_mt - M_st)
    rel_gain_i = (-1)^l_i (M_mt - M_st) / M_st x 100        (%)
    Delta_m    = mean_i rel_gain_i                           (Maninis et al., CVPR 2019)

with ``l_i = 1`` for a metric where lower is better (depth errors) and 0 otherwise. Convention:
**higher is better** for every column; a positive ``Delta_m`` means that the multi-task model beats
the single-task models on average.

Metric keys are paths in ``metrics.json`` with the ``per_class`` level left out:
``presence/map``, ``presence/pedestrian/ap``, ``detection/map``, ``detection/car/ap50``,
``depth/abs_rel``. Without ``--metrics``, each single-task file gives its main metrics, as its
task names them: the AP of its class for a single-class presence run (else ``presence/map``),
``detection/map``, ``depth/abs_rel``, ``segmentation/miou``.

``compare --help`` needs no torch; the default metrics come from the task registry, which does.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from drivemtl.errors import DriveMTLError
from drivemtl.jsonl import load_file

EXIT_BAD_INPUT = 2
LOWER_IS_BETTER = frozenset({"abs_rel", "sq_rel", "rmse", "rmse_log", "silog", "loss"})
"""Metric names (last key component) where lower is better."""
CONVENTION = (
    "higher is better: gain = (-1)^l (M_mt - M_st), relative gain = gain / M_st x 100, "
    "l = 1 where lower is better; Delta_m = mean relative gain over the compared metrics"
)


@dataclass
class Gain:
    """One compared metric."""

    metric: str
    lower_is_better: bool
    single: float
    multi: float
    gain: float
    relative_gain_percent: float
    single_file: str


def flatten(report: Mapping, prefix: str = "") -> dict[str, float | None]:
    """``{"presence/pedestrian/ap": 0.9, ...}`` from a ``metrics.json`` object.

    The ``per_class`` level is dropped from the keys; non-numeric leaves are left out, ``null``
    is kept as ``None``.
    """
    out: dict[str, float | None] = {}
    for key, value in report.items():
        path = prefix if key == "per_class" else (f"{prefix}/{key}" if prefix else str(key))
        if isinstance(value, Mapping):
            out.update(flatten(value, path))
        elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            out[path] = None if value is None else float(value)
    return out


def default_metrics(report: Mapping, path: str) -> list[str]:
    """The main metrics of each task section of a single-task ``metrics.json``, as each task
    names them (:meth:`~drivemtl.tasks.base.Task.main_metrics`)."""
    from drivemtl.tasks import TASKS  # torch: only when no --metrics are given

    keys = []
    for section, content in report.items():
        task = TASKS.get(section)
        if task is None:
            raise DriveMTLError(
                f"{path}: no default metric for section {section!r}; name them with --metrics."
            )
        keys += [f"{section}/{metric}" for metric in task.main_metrics(content or {})]
    return keys


def load_metrics(path: str | Path) -> dict:
    """Read a ``metrics.json``; a clear error for a missing or malformed file."""
    path = Path(path)
    report = load_file(path, "metrics file")
    if not isinstance(report, dict) or not report:
        raise DriveMTLError(f"{path} holds no task sections (expected a metrics.json)")
    bad = [k for k, v in report.items() if not isinstance(v, dict)]
    if bad:
        raise DriveMTLError(
            f"{path}: section(s) {bad} are not objects of metrics; expected a drivemtl "
            "metrics.json: {task: {metric: value, ..., per_class: {class: {...}}}}"
        )
    return report


def is_lower_better(metric: str, extra: Sequence[str] = ()) -> bool:
    """Whether lower is better: a known error metric, or one named in ``extra``."""
    return metric in extra or metric.rsplit("/", 1)[-1] in {*LOWER_IS_BETTER, *extra}


def relative_gains(
    multi: Mapping,
    singles: Mapping[str, Mapping],
    metrics: Sequence[str] | None = None,
    lower_is_better: Sequence[str] = (),
) -> tuple[list[Gain], float]:
    """Per-metric gains and Delta_m.

    Args:
        multi: The multi-task run's ``metrics.json`` object.
        singles: ``{file name: metrics.json object}`` of the single-task runs.
        metrics: Keys to compare (default: the main metrics of each single-task file).
        lower_is_better: Extra metric names or keys where lower is better.

    Returns:
        One :class:`Gain` per metric, and Delta_m in %.

    Raises:
        DriveMTLError: A metric missing or undefined in a file, found in several single-task
            files, or a single-task value of 0 (relative gain undefined).
    """
    flat_multi = flatten(multi)
    flat_singles = {name: flatten(report) for name, report in singles.items()}
    if metrics is None:
        metrics = [k for name, report in singles.items() for k in default_metrics(report, name)]
        duplicates = sorted({k for k in metrics if metrics.count(k) > 1})
        if duplicates:
            raise DriveMTLError(
                f"several single-task files give {duplicates}; choose with --metrics."
            )
    if not metrics:
        raise DriveMTLError("no metric to compare")
    gains = []
    for metric in metrics:
        owners = [name for name, flat in flat_singles.items() if metric in flat]
        if not owners:
            raise DriveMTLError(
                f"metric {metric!r} is in none of the single-task files "
                f"{sorted(flat_singles)}; keys look like presence/car/ap, depth/abs_rel."
            )
        if len(owners) > 1:
            raise DriveMTLError(f"metric {metric!r} is in several single-task files: {owners}")
        single = flat_singles[owners[0]][metric]
        if metric not in flat_multi:
            raise DriveMTLError(f"metric {metric!r} is missing from the multi-task file")
        value = flat_multi[metric]
        for label, v in ((owners[0], single), ("the multi-task file", value)):
            if v is None or not math.isfinite(v):
                raise DriveMTLError(f"metric {metric!r} is undefined (null) in {label}")
        if single == 0:
            raise DriveMTLError(
                f"metric {metric!r} is 0 in {owners[0]}: its relative gain is undefined"
            )
        sign = -1.0 if is_lower_better(metric, lower_is_better) else 1.0
        gain = sign * (value - single)
        gains.append(Gain(metric, sign < 0, single, value, gain, gain / single * 100.0, owners[0]))
    return gains, sum(g.relative_gain_percent for g in gains) / len(gains)


def format_table(gains: Sequence[Gain], delta_m: float) -> str:
    """The comparison as fixed-width text."""
    header = ("metric", "single-task", "multi-task", "gain", "rel. gain %", "single-task run")
    rows = [header]
    for g in gains:
        name = g.metric + (" (lower)" if g.lower_is_better else "")
        rows.append(
            (
                name,
                f"{g.single:.4f}",
                f"{g.multi:.4f}",
                f"{g.gain:+.4f}",
                f"{g.relative_gain_percent:+.2f}",
                g.single_file,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i in (0, len(header) - 1) else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths))
        ).rstrip()
        for r in rows
    ]
    lines.insert(1, "-" * max(len(line) for line in lines))
    lines += [
        "",
        f"Delta_m = {delta_m:+.2f} % over {len(gains)} task(s)",
        f"Convention: {CONVENTION}.",
    ]
    return "\n".join(lines)


def format_markdown(gains: Sequence[Gain], delta_m: float) -> str:
    """The comparison as a markdown table."""
    lines = [
        "| metric | single-task | multi-task | gain | rel. gain % | single-task run |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for g in gains:
        name = g.metric + (" (lower is better)" if g.lower_is_better else "")
        lines.append(
            f"| {name} | {g.single:.4f} | {g.multi:.4f} | {g.gain:+.4f} | "
            f"{g.relative_gain_percent:+.2f} | {g.single_file} |"
        )
    lines += ["", f"**Delta_m = {delta_m:+.2f} %** ({CONVENTION}).", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drivemtl compare",
        description="Multi-task gain per task and Delta_m (Maninis et al. 2019) of a multi-task "
        "run over single-task runs, from their metrics.json files. Higher is better: a "
        "positive gain means the multi-task model is better.",
    )
    parser.add_argument("--multi", type=Path, required=True, help="the multi-task metrics.json")
    parser.add_argument(
        "--single",
        type=Path,
        nargs="+",
        required=True,
        help="metrics.json of the single-task runs (e.g. from --model.single_task)",
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        metavar="KEY",
        help="metrics to compare, e.g. presence/pedestrian/ap depth/abs_rel (default: each "
        "single-task file's main metrics)",
    )
    parser.add_argument(
        "--lower-is-better",
        "--lower_is_better",
        nargs="+",
        default=[],
        metavar="NAME",
        help=f"more metric names or keys where lower is better (known: {sorted(LOWER_IS_BETTER)})",
    )
    parser.add_argument(
        "--output", type=Path, help="also write the comparison to this .json or .md file"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``drivemtl compare``; returns the exit status (2 for bad input)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.output is not None and args.output.suffix not in (".json", ".md"):
            raise DriveMTLError(f"--output must end in .json or .md, got {args.output}")
        multi = load_metrics(args.multi)
        singles = {str(path): load_metrics(path) for path in args.single}
        if len(singles) < len(args.single):
            raise DriveMTLError("the same single-task file is given twice")
        gains, delta_m = relative_gains(multi, singles, args.metrics, args.lower_is_better)
    except DriveMTLError as e:
        print(f"drivemtl: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"Multi-task run: {args.multi}")
    print(format_table(gains, delta_m))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        if args.output.suffix == ".json":
            content = {
                "multi": str(args.multi),
                "convention": CONVENTION,
                "delta_m_percent": delta_m,
                "metrics": [asdict(g) for g in gains],
            }
            args.output.write_text(json.dumps(content, indent=2) + "\n")
        else:
            args.output.write_text(format_markdown(gains, delta_m))
        print(f"Written: {args.output}")
    return 0
