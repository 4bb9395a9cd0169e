"""``drivemtl export --ckpt_path CKPT --format {onnx,torchscript} --output FILE [--check]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from drivemtl.errors import DriveMTLError

EXIT_BAD_INPUT = 2
EXIT_CHECK_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    """The ``export`` argument parser (building it imports no torch)."""
    parser = argparse.ArgumentParser(
        prog="drivemtl export",
        description="Export a checkpoint's network to ONNX or TorchScript: uint8 images at the "
        "model's input size in, the raw head tensors out; classes, thresholds, task options "
        "and input size travel inside the file. drivemtl.load(FILE) and drivemtl predict "
        "--ckpt_path FILE run it.",
    )
    parser.add_argument("--ckpt_path", "--ckpt-path", type=Path, required=True, help="checkpoint")
    parser.add_argument(
        "--format", choices=["onnx", "torchscript"], default="onnx", help="default: onnx"
    )
    parser.add_argument(
        "--output", type=Path, help="file to write (default: the checkpoint's name, .onnx / .ts)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output file"
    )
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, help="fixed batch size of the file (default: 1)")
    batch.add_argument(
        "--dynamic-batch",
        "--dynamic_batch",
        action="store_true",
        dest="dynamic_batch",
        help="any batch size (a dynamic batch axis)",
    )
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="run the file beside the checkpoint's eager model and fail above tolerance "
        "(raw outputs; presence 1e-4, boxes 0.5 px, depth 0.1 %%)",
    )
    parser.add_argument(
        "--check_images",
        "--check-images",
        type=Path,
        help="folder of images for --check (default: 8 synthetic driving scenes)",
    )
    parser.add_argument(
        "--check_count", "--check-count", type=int, default=8, help="images --check uses"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``drivemtl export``; returns the exit status (1: the check failed)."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except DriveMTLError as e:
        print(f"drivemtl export: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _run(args: argparse.Namespace) -> int:
    from drivemtl.deploy.check import check_export, format_measures
    from drivemtl.deploy.export import export_model

    if args.check_count < 1:
        raise DriveMTLError(f"--check_count must be >= 1, got {args.check_count}.")
    suffix = ".onnx" if args.format == "onnx" else ".ts"
    output = args.output or args.ckpt_path.with_suffix(suffix)
    if args.format == "onnx" and output.suffix.lower() != ".onnx":
        raise DriveMTLError(f"--output {output}: an ONNX file must end in .onnx.")
    if output.exists():
        if args.ckpt_path.exists() and output.samefile(args.ckpt_path):
            raise DriveMTLError(f"--output {output} is the checkpoint itself: name another file.")
        if not args.overwrite:
            raise DriveMTLError(
                f"--output {output} already exists: pass --overwrite to replace it, or name "
                "another file."
            )
    batch = None if args.dynamic_batch else (args.batch if args.batch is not None else 1)
    card = export_model(args.ckpt_path, output, args.format, batch, args.opset)
    size = "x".join(str(v) for v in card.image_size)
    print(
        f"Exported {args.ckpt_path} -> {output} ({args.format}, batch "
        f"{batch if batch is not None else 'dynamic'}, input uint8 3x{size}, "
        f"outputs {', '.join(card.outputs)})"
    )
    if not args.check:
        return 0
    images = None
    if args.check_images is not None:
        from drivemtl.data.datasets import find_images

        images = find_images(args.check_images)[: args.check_count]
        if not images:
            raise DriveMTLError(f"--check_images {args.check_images}: no images found.")
    measures = check_export(output, args.ckpt_path, images, batch_size=batch or 4)
    print(format_measures(measures))
    failed = [m for m in measures if not m.ok]
    if failed:
        print(
            f"drivemtl export: check FAILED: {len(failed)} measure(s) above tolerance "
            f"({', '.join(m.name for m in failed)}).",
            file=sys.stderr,
        )
        return EXIT_CHECK_FAILED
    print("Check passed.")
    return 0
