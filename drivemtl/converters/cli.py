"""``drivemtl convert FORMAT ... --out M.jsonl``: one command per annotation source."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from drivemtl.console import setup_console
from drivemtl.converters.base import MAX_PRINTED_PROBLEMS, ConvertOptions, problems_path
from drivemtl.converters.bdd100k import convert_bdd100k
from drivemtl.converters.cityscapes import convert_cityscapes
from drivemtl.converters.coco import convert_coco
from drivemtl.converters.kitti import convert_kitti
from drivemtl.converters.voc import convert_voc
from drivemtl.converters.yolo import convert_yolo
from drivemtl.data.labels import DEFAULT_CLASSES
from drivemtl.errors import DriveMTLError

EXIT_BAD_INPUT = 2


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The ``convert`` argument parser, one subcommand per format."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("output and classes")
    group.add_argument("--out", type=Path, required=True, help="manifest to write (.jsonl)")
    group.add_argument(
        "--classes",
        type=_comma_list,
        default=",".join(DEFAULT_CLASSES),  # argparse passes a string default through type
        metavar="A,B,...",
        help="comma-separated target classes (default: %(default)s)",
    )
    group.add_argument(
        "--mapping", type=Path, help="YAML file 'source label: target class | ignore | null'"
    )
    group.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="SOURCE=TARGET",
        help="map a source label (repeatable): truck=car, rider=ignore, 'traffic sign=' drops it",
    )
    group.add_argument(
        "--source-classes",
        type=_comma_list,
        metavar="A,B,...",
        help="comma-separated source labels annotated on every image (replaces the format's "
        "own list; VOC: otherwise the labels seen in the files)",
    )
    group.add_argument(
        "--min-box-size",
        type=float,
        default=0.0,
        metavar="PX",
        help="boxes narrower or lower than PX become ignore regions (counted in the summary)",
    )
    group.add_argument(
        "--absolute-paths",
        action="store_true",
        help="write absolute paths (default: relative to the manifest's folder)",
    )
    group.add_argument(
        "--strict", action="store_true", help="exit with status 2 if any entry had a problem"
    )
    group.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out manifest"
    )
    group.add_argument("--quiet", action="store_true", help="no progress bar")

    parser = argparse.ArgumentParser(
        prog="drivemtl convert",
        description="Convert annotations into a drivemtl JSONL manifest. Classes a source does "
        "not annotate are '?' on every image.",
    )
    sub = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")

    p = sub.add_parser("coco", parents=[common], help="COCO instances JSON")
    p.add_argument("--annotations", type=Path, required=True, help="instances JSON")
    p.add_argument("--images", type=Path, required=True, help="folder of the images")

    p = sub.add_parser("yolo", parents=[common], help="YOLO txt labels with a names list")
    p.add_argument("--labels", type=Path, required=True, help="folder of .txt labels")
    p.add_argument("--images", type=Path, required=True, help="folder of images (mirrored)")
    p.add_argument("--names", type=Path, help="names .yaml/.txt (default: LABELS/classes.txt)")

    p = sub.add_parser("voc", parents=[common], help="Pascal VOC XML folder")
    p.add_argument("--annotations", type=Path, required=True, help="folder of .xml files")
    p.add_argument("--images", type=Path, required=True, help="folder of the images")

    p = sub.add_parser("bdd100k", parents=[common], help="BDD100K label JSON")
    p.add_argument("--labels", type=Path, required=True, help="label JSON, or folder of them")
    p.add_argument("--images", type=Path, required=True, help="folder of the images")

    p = sub.add_parser("kitti", parents=[common], help="KITTI object label_2 txt")
    p.add_argument("--labels", type=Path, required=True, help="label_2 folder")
    p.add_argument("--images", type=Path, required=True, help="image_2 folder")
    p.add_argument("--depth", type=Path, help="folder of uint16 depth PNGs named like images")
    p.add_argument(
        "--dontcare-negative",
        action="store_true",
        help="classes without a box are 0 even on images with DontCare regions (default: ?)",
    )

    p = sub.add_parser(
        "cityscapes", parents=[common], help="Cityscapes gtFine + disparity (boxes, masks, depth)"
    )
    p.add_argument("--root", type=Path, required=True, help="Cityscapes root folder")
    p.add_argument("--split", required=True, help="train, val or test")
    p.add_argument("--no-depth", action="store_true", help="do not convert disparity to depth")
    p.add_argument("--depth-dir", type=Path, help="where depth PNGs go (default: beside --out)")
    p.add_argument(
        "--no-segmentation", action="store_true", help="do not convert labelIds PNGs to masks"
    )
    p.add_argument(
        "--segmentation-dir", type=Path, help="where segmentation masks go (default: beside --out)"
    )
    return parser


def _convert(args: argparse.Namespace, options: ConvertOptions):
    out = args.out
    if args.format == "coco":
        return convert_coco(args.annotations, args.images, out=out, options=options)
    if args.format == "yolo":
        return convert_yolo(args.labels, args.images, args.names, out=out, options=options)
    if args.format == "voc":
        return convert_voc(args.annotations, args.images, out=out, options=options)
    if args.format == "bdd100k":
        return convert_bdd100k(args.labels, args.images, out=out, options=options)
    if args.format == "kitti":
        return convert_kitti(args.labels, args.images, args.depth, out=out, options=options)
    return convert_cityscapes(
        args.root, args.split, out=out, options=options,
        depth=not args.no_depth, depth_dir=args.depth_dir,
        segmentation=not args.no_segmentation, segmentation_dir=args.segmentation_dir,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``drivemtl convert`` with the arguments after ``convert``; returns the exit status.

    Bad input that stops a conversion prints its message (no traceback) and returns 2.
    Entry-level problems are printed, written to ``<out stem>.problems.txt`` and summarised;
    the conversion goes on without the dropped entries (``--strict`` makes them fatal).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed by argparse
        return int(e.code or 0)
    setup_console(args.quiet)
    options = ConvertOptions(
        classes=args.classes,
        mapping=args.mapping,
        overrides=args.map,
        min_box_size=args.min_box_size,
        absolute_paths=args.absolute_paths,
        source_classes=args.source_classes,
        dontcare_negative=getattr(args, "dontcare_negative", False),
    )
    try:
        if options.min_box_size < 0:
            raise DriveMTLError(f"--min-box-size must be >= 0, got {options.min_box_size:g}")
        if args.out.is_file() and not args.overwrite:
            raise DriveMTLError(
                f"--out {args.out} already exists: pass --overwrite to replace it, or choose "
                "another file name."
            )
        conversion = _convert(args, options)
    except DriveMTLError as e:
        print(f"drivemtl convert {args.format}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT

    problems = conversion.problems
    for problem in problems[:MAX_PRINTED_PROBLEMS]:
        print(f"problem: {problem}", file=sys.stderr)
    if len(problems) > MAX_PRINTED_PROBLEMS:
        print(f"... and {len(problems) - MAX_PRINTED_PROBLEMS} more", file=sys.stderr)
    if args.strict and problems:
        path = problems_path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{p}\n" for p in problems), encoding="utf-8")
        print(
            f"drivemtl convert {args.format}: error: {len(problems)} problem(s) with --strict; "
            f"nothing written to {args.out} (problems listed in {path})",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    conversion.write(args.out)
    print(conversion.summary.table(args.out, problems_path(args.out) if problems else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
