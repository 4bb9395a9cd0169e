"""Every multi-task method against single-task networks, seeded: the README's benchmark table.

Each setup trains, from one set of flags and for each seed:

- one shared network per method: the package's defaults (``fixed``), the balancing methods
  (uncertainty, DWA, GradNorm, FAMO) and the gradient methods (PCGrad, MGDA, Aligned-MTL,
  UPGrad, CAGrad) on the shared parameters and on the shared representation
  (``<method>@features``), all with one task per head (the default granularity) and the
  default weights, plus fixed weights with every weight 1 and with one task per class
  (``model.granularity: class``);
- one single-task network per task (``model.single_task``), with the same budget (images,
  epochs, schedule, backbone).

Every run's checkpoint is chosen on validation and scored on the test split (``drivemtl
test``). The table gives per task metric the mean +- std over seeds, Delta_m (``drivemtl
compare``'s convention: mean relative gain over the task metrics, higher is better, against the
single-task networks of the same seed) as mean +- std over seeds and per seed, the mean rank of
each method over the task metrics (1 = best; Navon et al. 2022 and Liu et al. 2023 report it),
and the training step time relative to fixed weights (median step of the run, measured in the
run). With one seed there is no spread, and none is printed.

Setups:

- ``a``: the embedded synthetic set with presence, detection and depth heads and one class
  (``stop_sign``) labelled on 5 % of the training images (``?`` elsewhere, boxes included).
- ``b``: the real, partially labelled photos of ``../shared/data`` (COCO128: every class
  labelled; the road-sign set: signs and lights only, pedestrians and cars ``?``), presence and
  detection, with an ImageNet-pretrained ``timm/tf_efficientnet_lite0`` (``../shared/weights``).
  It needs timm backbones (``model.backbone: timm/<name>``); where this checkout has none, or the
  shared folder is absent, the setup is reported as skipped with the reason, and runs as it is
  once they are there.

A run whose folder holds its test metrics is reused, so an interrupted benchmark continues where
it stopped (delete ``--out`` to start again). Each run records its seconds (``run_time.json``),
and the summary's settings give each setup's runs added up (``run_minutes``: what one job takes;
``--jobs N`` takes about that over N), so a benchmark joined from several sittings still says
what it costs. Runs start longest first (gradient methods on the parameters), so that the
pool's jobs finish together.

``--jobs N`` trains N runs at once, each with ``cores / N`` torch threads: a small network uses
one core better than two, so this is faster even on 2 cores (the README has the figures), and
on a large machine it is what makes the full mode fit. Step times are then measured beside
other runs, and their ratios are noisier.

Usage:
    python experiments/mtl_benchmark.py --quick --json runs/mtl_benchmark/quick.json
    python experiments/mtl_benchmark.py --jobs 8 --json runs/mtl_benchmark/full.json
    python experiments/mtl_benchmark.py --setups a --methods famo --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from _machine import cpu_model, fast_precision  # noqa: E402

from drivemtl.mtl.compare import flatten, is_lower_better, relative_gains  # noqa: E402

CLASSES = ("pedestrian", "car", "stop_sign", "traffic_light")
REFERENCE = "fixed"
"""The method whose step time is 1."""
SINGLE = "single-task networks"
"""The baselines' entry in the results (their metrics; Delta_m 0 by definition)."""


def _gradients(method: str, on: str) -> list[str]:
    return [f"--model.gradients={{method: {method}, on: {on}}}"]


BALANCING = {
    "uncertainty": ["--model.balancing=uncertainty"],
    "dwa": ["--model.balancing=dwa"],
    "gradnorm": ["--model.balancing=gradnorm"],
    "famo": ["--model.balancing=famo"],
}
GRADIENTS = ("pcgrad", "mgda", "aligned_mtl", "upgrad", "cagrad")


def _equal_weights(setup: Setup) -> list[str]:
    weights = ", ".join(f"{head}: 1.0" for head in setup.heads)
    return [f"--model.loss_weights={{{weights}}}"]


