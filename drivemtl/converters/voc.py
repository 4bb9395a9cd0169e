"""Pascal VOC XML folders (one ``<annotation>`` per image).

VOC files do not list the classes a set annotates, so the labels seen across all files are taken
as the set's taxonomy: a target class no file mentions is ``?`` on every image (e.g. pedestrian
and car in a road-sign set), never 0. When a set annotates a class that happens to be absent
from all its files, declare it with ``--source-classes``. ``<difficult>1</difficult>`` objects
are ignore regions that make their class present, as in VOC evaluation. Coordinates are copied
as written (VOC's 1-based pixel indices; the half-pixel shift is far below annotation noise).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
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
    parse_box,
    require_dir,
)
from drivemtl.errors import DriveMTLError


def read_voc(annotations: str | Path, images: str | Path, report: Report) -> SourceData:
    """Parse every ``*.xml`` under ``annotations`` into source records.

    Args:
        annotations: The folder of VOC XML files (searched recursively).
        images: The folder that ``<filename>`` is relative to.
        report: Receives file- and entry-level problems.
    """
    ann_root = require_dir(annotations, "Annotations")
    image_root = require_dir(images, "Image")
    files = sorted(ann_root.rglob("*.xml"))
    if not files:
        raise DriveMTLError(f"No VOC .xml files under {ann_root}")
    records = []
    for path in files:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as e:
            report.skip(path, "", "malformed file", f"not valid XML: {e}")
            continue
        if root.tag != "annotation":
            report.skip(
                path, "", "malformed file", f"root element is <{root.tag}>, not <annotation>"
            )
            continue
        record = SourceImage(_image_path(root, path, image_root), str(path))
        record.size = _size(root)
        for k, obj in enumerate(root.findall("object"), start=1):
            name = (obj.findtext("name") or "").strip()
            if not name:
                record = None
                report.skip(path, f"object {k}", "malformed object", "no <name>")
                break
            bndbox = obj.find("bndbox")
            box = None
            if bndbox is not None:
                box = parse_box(bndbox.findtext(tag) for tag in ("xmin", "ymin", "xmax", "ymax"))
            difficult = (obj.findtext("difficult") or "0").strip() == "1"
            record.objects.append(SourceObject(name, box, f"object {k} ({name})", difficult))
        if record is not None:
            records.append(record)
    return SourceData(records, declared=None)


def _image_path(root: ET.Element, xml_path: Path, image_root: Path) -> Path:
    filename = (root.findtext("filename") or "").strip()
    if filename and (image_root / filename).is_file():
        return image_root / filename
    # Many tools write a wrong or extension-less <filename>; the XML's own stem is the usual key.
    found = find_image(image_root, Path(filename).stem if filename else xml_path.stem)
    found = found or find_image(image_root, xml_path.stem)
    return found or image_root / (filename or f"{xml_path.stem}.jpg")


def _size(root: ET.Element) -> tuple[int, int] | None:
    try:
        w = int(float(root.findtext("size/width") or 0))
        h = int(float(root.findtext("size/height") or 0))
    except ValueError:
        return None
    return (w, h) if w > 0 and h > 0 else None  # 0 (seen in the wild): read the header


def convert_voc(
    annotations: str | Path,
    images: str | Path,
    *,
    out: str | Path | None = None,
    options: ConvertOptions | None = None,
) -> Conversion:
    """Convert a folder of Pascal VOC XML files (see :func:`read_voc`)."""
    out = check_out(out)
    report = Report()
    return build_manifest("voc", read_voc(annotations, images, report), report, options, out)
