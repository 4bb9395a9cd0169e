"""Read and write manifests, the one exchange format (see DESIGN.md).

CSV manifests carry presence only; JSONL manifests may add boxes and per-pixel label maps
(depth, segmentation: :mod:`drivemtl.data.pixel_labels`). Every problem is
reported with the manifest path and line number, all at once, so a user fixes a file in one pass.
"""

from __future__ import annotations

import csv
import json
import os
import stat
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from math import isfinite
from pathlib import Path

from drivemtl.console import progress
from drivemtl.data.io import displayed_size
from drivemtl.data.labels import NEGATIVE, POSITIVE, UNKNOWN, UNKNOWN_TOKEN
from drivemtl.data.pixel_labels import pixel_labels
from drivemtl.errors import DriveMTLError
from drivemtl.jsonl import BadJSON, loads, read_lines

LABELS_KEY = "presence"
"""The JSONL key of an image's class labels (``{class: 1 | 0 | "?"}``; a CSV's class columns):
the partial labels every class-level task reads (presence, and detection's known classes)."""

BASE_KEYS = ("image", LABELS_KEY, "boxes", "ignore", "meta")
"""The JSONL keys of every manifest; the tasks' label maps add theirs (:func:`jsonl_keys`)."""


def jsonl_keys() -> set[str]:
    """Every key a JSONL manifest line may have."""
    return {*BASE_KEYS, *pixel_labels()}


MAX_REPORTED_ERRORS = 20
# Float rounding in converters may put a box edge a hair outside the image.
BOX_TOLERANCE_PX = 0.01


@dataclass(frozen=True, slots=True)
class Record:
    """One manifest entry, resolved against the configured class list.

    Attributes:
        image: Path of the image (the manifest's folder joined with the entry's path).
        presence: One label per configured class: 1, 0 or -1 (unknown).
        boxes: ``(x1, y1, x2, y2, class_index)`` in original pixels; ``None`` when the image is
            not annotated for boxes, empty when annotated with no object.
        ignore: ``(x1, y1, x2, y2)`` regions (crowds, KITTI DontCare) that are neither objects
            nor background for detection.
        maps: ``(key, path)`` of each per-pixel label map the entry names (depth,
            segmentation); see :meth:`map_path`.
        manifest: The manifest file (one string shared by all its records).
        line: The entry's line in it.
    """

    image: str
    presence: tuple[int, ...]
    boxes: tuple[tuple[float, float, float, float, int], ...] | None = None
    ignore: tuple[tuple[float, float, float, float], ...] = ()
    maps: tuple[tuple[str, str], ...] = ()
    manifest: str = ""
    line: int = 0

    def map_path(self, key: str) -> str | None:
        """The path of the entry's ``key`` label map (a task's ``pixel_label``), or ``None``."""
        for name, path in self.maps:
            if name == key:
                return path
        return None

    @property
    def source(self) -> str:
        """``manifest:line``, for messages (built when asked: a million records would
        otherwise each hold a copy of the manifest's path)."""
        return f"{self.manifest}:{self.line}"


class ManifestError(DriveMTLError):
    """One or more bad entries in a manifest."""

    def __init__(self, path: Path | str, problems: Sequence[tuple[int, str]]):
        self.path = Path(path)
        self.problems = list(problems)
        shown = [f"  {self.path}:{line}: {text}" for line, text in problems[:MAX_REPORTED_ERRORS]]
        more = len(problems) - MAX_REPORTED_ERRORS
        if more > 0:
            shown.append(f"  ... and {more} more")
        super().__init__(
            f"{len(problems)} problem(s) in manifest {self.path}:\n"
            + "\n".join(shown)
            + "\nFix these entries (see 'Manifest format' in the README) and run again."
        )


class _LineError(Exception):
    """A problem on the line being parsed."""


