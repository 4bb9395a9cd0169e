"""Predict from Python, then export to ONNX and predict again: what the README's section runs.

    python examples/predict.py                 # trains a tiny model on synthetic scenes first
    python examples/predict.py --ckpt RUN/checkpoints/best.ckpt --images frames/

Without ``--ckpt`` it trains a presence + detection + depth model for a few steps on the
embedded synthetic scenes (about a minute on 2 CPU cores); without ``--images`` it predicts
on synthetic scenes rendered in memory. The ONNX part needs ``pip install "drivemtl[export]"``.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import drivemtl
from drivemtl.cli import main as drivemtl_cli


def tiny_checkpoint(folder: Path) -> Path:
    code = drivemtl_cli(
        [
            "fit",
            "--model.tasks={presence: {}, detection: {}, depth: {}}",
            "--data.image_size=[96, 160]",
            "--data.synthetic.train=16",
            "--data.synthetic.val=8",
            "--data.synthetic.test=8",
            "--data.batch_size=8",
            "--trainer.max_steps=4",
            "--trainer.enable_progress_bar=false",
            f"--data.cache_dir={folder / 'cache'}",
            f"--trainer.default_root_dir={folder / 'run'}",
        ]
    )
    if code:
        raise SystemExit(code)
    return folder / "run" / "checkpoints" / "last.ckpt"


def show(rows: list[dict]) -> None:
    for row in rows:
        present = ", ".join(row.get("present", [])) or "nothing"
        boxes = row.get("boxes", [])
        depth = row.get("depth")
        line = f"{row['image'] or '<array>'}: {present}; {len(boxes)} boxes"
        if depth is not None:
            line += f"; depth {depth.shape[1]}x{depth.shape[0]}, mean {float(depth.mean()):.1f} m"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path)
    parser.add_argument("--images", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="drivemtl-example-") as work:  # removed at the end
        run(args, Path(work))


def run(args: argparse.Namespace, work: Path) -> None:
    ckpt = args.ckpt or tiny_checkpoint(work)

    if args.images:
        images = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    else:
        from drivemtl.deploy.check import synthetic_images

        images = synthetic_images(4)  # numpy arrays: any mix of paths, PIL, arrays, tensors

    predictor = drivemtl.load(ckpt)  # no Lightning; device=, precision=, compile= options
    print(f"classes {predictor.classes}, input {predictor.image_size}")
    show(predictor.predict(images, batch_size=8))

    if importlib.util.find_spec("onnxruntime") is None:
        print('\nONNX part skipped: pip install "drivemtl[export]"')
        return
    from drivemtl.deploy import export_model

    onnx_file = work / "model.onnx"
    export_model(ckpt, onnx_file, "onnx", batch=None)  # = drivemtl export --dynamic-batch
    print(f"\nONNX Runtime, {onnx_file}:")
    show(drivemtl.load(onnx_file).predict(images, batch_size=8))


if __name__ == "__main__":
    main()
