"""COCO instances JSON (``images``, ``annotations`` with x,y,w,h boxes, ``categories``).

COCO annotates every category in ``categories`` exhaustively, so an image without a box of a
mapped category is a true negative for it. ``iscrowd`` annotations are ignore regions and make
their class present (see :mod:`drivemtl.converters.base`), never boxes.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from drivemtl.converters.base import (
    Conversion,
    ConvertOptions,
    Report,
    SourceData,
    SourceImage,
    SourceObject,
    build_manifest,
    check_out,
    load_json,
    parse_box,
    require_dir,
    require_file,
)
from drivemtl.errors import DriveMTLError


def read_coco(annotations: str | Path, images: str | Path, report: Report) -> SourceData:
    """Parse a COCO instances file into source records.

    Args:
        annotations: The instances JSON.
        images: The folder that ``file_name`` entries are relative to.
        report: Receives entry-level problems.

    Raises:
        DriveMTLError: When the file is missing, malformed, or its categories are unusable.
    """
    path = require_file(annotations, "COCO annotations")
    root = require_dir(images, "Image")
    data = load_json(path, "COCO annotations")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DriveMTLError(f"{path} is not a COCO instances file: no 'images' list")
    if not isinstance(data.get("categories"), list) or not isinstance(
        data.get("annotations"), list
    ):
        raise DriveMTLError(
            f"{path} has no 'categories' and 'annotations' lists (an image-info file "
            "without annotations cannot be converted)"
        )

    categories: dict[object, str] = {}
    for k, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or not isinstance(cat.get("name"), str):
            # Without the category list no label can be trusted: stop rather than guess.
            raise DriveMTLError(f"{path}: categories[{k}] needs an 'id' and a 'name', got {cat!r}")
        categories[cat["id"]] = cat["name"]

    infos: dict[object, tuple[str, tuple[int, int] | None, str]] = {}
    for k, info in enumerate(data["images"]):
        ok = isinstance(info, dict) and "id" in info and isinstance(info.get("file_name"), str)
        if not ok:
            report.skip(
                path,
                f"images[{k}]",
                "malformed image entry",
                f"needs 'id' and 'file_name', got {info!r}",
            )
            continue
        entry = f"image id {info['id']}"
        if info["id"] in infos:
            report.skip(
                path,
                entry,
                "duplicate image id",
                f"{info['file_name']} (first: {infos[info['id']][0]})",
            )
            continue
        w, h = info.get("width"), info.get("height")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (w, h))
        size = (int(w), int(h)) if numbers and w > 0 and h > 0 else None  # else: read header
        infos[info["id"]] = (info["file_name"], size, entry)

    objects: dict[object, list[SourceObject]] = defaultdict(list)
    bad_images: set[object] = set()
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            report.problem(
                path, f"annotations[{k}]", "malformed annotation", repr(ann), "annotation skipped"
            )
            continue
        entry = f"annotation id {ann.get('id', f'#{k}')}"
        image_id = ann.get("image_id")
        if image_id not in infos:
            report.problem(
                path, entry, "unknown image id", f"image_id {image_id!r}", "annotation skipped"
            )
            continue
        if ann.get("category_id") not in categories:
            # Its class is unknowable, so no presence label of that image can be trusted.
            report.problem(
                path,
                entry,
                "unknown category id",
                f"category_id {ann.get('category_id')!r}",
                f"image id {image_id} skipped",
            )
            bad_images.add(image_id)
            continue
        bbox = ann.get("bbox")
        box = parse_box(bbox) if isinstance(bbox, list) else None
        if box is not None:
            x, y, w, h = box
            box = (x, y, x + w, y + h)
        objects[image_id].append(
            SourceObject(categories[ann["category_id"]], box, entry, bool(ann.get("iscrowd")))
        )

    records = []
    for image_id, (file_name, size, entry) in infos.items():
        if image_id in bad_images:
            report.skipped["unknown category id"] += 1
            continue
        records.append(
            SourceImage(root / file_name, str(path), entry, objects.get(image_id, []), size)
        )
    return SourceData(records, declared=set(categories.values()))


def convert_coco(
    annotations: str | Path,
    images: str | Path,
    *,
    out: str | Path | None = None,
    options: ConvertOptions | None = None,
) -> Conversion:
    """Convert a COCO instances file (see :func:`read_coco`); paths relative to ``out``'s folder."""
    out = check_out(out)
    report = Report()
    return build_manifest("coco", read_coco(annotations, images, report), report, options, out)
