"""The part every converter shares: source records in, manifest entries and a summary out.

A format module only parses its files into :class:`SourceImage` records (image path, source
labels, pixel boxes, crowd flags, DontCare regions) and reports what it cannot parse. Everything
with a policy lives here, once: class mapping, which classes are ``?``, presence, clipping,
``--min-box-size``, relative paths, the problem list and the summary.

Presence rules, for each configured class on each image:

* ``?`` when the source does not annotate the class at all (no source label maps to it);
* ``1`` when a box of the class exists: a training box, or a crowd / VOC difficult / group region
  (a crowd of people is people), or a box dropped by ``--min-box-size`` (the object is there,
  just too small to train a detector on);
* ``?`` when the only annotation of the class was dropped as broken (degenerate, malformed or
  outside the image): the annotator saw something, so 0 would be a guess;
* ``?`` when the image has class-less "don't care" regions (KITTI DontCare) and no box of the
  class: unlabelled objects may hide there (``dontcare_negative`` turns this into 0);
* ``0`` otherwise.

Crowds, difficult objects, boxes mapped to ``ignore``, boxes below ``--min-box-size`` and
DontCare regions become ``ignore`` regions, never boxes and never background.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from drivemtl.console import progress
from drivemtl.converters.mapping import IGNORE, ClassMapping, normalize
from drivemtl.data.io import displayed_size
from drivemtl.data.labels import DEFAULT_CLASSES, UNKNOWN_TOKEN
from drivemtl.data.manifest import write_manifest
from drivemtl.errors import DriveMTLError
from drivemtl.jsonl import load_file

Box = tuple[float, float, float, float]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MAX_PRINTED_PROBLEMS = 20
# Pillow names a 16-bit single-channel PNG "I;16" (or "I" in old versions).
DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I"}


@dataclass
class SourceObject:
    """One annotated object as the source states it.

    Attributes:
        label: The source's class name.
        box: ``x1, y1, x2, y2`` in pixels, or ``None`` when the source's geometry is malformed.
        entry: Where it is, for messages (``"annotation id 17"``, ``"line 3"``).
        crowd: A crowd / group / difficult object: present, but not a training box.
    """

    label: str
    box: Box | None
    entry: str
    crowd: bool = False


@dataclass
class SourceImage:
    """One image and its source annotation.

    Attributes:
        image: Path of the image file (may not exist: checked and reported centrally).
        source: The annotation file, for messages.
        entry: The entry within that file (``"image id 9"``), or ``""`` for per-image files.
        objects: The objects of every source label.
        size: ``(width, height)`` when the source states it; otherwise read from the header.
        dontcare: Class-less regions whose objects are not labelled (KITTI DontCare).
        depth: A uint16 metres x 256 depth PNG for this image, if any.
        segmentation: An 8-bit PNG of segmentation class indices for this image, if any.
        meta: Free per-image information copied to the manifest's ``meta``.
    """

    image: Path
    source: str
    entry: str = ""
    objects: list[SourceObject] = field(default_factory=list)
    size: tuple[int, int] | None = None
    dontcare: list[Box | None] = field(default_factory=list)
    depth: Path | None = None
    segmentation: Path | None = None
    meta: dict | None = None


@dataclass
class SourceData:
    """What a format reader returns.

    Attributes:
        images: One record per image the source lists.
        declared: The source labels the source annotates on every image (its taxonomy), or
            ``None`` when the format does not say (VOC): then the labels seen are used.
    """

    images: list[SourceImage]
    declared: set[str] | None = None


@dataclass(frozen=True)
class Problem:
    """An entry-level problem: what, where, and what the converter did about it."""

    source: str
    entry: str
    kind: str
    detail: str
    action: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.entry}" if self.entry else self.source
        return f"{where}: {self.kind}: {self.detail} ({self.action})"


class Report:
    """Collects problems, skipped images and notes while a conversion runs."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.skipped: Counter[str] = Counter()
        self.notes: list[str] = []
        self.warnings: list[str] = []
        """Findings that make the manifest doubtful (printed as WARNING lines)."""

    def problem(self, source: object, entry: str, kind: str, detail: str, action: str) -> None:
        """Record a problem (does not count a skipped image; see :meth:`skip`)."""
        self.problems.append(Problem(str(source), entry, kind, detail, action))

    def skip(self, source: object, entry: str, kind: str, detail: str) -> None:
        """Record a problem that drops one image, and count it under ``kind``."""
        self.problem(source, entry, kind, detail, "image skipped")
        self.skipped[kind] += 1