METHODS: dict[str, list[str] | Callable[[Setup], list[str]]] = {
    "fixed": [],
    "fixed, equal weights": _equal_weights,
    "fixed, one task per class": ["--model.granularity=class"],
    **BALANCING,
    **{name: _gradients(name, "parameters") for name in GRADIENTS},
    **{f"{name}@features": _gradients(name, "features") for name in GRADIENTS},
}
"""Each shared network's flags (or a function of the setup that gives them), by the method's
config name; one task per head (the package's default granularity) and each task's default
weight (``Task.loss_weight``) unless the name says otherwise."""

DEFAULT = "fixed"
"""The method that the package's defaults train (``MultiTaskModule``): no flag."""
QUICK = ("fixed", "fixed, equal weights", "famo")
"""The methods of ``--quick``: the default, the default before this benchmark (every weight 1)
and the O(1) balancer."""


@dataclass
class Setup:
    """One benchmark setting: flags shared by every run, the task metrics, the baselines."""

    name: str
    description: str
    flags: list[str]
    metrics: list[str]
    """Compared metrics (``drivemtl compare`` keys), one per task."""
    singles: dict[str, str]
    """``{single_task value: the metric its network is scored on}``."""
    heads: tuple[str, ...] = ()
    """The trained heads (``model.tasks``' keys)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    unavailable: str | None = None
    """Why the setup cannot run in this checkout, or ``None``."""
    prepare: object = field(default=None, repr=False)
    """A callable run once before training (manifests), or ``None``."""


def setup_a(args: argparse.Namespace) -> Setup:
    """The synthetic set, presence + detection + depth, stop signs labelled on 5 %."""
    metrics = [f"presence/{c}/ap" for c in CLASSES] + ["detection/map50", "depth/abs_rel"]
    height, width = args.image_size
    flags = [
        f"--config={REPO / 'configs' / 'demo_all.yaml'}",
        f"--model.backbone={args.backbone}",
        f"--trainer.precision={args.precision}",
        f"--data.image_size=[{height}, {width}]",
        f"--data.synthetic.height={height}",
        f"--data.synthetic.width={width}",
        f"--data.synthetic.train={args.train}",
        f"--data.synthetic.val={args.val}",
        f"--data.synthetic.test={args.test}",
        f"--data.synthetic.min_object_size={args.min_object_size}",
        f'--data.synthetic.dropout={{"stop_sign": {1 - args.labelled_fraction:.6g}}}',
        f"--data.batch_size={args.batch_size}",
        f"--trainer.max_epochs={args.epochs}",
    ]
    singles = {f"presence/{c}": f"presence/{c}/ap" for c in CLASSES}
    singles |= {"detection": "detection/map50", "depth": "depth/abs_rel"}
    return Setup(
        "a",
        f"synthetic {width}x{height}, presence + detection + depth, stop_sign labelled on "
        f"{args.labelled_fraction:.0%} of {args.train} training images (objects at least "
        f"{args.min_object_size:.0%} of the height), {args.backbone} from random weights, "
        f"{args.epochs} epochs of batch {args.batch_size}, {args.precision}; scored on "
        f"{args.test} test images",
        flags,
        metrics,
        singles,
        heads=("presence", "detection", "depth"),
    )


def setup_b(args: argparse.Namespace, out: Path) -> Setup:
    """Real photos (COCO128 + road signs), presence + detection, a pretrained backbone."""
    shared = REPO.parent / "shared"
    weights = shared / "weights" / "tf_efficientnet_lite0.pth"
    data = out / "b" / "manifests"
    metrics = ["presence/map", "detection/map50"]
    flags = [
        f"--config={REPO / 'configs' / 'demo_detection.yaml'}",
        "--model.backbone=timm/tf_efficientnet_lite0",
        f"--model.weights={weights}",
        f"--data.train_manifest=[{data / 'coco_train.jsonl'}, {data / 'roadsign_train.jsonl'}]",
        f"--data.val_manifest=[{data / 'coco_val.jsonl'}, {data / 'roadsign_val.jsonl'}]",
        f"--data.test_manifest=[{data / 'coco_test.jsonl'}, {data / 'roadsign_test.jsonl'}]",
        "--data.image_size=[224, 224]",
        "--data.batch_size=16",
        f"--trainer.precision={args.precision}",
        "--trainer.max_epochs=6",
    ]
    reason = None
    if not (shared / "data" / "coco128-train").is_dir() or not weights.is_file():
        reason = f"{shared}/data or {weights} is absent"
    else:
        reason = _timm_missing()
    return Setup(
        "b",
        "COCO128 + road signs (pedestrian and car `?` on the road signs), presence + "
        "detection, timm/tf_efficientnet_lite0 pretrained on ImageNet, 224x224, 6 epochs",
        flags,
        metrics,
        {"presence": "presence/map", "detection": "detection/map50"},
        heads=("presence", "detection"),
        unavailable=reason,
        prepare=lambda: _real_manifests(shared / "data", data),
    )


def _timm_missing() -> str | None:
    """Why this checkout cannot build a timm backbone, or ``None`` when it can."""
    from drivemtl.errors import DriveMTLError
    from drivemtl.models.backbones import Backbone

    try:
        Backbone("timm/tf_efficientnet_lite0", None)
    except (DriveMTLError, ImportError, ValueError, KeyError) as e:
        return f"no timm backbones in this checkout ({e})"
    return None


def _real_manifests(source: Path, folder: Path, seed: int = 0) -> None:
    """COCO128 and the road-sign set as manifests, each split 60/20/20 by a fixed shuffle."""
    import random

    if (folder / "roadsign_test.jsonl").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    coco, voc = source / "coco128-train", source / "roadsign-dev"
    converted = {
        "coco": ["coco", "--annotations", coco / "annotations" / "instances.json"]
        + ["--images", coco / "images"],
        "roadsign": ["voc", "--annotations", voc / "annotations", "--images", voc / "images"],
    }
    for name, arguments in converted.items():
        full = folder / f"{name}_all.jsonl"
        command = [sys.executable, "-m", "drivemtl", "convert", *map(str, arguments)]
        subprocess.run([*command, "--out", str(full)], check=True, cwd=REPO)
        lines = full.read_text().splitlines()
        random.Random(seed).shuffle(lines)
        cut = [0, int(0.6 * len(lines)), int(0.8 * len(lines)), len(lines)]
        for split, start, end in zip(("train", "val", "test"), cut, cut[1:]):
            entries = [json.loads(line) for line in lines[start:end]]
            for entry in entries:  # paths relative to the original manifest's folder
                entry["image"] = str((full.parent / entry["image"]).resolve())
            text = "".join(json.dumps(e) + "\n" for e in entries)
            (folder / f"{name}_{split}.jsonl").write_text(text)


class StepTimer(L.Callback):
    """Writes the median training step time of a run to ``<folder>/step_time.json``.

    Loaded by class path in the run's process (``mtl_benchmark.StepTimer``).
    """

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._start)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and self.times:
            steady = self.times[1:] or self.times  # the first step warms oneDNN up
            record = {"median_s": statistics.median(steady), "steps": len(self.times)}
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "step_time.json").write_text(json.dumps(record) + "\n")


FIT_THEN_TEST = """
import json, sys
from drivemtl.cli import main
for argv in json.loads(sys.argv[1]):
    code = main(argv)
    if code:
        sys.exit(code)
