"""KITTI object labels (``label_2/*.txt``) with an optional folder of depth PNGs.

Each line is ``type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry``; only ``type`` and the
2D box are used. KITTI annotates its own types on every frame, and has no traffic-light or
stop-sign class: those are ``?``. ``DontCare`` lines mark regions whose objects were not labelled:
they become ignore regions and, since a pedestrian may hide in one, a class without a box on such
an image is ``?`` rather than 0 (``--dontcare-negative`` to trust the labels instead). ``Van``
and ``Person_sitting`` are ignore regions by default, as in the KITTI benchmark.

``--depth DIR`` adds ``DIR/<stem>.png`` (KITTI's uint16 metres x 256, 0 = no measurement, which is
already the manifest's depth format) to each image that has one.
"""

from __future__ import annotations

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
    find_image,
    list_images,
    other_formats_hint,
    parse_box,
    require_dir,
)
from drivemtl.errors import DriveMTLError

KITTI_TYPES = {"Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc"}
DONTCARE = "DontCare"


KITTI_FIELDS = (15, 16)
"""Fields of a label line: 15, or 16 with a detector's score (KITTI results files)."""


def _shape_problem(fields: list[str]) -> str:
    """Why a split line is not a KITTI object line ('' when it is one)."""
    if len(fields) not in KITTI_FIELDS:
        return f"{len(fields)} fields, a KITTI line has 15 (type, then 14 numbers)"
    try:
        [float(v) for v in fields[1:]]
    except ValueError:
        return f"non-numeric values after the type {fields[0]!r}"
    return ""


def read_kitti(
    labels: str | Path, images: str | Path, depth: str | Path | None, report: Report
) -> SourceData:
    """Parse KITTI label files into source records (image sizes from headers).

    Args:
        labels: The ``label_2`` folder.
        images: The ``image_2`` folder; ``<stem>.png`` (or another image suffix) per label file.
        depth: A folder of ``<stem>.png`` depth maps, or ``None``.
        report: Receives file- and entry-level problems.
    """
    label_root = require_dir(labels, "Labels")
    image_root = require_dir(images, "Image")
    depth_root = require_dir(depth, "Depth") if depth is not None else None
    files = sorted(label_root.glob("*.txt"))
    if not files:
        raise DriveMTLError(
            f"No KITTI .txt label files in {label_root}." + other_formats_hint(label_root, ".txt")
        )

    records = []
    no_depth = 0
    for path in files:
        image = find_image(image_root, path.stem) or image_root / f"{path.stem}.png"
        record = SourceImage(image, str(path))
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            report.skip(path, "", "malformed file", str(e))
            continue
        shapes = [_shape_problem(line.split()) for line in lines if line.split()]
        if shapes and all(shapes):
            # Not one KITTI line (another format's labels?): the image's labels are unknowable.
            report.skip(path, "line 1", "not a KITTI label file", shapes[0])
            continue
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            box = parse_box(fields[4:8]) if len(fields) >= 8 else None
            if fields[0] == DONTCARE:
                if box is None:
                    report.problem(
                        path, f"line {number}", "malformed box", line.strip(), "region dropped"
                    )
                    continue
                record.dontcare.append(box)
            else:
                record.objects.append(SourceObject(fields[0], box, f"line {number}"))
        if depth_root is not None:
            candidate = depth_root / f"{path.stem}.png"
            if candidate.is_file():
                record.depth = candidate
            else:
                no_depth += 1  # depth is optional per frame (LiDAR may be missing)
        records.append(record)

    if not records and report.skipped.get("not a KITTI label file") == len(files):
        example = next(p for p in report.problems if p.kind == "not a KITTI label file")
        raise DriveMTLError(
            f"The files in {label_root} are not KITTI object labels ({example}): each line "
            "is 'type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry'."
            + other_formats_hint(label_root, ".txt")
            + " YOLO labels ('class cx cy w h') convert with drivemtl convert yolo."
        )
    if no_depth:
        report.notes.append(f"{no_depth} image(s) have no depth PNG in {depth_root}")
    labelled = {p.stem for p in files}
    unlabelled = [p for p in list_images(image_root) if p.stem not in labelled]
    if unlabelled:
        report.notes.append(
            f"{len(unlabelled)} image(s) in {image_root} have no label file and were not converted"
        )
    return SourceData(records, declared=set(KITTI_TYPES))


def convert_kitti(
    labels: str | Path,
    images: str | Path,
    depth: str | Path | None = None,
    *,
    out: str | Path | None = None,
    options: ConvertOptions | None = None,
) -> Conversion:
    """Convert KITTI object labels (see :func:`read_kitti`)."""
    out = check_out(out)
    report = Report()
    data = read_kitti(labels, images, depth, report)
    return build_manifest("kitti", data, report, options, out)
