"""Read and write manifests, the one exchange format (see DESIGN.md).

CSV manifests carry presence only; JSONL manifests may add boxes and depth. Every problem is
reported with the manifest path and line number, all at once, so a user fixes a file in one pass.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from drivemtl.console import progress
from drivemtl.data.io import displayed_size
from drivemtl.data.labels import NEGATIVE, POSITIVE, UNKNOWN, UNKNOWN_TOKEN
from drivemtl.errors import DriveMTLError

JSONL_KEYS = {"image", "presence", "boxes", "depth", "ignore", "meta"}
MAX_REPORTED_ERRORS = 20
# Float rounding in converters may put a box edge a hair outside the image.
BOX_TOLERANCE_PX = 0.01


@dataclass(frozen=True)
class Record:
    """One manifest entry, resolved against the configured class list.

    Attributes:
        image: Absolute path of the image.
        presence: One label per configured class: 1, 0 or -1 (unknown).
        boxes: ``(x1, y1, x2, y2, class_index)`` in original pixels; ``None`` when the image is
            not annotated for boxes, empty when annotated with no object.
        depth: Absolute path of the depth map, or ``None``.
        ignore: ``(x1, y1, x2, y2)`` regions (crowds, KITTI DontCare) that are neither objects
            nor background for detection.
        source: ``manifest:line`` for messages.
    """

    image: Path
    presence: tuple[int, ...]
    boxes: tuple[tuple[float, float, float, float, int], ...] | None = None
    depth: Path | None = None
    ignore: tuple[tuple[float, float, float, float], ...] = ()
    source: str = ""


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
        check_files: Check that images and depth maps exist and that boxes lie inside the image.

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
    if not path.is_file():
        raise DriveMTLError(f"Manifest not found: {path}. Check the path given in the data config.")
    parse = _parse_csv if path.suffix.lower() == ".csv" else _parse_jsonl
    try:
        return parse(path, list(classes), check_files)
    except UnicodeDecodeError as e:
        raise DriveMTLError(
            f"Manifest {path} is not UTF-8 text (byte {e.start}: {e.reason}). Save it as UTF-8 "
            "(a spreadsheet's 'CSV UTF-8')."
        ) from None


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


def _resolve(base: Path, value: object, what: str, check: bool) -> Path:
    if not isinstance(value, str) or not value:
        raise _LineError(f"'{what}' must be a non-empty path string, got {value!r}")
    resolved = Path(value) if Path(value).is_absolute() else base / value
    if check and not resolved.is_file():
        raise _LineError(f"{what} file not found: {resolved}")
    return resolved


def _label(value: object, name: str) -> int:
    if value in (1, "1", True):
        return POSITIVE
    if value in (0, "0", False):
        return NEGATIVE
    if value is None or (isinstance(value, str) and value.strip() in (UNKNOWN_TOKEN, "")):
        return UNKNOWN
    raise _LineError(f"presence of '{name}' is {value!r}; use 1, 0 or '?'")


def _class_index(name: object, classes: list[str]) -> int:
    if name not in classes:
        raise _LineError(f"unknown class {name!r}; configured classes are {classes}")
    return classes.index(name)


def _parse_csv(path: Path, classes: list[str], check: bool) -> tuple[list[Record], list]:
    records, problems = [], []
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if not header or header[0] != "image":
            return [], [(1, f"header must start with 'image', got {header}")]
        repeated = sorted({h for h in header if header.count(h) > 1})
        if repeated:
            return [], [(1, f"column(s) {repeated} appear more than once in the header")]
        unknown = [h for h in header[1:] if h not in classes]
        if unknown:
            return [], [(1, f"unknown class column(s) {unknown}; configured classes are {classes}")]
        for row in _lines(path, reader, check):
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            try:
                if len(row) != len(header):
                    raise _LineError(f"{len(row)} cells, but the header has {len(header)}")
                image = _resolve(path.parent, row[0].strip(), "image", check)
                given = {name: _label(cell, name) for name, cell in zip(header[1:], row[1:])}
                presence = tuple(given.get(name, UNKNOWN) for name in classes)
                records.append(Record(image, presence, source=f"{path}:{line}"))
            except _LineError as e:
                problems.append((line, str(e)))
    return records, problems


def _parse_jsonl(path: Path, classes: list[str], check: bool) -> tuple[list[Record], list]:
    records, problems = [], []
    with path.open(encoding="utf-8-sig") as f:
        for line, text in enumerate(_lines(path, f, check), start=1):
            if not text.strip():
                continue
            try:
                records.append(_parse_entry(text, path, line, classes, check))
            except _LineError as e:
                problems.append((line, str(e)))
    return records, problems


def _parse_entry(text: str, path: Path, line: int, classes: list[str], check: bool) -> Record:
    try:
        entry = json.loads(text)
    except json.JSONDecodeError as e:
        raise _LineError(f"malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(entry, dict):
        raise _LineError("each line must be a JSON object")
    extra = set(entry) - JSONL_KEYS
    if extra:
        raise _LineError(f"unknown key(s) {sorted(extra)}; allowed: {sorted(JSONL_KEYS)}")
    if "image" not in entry:
        raise _LineError("missing 'image'")
    image = _resolve(path.parent, entry["image"], "image", check)

    boxes = None
    if entry.get("boxes") is not None:
        boxes = _parse_boxes(entry["boxes"], classes, image if check else None)

    explicit = entry.get("presence") or {}
    if not isinstance(explicit, dict):
        raise _LineError("'presence' must be an object mapping class name to 1, 0 or '?'")
    for name in explicit:
        _class_index(name, classes)
    presence = []
    for index, name in enumerate(classes):
        if name in explicit:
            presence.append(_label(explicit[name], name))
        elif boxes is not None:
            presence.append(int(any(b[4] == index for b in boxes)))
        else:
            presence.append(UNKNOWN)

    depth = None
    if entry.get("depth") is not None:
        depth = _resolve(path.parent, entry["depth"], "depth", check)
    ignore = ()
    if entry.get("ignore"):
        ignore = tuple(
            b[:4]
            for b in _parse_boxes(
                [list(r[:4]) + [classes[0]] for r in _as_list(entry["ignore"], "ignore")],
                classes,
                image if check else None,
            )
        )
    return Record(image, tuple(presence), boxes, depth, ignore, source=f"{path}:{line}")


def _as_list(value: object, key: str) -> list:
    if not isinstance(value, list) or not all(isinstance(v, list) and len(v) >= 4 for v in value):
        raise _LineError(f"'{key}' must be a list of [x1, y1, x2, y2] regions")
    return value


def _parse_boxes(value: object, classes: list[str], image: Path | None) -> tuple:
    if not isinstance(value, list):
        raise _LineError("'boxes' must be a list of [x1, y1, x2, y2, class], [] or null")
    size = None
    if image is not None and value:
        try:
            size = displayed_size(image)  # boxes are in the pixels training loads
        except OSError as e:
            raise _LineError(f"cannot read image {image}: {e}") from None
    boxes = []
    for i, box in enumerate(value):
        if not (isinstance(box, list) and len(box) == 5):
            raise _LineError(f"box {i} must be [x1, y1, x2, y2, class], got {box!r}")
        *coords, name = box
        if not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in coords):
            raise _LineError(f"box {i} has non-numeric coordinates: {box!r}")
        x1, y1, x2, y2 = (float(c) for c in coords)
        if not all(math.isfinite(c) for c in (x1, y1, x2, y2)):
            raise _LineError(f"box {i} has non-finite coordinates: {box!r}")
        if x2 <= x1 or y2 <= y1:
            raise _LineError(f"box {i} {box!r} is empty or inverted (needs x2 > x1 and y2 > y1)")
        if size is not None:
            w, h = size
            t = BOX_TOLERANCE_PX
            if x1 < -t or y1 < -t or x2 > w + t or y2 > h + t:
                raise _LineError(f"box {i} {box!r} lies outside the {w}x{h} image")
        boxes.append((x1, y1, x2, y2, _class_index(name, classes)))
    return tuple(boxes)


def write_manifest(entries: Iterable[dict], path: str | Path) -> Path:
    """Write JSONL manifest entries (dicts in the DESIGN.md format), one per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for entry in entries:
            f.write(json.dumps(entry) + "\n")
    return path
