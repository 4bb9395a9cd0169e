"""One shared network against one network per class, with one class labelled on few images.

The textbook's claim: a network trained on several related tasks at once learns features that
help a task with little labelled data, and costs one network instead of four at inference.
This experiment tests it on the embedded synthetic set:

1. ``multi``: one presence model for the four classes (hard sharing, resnet18), trained with
   the class ``--sparse-class`` labelled on only ``--labelled-fraction`` of the training images
   (the rest ``?``, masked out of the loss).
2. ``single-<class>``: four models from the same config, each trained on one class only
   (``--model.single_task presence/<class>``), on the same images and labels.

Every run uses the same config (``configs/demo.yaml`` by default), epochs and seed. It reports
per-class validation AP, Delta_m (``drivemtl compare``, Maninis et al. 2019, higher is better),
training wall time, and inference time per image (the four separate networks: the sum of the
four). Results go to ``--out`` (``results.md``, ``results.json``, the runs); the table printed
at the end is what the README shows.

Usage:
    python experiments/shared_vs_separate.py                     # ~25 minutes on 2 CPU cores
    python experiments/shared_vs_separate.py --train 300 --val 100 --epochs 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("pedestrian", "car", "stop_sign", "traffic_light")


def fit(name: str, out: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    """Train one run in a fresh process; its metrics.json and wall time."""
    run = out / name
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
    print(f"[{name}] {seconds:.0f} s", flush=True)
    return {"run": str(run), "train_seconds": seconds}


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

    runs = {"multi": fit("multi", args.out, args, extra)}
    for c in CLASSES:
        runs[f"single-{c}"] = fit(
            f"single-{c}", args.out, args, [*extra, "--model.single_task", f"presence/{c}"]
        )

    compare = args.out / "compare.json"
    singles = [str(Path(runs[f"single-{c}"]["run"]) / "metrics.json") for c in CLASSES]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "drivemtl",
            "compare",
            "--multi",
            str(Path(runs["multi"]["run"]) / "metrics.json"),
            "--single",
            *singles,
            "--metrics",
            *[f"presence/{c}/ap" for c in CLASSES],
            "--output",
            str(compare),
        ],
        check=True,
        cwd=REPO,
    )
    comparison = json.loads(compare.read_text())

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
        run["metrics"] = json.loads((Path(run["run"]) / "metrics.json").read_text())

    results = {
        "settings": {k: str(v) for k, v in vars(args).items()} | {"extra": extra},
        "machine": _machine(),
        "runs": runs,
        "compare": comparison,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = _table(runs, comparison, args)
    (args.out / "results.md").write_text(table)
    print(table)
    return 0


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
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores, torch {torch.__version__}"


def _table(runs: dict, comparison: dict, args: argparse.Namespace) -> str:
    multi = runs["multi"]["metrics"]["presence"]["per_class"]
    gains = {g["metric"]: g for g in comparison["metrics"]}
    lines = [
        f"Shared network vs one network per class; `{args.sparse_class}` labelled on "
        f"{args.labelled_fraction:.0%} of {args.train} training images; {args.epochs} epochs; "
        f"validation on {args.val} images. Machine: {_machine()}.",
        "",
        "| class | AP shared | AP separate | relative gain |",
        "|---|---|---|---|",
    ]
    for c in CLASSES:
        single = runs[f"single-{c}"]["metrics"]["presence"]["per_class"][c]["ap"]
        gain = gains[f"presence/{c}/ap"]["relative_gain_percent"]
        lines.append(f"| {c} | {_fmt(multi[c]['ap'])} | {_fmt(single)} | {gain:+.1f} % |")
    lines.append(
        f"| **Delta_m** (higher is better) | | | **{comparison['delta_m_percent']:+.1f} %** |"
    )
    separate_train = sum(runs[f"single-{c}"]["train_seconds"] for c in CLASSES)
    separate_infer = sum(runs[f"single-{c}"]["inference_ms_per_image"] for c in CLASSES)
    lines += [
        "",
        "| | shared (1 network) | separate (4 networks) |",
        "|---|---|---|",
        f"| training wall time | {runs['multi']['train_seconds'] / 60:.1f} min "
        f"| {separate_train / 60:.1f} min |",
        f"| inference per image | {runs['multi']['inference_ms_per_image']:.1f} ms "
        f"| {separate_infer:.1f} ms |",
        "",
    ]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
