"""YOLO txt labels (``class cx cy w h``, normalised) beside images, with a names list.

Layout: ``--images DIR`` and ``--labels DIR`` mirror each other (``images/a/b.jpg`` <->
``labels/a/b.txt``), as Ultralytics and Darknet sets do. An image without a label file has no
object (the YOLO convention), so it is a negative for every class in the names list. Segment
lines (``class x1 y1 x2 y2 ...``) are converted to their bounding box.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from drivemtl.converters.base import (
    Conversion,
    ConvertOptions,
    Report,
    SourceData,
    SourceImage,
    SourceObject,
    build_manifest,
    check_out,
    list_images,
    other_formats_hint,
    parse_box,
    require_dir,
    require_file,
)
from drivemtl.data.io import displayed_size
from drivemtl.errors import DriveMTLError


def load_names(path: str | Path) -> dict[int, str]:
    """Class id -> name from a YAML (list, ``{id: name}`` or a data.yaml's ``names``) or a txt.

    Raises:
        DriveMTLError: When the file is missing or holds no usable names.
    """
    path = require_file(path, "Class names")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise DriveMTLError(f"Names file {path} is not valid YAML: {e}") from None
        if isinstance(data, dict) and "names" in data:
            data = data["names"]
        if isinstance(data, list):
            names = dict(enumerate(data))
        elif isinstance(data, dict):
            try:
                names = {int(k): v for k, v in data.items()}
            except (TypeError, ValueError):
                raise DriveMTLError(f"Names file {path}: keys must be class ids") from None
        else:
            names = {}
    else:  # Darknet .names / LabelImg classes.txt: one name per line
        names = dict(enumerate(line.strip() for line in text.splitlines() if line.strip()))
    names = {k: str(v) for k, v in names.items() if v is not None and str(v).strip()}
    if not names:
        raise DriveMTLError(
            f"Names file {path} holds no class names: use a YAML list, a YAML mapping "
            "'names: {0: person, ...}', or a txt file with one name per line"
        )
    return names


def read_yolo(
    labels: str | Path, images: str | Path, names: str | Path | None, report: Report
) -> SourceData:
    """Parse YOLO label files into source records (image sizes from headers).

    Args:
        labels: The labels folder.
        images: The images folder, mirrored by ``labels``.
        names: The names file; defaults to ``labels/classes.txt`` when present.
        report: Receives entry-level problems.
    """
    label_root = require_dir(labels, "Labels")
    image_root = require_dir(images, "Image")
    if names is None:
        names = label_root / "classes.txt"
        if not names.is_file():
            raise DriveMTLError(
                "YOLO labels need the class names: pass --names names.yaml (or names.txt)"
            )
    id_to_name = load_names(names)

    records = []
    used_labels: set[Path] = set()
    without_labels = 0
    for image in list_images(image_root):
        label = label_root / image.relative_to(image_root).with_suffix(".txt")
        record = SourceImage(image, str(label))
        if not label.is_file():
            without_labels += 1
            record.source = str(image)
            records.append(record)
            continue
        used_labels.add(label.resolve())
        try:
            size = displayed_size(image)
        except OSError as e:
            report.skip(label, "", "cannot read image", f"{image}: {e}")
            continue
        try:
            record.objects = _parse_label_file(label, size, id_to_name, report)
        except _SkipImage:
            continue
        record.size = size
        records.append(record)
    if without_labels and not used_labels:
        raise DriveMTLError(
            f"No image in {image_root} has a YOLO label file in {label_root} (images/a/b.jpg "
            "needs labels/a/b.txt): every image would be a false 0 for every class."
            + other_formats_hint(label_root, ".txt")
        )
    if without_labels:
        report.notes.append(
            f"{without_labels} image(s) have no label file and were given 0 for every class "
            "(the YOLO convention: no label file, no object)"
        )
    listed = without_labels + len(used_labels)
    if without_labels * 2 > listed:
        report.warnings.append(
            f"{without_labels} of {listed} images have no label file in {label_root} "
            "and were given 0 for every class. If their labels are elsewhere, fix --labels: "
            "otherwise these 0s are false."
        )

    for label in sorted(label_root.rglob("*.txt")):
        if label.name == "classes.txt" or label.resolve() in used_labels:
            continue
        report.skip(
            label, "", "image file not found", f"no image for this label file under {image_root}"
        )
    return SourceData(records, declared=set(id_to_name.values()))


class _SkipImage(Exception):
    pass


def _parse_label_file(
    label: Path, size: tuple[int, int], names: dict[int, str], report: Report
) -> list[SourceObject]:
    try:
        lines = label.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        report.skip(label, "", "malformed file", str(e))
        raise _SkipImage from None
    w, h = size
    objects = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        entry = f"line {number}"
        try:
            class_float = float(fields[0])
            class_id = int(class_float)
            if class_id != class_float:
                raise ValueError
        except ValueError:
            # Which class this box belongs to is unknowable: no label of the image is safe.
            report.skip(label, entry, "malformed line", f"class id {fields[0]!r} is not an integer")
            raise _SkipImage from None
        if class_id not in names:
            report.skip(
                label,
                entry,
                "unknown class id",
                f"{class_id} (the names list has ids {min(names)}..{max(names)})",
            )
            raise _SkipImage
        values = fields[1:]
        box = None
        if len(values) == 4:
            norm = parse_box(values)
            if norm is not None:
                cx, cy, bw, bh = norm
                box = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
        elif len(values) >= 6 and len(values) % 2 == 0:
            try:
                xs = [float(v) * w for v in values[0::2]]
                ys = [float(v) * h for v in values[1::2]]
                box = parse_box((min(xs), min(ys), max(xs), max(ys)))
            except ValueError:
                box = None
        objects.append(SourceObject(names[class_id], box, entry))
    return objects


def convert_yolo(
    labels: str | Path,
    images: str | Path,
    names: str | Path | None = None,
    *,
    out: str | Path | None = None,
    options: ConvertOptions | None = None,
) -> Conversion:
    """Convert a YOLO label folder (see :func:`read_yolo`)."""
    out = check_out(out)
    report = Report()
    data = read_yolo(labels, images, names, report)
    return build_manifest("yolo", data, report, options, out)
