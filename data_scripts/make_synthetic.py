"""Generate the embedded synthetic driving-scene data set.

Example:
    python data_scripts/make_synthetic.py --out data/synthetic/train --num-images 2000 --seed 0 \\
        --width 320 --height 192 --dropout stop_sign=0.95 car=0.3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivemtl.data.labels import UNKNOWN_TOKEN  # noqa: E402
from drivemtl.data.synthetic import (  # noqa: E402
    RENDERABLE_CLASSES,
    SyntheticConfig,
    class_counts,
    generate_dataset,
)
from drivemtl.errors import DriveMTLError  # noqa: E402


def parse_dropout(items: list[str]) -> dict[str, float]:
    """``["stop_sign=0.95", ...]`` to ``{"stop_sign": 0.95}``."""
    rates = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            rates[name.strip()] = float(value)
        except ValueError:
            message = f"--dropout takes CLASS=RATE, e.g. stop_sign=0.95; got {item!r}."
            raise DriveMTLError(message) from None
    return rates


def main(argv: list[str] | None = None) -> int:
    """Generate a data set and print per-class presence counts; return an exit code."""
    parser = argparse.ArgumentParser(description="Render synthetic driving scenes with labels.")
    parser.add_argument("--out", required=True, help="output folder (images/, depth/, manifest)")
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument(
        "--classes", nargs="+", default=list(RENDERABLE_CLASSES), help="classes to draw and label"
    )
    parser.add_argument(
        "--dropout",
        nargs="*",
        default=[],
        metavar="CLASS=RATE",
        help="rate at which a class's labels become '?' (not annotated)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        config = SyntheticConfig(
            width=args.width, height=args.height, dropout=parse_dropout(args.dropout)
        )
        manifest = generate_dataset(
            args.out,
            args.num_images,
            seed=args.seed,
            config=config,
            classes=args.classes,
            progress=not args.no_progress,
        )
    except DriveMTLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.num_images} images and {manifest}")
    print(f"{'class':<15}{'present':>9}{'absent':>9}{'unknown':>9}")
    for name, c in class_counts(manifest, args.classes).items():
        print(f"{name:<15}{c['1']:>9}{c['0']:>9}{c[UNKNOWN_TOKEN]:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