@dataclass
class ConvertOptions:
    """Options shared by every converter.

    Attributes:
        classes: The configured target classes.
        mapping: A YAML mapping file ``source label: target``.
        overrides: ``SOURCE=TARGET`` mappings, applied last.
        min_box_size: Boxes narrower or lower than this (pixels) become ignore regions.
        absolute_paths: Write absolute paths instead of paths relative to the manifest.
        source_classes: The source labels annotated on every image, replacing the format's
            own list (needed for VOC sets whose files do not show every class they annotate).
            Labels outside it are not converted.
        dontcare_negative: Treat classes without a box as 0 even on images with DontCare regions.
    """

    classes: Sequence[str] = DEFAULT_CLASSES
    mapping: str | Path | None = None
    overrides: Sequence[str] = ()
    min_box_size: float = 0.0
    absolute_paths: bool = False
    source_classes: Sequence[str] | None = None
    dontcare_negative: bool = False


@dataclass
class Summary:
    """Counts of one conversion, printed at the end and kept for tests and scripts.

    ``images_in_source`` counts every image entry of the source: written plus skipped.
    Presence counters count images; ``boxes`` counts training boxes per target class.
    """

    source: str
    classes: list[str]
    annotated: list[str]
    images_in_source: int = 0
    images_written: int = 0
    skipped: Counter = field(default_factory=Counter)
    boxes: Counter = field(default_factory=Counter)
    positive: Counter = field(default_factory=Counter)
    negative: Counter = field(default_factory=Counter)
    unknown: Counter = field(default_factory=Counter)
    ignore_regions: Counter = field(default_factory=Counter)
    dropped_boxes: Counter = field(default_factory=Counter)
    not_converted: Counter = field(default_factory=Counter)
    clipped_boxes: int = 0
    with_depth: int = 0
    with_segmentation: int = 0
    problems: int = 0
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def table(self, out: Path | None = None, problems_file: Path | None = None) -> str:
        """Human-readable summary."""
        where = f" to {out}" if out else ""
        skipped = sum(self.skipped.values())
        lines = [
            f"convert {self.source}: {self.images_written} image(s) written{where} "
            f"({self.images_in_source} in source, {skipped} skipped)",
            f"annotated classes: {', '.join(self.annotated)}",
        ]
        never = [c for c in self.classes if c not in self.annotated]
        if never:
            lines.append(f"not annotated by this source, '?' on every image: {', '.join(never)}")
        lines.append(f"{'class':<16}{'boxes':>8}{'positive':>10}{'negative':>10}{'unknown':>9}")
        for name in self.classes:
            lines.append(
                f"{name:<16}{self.boxes[name]:>8}{self.positive[name]:>10}"
                f"{self.negative[name]:>10}{self.unknown[name]:>9}"
            )
        lines.append(f"images skipped: {_counts(self.skipped)}")
        lines.append(f"boxes dropped: {_counts(self.dropped_boxes)}")
        lines.append(f"boxes clipped to the image: {self.clipped_boxes}")
        lines.append(f"ignore regions: {_counts(self.ignore_regions)}")
        lines.append(f"source labels not converted: {_counts(self.not_converted, limit=12)}")
        if self.with_depth:
            lines.append(f"depth maps: {self.with_depth} of {self.images_written} image(s)")
        if self.with_segmentation:
            lines.append(
                f"segmentation masks: {self.with_segmentation} of {self.images_written} image(s)"
            )
        lines.extend(f"note: {note}" for note in self.notes)
        lines.extend(f"WARNING: {warning}" for warning in self.warnings)
        if self.images_in_source and skipped * 2 > self.images_in_source:
            cause, count = self.skipped.most_common(1)[0]
            lines.append(
                f"WARNING: {skipped} of {self.images_in_source} source image(s) were skipped, "
                f"{count} of them for: {cause}. Check the options (class names, paths) before "
                "training on this manifest."
            )
        if self.problems:
            listed = f", listed in {problems_file}" if problems_file else ""
            lines.append(f"problems: {self.problems}{listed}")
        else:
            lines.append("problems: none")
        return "\n".join(lines)


def _counts(counter: Counter, limit: int | None = None) -> str:
    total = sum(counter.values())
    if not total:
        return "0"
    items = counter.most_common()
    shown = ", ".join(f"{k} {v}" for k, v in items[:limit])
    more = f", ... {len(items) - limit} more label(s)" if limit and len(items) > limit else ""
    return f"{total} ({shown}{more})"


