"""Throughput of the synthetic data generator on one CPU core, end to end.

Measures ``generate_dataset`` (render + JPEG encode + depth and mask PNG encode + file writes +
manifest) into a temporary folder, after a short warm-up that fills the per-size caches, and
prints the machine it ran on. The process is pinned to one core where the OS allows it, so the
figure is comparable across machines and not inflated by threaded libraries.

Usage:
    python benchmarks/synthetic_throughput.py [--num-images 500] [--width 640] [--height 384]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_model  # the script's folder is on sys.path

# Pin before importing numpy and friends, so no thread pool starts on other cores.
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import PIL  # noqa: E402

from drivemtl.data.synthetic import SyntheticConfig, generate_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> float:
    """Run the benchmark and return images per second."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"platform : {platform.platform()}")
    print(f"cpu      : {cpu_model()} (pinned to core(s) {cores} of {os.cpu_count()})")
    print(
        f"python   : {platform.python_version()}  numpy {np.__version__}  pillow {PIL.__version__}"
    )

    config = SyntheticConfig(width=args.width, height=args.height)
    with tempfile.TemporaryDirectory(prefix="drivemtl-bench-") as tmp:
        generate_dataset(Path(tmp) / "warmup", 10, seed=args.seed + 1, config=config)
        start, cpu_start = time.perf_counter(), time.process_time()
        manifest = generate_dataset(
            Path(tmp) / "run", args.num_images, seed=args.seed, config=config
        )
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        size = sum(p.stat().st_size for p in manifest.parent.rglob("*") if p.is_file())
    rate = args.num_images / elapsed
    print(
        f"images   : {args.num_images} at {args.width}x{args.height}, "
        f"{size / args.num_images / 1024:.1f} KiB per image (jpg + depth and mask png)"
    )
    print(f"wall     : {elapsed:.2f} s  ->  {rate:.1f} images/s on one core")
    # CPU time of this process: the same figure on a machine shared with other jobs.
    print(f"cpu time : {cpu:.2f} s  ->  {args.num_images / cpu:.1f} images/s of CPU time")
    if cpu < 0.8 * elapsed:
        print("note     : wall time well above CPU time; the core was shared, rerun on an idle one")
    return rate


if __name__ == "__main__":
    main()