"""
"""One process per run: fit, then test its best checkpoint (one interpreter start, not two)."""


def run(
    setup: Setup, name: str, flags: list[str], seed: int, out: Path, threads: int | None = None
) -> dict:
    """Train one network and score its best checkpoint on the test split (or reuse them).

    Args:
        threads: Torch threads of the run's process; ``None``: torch's default (every core).
    """
    slug = name.replace(", ", "_").replace(" ", "_").replace("/", "-")
    folder = out / setup.name / f"seed{seed}" / slug
    tested = folder / "test" / "metrics.json"
    if tested.is_file() and (folder / "step_time.json").is_file():
        _say(f"[{setup.name} seed {seed}] {name}: reused")
    else:
        timer = {"class_path": "mtl_benchmark.StepTimer", "init_args": {"folder": str(folder)}}
        fit = ["fit", *setup.flags, *flags, f"--seed_everything={seed}"]
        fit += [f"--trainer.default_root_dir={folder}", "--trainer.enable_progress_bar=false"]
        fit += [f"--trainer.callbacks+={json.dumps(timer)}"]
        test = ["test", f"--ckpt_path={folder / 'checkpoints' / 'best.ckpt'}"]
        test += [f"--trainer.default_root_dir={folder / 'test'}"]
        test += ["--trainer.enable_progress_bar=false"]
        test += [f for f in setup.flags if f.startswith("--data.test_manifest")]
        start = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "experiments")])}
        if threads is not None:
            env |= {var: str(threads) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        with open(folder / "log.txt", "w") as log:
            status = subprocess.run(
                [sys.executable, "-c", FIT_THEN_TEST, json.dumps([fit, test])],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
            )
        if status.returncode != 0:
            sys.exit(f"[{setup.name} seed {seed}] {name} failed; see {folder / 'log.txt'}")
        seconds = time.perf_counter() - start
        record = {"seconds": round(seconds, 1), "threads": threads}
        (folder / "run_time.json").write_text(json.dumps(record) + "\n")
        _say(f"[{setup.name} seed {seed}] {name}: {seconds:.0f} s")
    step = json.loads((folder / "step_time.json").read_text())
    timed = folder / "run_time.json"  # absent in runs of an older version of this script
    seconds = json.loads(timed.read_text())["seconds"] if timed.is_file() else None
    return {"metrics": json.loads(tested.read_text()), "step_s": step["median_s"], "run_s": seconds}


def _say(line: str) -> None:
    """One line on stdout, whole even when runs in parallel report at once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def benchmark(
    setup: Setup, methods: Sequence[str], out: Path, jobs: int = 1
) -> tuple[dict, float | None]:
    """Every method and single-task network of one setup, for each seed: the summary and the
    runs' seconds added up (:func:`total_run_seconds`).

    Args:
        jobs: Runs trained at once, each with an equal share of the cores.
    """
    if setup.prepare is not None:
        setup.prepare()
    planned = [
        (seed, "singles", task, f"single {task}", [f"--model.single_task={task}"])
        for seed in setup.seeds
        for task in setup.singles
    ]
    flags = {
        name: METHODS[name](setup) if callable(METHODS[name]) else METHODS[name] for name in methods
    }
    planned += [
        (seed, "shared", name, name, flags[name]) for seed in setup.seeds for name in methods
    ]
    # Longest first, so that the last runs of a pool are short ones and no job waits long
    # on the others: gradient methods on the parameters take one backward pass per task.
    planned.sort(key=lambda p: (p[1] != "shared", p[2] not in GRADIENTS))
    threads = max(1, _cores() // jobs) if jobs > 1 else None
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = pool.map(lambda p: run(setup, p[3], p[4], p[0], out, threads), planned)
        per_seed: dict[int, dict] = {seed: {"singles": {}, "shared": {}} for seed in setup.seeds}
        for (seed, kind, key, _, _), result in zip(planned, results):
            per_seed[seed][kind][key] = result
    return summarise(setup, methods, per_seed), total_run_seconds(per_seed)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def summarise(setup: Setup, methods: Sequence[str], per_seed: dict) -> dict:
    """Per-method means and spreads over seeds, Delta_m, mean rank and step-time ratio."""
    summary: dict[str, dict] = {}
    # A relative gain needs a single-task value that is defined and not 0 (a detector that
    # found nothing): such a metric is left out of that seed's Delta_m for every method.
    excluded: set[str] = set()
    compared = {}
    for seed, result in per_seed.items():
        usable = []
        for task, metric in setup.singles.items():
            value = _value(result["singles"][task]["metrics"], metric)
            (usable.append if value is not None and value != 0 else excluded.add)(metric)
        compared[seed] = [m for m in setup.metrics if m in usable]
    for name in methods:
        deltas, values, ratios = [], {m: [] for m in setup.metrics}, []
        for seed, result in per_seed.items():
            singles = {t: r["metrics"] for t, r in result["singles"].items()}
            mine = result["shared"][name]
            deltas.append(relative_gains(mine["metrics"], singles, compared[seed])[1])
            for metric in setup.metrics:
                value = _value(mine["metrics"], metric)
                values[metric].append(math.nan if value is None else value)
            if REFERENCE in result["shared"]:
                ratios.append(mine["step_s"] / result["shared"][REFERENCE]["step_s"])
        summary[name] = {
            "delta_m": statistics.mean(deltas),
            "delta_m_std": _std(deltas),
            "delta_m_per_seed": {str(seed): d for seed, d in zip(per_seed, deltas)},
            "metrics": {m: {"mean": statistics.mean(v), "std": _std(v)} for m, v in values.items()},
            "step_time_ratio": statistics.median(ratios) if ratios else None,
            "run_s": _mean_known([r["shared"][name].get("run_s") for r in per_seed.values()]),
        }
    singles: dict[str, list[float]] = {m: [] for m in setup.metrics}
    for result in per_seed.values():
        for task, metric in setup.singles.items():
            value = _value(result["singles"][task]["metrics"], metric)
            singles[metric].append(math.nan if value is None else value)
    for metric in setup.metrics:  # rank 1: the best mean over seeds
        means = {n: summary[n]["metrics"][metric]["mean"] for n in methods}
        for name, rank in ranks(means, lower=is_lower_better(metric)).items():
            summary[name].setdefault("ranks", []).append(rank)
    for name in methods:
        summary[name]["mean_rank"] = statistics.mean(summary[name].pop("ranks"))
    baseline = {m: {"mean": statistics.mean(v), "std": _std(v)} for m, v in singles.items()}
    summary[SINGLE] = {"delta_m": 0.0, "delta_m_std": 0.0, "metrics": baseline}
    summary[SINGLE]["left_out_of_delta_m"] = sorted(excluded)
    singles_s = [r.get("run_s") for seed in per_seed.values() for r in seed["singles"].values()]
    summary[SINGLE]["run_s"] = _mean_known(singles_s)
    return summary


def total_run_seconds(per_seed: dict) -> float | None:
    """The seconds of every run of a setup added up (what one job would take), or ``None``
    when a reused run has no time recorded."""
    times = [
        r.get("run_s") for s in per_seed.values() for kind in s.values() for r in kind.values()
    ]
    return None if None in times else round(sum(times), 1)


def _mean_known(values: Sequence[float | None]) -> float | None:
    """The mean, or ``None`` when a value is unknown."""
    return None if not values or None in values else round(statistics.mean(values), 1)


def ranks(values: dict[str, float], lower: bool) -> dict[str, float]:
    """Rank 1 for the best value; tied values share their mean rank, NaN ranks last."""
    known = sorted({v for v in values.values() if not math.isnan(v)}, reverse=not lower)
    groups = [[n for n, v in values.items() if v == value] for value in known]
    groups.append([n for n, v in values.items() if math.isnan(v)])
    ranked, start = {}, 1
    for tied in groups:
        for name in tied:
            ranked[name] = start + (len(tied) - 1) / 2
        start += len(tied)
    return ranked


def _value(report: dict, metric: str) -> float | None:
    return flatten(report).get(metric)


def _std(values: Sequence[float]) -> float | None:
    """The sample standard deviation; None for one value (a spread over one seed is unknown)."""
    return statistics.stdev(values) if len(values) > 1 else None


def table(result: dict) -> str:
    """The markdown table of one setup (Nash-MTL / FAMO papers' layout)."""
    metrics = list(result[SINGLE]["metrics"])
    arrows = ["(lower)" if is_lower_better(m) else "" for m in metrics]
    head = [f"{m} {a}".strip() for m, a in zip(metrics, arrows)]
    lines = [
        "| method | " + " | ".join(head) + " | Delta_m % | mean rank | step time |",
        "|---|" + "---:|" * (len(metrics) + 3),
    ]
    single = result[SINGLE]["metrics"]
    cells = [_pm(single[m]) for m in metrics]
    lines.append(f"| {SINGLE} | " + " | ".join(cells) + " | 0 | | |")
    methods = {n: r for n, r in result.items() if n != SINGLE}
    for name, r in sorted(methods.items(), key=lambda kv: -kv[1]["delta_m"]):
        cells = [_pm(r["metrics"][m]) for m in metrics]
        delta = f"{r['delta_m']:+.1f}"
        if r["delta_m_std"] is not None:
            delta += f" +- {r['delta_m_std']:.1f}"
            per_seed = r.get("delta_m_per_seed", {}).values()  # absent in older summaries
            delta += f" ({' / '.join(f'{d:+.1f}' for d in per_seed)})" if per_seed else ""
        ratio = "" if r["step_time_ratio"] is None else f"{r['step_time_ratio']:.2f}x"
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {delta} | {r['mean_rank']:.1f} | {ratio} |"
        )
    left_out = result[SINGLE].get("left_out_of_delta_m")
    if left_out:
        lines += ["", f"Left out of Delta_m (a single-task value of 0 or undefined): {left_out}."]
    return "\n".join(lines) + "\n"


