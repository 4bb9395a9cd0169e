"""``drivemtl inspect --manifest M [M ...] [--config C] --output_dir D``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from drivemtl.console import setup_console
from drivemtl.errors import DriveMTLError

EXIT_PROBLEMS = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drivemtl inspect",
        description="Check manifests before training: parse them as training does, decode "
        "every image and label map, and summarise labels, boxes (against the detection "
        "strides), ignore regions, label maps (depth, masks) and image files. Writes "
        "inspect.json, labels.png and, when files are bad, problems.txt; exits with status 2 "
        "when any entry or file "
        "would stop training.",
    )
    parser.add_argument("--manifest", nargs="+", required=True, type=Path, help="CSV or JSONL")
    parser.add_argument(
        "--config",
        type=Path,
        help="training config (fit --config): its data.classes, data.image_size, "
        "data.depth_scale and detection levels; default: the package defaults",
    )
    parser.add_argument("--output_dir", type=Path, required=True, help="folder for the outputs")
    parser.add_argument(
        "--workers",
        type=int,
        help="decoding processes (default: the CPU cores this process may use)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``drivemtl inspect`` with the arguments after ``inspect``; returns the exit status:
    0 when every entry and file is usable, 2 when any is not (or on bad arguments)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed by argparse
        return int(e.code or 0)
    setup_console(args.quiet)
    from drivemtl.data.datamodule import usable_cores
    from drivemtl.inspection.report import (
        format_inspection,
        inspect_manifests,
        load_settings,
        write_inspection,
    )

    try:
        workers = usable_cores() if args.workers is None else args.workers
        if workers < 1:
            raise DriveMTLError(f"--workers must be at least 1, got {workers}")
        settings = load_settings(args.config)
        inspection = inspect_manifests(args.manifest, settings, workers=workers)
        written = write_inspection(inspection, args.output_dir)
    except DriveMTLError as e:
        print(f"drivemtl inspect: error: {e}", file=sys.stderr)
        return EXIT_PROBLEMS
    print(format_inspection(inspection))
    print()
    print(f"Inspection: {written['json']}")
    print(f"Labels:     {written['labels']}")
    if "problems" in written:
        print(f"Problems:   {written['problems']}")
        print(
            f"drivemtl inspect: {len(inspection.problems)} problem(s) would stop training; "
            "fix or remove these entries (all listed in problems.txt).",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
    return 0