def read_manifest(
    path: str | Path, classes: Sequence[str], check_files: bool = True
) -> list[Record]:
    """Parse a CSV or JSONL manifest.

    Args:
        path: The manifest; ``.csv`` is read as CSV, anything else as JSONL.
        classes: The configured class list.
        check_files: Check that images and label maps exist and that boxes lie inside the image.

    Returns:
        One record per image, in file order.

    Raises:
        ManifestError: Naming every bad line and its problem.
        DriveMTLError: When the manifest itself is missing or empty.
    """
    records, problems = parse_manifest(path, classes, check_files)
    if problems:
        raise ManifestError(path, problems)
    if not records:
        raise DriveMTLError(f"Manifest {path} has no entries.")
    _warn_contradictions(records, classes)
    return records


def parse_manifest(
    path: str | Path, classes: Sequence[str], check_files: bool = True
) -> tuple[list[Record], list[tuple[int, str]]]:
    """:func:`read_manifest` without raising on bad entries: every good record and every
    ``(line, problem)``, as ``drivemtl inspect`` reports them.

    Raises:
        DriveMTLError: When the manifest itself is missing or not UTF-8 text.
    """
    path = Path(path)
    if path.is_dir():
        raise DriveMTLError(f"Manifest {path} is a folder; give the .jsonl or .csv file.")
    if not path.is_file():
        raise DriveMTLError(f"Manifest not found: {path}. Check the path given in the data config.")
    parse = _parse_csv if path.suffix.lower() == ".csv" else _parse_jsonl
    return parse(path, list(classes), check_files)


def _lines(path: Path, lines: Iterable, check: bool) -> Iterable:
    """``lines`` with a progress bar while files are checked (each one opens a file)."""
    if not check:
        return lines
    with path.open("rb") as f:
        total = sum(1 for _ in f)
    return progress(lines, total=total, desc=f"reading {path.name}", unit=" lines")


def _warn_contradictions(records: Sequence[Record], classes: Sequence[str]) -> None:
    """Warn about explicit ``0`` presence beside a box of that class (the ``0`` wins)."""
    found = [
        (r.source, classes[c])
        for r in records
        for c, value in enumerate(r.presence)
        if value == NEGATIVE and any(b[4] == c for b in r.boxes or ())
    ]
    if found:
        source, name = found[0]
        warnings.warn(
            f"{len(found)} manifest entr(ies) give presence 0 for a class that has a box there "
            f"(first: {source}, '{name}'). The explicit 0 wins, as the manifest format says; "
            "check these labels.",
            stacklevel=3,
        )


def _resolve(base: str, value: object, what: str, check: bool) -> str:
    if not isinstance(value, str) or not value:
        raise _LineError(f"'{what}' must be a non-empty path string, got {value!r}")
    # Strings, not pathlib: a million records would spend more time building Path objects
    # than parsing their JSON.
    resolved = value if os.path.isabs(value) else os.path.join(base, value)
    if check:
        try:
            mode = os.stat(resolved).st_mode
        except FileNotFoundError:
            raise _LineError(f"{what} file not found: {resolved}") from None
        except OSError as e:  # a symlink loop, no permission
            raise _LineError(f"cannot open {what} file {resolved}: {e.strerror or e}") from None
        if stat.S_ISDIR(mode):
            raise _LineError(f"{what} {resolved} is a folder, not a file")
        if not stat.S_ISREG(mode):
            raise _LineError(f"{what} {resolved} is not a regular file (a pipe or a device)")
    return resolved


def unique_records(records: Sequence[Record]) -> list[Record]:
    """The records with each image once: the first entry of an image is kept.

    The same image listed twice (in one manifest or across the manifests of a split) would be
    trained and scored twice; ``evaluate`` applies the same rule to the manifests it reads.
    A warning names the first repeat and how many there are.
    """
    first: dict[str, Record] = {}
    repeats: list[tuple[Record, Record]] = []
    for record in records:
        key = os.path.normpath(os.path.abspath(record.image))
        if key in first:
            repeats.append((record, first[key]))
        else:
            first[key] = record
    if repeats:
        again, kept = repeats[0]
        warnings.warn(
            f"{len(repeats)} manifest entr(ies) list an image already listed (first: "
            f"{again.source} repeats {kept.source}, {kept.image}); each image is used once, "
            "with its first entry. Remove the repeated lines to silence this.",
            stacklevel=2,
        )
    return list(first.values())


