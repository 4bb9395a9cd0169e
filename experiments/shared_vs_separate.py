"""One shared network against one network per class, with one class labelled on few images.

The textbook's claim: a network trained on several related tasks at once learns features that
help a task with little labelled data, and costs one network instead of four at inference.
This experiment tests it on the embedded synthetic set:

1. ``multi``: one presence model for the four classes (hard sharing, resnet18), trained with
   the class ``--sparse-class`` labelled on only ``--labelled-fraction`` of the training images
   (the rest ``?``, masked out of the loss). Its loss is the mean over all labelled
   (image, class) entries, so a class weighs in proportion to its labels.
2. ``multi-per-class``: the same network with one task per class (``--model.granularity
   class``): each class's loss is the mean over its own labelled entries, so the sparse class
   weighs as much as the others.
3. ``single-<class>``: four models from the same config, each trained on one class only
   (``--model.single_task presence/<class>``), on the same images and labels.

Every run uses the same config (``configs/demo.yaml`` by default), epochs and seed. It reports
per-class test AP of the checkpoint chosen on validation (``drivemtl test``), Delta_m of each
shared network against the separate ones (``drivemtl
compare``, Maninis et al. 2019, higher is better), training wall time, and inference time per
image (the four separate networks: the sum of the four). Results go to ``--out``
(``results.md``, ``results.json``, the runs); the table printed at the end is what the README
shows. A run whose folder already holds its metrics and time is reused (delete the folder to
train it again).

Usage:
    python experiments/shared_vs_separate.py                     # ~15 minutes on 2 CPU cores
    python experiments/shared_vs_separate.py --train 300 --val 100 --epochs 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # the benchmarks' machine description
from _machine import cpu_model  # noqa: E402

CLASSES = ("pedestrian", "car", "stop_sign", "traffic_light")
SHARED = {"multi": [], "multi-per-class": ["--model.granularity", "class"]}
"""The shared networks and their options."""


def fit(name: str, out: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    """Train one run in a fresh process (or reuse a finished one); its folder and wall time."""
    run = out / name
    timing = run / "train_seconds.txt"
    if (run / "metrics.json").is_file() and timing.is_file():
        seconds = float(timing.read_text())
        print(f"[{name}] reused ({seconds:.0f} s when trained); delete {run} to train again")
        return {"run": str(run), "train_seconds": seconds}
    command = [
        sys.executable,
        "-m",
        "drivemtl",
        "fit",
        "--config",
        str(args.config),
        "--trainer.default_root_dir",
        str(run),
        "--trainer.max_epochs",
        str(args.epochs),
        "--trainer.enable_progress_bar",
        "false",
        "--data.synthetic.train",
        str(args.train),
        "--data.synthetic.val",
        str(args.val),
        "--data.synthetic.test",
        str(args.val),
        "--data.synthetic.dropout",
        json.dumps({args.sparse_class: round(1.0 - args.labelled_fraction, 6)}),
        *extra,
    ]
    print(f"[{name}] {' '.join(command[2:])}", flush=True)
    start = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    seconds = time.perf_counter() - start
    if status.returncode != 0:
        sys.exit(f"[{name}] failed (exit {status.returncode}); see {out / f'{name}.log'}")
    timing.write_text(f"{seconds:.1f}\n")
    print(f"[{name}] {seconds:.0f} s", flush=True)
    return {"run": str(run), "train_seconds": seconds}


def test(run: Path) -> Path:
    """The best checkpoint (chosen on validation) scored on the test split; its metrics.json.

    Reporting the validation AP that chose the epoch would favour the noisiest run.
    """
    out = run / "test"
    if not (out / "metrics.json").is_file():
        command = [sys.executable, "-m", "drivemtl", "test", "--ckpt_path"]
        command += [str(run / "checkpoints" / "best.ckpt"), "--trainer.default_root_dir", str(out)]
        command += ["--trainer.enable_progress_bar", "false"]
        with open(run / "test.log", "w") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=REPO)
    return out / "metrics.json"


@torch.inference_mode()
def inference_ms_per_image(checkpoint: Path, images: torch.Tensor, precision: str) -> float:
    """Median over repeats of one pass over ``images`` (batches of 32), per image."""
    from drivemtl.module import MultiTaskModule

    model = MultiTaskModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    dtype = torch.bfloat16 if precision.startswith("bf16") else None
    times = []
    for repeat in range(4):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            for batch in images.split(32):
                model(batch)
        if repeat:  # the first pass warms up oneDNN's kernel cache
            times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2] / len(images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "shared_vs_separate")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    parser.add_argument("--train", type=int, default=1500, help="training images")
    parser.add_argument("--val", type=int, default=400, help="validation (and test) images")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--sparse-class", default="stop_sign", choices=CLASSES)
    parser.add_argument("--labelled-fraction", type=float, default=0.05)
    parser.add_argument("--inference-images", type=int, default=128)
    parser.add_argument("--cache-dir", type=Path, help="synthetic cache (default: drivemtl's)")
    args, extra = parser.parse_known_args(argv)
    if not 0 < args.labelled_fraction <= 1:
        parser.error("--labelled-fraction must be in (0, 1]")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.cache_dir is not None:
        extra = [*extra, "--data.cache_dir", str(args.cache_dir)]

    runs = {name: fit(name, args.out, args, [*extra, *options]) for name, options in SHARED.items()}
    for c in CLASSES:
        runs[f"single-{c}"] = fit(
            f"single-{c}", args.out, args, [*extra, "--model.single_task", f"presence/{c}"]
        )
    for name, run in runs.items():
        print(f"[{name}] test split", flush=True)
        run["test_metrics"] = str(test(Path(run["run"])))
    singles = [runs[f"single-{c}"]["test_metrics"] for c in CLASSES]
    comparisons = {
        name: compare(name, runs[name]["test_metrics"], singles, args.out) for name in SHARED
    }

    from drivemtl.data.datamodule import DriveDataModule

    # The validation images as the network sees them (the config's eval transform).
    data = DriveDataModule(
        image_size=tuple(_config_value(args.config, "data", "image_size")),
        batch_size=32,
        num_workers=0,
        synthetic=_synthetic(args),
        cache_dir=args.cache_dir,
    )
    data.prepare_data()
    data.setup("validate")
    images = torch.cat([b.images for b in data.val_dataloader()])[: args.inference_images]
    precision = str(_config_value(args.config, "trainer", "precision") or "32-true")
    for run in runs.values():
        run["inference_ms_per_image"] = inference_ms_per_image(
            Path(run["run"]) / "checkpoints" / "best.ckpt", images, precision
        )
        run["validation"] = json.loads((Path(run["run"]) / "metrics.json").read_text())
        run["test"] = json.loads(Path(run["test_metrics"]).read_text())

    results = {
        "settings": {k: str(v) for k, v in vars(args).items()} | {"extra": extra},
        "machine": _machine(),
        "runs": runs,
        "compare": comparisons,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = _table(runs, comparisons, args)
    (args.out / "results.md").write_text(table)
    print(table)
    return 0


def compare(name: str, multi: str, singles: list[str], out: Path) -> dict:
    """``drivemtl compare`` of one shared run's test metrics against the single-class runs'."""
    output = out / f"compare-{name}.json"
    command = [sys.executable, "-m", "drivemtl", "compare", "--multi", multi]
    command += ["--single", *singles, "--metrics", *[f"presence/{c}/ap" for c in CLASSES]]
    subprocess.run([*command, "--output", str(output)], check=True, cwd=REPO)
    return json.loads(output.read_text())


def _config_value(config: Path, *keys: str):
    import yaml

    value = yaml.safe_load(config.read_text())
    for key in keys:
        value = (value or {}).get(key)
    return value


def _synthetic(args: argparse.Namespace):
    """The same synthetic settings as the runs (so the cached set is reused)."""
    from drivemtl.data.datamodule import SyntheticSplits

    settings = dict(_config_value(args.config, "data", "synthetic") or {})
    settings |= {"train": args.train, "val": args.val, "test": args.val}
    settings["dropout"] = {args.sparse_class: round(1.0 - args.labelled_fraction, 6)}
    return SyntheticSplits(**settings)


def _machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_model()}, {cores} cores, torch {torch.__version__}"


def _table(runs: dict, comparisons: dict, args: argparse.Namespace) -> str:
    shared = {name: runs[name]["test"]["presence"]["per_class"] for name in SHARED}
    gains = {
        name: {g["metric"]: g["relative_gain_percent"] for g in c["metrics"]}
        for name, c in comparisons.items()
    }
    lines = [
        f"Shared network vs one network per class; `{args.sparse_class}` labelled on "
        f"{args.labelled_fraction:.0%} of {args.train} training images; {args.epochs} epochs; "
        f"the epoch chosen on {args.val} validation images, AP on {args.val} test images "
        "(relative gain of each shared network over the separate one in brackets). "
        f"Machine: {_machine()}.",
        "",
        "| class | separate networks | shared, one presence loss | shared, one task per class |",
        "|---|---:|---:|---:|",
    ]
    for c in CLASSES:
        single = runs[f"single-{c}"]["test"]["presence"]["per_class"][c]["ap"]
        cells = [
            f"{_fmt(shared[n][c]['ap'])} ({gains[n][f'presence/{c}/ap']:+.1f} %)" for n in SHARED
        ]
        lines.append(f"| {c} | {_fmt(single)} | {' | '.join(cells)} |")
    deltas = [f"**{comparisons[n]['delta_m_percent']:+.1f} %**" for n in SHARED]
    lines.append(f"| **Delta_m** (higher is better) | | {' | '.join(deltas)} |")
    separate_train = sum(runs[f"single-{c}"]["train_seconds"] for c in CLASSES)
    separate_infer = sum(runs[f"single-{c}"]["inference_ms_per_image"] for c in CLASSES)
    train = " | ".join(f"{runs[n]['train_seconds'] / 60:.1f} min" for n in SHARED)
    infer = " | ".join(f"{runs[n]['inference_ms_per_image']:.1f} ms" for n in SHARED)
    lines += [
        f"| training wall time | {separate_train / 60:.1f} min (4 networks) | {train} |",
        f"| inference per image | {separate_infer:.1f} ms (4 networks) | {infer} |",
        "",
    ]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
