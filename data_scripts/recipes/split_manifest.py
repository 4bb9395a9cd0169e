"""Split a JSONL or CSV manifest into train and validation parts, deterministically.

Each entry goes to validation when a hash of its image path falls below ``--val-fraction``, so
the split depends on nothing but the paths: the same image lands on the same side on every
machine, in any order, and adding images to a source never moves the others. Image paths are
rewritten relative to the output folder (or kept absolute), so the parts can live elsewhere.

    python data_scripts/recipes/split_manifest.py data/coco.jsonl --val-fraction 0.25 \\
        --out-dir data/split      # writes data/split/coco_train.jsonl and coco_val.jsonl
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
from pathlib import Path


def goes_to_validation(image: str, fraction: float) -> bool:
    """Whether an image path falls in the validation part (a hash of its file name)."""
    digest = hashlib.sha256(Path(image).name.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _relocate(image: str, source: Path, target: Path) -> str:
    path = Path(image)
    if path.is_absolute():
        return image
    return os.path.relpath(source.parent / path, target).replace(os.sep, "/")


def split(manifest: Path, out_dir: Path, fraction: float) -> dict[str, int]:
    """Write ``<stem>_train`` and ``<stem>_val`` beside each other in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = {"train": [], "val": []}
    text = manifest.read_text(encoding="utf-8-sig")
    if manifest.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        for row in rows:
            row["image"] = _relocate(row["image"], manifest, out_dir)
            parts["val" if goes_to_validation(row["image"], fraction) else "train"].append(row)
        for name, items in parts.items():
            with open(out_dir / f"{manifest.stem}_{name}.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["image"])
                writer.writeheader()
                writer.writerows(items)
    else:
        for line in text.splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            for key in ("image", "depth", "segmentation"):
                if isinstance(entry.get(key), str):
                    entry[key] = _relocate(entry[key], manifest, out_dir)
            parts["val" if goes_to_validation(entry["image"], fraction) else "train"].append(entry)
        for name, items in parts.items():
            lines = "".join(json.dumps(e) + "\n" for e in items)
            (out_dir / f"{manifest.stem}_{name}.jsonl").write_text(lines)
    return {name: len(items) for name, items in parts.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifests", nargs="+", type=Path)
    parser.add_argument("--val-fraction", type=float, default=0.25)
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    for manifest in args.manifests:
        counts = split(manifest, args.out_dir, args.val_fraction)
        print(f"{manifest}: {counts['train']} train, {counts['val']} validation")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