def _label(value: object, name: str) -> int:
    if value in (1, "1", True):
        return POSITIVE
    if value in (0, "0", False):
        return NEGATIVE
    if value is None or (isinstance(value, str) and value.strip() in (UNKNOWN_TOKEN, "")):
        return UNKNOWN
    raise _LineError(f"presence of '{name}' is {value!r}; use 1, 0 or '?'")


def _class_index(name: object, index: dict[str, int]) -> int:
    found = index.get(name) if isinstance(name, str) else None
    if found is None:
        raise _LineError(f"unknown class {name!r}; configured classes are {list(index)}")
    return found


def _parse_csv(path: Path, classes: list[str], check: bool) -> tuple[list[Record], list]:
    records, problems = [], []
    base, manifest = str(path.parent), str(path)
    # read_lines: UTF-8 checked line by line, Excel's byte-order mark dropped.
    reader = csv.reader(text for _, text in _lines(path, read_lines(path), check))
    try:
        header = [h.strip() for h in next(reader, [])]
    except csv.Error as e:
        return [], [(1, f"unreadable CSV header ({e})")]
    if not header or header[0] != "image":
        return [], [(1, f"header must start with 'image', got {header}")]
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        return [], [(1, f"column(s) {repeated} appear more than once in the header")]
    unknown = [h for h in header[1:] if h not in classes]
    if unknown:
        return [], [(1, f"unknown class column(s) {unknown}; configured classes are {classes}")]
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:  # a NUL byte, an unterminated quote at the end of the file
            problems.append((reader.line_num, f"unreadable CSV row ({e})"))
            continue
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        try:
            if len(row) != len(header):
                raise _LineError(f"{len(row)} cells, but the header has {len(header)}")
            image = _resolve(base, row[0].strip(), "image", check)
            given = {name: _label(cell, name) for name, cell in zip(header[1:], row[1:])}
            presence = tuple(given.get(name, UNKNOWN) for name in classes)
            records.append(Record(image, presence, manifest=manifest, line=line))
        except _LineError as e:
            problems.append((line, str(e)))
    return records, problems


def _parse_jsonl(path: Path, classes: list[str], check: bool) -> tuple[list[Record], list]:
    records, problems = [], []
    parse = _EntryParser(path, classes, check)
    for line, text in _lines(path, read_lines(path), check):
        if not text.strip():
            continue
        try:
            records.append(parse(text, line))
        except _LineError as e:
            problems.append((line, str(e)))
    return records, problems


