"""Count images per class and label (1 / 0 / ?) in a manifest, and check expected counts.

Example:
    python data_scripts/recipes/count_manifest.py data/real/coco128.jsonl \\
        --expect images=128 pedestrian=61 car=12 traffic_light=4 stop_sign=2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from drivemtl.data.labels import DEFAULT_CLASSES  # noqa: E402
from drivemtl.data.manifest import read_manifest  # noqa: E402
from drivemtl.errors import DriveMTLError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Print the counts; exit 1 when an ``--expect`` count differs (``CLASS=N`` is positives)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--classes", default=",".join(DEFAULT_CLASSES))
    parser.add_argument(
        "--expect",
        nargs="*",
        default=[],
        metavar="NAME=N",
        help="images=N, CLASS=N (positives), CLASS?=N (unknown)",
    )
    args = parser.parse_args(argv)  # fmt: skip
    classes = [c for c in args.classes.split(",") if c]
    try:
        records = read_manifest(args.manifest, classes)
    except DriveMTLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = {"images": len(records)}
    print(f"{args.manifest}: {len(records)} images")
    print(f"{'class':<16}{'positive':>10}{'negative':>10}{'unknown':>9}")
    for i, name in enumerate(classes):
        values = [r.presence[i] for r in records]
        pos, neg, unk = values.count(1), values.count(0), values.count(-1)
        counts[name], counts[f"{name}?"] = pos, unk
        print(f"{name:<16}{pos:>10}{neg:>10}{unk:>9}")
    failed = []
    for item in args.expect:
        name, _, value = item.partition("=")
        if counts.get(name) != int(value):
            failed.append(f"{name}: expected {value}, got {counts.get(name)}")
    for line in failed:
        print(f"MISMATCH {line}", file=sys.stderr)
    if args.expect and not failed:
        print("expected counts: OK")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
