"""Output files of ``predict``: whole-line appends, resume bookkeeping, CSV export.

A prediction run must survive being killed at any moment: every batch's lines are appended
with one unbuffered ``write`` on an ``O_APPEND`` descriptor, and a resumed run drops a trailing
partial line (the only damage a kill in the middle of that write can leave).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from drivemtl.errors import DriveMTLError

if TYPE_CHECKING:
    from drivemtl.tasks.base import Task
from drivemtl.jsonl import iter_objects as iter_jsonl

PREDICTIONS = "predictions.jsonl"
ERRORS = "errors.jsonl"
CSV_FILE = "predictions.csv"
RUN_INFO = "run.json"
"""Beside the predictions: checkpoint, folder, classes and thresholds of the run (see docs)."""
OVERLAYS = "overlays"
PREVIEW_SUFFIX = "_preview"
"""A map task's colour previews go to ``<pixel_label>_preview/`` beside its maps' folder."""


def write_picture(picture, path: str, max_side: int = 1280) -> str:
    """Write an (H, W, 3) uint8 picture as a JPEG, its longer side at most ``max_side``."""
    from PIL import Image

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    image = Image.fromarray(picture)
    scale = max_side / max(image.size)
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    image.save(path, quality=90)
    return path


def map_folders(keys: Iterable[str]) -> list[str]:
    """The folders of predicted label maps and their previews, for map keys ``keys``."""
    return [name for key in keys for name in (key, key + PREVIEW_SUFFIX)]


class LineAppender:
    """Appends whole JSON lines to a file, one system call per batch, no user-space buffer.

    Args:
        path: The file; created if missing, never truncated.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, objects: Iterable[dict]) -> int:
        """Append one line per object; returns how many were written."""
        lines = [json.dumps(o, ensure_ascii=False) + "\n" for o in objects]
        if not lines:
            return 0
        data = "".join(lines).encode("utf-8")
        view = memoryview(data)
        while view:  # a regular file may accept a large write in parts
            view = view[os.write(self._fd, view) :]
        return len(lines)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def repair_tail(path: str | Path) -> bool:
    """Cut a trailing partial line (a run killed mid-write); returns whether it cut anything.

    Only the last line can be partial, since lines are only ever appended whole.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        # Read backwards to the last newline; a kill leaves at most one batch's tail.
        block, end = 65536, size
        last_newline = -1
        while end > 0 and last_newline < 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            index = chunk.rfind(b"\n")
            if index >= 0:
                last_newline = start + index
            end = start
        keep = last_newline + 1
        if keep == size:
            return False
        f.truncate(keep)
        return True


def done_images(path: str | Path) -> set[str]:
    """Images already in a predictions file (after cutting a partial last line)."""
    path = Path(path)
    if not path.is_file():
        return set()
    repair_tail(path)
    done = set()
    for number, obj in iter_jsonl(path):
        image = obj.get("image")
        if not isinstance(image, str):
            raise DriveMTLError(f"{path}:{number}: no 'image' path; cannot resume from this file.")
        done.add(image)
    return done


class RelativeNamer:
    """Image paths relative to the predict folder, with ``/`` separators on every OS.

    Plain string work on purpose: ``pathlib`` interns every path component, so naming a
    million distinct frames through it grows the interpreter's intern table for good.

    Args:
        root: The predict folder.
    """

    def __init__(self, root: str | Path):
        self.root = str(root)
        # find_images joins onto str(Path(root)): strip that prefix without touching the disk.
        self.prefix = os.path.join(str(Path(root)), "")

    def __call__(self, path: str) -> str:
        if path.startswith(self.prefix):
            rel = path[len(self.prefix) :]
        else:
            rel = os.path.relpath(path, self.root)
        return rel.replace(os.sep, "/") if os.sep != "/" else rel


def relative_image(path: str, root: str | Path) -> str:
    """``path`` relative to the predict folder, with ``/`` separators on every OS."""
    return RelativeNamer(root)(path)


def overlay_name(image: str) -> str:
    """Overlay file for a relative image path: JPEGs keep their name, others gain ``.jpg``.

    Keeping the full name of a PNG (``a.png.jpg``) keeps ``a.png`` and ``a.jpg`` apart.
    """
    return image if image.lower().endswith((".jpg", ".jpeg")) else image + ".jpg"


def jsonl_to_csv(
    jsonl: str | Path, out: str | Path, tasks: Iterable[Task], classes: Sequence[str]
) -> Path:
    """Stream a predictions file to CSV: ``image``, then each task's columns
    (:meth:`~drivemtl.tasks.base.Task.csv_columns`: a probability per class and ``present``
    from a presence head, ``boxes`` as JSON, map paths).

    Written beside and renamed, so a reader never sees half a file.
    """
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    tasks = list(tasks)
    columns = ["image", *(c for t in tasks for c in t.csv_columns(classes))]
    with open(partial, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for _, obj in iter_jsonl(jsonl):
            cells = {"image": obj["image"]}
            for task in tasks:
                cells.update(task.csv_cells(obj))
            writer.writerow([cells.get(c, "") for c in columns])
    partial.replace(out)
    return out


def write_json(path: str | Path, obj: dict) -> None:
    """Write a small JSON file atomically (beside, then rename)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(obj, indent=2) + "\n")
    partial.replace(path)
