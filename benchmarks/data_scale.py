"""Data at scale: manifest reading, ``evaluate`` on many predictions, the loader vs JPEG decoding.

1. Manifest reading (``read_manifest``, the parser training uses) at ``--lines`` sizes (default
   10k, 100k, 1M JSONL lines with presence and two boxes; CSV at the same sizes), without image
   checks, and at 10k lines with them (every image's header is opened). Time, lines/s and the
   peak memory of a fresh process over its start (``ru_maxrss``), per line too. Rates are per
   CPU second (one core), so that a shared machine slows the wall clock, not the figures.
2. ``evaluate`` on ``--predictions`` presence predictions (default 100k) against a manifest of
   the same images: time and peak memory.
3. The training loader against the JPEG decode floor, on ``--frames`` 640x384 JPEG frames, one
   core: Pillow decoding alone (the floor), then ``ManifestDataset`` with the eval transform
   (resize; JPEGs decoded at a reduced scale where the input allows) and with training
   augmentation, through a ``DataLoader`` with no worker; images/s
   and the ratio to the floor.

Every measurement runs in a process of its own, so peak memory is that measurement's.

Usage:
    python benchmarks/data_scale.py                      # about 5 minutes on one free core
    python benchmarks/data_scale.py --lines 10000 100000 --predictions 10000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_model  # the script's folder is on sys.path

CLASSES = ["pedestrian", "car", "stop_sign", "traffic_light"]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_manifest(path: Path, lines: int, image: str) -> None:
    """``lines`` entries, each with presence and two boxes, all naming one image."""
    with open(path, "w") as f:
        for i in range(lines):
            entry = {
                "image": image if i == 0 else f"img/{i:07d}.jpg",
                "presence": {"pedestrian": 1, "car": "?", "stop_sign": 0},
                "boxes": [[10.0, 20.0, 50.5, 90.0, "pedestrian"], [100, 50, 180, 120, "car"]],
            }
            f.write(json.dumps(entry) + "\n")


def write_csv(path: Path, lines: int) -> None:
    with open(path, "w") as f:
        f.write("image," + ",".join(CLASSES) + "\n")
        for i in range(lines):
            f.write(f"img/{i:07d}.jpg,1,0,?,1\n")


def measure_manifest(path: str, check: bool) -> dict:
    from drivemtl.data.manifest import read_manifest

    before = _rss_mib()
    start, cpu = time.perf_counter(), time.process_time()
    records = read_manifest(path, CLASSES, check_files=check)
    return {
        "lines": len(records),
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "peak_mib": _rss_mib() - before,
    }


def measure_evaluate(predictions: str, manifest: str, out: str) -> dict:
    from drivemtl.evaluation import evaluate

    before = _rss_mib()
    start, cpu = time.perf_counter(), time.process_time()
    evaluate(predictions, manifest, out)
    return {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "peak_mib": _rss_mib() - before,
    }


def measure_loader(manifest: str, mode: str) -> dict:
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader

    from drivemtl.data.batch import collate
    from drivemtl.data.datasets import ManifestDataset
    from drivemtl.data.manifest import read_manifest
    from drivemtl.data.transforms import build_transform, decode_size

    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(0)  # one core: no OpenCV thread pool either
    records = read_manifest(manifest, CLASSES)
    start = time.process_time()  # CPU time: images per second of one core, even when shared
    if mode == "decode":
        for r in records:
            with Image.open(r.image) as im:
                im.convert("RGB").load()
    else:
        train = mode == "augment"
        size = (192, 320)
        dataset = ManifestDataset(
            records, build_transform(size, train), decode_at_least=decode_size(size, train)
        )
        loader = DataLoader(dataset, batch_size=32, num_workers=0, collate_fn=collate)
        for _ in loader:
            pass
    seconds = time.process_time() - start
    return {"images": len(records), "cpu_seconds": seconds, "per_second": len(records) / seconds}


def run_child(*args: str) -> dict:
    """One measurement in a fresh interpreter; returns its JSON result."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_frames(folder: Path, count: int) -> Path:
    """``count`` 640x384 JPEG driving scenes and a presence manifest of them."""

    from drivemtl.data.synthetic import SyntheticConfig, generate_dataset

    generate_dataset(folder, count, seed=0, config=SyntheticConfig(width=640, height=384))
    manifest = folder / "manifest.jsonl"
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    out = folder / "presence.jsonl"
    out.write_text("".join(json.dumps({"image": x["image"], "presence": x["presence"]}) + "\n"
                           for x in lines))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--checked-lines", type=int, default=10_000)
    parser.add_argument("--predictions", type=int, default=100_000)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "manifest":
            result = measure_manifest(rest[0], rest[1] == "check")
        elif kind == "evaluate":
            result = measure_evaluate(*rest)
        else:
            result = measure_loader(*rest)
        print(json.dumps(result))
        return

    print(f"Machine: {cpu_model()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frames = make_frames(tmp / "frames", args.frames)
        first = json.loads(frames.read_text().splitlines()[0])["image"]
        image = str((frames.parent / first).resolve())

        print("\n1. Manifest reading (read_manifest, as training does)")
        print(f"{'format':<8}{'lines':>10}{'checks':>8}{'seconds':>10}{'CPU s':>8}"
              f"{'lines/CPU s':>13}{'peak MiB':>10}{'bytes/line':>12}")  # fmt: skip
        rows = [("jsonl", n, False) for n in args.lines] + [("csv", n, False) for n in args.lines]
        rows.append(("jsonl", args.checked_lines, True))
        for fmt, n, check in rows:
            path = tmp / f"m{n}.{fmt}"
            if check:  # every line names a real image: hard links to the frames
                write_manifest(path, n, image)
                folder = tmp / "img"
                folder.mkdir(exist_ok=True)
                for i in range(1, n):
                    target = folder / f"{i:07d}.jpg"
                    if not target.exists():
                        os.link(image, target)
            elif fmt == "jsonl":
                write_manifest(path, n, image)
            else:
                write_csv(path, n)
            r = run_child("manifest", str(path), "check" if check else "none")
            print(f"{fmt:<8}{n:>10}{'yes' if check else 'no':>8}{r['seconds']:>10.2f}"
                  f"{r['cpu_seconds']:>8.2f}{n / r['cpu_seconds']:>13,.0f}{r['peak_mib']:>10.0f}"
                  f"{r['peak_mib'] * 2**20 / n:>12,.0f}")  # fmt: skip
            path.unlink()

        print(f"\n2. evaluate, {args.predictions:,} presence predictions")
        manifest, predictions = tmp / "eval.jsonl", tmp / "predictions.jsonl"
        with open(manifest, "w") as m, open(predictions, "w") as p:
            for i in range(args.predictions):
                labels = {c: (i >> k) & 1 for k, c in enumerate(CLASSES)}
                m.write(json.dumps({"image": f"img/{i:07d}.jpg", "presence": labels}) + "\n")
                probs = {c: round(((i * 7919 + k * 104729) % 1000) / 1000, 3)
                         for k, c in enumerate(CLASSES)}  # fmt: skip
                present = [c for c in CLASSES if probs[c] > 0.5]
                p.write(json.dumps({"image": f"img/{i:07d}.jpg", "presence": probs,
                                    "present": present}) + "\n")  # fmt: skip
        r = run_child("evaluate", str(predictions), str(manifest), str(tmp / "eval"))
        print(f"{r['seconds']:.1f} s wall, {r['cpu_seconds']:.1f} s CPU "
              f"({args.predictions / r['cpu_seconds']:,.0f} predictions per CPU second), "
              f"peak {r['peak_mib']:.0f} MiB")  # fmt: skip

        print(f"\n3. Loader against the decode floor, {args.frames} JPEG 640x384, one core")
        floor = run_child("loader", str(frames), "decode")["per_second"]
        for mode in ("decode", "resize", "augment"):
            r = floor if mode == "decode" else run_child("loader", str(frames), mode)["per_second"]
            print(f"{mode:<8}{r:>8.1f} images/s {r / floor:>6.2f}x the decode floor")


if __name__ == "__main__":
    main()
