"""Read a ``predictions.jsonl`` in the contract format, whatever system wrote it.

The file is parsed once, here; each task reads and checks its own fields from the rows
(:meth:`Predictions.collect`, :meth:`Predictions.map_paths`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from drivemtl.errors import DriveMTLError, problem_list
from drivemtl.jsonl import load_file
from drivemtl.prediction.files import ERRORS, RUN_INFO, iter_jsonl

T = TypeVar("T")

LINE_FORMAT = 'Each line is a JSON object with "image": <path> and the fields of each task.'


@dataclass
class Predictions:
    """One row per distinct image of a predictions file.

    Attributes:
        path: The file.
        images: Image paths as written (relative to the predicted folder).
        rows: The first line of each image, as parsed (every task's fields).
        lines: The line number of each row, for messages.
        duplicates: Images that appeared again after their first line (the first one counts).
        run_info: ``run.json`` beside the file (drivemtl predict), or ``{}``.
        errors: Images listed in ``errors.jsonl`` beside the file (unreadable at predict time).
        problems: ``(line number, message)`` of each bad line found so far.
        advice: What good lines look like, for the tasks whose fields had problems.
    """

    path: Path
    images: list[str]
    rows: list[dict]
    lines: list[int]
    duplicates: list[str] = field(default_factory=list)
    run_info: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)
    advice: list[str] = field(default_factory=lambda: [LINE_FORMAT])

    def collect(self, read: Callable[[dict], T | None], advice: str) -> list[T | None]:
        """One task's fields of every row: ``read(row)``, ``None`` where a row has none.

        A row ``read`` refuses (``ValueError`` saying what is wrong) gives ``None`` and is kept
        for :meth:`check`, which reports every bad line of the file at once.

        Args:
            read: Parses a row's fields.
            advice: What a good line of the task looks like, shown after bad lines.
        """
        values = []
        for number, row in zip(self.lines, self.rows):
            try:
                values.append(read(row))
            except ValueError as e:
                values.append(None)
                self.problems.append((number, f"  {self.path}:{number}: {e}"))
                if advice not in self.advice:
                    self.advice.append(advice)
        return values

    def check(self) -> None:
        """Raise for the bad lines found so far (JSON, ``image``, the tasks' fields).

        Raises:
            DriveMTLError: Every bad line (up to 20 listed) in line order, with what a good
                one looks like.
        """
        if self.problems:
            listed = [text for _, text in sorted(self.problems, key=lambda p: p[0])]
            header = f"{len(listed)} bad line(s) in {self.path}"
            raise problem_list(header, listed, "\n".join(self.advice))

    def map_paths(self, key: str) -> dict[str, str]:
        """``image -> path`` of the rows' ``key`` maps (a task's PNGs), resolved against the
        file's folder; rows without one are left out."""
        return {
            image: str(self.path.parent / row[key])
            for image, row in zip(self.images, self.rows)
            if isinstance(row.get(key), str) and row[key]
        }


def read_predictions(path: str | Path) -> Predictions:
    """Parse a predictions file: each line needs ``image`` (a path); the tasks' fields are
    kept for the tasks to read (:meth:`Predictions.collect`). Bad lines are kept in
    ``problems``; :meth:`Predictions.check` raises for them once the tasks have read theirs.

    Raises:
        DriveMTLError: For a missing or empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise DriveMTLError(f"Predictions file not found: {path}")
    images, rows, lines, duplicates, problems = [], [], [], [], []
    seen: set[str] = set()
    for number, obj in iter_jsonl(path, problems):  # bad lines land in problems
        image = obj.get("image")
        if not isinstance(image, str) or not image:
            problems.append((number, f"  {path}:{number}: 'image' must be a non-empty path string"))
            continue
        if image in seen:
            duplicates.append(image)
            continue
        seen.add(image)
        images.append(image)
        rows.append(obj)
        lines.append(number)
    predictions = Predictions(
        path=path,
        images=images,
        rows=rows,
        lines=lines,
        duplicates=duplicates,
        run_info=_read_run_info(path.parent / RUN_INFO),
        errors=_read_error_images(path.parent / ERRORS),
        problems=problems,
    )
    if not images:
        predictions.check()  # every line was bad: say why
        raise DriveMTLError(f"{path} holds no prediction.")
    return predictions


def _read_run_info(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        info = load_file(path, "run record")
    except DriveMTLError:
        return {}
    return info if isinstance(info, dict) else {}


def _read_error_images(path: Path) -> list[str]:
    if not path.is_file():
        return []
    try:
        return [o["image"] for _, o in iter_jsonl(path) if isinstance(o.get("image"), str)]
    except DriveMTLError:
        return []  # errors.jsonl is informative only; a damaged one must not stop evaluation
