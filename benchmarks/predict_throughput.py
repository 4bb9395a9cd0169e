"""Folder inference on CPU: images per second at 640x384, and memory against folder size.

Runs ``drivemtl predict`` exactly as a user would (a checkpoint, a folder, an output folder)
in a fresh process per measurement, and reports:

1. Throughput: images/s over ``--throughput-images`` JPEG frames of 640x384, the network at
   the same input size (random-weight ``--backbone``, default ``mobilenet_v3_small``). The
   clock runs from the first batch requested to the last line written (``run.json``), so it
   counts decoding, resizing, the model and writing, not Python start-up or model loading.
2. Memory: the peak resident set size (main process, and the largest DataLoader worker) for
   each of ``--memory-sizes`` images (default 1,000 and 10,000). Memory per batch does not
   depend on the folder size, so to keep the default run short these runs feed the network
   a smaller input (``--memory-input 96 160``) while still decoding 640x384 files; pass
   ``--memory-input 384 640`` to repeat them at full size.

Frames: ``--unique`` synthetic driving scenes (drivemtl.data.synthetic) are rendered once, and
a folder of N frames is N hard links to them, so building 10,000 frames costs no disk and no
time; the OS page cache serves the files either way, so disk speed is not measured.

Usage:
    python benchmarks/predict_throughput.py                  # ~2 minutes on 2 free cores
    python benchmarks/predict_throughput.py --memory-sizes 1000 10000 100000 --workers 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _machine import cpu_model  # the script's folder is on sys.path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- child: one predict run ----------------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    """Run one ``drivemtl predict`` in this process and print its measurements as JSON."""
    import torch

    from drivemtl.cli import main

    if args.threads:
        torch.set_num_threads(args.threads)
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:  # RSS over time: flat after warm-up, whatever the folder size
        while not stop.wait(0.25):
            samples.append(_rss_mib())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    code = main(
        [
            "predict",
            f"--ckpt_path={args.ckpt}",
            f"--data.predict_dir={args.folder}",
            f"--output_dir={args.out}",
            f"--data.image_size=[{args.input[0]}, {args.input[1]}]",
            f"--data.batch_size={args.batch_size}",
            f"--data.num_workers={args.workers}",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    )
    stop.set()
    thread.join()
    stats = json.loads((Path(args.out) / "run.json").read_text())["stats"]
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    tail = samples[len(samples) // 10 :] or samples  # after the first tenth: warm
    result = {
        "code": code,
        "predicted": stats["predicted"],
        "failed": stats["failed"],
        "seconds": stats["seconds"],
        "images_per_second": stats["predicted"] / stats["seconds"] if stats["seconds"] else 0,
        "peak_rss_mib": own,
        "peak_worker_rss_mib": workers,
        "rss_warm_min_mib": min(tail) if tail else None,
        "rss_warm_max_mib": max(tail) if tail else None,
    }
    print("RESULT " + json.dumps(result), flush=True)


# -- parent: data, checkpoint, runs, table --------------------------------------------------------


def make_checkpoint(path: Path, backbone: str, image_size: tuple[int, int]) -> None:
    """A random-weight checkpoint with everything predict reads (classes, size, thresholds)."""
    import lightning as L

    from drivemtl.module import MultiTaskModule

    model = MultiTaskModule(backbone=backbone, image_size=image_size)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)


def make_frames(source: list[Path], folder: Path, count: int) -> None:
    """``count`` frames in nested folders of 1,000, hard-linked to the rendered scenes."""
    for i in range(count):
        target = folder / f"part{i // 1000:03d}" / f"frame{i:07d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source[i % len(source)], target)


def run_child(args, ckpt: Path, folder: Path, out: Path, input_size) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        f"--ckpt={ckpt}",
        f"--folder={folder}",
        f"--out={out}",
        "--input",
        *map(str, input_size),
        f"--batch-size={args.batch_size}",
        f"--workers={args.workers}",
        f"--threads={args.threads}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"predict run failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--backbone", default="mobilenet_v3_small")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--unique", type=int, default=100, help="distinct rendered frames")
    parser.add_argument("--throughput-images", type=int, default=1000)
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--memory-input", type=int, nargs=2, default=[96, 160], metavar=("H", "W"))
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    # Internal: one measured run.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return

    import torch

    print(f"platform : {platform.platform()}")
    print(f"cpu      : {cpu_model()}, {os.cpu_count()} logical cores")
    print(f"load avg : {', '.join(f'{v:.2f}' for v in os.getloadavg())} (other work slows runs)")
    print(
        f"python   : {platform.python_version()}  torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads by default)"
    )
    print(
        f"settings : backbone {args.backbone}, batch {args.batch_size}, "
        f"{args.workers} DataLoader workers, torch threads {args.threads or 'default'}"
    )

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="drivemtl-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    from drivemtl.data.synthetic import SyntheticConfig, generate_dataset

    started = time.perf_counter()
    scenes = workdir / "scenes"
    if not (scenes / "manifest.jsonl").is_file():
        config = SyntheticConfig(width=args.width, height=args.height)
        generate_dataset(scenes, args.unique, seed=0, config=config)
    source = sorted(p for p in (scenes / "images").iterdir() if p.is_file())
    print(f"frames   : {len(source)} distinct synthetic {args.width}x{args.height} JPEG scenes, "
          f"hard-linked ({time.perf_counter() - started:.1f} s)")  # fmt: skip

    size = (args.height, args.width)
    ckpt = workdir / f"random-{args.backbone}.ckpt"
    make_checkpoint(ckpt, args.backbone, size)

    rows = []
    jobs = [("throughput", args.throughput_images, size)]
    jobs += [("memory", n, tuple(args.memory_input)) for n in args.memory_sizes]
    for kind, count, input_size in jobs:
        folder = workdir / f"frames-{count}"
        if not folder.is_dir():
            make_frames(source, folder, count)
        out = workdir / f"out-{kind}-{count}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        result = run_child(args, ckpt, folder, out, input_size)
        assert result["predicted"] == count and result["failed"] == 0, result
        rows.append((kind, count, input_size, result))
        print(
            f"  {kind:<10} {count:>7} images, input {input_size[0]}x{input_size[1]}: "
            f"{result['images_per_second']:7.1f} images/s, peak RSS {result['peak_rss_mib']:.0f} "
            f"MiB (workers {result['peak_worker_rss_mib']:.0f} MiB)",
            flush=True,
        )

    print()
    print("| run | images | network input | images/s | s | peak RSS main (MiB) | "
          "peak RSS worker (MiB) | warm RSS min-max (MiB) |")  # fmt: skip
    print("|---|---:|---|---:|---:|---:|---:|---|")
    for kind, count, input_size, r in rows:
        print(
            f"| {kind} | {count} | {input_size[0]}x{input_size[1]} | "
            f"{r['images_per_second']:.1f} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | "
            f"{r['peak_worker_rss_mib']:.0f} | "
            f"{r['rss_warm_min_mib']:.0f}-{r['rss_warm_max_mib']:.0f} |"
        )
    memory = [r for r in rows if r[0] == "memory"]
    if len(memory) >= 2:
        (_, n0, _, a), (_, n1, _, b) = memory[0], memory[-1]
        growth = b["peak_rss_mib"] - a["peak_rss_mib"]
        per_k = growth / max(n1 - n0, 1) * 1000
        print(
            f"\nPeak RSS from {n0} to {n1} images: {growth:+.1f} MiB "
            f"({per_k:+.2f} MiB per 1,000 images; file names and Lightning's batch indices "
            "are the only per-image state)."
        )
    print(f"Total benchmark time {time.perf_counter() - started:.0f} s; files in {workdir}")
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
