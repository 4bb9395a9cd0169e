"""Training-step time of each head set and precision, relative to presence alone in bf16.

What the demo configs pay per step: the same model family (resnet18, channels-last), the same
batch of synthetic scenes with their boxes and depth maps (rendered as the demos render them,
at the demos' 224x128), through Lightning's real training loop. As in ``mtl_step_time.py``,
every variant is timed between two runs of the baseline (presence, bf16), in ``--rounds``
rounds, and the table gives the median ratio over the rounds (this VM's speed drifts), with
each variant's median step and its wall time per image.

Usage:
    python benchmarks/head_step_time.py                       # ~4 min on 2 cores
    OMP_NUM_THREADS=1 python benchmarks/head_step_time.py --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

from _machine import cpu_model  # the script's folder is on sys.path
from mtl_step_time import time_steps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from drivemtl.data.batch import Batch  # noqa: E402
from drivemtl.data.datamodule import DriveDataModule, SyntheticSplits  # noqa: E402
from drivemtl.module import MultiTaskModule  # noqa: E402

# The detection head of configs/demo_detection.yaml (strides 4-16, light towers).
DEMO_DETECTION = {"levels": [2, 3, 4], "fpn_channels": 64, "head_convs": 1}
VARIANTS = {
    "presence, bf16": ({"presence": {}}, "bf16-mixed"),
    "presence, fp32": ({"presence": {}}, "32-true"),
    "presence + detection, bf16": ({"presence": {}, "detection": DEMO_DETECTION}, "bf16-mixed"),
    "presence + depth, bf16": ({"presence": {}, "depth": {}}, "bf16-mixed"),
    "presence + detection (defaults) + depth, bf16": (
        {"presence": {}, "detection": {}, "depth": {}},
        "bf16-mixed",
    ),
}
BASELINE = "presence, bf16"


def synthetic_batch(size: int, height: int, width: int, cache: Path) -> Batch:
    """``size`` training images of the synthetic set with boxes and depth (eval transform)."""
    synthetic = SyntheticSplits(
        train=size, val=size, test=1, width=width, height=height, min_object_size=0.08
    )
    data = DriveDataModule(
        image_size=(height, width),
        batch_size=size,
        num_workers=0,
        synthetic=synthetic,
        cache_dir=cache,
        pixel_labels=["depth"],
    )
    data.prepare_data()
    data.setup("validate")
    return next(iter(data.val_dataloader()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--image-size", type=int, nargs=2, default=[128, 224], metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant and round")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant and round")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    scratch = Path(tempfile.mkdtemp(prefix="drivemtl_heads_"))
    args.scratch = str(scratch)
    batch = synthetic_batch(args.batch_size, *args.image_size, cache=scratch / "cache")

    def run(name: str) -> list[float]:
        tasks, precision = VARIANTS[name]
        torch.manual_seed(0)
        model = MultiTaskModule(tasks=tasks, image_size=tuple(args.image_size), warmup_steps=0)
        return time_steps(model, batch, argparse.Namespace(**vars(args), precision=precision))

    variants = [v for v in args.variants if v != BASELINE]
    times: dict[str, list[float]] = {BASELINE: [], **{v: [] for v in variants}}
    ratios: dict[str, list[float]] = {v: [] for v in variants}
    for round_ in range(args.rounds):
        before = run(BASELINE)
        times[BASELINE] += before
        for name in variants:
            own, after = run(name), run(BASELINE)
            times[name] += own
            times[BASELINE] += after
            baseline = (statistics.median(before) + statistics.median(after)) / 2
            ratios[name].append(statistics.median(own) / baseline)
            before = after
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)

    print()
    print(
        f"resnet18, {args.image_size[0]}x{args.image_size[1]}, batch {args.batch_size}, "
        f"channels-last; {cpu_model()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
    print("| heads, precision | median step (ms) | ms per image | relative | rounds |")
    print("|---|---:|---:|---:|---|")
    for name, values in times.items():
        step = statistics.median(values)
        ratio = statistics.median(ratios[name]) if name in ratios else 1.0
        spread = ", ".join(f"{x:.2f}" for x in ratios.get(name, [])) or "-"
        print(
            f"| {name} | {1000 * step:.0f} | {1000 * step / args.batch_size:.1f} "
            f"| {ratio:.2f}x | {spread} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
