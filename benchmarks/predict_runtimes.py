"""The Python predictor's runtimes on the same images and model: network alone and end to end.

Runtimes: eager fp32, eager bf16 with channels-last, ``torch.compile``, ONNX Runtime and
TorchScript (the last two exported by ``drivemtl export``). For each:

- network alone: images/s of the runtime on one prepared uint8 batch of ``--batch-size``,
  repeated (``--repeats`` timed calls after ``--warmup``);
- end to end: images/s of ``Predictor.predict`` over ``--images`` JPEG files (decode,
  resize, network, decoding with NMS) plus writing what ``drivemtl predict`` writes (one JSON
  line per image, a 16-bit depth PNG), with the predictor's ``--workers`` decoding threads.

The table gives both, each runtime's network rate relative to eager fp32, and end to end over
network alone (the share of time the network is the bottleneck). The model is the default
(resnet18 at 192x320) with presence, detection and depth heads and random weights; the images
are synthetic 640x384 driving scenes. ``--train-epochs 3`` first trains the model briefly, so
that its outputs look like a real model's (the README's figures); random weights give noisier
depth maps, whose PNGs take longer to compress. ``--device cuda`` runs the network on the GPU
and, end to end, decodes the JPEGs there too (``torchvision.io.decode_jpeg``, pinned memory,
non-blocking copies).

Usage:
    python benchmarks/predict_runtimes.py --train-epochs 3      # ~7 minutes on 2 cores
    python benchmarks/predict_runtimes.py --runtimes eager onnx --images 64
    python benchmarks/predict_runtimes.py --device cuda --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_model  # the script's folder is on sys.path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RUNTIMES = ("eager", "eager-bf16", "compile", "onnx", "torchscript")


def make_checkpoint(path: Path, image_size: tuple[int, int]) -> None:
    """A random-weight checkpoint of presence + detection + depth, as ``fit`` would save."""
    import torch

    from drivemtl.module import MultiTaskModule

    tasks = {"presence": {}, "detection": {}, "depth": {}}
    model = MultiTaskModule(tasks=tasks, image_size=image_size)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)


def train_checkpoint(workdir: Path, epochs: int) -> Path:
    """A briefly trained checkpoint (configs/demo_all.yaml at 192x320 on 256 scenes of
    640x384): outputs like a real model's (smooth depth, few confident boxes)."""
    from drivemtl.cli import main as drivemtl_cli

    run = workdir / "trained"
    ckpt = run / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        return ckpt
    code = drivemtl_cli(
        [
            "fit",
            f"--config={REPO / 'configs' / 'demo_all.yaml'}",
            "--data.image_size=[192, 320]",
            "--data.synthetic.width=640",
            "--data.synthetic.height=384",
            "--data.synthetic.train=256",
            "--data.synthetic.val=32",
            "--data.synthetic.test=32",
            "--data.batch_size=16",
            f"--trainer.max_epochs={epochs}",
            "--trainer.enable_progress_bar=false",
            "--trainer.logger=false",
            f"--data.cache_dir={workdir / 'train-cache'}",
            f"--trainer.default_root_dir={run}",
        ]
    )
    if code:
        raise SystemExit(f"training the benchmark model failed ({code})")
    return ckpt


