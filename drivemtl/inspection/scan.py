"""Decode every image and label map of a manifest, in parallel, as training will.

Each record goes through :func:`drivemtl.data.datasets.read_record`, the loader of the
training dataset, so a file that passes here does not stop a run mid-epoch, and one that fails
reports the message training would give, with its manifest line.
"""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from drivemtl.console import progress
from drivemtl.data.datasets import read_record
from drivemtl.data.io import DEPTH_PNG_SCALE, open_image
from drivemtl.data.manifest import Record
from drivemtl.data.pixel_labels import pixel_labels
from drivemtl.errors import DriveMTLError

if TYPE_CHECKING:
    from drivemtl.tasks.base import Task


@dataclass(frozen=True)
class FileCheck:
    """What decoding one record found.

    Attributes:
        width: Image width as loaded (EXIF applied); 0 when it could not be decoded.
        height: Image height as loaded.
        mode: Pillow mode of the stored image (``RGB``, ``RGBA``, ``L``, ``I;16``, ...).
        maps: What each label map's task measured on it (``Task.measure_map``), by key.
        problem: Why the record cannot be trained on (``None``: fine).
    """

    width: int = 0
    height: int = 0
    mode: str = ""
    maps: dict[str, dict] = field(default_factory=dict)
    problem: str | None = None


def check_record(record: Record, depth_scale: float = DEPTH_PNG_SCALE) -> FileCheck:
    """Decode one record's image and label maps (training's loader) and measure them."""
    mode = ""
    try:
        with open_image(record.image) as im:  # never blocks on a pipe, never decodes a bomb
            mode = im.mode
    except Exception:  # reported by the full decode below, with training's message
        pass
    try:
        image, maps, _ = read_record(record, list(pixel_labels()), {"depth_scale": depth_scale})
    except DriveMTLError as e:
        return FileCheck(mode=mode, problem=str(e))
    height, width = image.shape[:2]
    tasks = map_tasks()  # a label map no registered task declares is decoded, not measured
    measured = {key: tasks[key].measure_map(value) for key, value in maps.items() if key in tasks}
    return FileCheck(width, height, mode, measured)


def map_tasks() -> dict[str, type[Task]]:
    """The registered task classes that train on a label map, by its key."""
    from drivemtl.tasks import TASKS

    return {t.pixel_label: t for t in TASKS.values() if t.pixel_label}


def _check_quietly(record: Record, depth_scale: float) -> FileCheck:
    # Decoders warn on odd files (a big palette PNG, EXIF quirks): the result says it all.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            return check_record(record, depth_scale)


def check_records(
    records: Sequence[Record],
    depth_scale: float = DEPTH_PNG_SCALE,
    workers: int = 1,
    desc: str = "decoding",
) -> Iterator[FileCheck]:
    """:func:`check_record` for every record, in order, on ``workers`` processes."""
    check = functools.partial(_check_quietly, depth_scale=depth_scale)
    workers = max(1, min(int(workers), len(records)))
    bar = progress(total=len(records), desc=desc, unit=" img")
    try:
        if workers == 1:
            for record in records:
                yield check(record)
                bar.update()
            return
        with multiprocessing.Pool(workers) as pool:
            for result in pool.imap(check, records, chunksize=8):
                yield result
                bar.update()
    finally:
        bar.close()
