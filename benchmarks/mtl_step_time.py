"""Training-step time of every multi-task method relative to fixed weights.

Same model, same batch, same process: each method trains through Lightning's real training loop
(``MultiTaskModule``: forward, balancing, backward hook, optimiser step) on one in-memory batch
repeated, and the clock (``time.perf_counter``; with CUDA it synchronises first) runs from
``on_train_batch_start`` to ``on_train_batch_end``. Each fit runs ``--warmup`` untimed then
``--repeats`` timed steps. On a shared machine the load drifts, so every method is timed
between two fixed-weights fits (F, M1, F, M2, F, ...), in ``--rounds`` rounds: a method's ratio
in a round is its median step over the mean of the two neighbouring fixed medians, and the table
gives the median ratio over the rounds, with each method's median step over all rounds.
Gradient methods on the parameters pay one backward pass per task through the trunk
(``--granularity class``: 4 tasks), on the features (``<method>@features``) one per task
through the heads and one through the trunk; FAMO pays one forward pass without gradient
(``famo``, the paper's update from the same batch) or nothing (``famo@next_batch``);
diagnostics pay a backward pass per task on diagnosed steps only (the table times one: every
``diagnose_every`` steps). A method whose optional solver is not installed is left out.

``--json PATH`` writes ``{"<method>": ratio to fixed weights}`` with the methods' config names
as keys (``mgda@features``: ``{method: mgda, on: features}``).

Usage (the README's figures: 5 rounds on a quiet machine):
    python benchmarks/mtl_step_time.py --rounds 5 --json out.json        # ~15 min on 2 cores
    python benchmarks/mtl_step_time.py --methods famo mgda@features --rounds 2 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

from _machine import cpu_model, fast_precision  # the script's folder is on sys.path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning as L  # noqa: E402
import torch  # noqa: E402

from drivemtl.data.batch import Batch  # noqa: E402
from drivemtl.module import MultiTaskModule  # noqa: E402
from drivemtl.mtl.gradients import AGGREGATORS  # noqa: E402

METHODS = {
    "fixed": {},
    "uncertainty": {"balancing": "uncertainty"},
    "dwa": {"balancing": "dwa"},
    "gradnorm": {"balancing": "gradnorm"},
    "famo": {"balancing": "famo"},
    "famo@next_batch": {"balancing": {"method": "famo", "update": "next_batch"}},
    **{name: {"gradients": name} for name in AGGREGATORS},
    **{
        f"{name}@features": {"gradients": {"method": name, "on": "features"}}
        for name in AGGREGATORS
    },
    # A diagnosed step; with diagnose_every = N the average cost is 1 + (this - 1) / N.
    "fixed, diagnosed step": {"diagnose_every": 1},
}


def make_batch(size: int, height: int, width: int, classes: int, seed: int = 0) -> Batch:
    """Random images and presence labels with 20 % unknown (``?``) entries."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (size, classes), generator=g)
    labels[torch.rand(size, classes, generator=g) < 0.2] = -1
    return Batch(
        images=torch.randint(0, 256, (size, 3, height, width), dtype=torch.uint8, generator=g),
        presence=labels,
        index=torch.arange(size),
        paths=[f"{i}.png" for i in range(size)],
        original_sizes=torch.tensor([[height, width]] * size),
        boxes=[None] * size,
        box_labels=[None] * size,
        ignore=[None] * size,
    )


class StepTimer(L.Callback):
    """Wall time of each training step (batch start to batch end)."""

    def __init__(self):
        self.times: list[float] = []

    @staticmethod
    def _sync(module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(pl_module)
        self.times.append(time.perf_counter() - self._start)


def build_model(options: dict, args: argparse.Namespace) -> MultiTaskModule:
    torch.manual_seed(0)
    return MultiTaskModule(
        backbone=args.backbone,
        image_size=tuple(args.image_size),
        granularity=args.granularity,
        warmup_steps=0,
        **options,
    )


def time_steps(model: MultiTaskModule, batch: Batch, args: argparse.Namespace) -> list[float]:
    """Step times (seconds) of ``args.repeats`` steps after ``args.warmup`` untimed ones."""
    steps = args.warmup + args.repeats
    loader = torch.utils.data.DataLoader([batch] * steps, batch_size=None)
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        precision=args.precision,
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        default_root_dir=args.scratch,
    )
    trainer.fit(model, train_dataloaders=loader)
    return timer.times[args.warmup :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, nargs=2, default=[128, 224], metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--granularity", choices=["head", "class"], default="class")
    parser.add_argument("--precision", default=fast_precision(), help="default: the CPU's fastest")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per method and round")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per method and round")
    parser.add_argument("--scratch", default="/tmp/drivemtl_bench", help="run folder (diagnostics)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    batch = make_batch(args.batch_size, *args.image_size, classes=4)
    models = {name: build_model(METHODS[name], args) for name in ["fixed", *args.methods]}
    for name, model in list(models.items()):
        method = model.objective.gradients
        if method is not None and method.unavailable:
            print(f"{name}: left out ({method.unavailable})", flush=True)
            del models[name]
    methods = [m for m in models if m != "fixed"]
    times: dict[str, list[float]] = {name: [] for name in models}
    ratios: dict[str, list[float]] = {name: [] for name in methods}
    for round_ in range(args.rounds):
        before = time_steps(models["fixed"], batch, args)
        times["fixed"] += before
        for name in methods:
            own = time_steps(models[name], batch, args)
            after = time_steps(models["fixed"], batch, args)
            times[name] += own
            times["fixed"] += after
            baseline = (statistics.median(before) + statistics.median(after)) / 2
            ratios[name].append(statistics.median(own) / baseline)
            before = after
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    results = {
        name: {
            "median_s": statistics.median(values),
            "ratio_to_fixed": statistics.median(ratios[name]) if name in ratios else 1.0,
            "ratios": ratios.get(name, []),
            "times_s": values,
        }
        for name, values in times.items()
    }
    print()
    print(
        f"{args.backbone}, {args.image_size[0]}x{args.image_size[1]}, batch {args.batch_size}, "
        f"{args.precision}, granularity {args.granularity}; {cpu_model()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print("| method | median step (ms) | relative to fixed (median of rounds) | rounds |")
    print("|---|---:|---:|---|")
    for name, r in results.items():
        spread = ", ".join(f"{x:.2f}" for x in r["ratios"]) or "-"
        print(f"| {name} | {1000 * r['median_s']:.0f} | {r['ratio_to_fixed']:.2f}x | {spread} |")
    if args.json:
        ratios = {name: round(r["ratio_to_fixed"], 4) for name, r in results.items()}
        args.json.write_text(json.dumps(ratios, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