def build(runtime: str, ckpt: Path, workdir: Path, device: str, workers: int):
    import drivemtl
    from drivemtl.deploy.export import export_model

    if runtime in ("eager", "eager-bf16", "compile"):
        precision = "bf16" if runtime == "eager-bf16" else "32"
        return drivemtl.load(
            ckpt, device=device, precision=precision, compile=runtime == "compile", workers=workers
        )
    path = workdir / ("model.onnx" if runtime == "onnx" else "model.ts")
    if not path.is_file():
        export_model(ckpt, path, runtime, batch=None)
    return drivemtl.load(path, device=device, workers=workers)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def network_rate(predictor, batch, device: str, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        predictor.runtime(batch)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        predictor.runtime(batch)
        sync(device)
        times.append(time.perf_counter() - start)
    return len(batch) / statistics.median(times)


def write_rows(rows: list[dict], out: Path, stream) -> None:
    """What ``drivemtl predict`` writes per image: a JSON line and the depth PNG."""
    import orjson

    from drivemtl.data.io import save_depth_png

    for row in rows:
        stem = Path(row["image"]).stem
        if "depth" in row:
            save_depth_png(row["depth"], out / f"{stem}.png")
            row = {**row, "depth": f"depth/{stem}.png"}
        stream.write(orjson.dumps(row) + b"\n")


def end_to_end_rate(predictor, paths: list[Path], batch_size: int, out: Path) -> float:
    """``iter_predict`` over the files; each batch's lines and PNGs written by one thread
    while the network runs the next batch (PNG encoding releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    out.mkdir(parents=True, exist_ok=True)
    predictor.predict(paths[:batch_size], batch_size=batch_size)  # warm
    start = time.perf_counter()
    with open(out / "predictions.jsonl", "wb") as stream, ThreadPoolExecutor(1) as writer:
        written = [
            writer.submit(write_rows, rows, out, stream)
            for rows in predictor.iter_predict(paths, batch_size=batch_size)
        ]
        for done in written:
            done.result()
    return len(paths) / (time.perf_counter() - start)


def gpu_end_to_end_rate(predictor, paths: list[Path], batch_size: int, out: Path) -> float:
    """End to end with the JPEGs decoded and resized on the GPU (the CPU reads bytes only)."""
    import torch
    import torch.nn.functional as F
    import torchvision

    from drivemtl.data.batch import Batch
    from drivemtl.data.labels import UNKNOWN

    out.mkdir(parents=True, exist_ok=True)
    height, width = predictor.image_size
    classes = len(predictor.classes)

    def run(chunk: list[Path], stream) -> None:
        data = [torchvision.io.read_file(str(p)).pin_memory() for p in chunk]
        decoded = torchvision.io.decode_jpeg(data, device="cuda")
        sizes = [tuple(d.shape[-2:]) for d in decoded]
        images = torch.cat(
            [F.interpolate(d[None].float(), (height, width), mode="area") for d in decoded]
        )
        n = len(chunk)
        batch = Batch(
            images=images.round_().clamp_(0, 255).to(torch.uint8),
            presence=torch.full((n, classes), UNKNOWN, dtype=torch.long),
            index=torch.arange(n),
            paths=[str(p) for p in chunk],
            original_sizes=torch.tensor(sizes),
            boxes=[None] * n,
            box_labels=[None] * n,
            ignore=[None] * n,
        )
        write_rows(predictor.predict_batch(batch), out, stream)

    with open(out / "warm.jsonl", "wb") as stream:
        run(paths[:batch_size], stream)
    sync("cuda")
    start = time.perf_counter()
    with open(out / "predictions.jsonl", "wb") as stream:
        for first in range(0, len(paths), batch_size):
            run(paths[first : first + batch_size], stream)
    sync("cuda")
    return len(paths) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=128, help="JPEG files end to end")
    parser.add_argument("--unique", type=int, default=32, help="distinct rendered scenes")
    parser.add_argument("--workers", type=int, default=2, help="predictor decoding threads")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--ckpt", type=Path, help="a trained checkpoint (default: random weights, see above)"
    )
    parser.add_argument(
        "--train-epochs",
        type=int,
        default=0,
        help="first train the model this many epochs (the README's figures: 3, about 2 min)",
    )
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args(argv)

    import torch

    from drivemtl.data.synthetic import SyntheticConfig, generate_dataset

    print(f"platform : {platform.platform()}")
    print(f"cpu      : {cpu_model()}, {os.cpu_count()} logical cores")
    print(f"load avg : {', '.join(f'{v:.2f}' for v in os.getloadavg())} (other work slows runs)")
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "none"
    print(f"python   : {platform.python_version()}  torch {torch.__version__}, gpu {gpu}")
    print(f"settings : batch {args.batch_size}, {args.images} images, {args.workers} workers")
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="drivemtl-runtimes-"))
    workdir.mkdir(parents=True, exist_ok=True)
    scenes = workdir / "scenes"
    if not (scenes / "manifest.jsonl").is_file():
        generate_dataset(scenes, args.unique, seed=0, config=SyntheticConfig(width=640, height=384))
    source = sorted((scenes / "images").iterdir())
    paths = [source[i % len(source)] for i in range(args.images)]
    ckpt = args.ckpt or workdir / "random.ckpt"
    if args.ckpt is None and args.train_epochs > 0:
        ckpt = train_checkpoint(workdir, args.train_epochs)
    if not ckpt.is_file():
        make_checkpoint(ckpt, (192, 320))
    print(f"model    : {ckpt}")

    results = {}
    for name in args.runtimes:
        started = time.perf_counter()
        predictor = build(name, ckpt, workdir, args.device, args.workers)
        prepared = [predictor.prepare(p)[0] for p in paths[: args.batch_size]]
        batch = torch.stack(prepared)
        if args.device.startswith("cuda"):
            batch = batch.pin_memory()
        net = network_rate(predictor, batch, args.device, args.warmup, args.repeats)
        out = workdir / f"out-{name}"
        if args.device.startswith("cuda"):
            e2e = gpu_end_to_end_rate(predictor, paths, args.batch_size, out)
        else:
            e2e = end_to_end_rate(predictor, paths, args.batch_size, out)
        results[name] = (net, e2e)
        print(
            f"  {name:<12} network {net:7.1f} images/s, end to end {e2e:7.1f} images/s "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )

    base = results.get("eager", next(iter(results.values())))[0]
    print()
    print("| runtime | network alone (images/s) | vs eager fp32 | end to end (images/s) | "
          "end to end / network |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    for name, (net, e2e) in results.items():
        print(f"| {name} | {net:.1f} | {net / base:.2f}x | {e2e:.1f} | {e2e / net:.2f} |")
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