@dataclass
class Conversion:
    """The result of a converter: manifest entries, summary and problems."""

    entries: list[dict]
    summary: Summary
    problems: list[Problem]

    def write(self, out: str | Path) -> Path:
        """Write the JSONL manifest and, when there are problems, ``<out stem>.problems.txt``."""
        out = Path(out)
        write_manifest(self.entries, out)
        path = problems_path(out)
        if self.problems:
            path.write_text("".join(f"{p}\n" for p in self.problems), encoding="utf-8")
        elif path.is_file():
            path.unlink()  # a stale list from an earlier run would describe another manifest
        return out


def problems_path(out: str | Path) -> Path:
    """Where the problem list of manifest ``out`` goes (``M.jsonl`` -> ``M.problems.txt``)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.problems.txt")


def check_out(out: str | Path | None) -> Path | None:
    """Reject output names that are not a ``.jsonl`` file, before any work is done.

    Converters write JSONL (boxes, ignore regions, depth); requiring the suffix also keeps a
    slip such as ``--out instances.json`` from overwriting the annotations being converted.
    """
    if out is None:
        return None
    out = Path(out)
    if out.is_dir():
        raise DriveMTLError(f"--out {out} is a folder; give the manifest's file name (.jsonl)")
    if out.suffix.lower() != ".jsonl":
        raise DriveMTLError(
            f"--out {out}: converters write a JSONL manifest (boxes, ignore regions, depth); "
            "use a file name ending in .jsonl"
        )
    return out


LABEL_FORMATS = {
    ".xml": "Pascal VOC XML (drivemtl convert voc)",
    ".json": "COCO, BDD100K or Cityscapes JSON (drivemtl convert coco / bdd100k / cityscapes)",
    ".txt": "YOLO or KITTI txt (drivemtl convert yolo / kitti)",
}


def other_formats_hint(folder: Path, expected: str) -> str:
    """What label files a folder holds instead of ``expected`` ones, with the converter to use.

    Returns an empty string when it holds none of another known kind.
    """
    counts = Counter(p.suffix.lower() for p in folder.rglob("*") if p.suffix.lower())
    found = [
        f"{counts[suffix]} {suffix} file(s): {name}?"
        for suffix, name in LABEL_FORMATS.items()
        if suffix != expected and counts[suffix]
    ]
    return f" It holds {'; '.join(found)}" if found else ""


def require_dir(path: str | Path, what: str) -> Path:
    """A folder the conversion cannot do without (fatal when missing)."""
    path = Path(path)
    if not path.is_dir():
        raise DriveMTLError(f"{what} folder not found: {path}")
    return path


def require_file(path: str | Path, what: str) -> Path:
    """A file the conversion cannot do without (fatal when missing)."""
    path = Path(path)
    if not path.is_file():
        raise DriveMTLError(f"{what} file not found: {path}")
    return path


def load_json(path: Path, what: str) -> object:
    """Parse a JSON file that the whole conversion depends on (fatal when malformed)."""
    return load_file(path, what)


def find_image(folder: Path, stem: str) -> Path | None:
    """The image ``folder/stem.<ext>`` for the usual extensions, or ``None``."""
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def list_images(folder: Path) -> list[Path]:
    """Every image under ``folder`` (recursively), sorted for a stable manifest order."""
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def parse_box(values: Iterable[object]) -> Box | None:
    """Four finite numbers as a box, or ``None`` when they are not."""
    try:
        box = tuple(float(v) for v in values)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        return None
    return box  # type: ignore[return-value]


def _clip(box: Box, size: tuple[int, int]) -> tuple[Box | None, str, bool]:
    """Clip to the image and round; returns ``(box or None, problem kind, clipped?)``."""
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        return None, "degenerate box", False
    w, h = size
    clipped = (
        min(max(x1, 0.0), w),
        min(max(y1, 0.0), h),
        min(max(x2, 0.0), w),
        min(max(y2, 0.0), h),
    )
    # Two decimals are far below annotation accuracy and keep manifests small.
    rounded = tuple(round(v, 2) for v in clipped)
    if rounded[2] <= rounded[0] or rounded[3] <= rounded[1]:
        return None, "box outside image", False
    moved = any(abs(a - b) > 0.01 for a, b in zip(box, clipped))
    return rounded, "", moved  # type: ignore[return-value]


def _relative(path: Path, base: Path | None) -> str:
    # abspath, not resolve: a symlinked data folder should stay as the user laid it out.
    absolute = os.path.abspath(path)
    if base is None:
        return absolute
    try:
        return Path(os.path.relpath(absolute, os.path.abspath(base))).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        return absolute


def build_manifest(
    source: str,
    data: SourceData,
    report: Report,
    options: ConvertOptions | None = None,
    out: str | Path | None = None,
) -> Conversion:
    """Turn a reader's records into manifest entries with the shared policy (module docstring).

    Args:
        source: The format name (``"coco"``), which selects the default mapping.
        data: The reader's records.
        report: The reader's report; the problems found here are added to it.
        options: Conversion options.
        out: The manifest that will be written; paths are made relative to its folder.

    Raises:
        DriveMTLError: When the source annotates none of the configured classes, or no image
            could be converted.
    """
    options = options or ConvertOptions()
    classes = list(options.classes)
    if not classes or len(set(classes)) != len(classes):
        raise DriveMTLError(f"--classes must be distinct class names, got {classes}")
    mapping = ClassMapping.build(source, classes, options.mapping, options.overrides)
    base = None if options.absolute_paths or out is None else Path(out).parent

    # Which source labels count as annotated on every image.
    observed = {obj.label for img in data.images for obj in img.objects}
    if options.source_classes is not None:
        declared = set(options.source_classes)
        strict = True
    else:
        # A format's own taxonomy, plus labels a user's files add to it (which they annotate).
        declared = observed if data.declared is None else set(data.declared) | observed
        strict = False
    declared_keys = {normalize(name) for name in declared}
    annotated = mapping.annotated(declared)
    if not annotated:
        raise DriveMTLError(
            f"The {source} source annotates none of the classes {classes} (its labels: "
            f"{', '.join(sorted(declared)[:20]) or 'none found'}). Map some with "
            "--map SOURCE=TARGET or --mapping FILE.yaml."
        )

    summary = Summary(source, classes, annotated)
    entries: list[dict] = []
    for img in progress(data.images, desc=f"converting {source}", unit=" img"):
        entry = _convert_image(
            img, mapping, annotated, declared_keys, strict, options, base, report, summary
        )
        if entry is not None:
            entries.append(entry)

    summary.images_written = len(entries)
    summary.skipped = Counter(report.skipped)
    # Readers skip entries they cannot parse before this point: count every entry once.
    summary.images_in_source = summary.images_written + sum(summary.skipped.values())
    summary.problems = len(report.problems)
    summary.notes = list(report.notes)
    summary.warnings = list(report.warnings)
    if not entries:
        raise DriveMTLError(
            f"No image could be converted from the {source} source "
            f"({len(data.images)} listed). First problems:\n"
            + "\n".join(f"  {p}" for p in report.problems[:MAX_PRINTED_PROBLEMS])
        )
    return Conversion(entries, summary, list(report.problems))


def _convert_image(
    img: SourceImage,
    mapping: ClassMapping,
    annotated: list[str],
    declared_keys: set[str],
    strict: bool,
    options: ConvertOptions,
    base: Path | None,
    report: Report,
    summary: Summary,
) -> dict | None:
    entry_name = img.entry or img.image.name
    if not img.image.is_file():
        report.skip(img.source, entry_name, "image file not found", str(img.image))
        return None
    size = img.size
    # Header reads cost time on big sets: only when something needs the size.
    needed = bool(img.objects or img.dontcare or img.depth or img.segmentation)
    if needed and (size is None or size[0] <= 0 or size[1] <= 0):
        try:
            size = displayed_size(img.image)
        except OSError as e:
            report.skip(img.source, entry_name, "cannot read image", f"{img.image}: {e}")
            return None

    boxes: list[list] = []
    ignore: list[Box] = []
    positive: set[str] = set()
    broken: set[str] = set()
    for obj in img.objects:
        where = f"{img.entry}, {obj.entry}" if img.entry else obj.entry
        if strict and normalize(obj.label) not in declared_keys:
            summary.not_converted[f"{obj.label} (not in --source-classes)"] += 1
            continue
        target = mapping.target(obj.label)
        if target is None:
            summary.not_converted[obj.label] += 1
            continue
        if obj.box is None:
            kind, clipped, moved = "malformed box", None, False
        else:
            clipped, kind, moved = _clip(obj.box, size)
        if clipped is None:
            detail = f"{obj.label} {list(obj.box) if obj.box else 'without 4 finite numbers'}"
            if obj.box is not None and kind == "box outside image":
                detail += f" in a {size[0]}x{size[1]} image"
            action = "region dropped" if target == IGNORE or obj.crowd else "box dropped"
            report.problem(img.source, where, kind, detail, action)
            summary.dropped_boxes[kind] += 1
            if target != IGNORE:
                broken.add(target)
            continue
        summary.clipped_boxes += moved
        if target == IGNORE:
            ignore.append(clipped)
            summary.ignore_regions[f"{obj.label} (mapped to ignore)"] += 1
        elif obj.crowd:
            ignore.append(clipped)
            positive.add(target)
            summary.ignore_regions["crowd / group / difficult"] += 1
        elif min(clipped[2] - clipped[0], clipped[3] - clipped[1]) < options.min_box_size:
            ignore.append(clipped)
            positive.add(target)
            summary.dropped_boxes[f"smaller than --min-box-size {options.min_box_size:g}"] += 1
            summary.ignore_regions["below --min-box-size"] += 1
        else:
            boxes.append([*clipped, target])
            positive.add(target)
            summary.boxes[target] += 1

    dontcare = 0
    for k, region in enumerate(img.dontcare):
        clipped, kind, _ = _clip(region, size) if region is not None else (None, "malformed box", 0)
        if clipped is None:
            where = f"{img.entry}, DontCare {k + 1}" if img.entry else f"DontCare {k + 1}"
            report.problem(img.source, where, kind, f"{region}", "region dropped")
            summary.dropped_boxes[f"DontCare: {kind}"] += 1
            continue
        ignore.append(clipped)
        dontcare += 1
    if dontcare:
        summary.ignore_regions["DontCare"] += dontcare
    hidden = dontcare > 0 and not options.dontcare_negative

    presence: dict[str, int | str] = {}
    for name in summary.classes:
        if name not in annotated:
            value: int | str = UNKNOWN_TOKEN
        elif name in positive:
            value = 1
        elif name in broken or hidden:
            value = UNKNOWN_TOKEN
        else:
            value = 0
        presence[name] = value
        counter = {1: summary.positive, 0: summary.negative}.get(value, summary.unknown)  # type: ignore[arg-type]
        counter[name] += 1

    entry: dict = {"image": _relative(img.image, base), "presence": presence, "boxes": boxes}
    if ignore:
        entry["ignore"] = [list(r) for r in ignore]
    if img.depth is not None:
        depth = _check_map(img, img.depth, size, report, "depth", DEPTH_MODES)
        if depth is not None:
            entry["depth"] = _relative(depth, base)
            summary.with_depth += 1
    if img.segmentation is not None:
        mask = _check_map(img, img.segmentation, size, report, "segmentation", ("L", "P"))
        if mask is not None:
            entry["segmentation"] = _relative(mask, base)
            summary.with_segmentation += 1
    if img.meta:
        entry["meta"] = img.meta
    return entry


def _check_map(
    img: SourceImage,
    path: Path,
    size: tuple[int, int],
    report: Report,
    what: str,
    modes: tuple[str, ...],
) -> Path | None:
    """A label map (depth, segmentation) if it is a PNG of one of ``modes`` of the image's
    size; otherwise report and drop it."""
    where = img.entry or img.image.name
    dropped = f"{what} dropped"
    if not path.is_file():
        report.problem(img.source, where, f"{what} file not found", str(path), dropped)
        return None
    try:
        with Image.open(path) as im:
            mode, map_size = im.mode, im.size
    except OSError as e:
        report.problem(img.source, where, f"cannot read {what}", f"{path}: {e}", dropped)
        return None
    if mode not in modes:
        expected = _MAP_FORMATS[what]
        report.problem(
            img.source,
            where,
            f"{what} is not {expected[0]}",
            f"{path} has mode {mode}; expected {expected[1]}",
            dropped,
        )
        return None
    if tuple(map_size) != tuple(size):
        report.problem(
            img.source,
            where,
            f"{what} size differs from image",
            f"{path} is {map_size[0]}x{map_size[1]}, image is {size[0]}x{size[1]}",
            dropped,
        )
        return None
    return path


_MAP_FORMATS = {
    "depth": ("a 16-bit PNG", "uint16 metres x 256"),
    "segmentation": ("an 8-bit PNG", "8-bit class indices, 255 = not annotated"),
}