class _EntryParser:
    """Parses one JSONL manifest line into a :class:`Record` (hot: once per image)."""

    def __init__(self, path: Path, classes: list[str], check: bool):
        self.path, self.base, self.check = str(path), str(path.parent), check
        self.keys = jsonl_keys()
        self.map_keys = tuple(pixel_labels())
        self.classes = classes
        self.index = {name: i for i, name in enumerate(classes)}

    def __call__(self, text: str, line: int) -> Record:
        try:
            entry = loads(text)
        except BadJSON as e:
            raise _LineError(str(e)) from None
        if not isinstance(entry, dict):
            raise _LineError("each line must be a JSON object")
        allowed = self.keys
        if not entry.keys() <= allowed:
            extra = sorted(set(entry) - allowed)
            raise _LineError(f"unknown key(s) {extra}; allowed: {sorted(allowed)}")
        if "image" not in entry:
            raise _LineError("missing 'image'")
        check = self.check
        image = _resolve(self.base, entry["image"], "image", check)

        boxes = None
        if entry.get("boxes") is not None:
            boxes = self.boxes(entry["boxes"], image if check else None)

        explicit = entry.get(LABELS_KEY) or {}
        if not isinstance(explicit, dict):
            raise _LineError(f"{LABELS_KEY!r} must be an object mapping class name to 1, 0 or '?'")
        for name in explicit:
            _class_index(name, self.index)
        if boxes is not None:
            boxed = {b[4] for b in boxes}
        presence = tuple(
            _label(explicit[name], name)
            if name in explicit
            else (int(i in boxed) if boxes is not None else UNKNOWN)
            for i, name in enumerate(self.classes)
        )

        maps = tuple(
            (key, _resolve(self.base, entry[key], key, check))
            for key in self.map_keys
            if entry.get(key) is not None
        )
        ignore = ()
        if entry.get("ignore"):
            regions = [list(r[:4]) + [self.classes[0]] for r in _as_list(entry["ignore"], "ignore")]
            ignore = tuple(b[:4] for b in self.boxes(regions, image if check else None))
        return Record(image, presence, boxes, ignore, maps, self.path, line)

    def boxes(self, value: object, image: str | None) -> tuple:
        if not isinstance(value, list):
            raise _LineError("'boxes' must be a list of [x1, y1, x2, y2, class], [] or null")
        size = None
        if image is not None and value:
            try:
                size = displayed_size(image)  # boxes are in the pixels training loads
            except Exception as e:  # OSError, a bad EXIF block: not a usable image
                raise _LineError(f"cannot read image {image}: {e}") from None
        boxes = []
        for i, box in enumerate(value):
            if type(box) is not list or len(box) != 5:
                raise _LineError(f"box {i} must be [x1, y1, x2, y2, class], got {box!r}")
            x1, y1, x2, y2, name = box
            # type(), not isinstance: JSON's true / false are bools, which are ints.
            if not (
                type(x1) in _NUMBERS
                and type(y1) in _NUMBERS
                and type(x2) in _NUMBERS
                and type(y2) in _NUMBERS
            ):
                raise _LineError(f"box {i} has non-numeric coordinates: {box!r}")
            x1, y1, x2, y2 = float(x1), float(y1), float(x2), float(y2)
            if not (isfinite(x1) and isfinite(y1) and isfinite(x2) and isfinite(y2)):
                raise _LineError(f"box {i} has non-finite coordinates: {box!r}")
            if x2 <= x1 or y2 <= y1:
                raise _LineError(
                    f"box {i} {box!r} is empty or inverted (needs x2 > x1 and y2 > y1)"
                )
            if size is not None:
                w, h = size
                t = BOX_TOLERANCE_PX
                if x1 < -t or y1 < -t or x2 > w + t or y2 > h + t:
                    raise _LineError(f"box {i} {box!r} lies outside the {w}x{h} image")
            boxes.append((x1, y1, x2, y2, _class_index(name, self.index)))
        return tuple(boxes)


_NUMBERS = frozenset({int, float})


def _as_list(value: object, key: str) -> list:
    if not isinstance(value, list) or not all(isinstance(v, list) and len(v) >= 4 for v in value):
        raise _LineError(f"'{key}' must be a list of [x1, y1, x2, y2] regions")
    return value


def write_manifest(entries: Iterable[dict], path: str | Path) -> Path:
    """Write JSONL manifest entries (dicts in the DESIGN.md format), one per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for entry in entries:
            f.write(json.dumps(entry) + "\n")
    return path


def manifest_classes(path: str | Path) -> list[str]:
    """Class names a manifest mentions (CSV header; JSONL presence keys and box classes).

    Malformed lines are skipped here; :func:`read_manifest` reports them afterwards.
    """
    path = Path(path)
    if not path.is_file():
        raise DriveMTLError(f"Manifest not found: {path}")
    names: dict[str, None] = {}
    lines = (text for _, text in read_lines(path))
    if path.suffix.lower() == ".csv":
        try:
            header = next(csv.reader(lines), [])
        except csv.Error:
            header = []  # read_manifest reports it
        return [h.strip() for h in header[1:] if h.strip()]
    for line in lines:
        try:
            obj = loads(line)
        except BadJSON:
            continue
        if not isinstance(obj, dict):
            continue
        if isinstance(obj.get(LABELS_KEY), dict):
            names.update(dict.fromkeys(str(k) for k in obj[LABELS_KEY]))
        for box in obj.get("boxes") or []:
            if isinstance(box, list) and len(box) >= 5 and isinstance(box[4], str):
                names[box[4]] = None
    return list(names)