def _pm(stat: dict) -> str:
    if not math.isfinite(stat["mean"]):
        return "n/a"
    spread = "" if stat["std"] is None else f" +- {stat['std']:.3f}"
    return f"{stat['mean']:.3f}{spread}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer methods, one seed")
    parser.add_argument("--setups", nargs="+", default=["a", "b"], choices=["a", "b"])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), help="default: all")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 2 (--quick: 0)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "mtl_benchmark")
    parser.add_argument("--json", type=Path, help="write the summary here")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs trained at once, the cores shared between them"
    )
    group = parser.add_argument_group("setup (a)")
    # resnet18 from random weights: a single-task detector learns in this budget (test mAP@0.5
    # about 0.6 over seeds 0-5), mobilenet_v3_small did not (0.002).
    group.add_argument("--backbone", default="resnet18")
    group.add_argument("--image-size", type=int, nargs=2, default=[96, 160], metavar=("H", "W"))
    group.add_argument("--train", type=int, default=480, help="training images")
    group.add_argument("--val", type=int, default=160, help="validation images")
    group.add_argument("--test", type=int, default=320, help="test images")
    group.add_argument("--epochs", type=int, default=4)
    group.add_argument("--batch-size", type=int, default=16)
    # 0.15: objects large enough to learn in this budget, and traffic lights on 16 % of the
    # images. At 0.2 the lights (tall poles) left the frame on all but 3 % of them (10 of 320
    # test images), and their AP, from 10 positives, dominated Delta_m's spread.
    group.add_argument(
        "--min-object-size",
        type=float,
        default=0.15,
        help="smallest object, a fraction of the image height",
    )
    group.add_argument("--labelled-fraction", type=float, default=0.05, help="of stop signs")
    parser.add_argument("--precision", default=fast_precision(), help="default: this CPU's fastest")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be 1 or more, got {args.jobs}")
    out = args.out / ("quick" if args.quick else "full")
    methods = args.methods or list(QUICK if args.quick else METHODS)
    seeds = tuple(args.seeds or ((0,) if args.quick else (0, 1, 2)))
    setups = {"a": setup_a(args), "b": setup_b(args, out)}
    results: dict = {"settings": {}}
    started = time.perf_counter()
    for key in args.setups:
        setup = setups[key]
        setup.seeds = seeds
        results["settings"][key] = {"description": setup.description, "seeds": list(seeds)}
        if setup.unavailable:
            print(f"setup ({key}) skipped: {setup.unavailable}", flush=True)
            results["settings"][key]["skipped"] = setup.unavailable
            continue
        results[key], seconds = benchmark(setup, methods, out, args.jobs)
        run_minutes = None if seconds is None else round(seconds / 60, 1)
        results["settings"][key]["run_minutes"] = run_minutes
        print(f"\nSetup ({key}): {setup.description}\n\n{table(results[key])}", flush=True)
        if run_minutes is not None:
            print(f"Its runs took {run_minutes} min added up (one job).", flush=True)
    minutes = (time.perf_counter() - started) / 60
    results["default"] = DEFAULT
    results["settings"]["machine"] = f"{cpu_model()}, {_cores()} cores"
    results["settings"]["jobs"] = args.jobs
    results["settings"]["wall_minutes"] = round(minutes, 1)  # this call: reused runs cost 0
    print(f"{minutes:.1f} min on {results['settings']['machine']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
