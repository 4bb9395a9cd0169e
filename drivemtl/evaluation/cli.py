"""``drivemtl evaluate --predictions P --manifest M --output_dir E``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from drivemtl.console import setup_console
from drivemtl.data.io import DEFAULT_MAX_DEPTH, DEFAULT_MIN_DEPTH, DEPTH_PNG_SCALE
from drivemtl.errors import DriveMTLError
from drivemtl.evaluation.report import matching_lines, shown_order
from drivemtl.reporting import format_report

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    """The ``evaluate`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="drivemtl evaluate",
        description="Evaluate a predictions.jsonl (from drivemtl predict or any system writing "
        "the same format) against a manifest: per-class AP, F1, precision, recall; '?' "
        "labels are excluded per class.",
    )
    parser.add_argument("--predictions", type=Path, required=True, help="predictions.jsonl")
    parser.add_argument(
        "--manifest",
        type=Path,
        nargs="+",
        required=True,
        help="CSV or JSONL manifest(s) with the labels (several are concatenated)",
    )
    parser.add_argument(
        "--output_dir",
        "--output-dir",
        type=Path,
        help="folder for metrics.json, matching.json, report.md and plots "
        "(default: PREDICTIONS_FOLDER/evaluation)",
    )
    parser.add_argument(
        "--classes",
        type=lambda text: [c.strip() for c in text.split(",") if c.strip()],
        metavar="A,B,...",
        help="evaluate these classes only (default: every class in the predictions)",
    )
    parser.add_argument(
        "--images_root",
        "--images-root",
        type=Path,
        help="the folder that was predicted, when prediction paths and manifest paths need "
        "it to match (default: from run.json beside the predictions)",
    )
    parser.add_argument("--no_plots", "--no-plots", action="store_true", help="skip the PNGs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    detection = parser.add_argument_group(
        "detection", "used when the manifest has boxes and the predictions have boxes"
    )
    detection.add_argument(
        "--box_score_threshold",
        "--box-score-threshold",
        type=float,
        default=None,
        help="operating point for box precision and recall (default: box_score_threshold "
        "from run.json beside the predictions, else 0.5)",
    )
    depth = parser.add_argument_group(
        "depth", "used when the manifest has depth maps and the predictions have depth PNGs"
    )
    depth.add_argument(
        "--min_depth",
        "--min-depth",
        type=float,
        default=DEFAULT_MIN_DEPTH,
        help="ground truth at or below it is not scored; predictions are clamped up to it "
        "(default %(default)g m)",
    )
    depth.add_argument(
        "--max_depth",
        "--max-depth",
        type=float,
        default=DEFAULT_MAX_DEPTH,
        help="ground truth at or above it is not scored; predictions are clamped down to it "
        "(default %(default)g m, the KITTI convention)",
    )
    depth.add_argument(
        "--depth_scale",
        "--depth-scale",
        type=float,
        default=DEPTH_PNG_SCALE,
        help="units per metre of the manifest's 16-bit depth PNGs (default %(default)g, KITTI)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``drivemtl evaluate``; returns the exit status (2 for bad input)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    setup_console(args.quiet)
    output_dir = args.output_dir or args.predictions.parent / "evaluation"
    try:
        from drivemtl.evaluation.evaluate import evaluate  # torch: after --help

        result = evaluate(
            args.predictions,
            args.manifest,
            output_dir,
            classes=args.classes,
            images_root=args.images_root,
            plots=not args.no_plots,
            min_depth=args.min_depth,
            max_depth=args.max_depth,
            depth_scale=args.depth_scale,
            box_score_threshold=args.box_score_threshold,
        )
    except DriveMTLError as e:
        print(f"drivemtl: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print("\n".join(matching_lines(result.matching)))
    print()
    for task in shown_order(result.report):
        print(format_report({task: result.report[task]}))
        print()
    print(f"Metrics: {result.output_dir / 'metrics.json'}")
    print(f"Report:  {result.output_dir / 'report.md'}")
    return 0
