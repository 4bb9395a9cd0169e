"""Read a ``predictions.jsonl`` in the contract format, whatever system wrote it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from drivemtl.errors import DriveMTLError
from drivemtl.jsonl import load_file
from drivemtl.prediction.files import ERRORS, RUN_INFO, iter_jsonl

MAX_REPORTED = 20


@dataclass
class Predictions:
    """One row per distinct image of a predictions file.

    Attributes:
        path: The file.
        classes: Class names, in the order of the first line's ``presence`` object; empty
            when the file has no ``presence`` (a detection- or depth-only model).
        images: Image paths as written (relative to the predicted folder).
        scores: (N, C) probabilities.
        present: (N, C) the producing system's decisions (``present`` lists).
        duplicates: Images that appeared again after their first line (the first one counts).
        run_info: ``run.json`` beside the file (drivemtl predict), or ``{}``.
        errors: Images listed in ``errors.jsonl`` beside the file (unreadable at predict time).
    """

    path: Path
    classes: list[str]
    images: list[str]
    scores: Tensor
    present: Tensor
    duplicates: list[str] = field(default_factory=list)
    run_info: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _probability(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and 0.0 <= value <= 1.0 else None


def read_predictions(path: str | Path) -> Predictions:
    """Parse and check a predictions file; every problem is reported with its line.

    Each line needs ``image`` (a path), and, when the model has a presence head, ``presence``
    (``{class: probability in [0, 1]}``, the same classes on every line) and ``present`` (a
    list of those classes). Line 1 decides whether the file has presence; the other lines must
    agree. Other keys (``boxes``, ``depth``) are allowed and checked by their evaluators.

    Raises:
        DriveMTLError: For a missing or empty file, or bad lines (up to 20 listed).
    """
    path = Path(path)
    if not path.is_file():
        raise DriveMTLError(f"Predictions file not found: {path}")
    classes: list[str] | None = None
    with_presence: bool | None = None  # set by line 1
    images, scores, present, duplicates, problems = [], [], [], [], []
    seen: set[str] = set()
    for number, obj in iter_jsonl(path, problems):
        image, probs, chosen = obj.get("image"), obj.get("presence"), obj.get("present")
        try:
            if not isinstance(image, str) or not image:
                raise ValueError("'image' must be a non-empty path string")
            if with_presence is None:
                with_presence = "presence" in obj
            if with_presence != ("presence" in obj):
                has = "has" if with_presence else "has no"
                raise ValueError(f"'presence' is missing or extra: line 1 {has} 'presence'")
            if with_presence:
                row, chosen = _presence_row(probs, chosen, classes)
                classes = classes or [str(c) for c in probs]
            else:
                row, chosen = [], []
        except ValueError as e:
            problems.append(f"  {path}:{number}: {e}")
            continue
        if image in seen:
            duplicates.append(image)
            continue
        seen.add(image)
        images.append(image)
        scores.append(row)
        present.append([c in chosen for c in classes or []])
    if problems:
        shown = problems[:MAX_REPORTED]
        if len(problems) > MAX_REPORTED:
            shown.append(f"  ... and {len(problems) - MAX_REPORTED} more")
        raise DriveMTLError(
            f"{len(problems)} bad line(s) in {path}:\n" + "\n".join(shown) + "\nEach line "
            'needs {"image": ...} and, from a model with a presence head, '
            '"presence": {class: probability}, "present": [classes].'
        )
    if not images:
        raise DriveMTLError(f"{path} holds no prediction.")
    classes = classes or []
    return Predictions(
        path=path,
        classes=classes,
        images=images,
        scores=torch.tensor(scores, dtype=torch.float32).reshape(len(images), len(classes)),
        present=torch.tensor(present, dtype=torch.bool).reshape(len(images), len(classes)),
        duplicates=duplicates,
        run_info=_read_run_info(path.parent / RUN_INFO),
        errors=_read_error_images(path.parent / ERRORS),
    )


def _presence_row(
    probs: object, chosen: object, classes: list[str] | None
) -> tuple[list[float], list[str]]:
    """One line's probabilities (in ``classes`` order, else its own) and decisions.

    Raises:
        ValueError: What is wrong with the line.
    """
    if not isinstance(probs, dict) or not probs:
        raise ValueError("'presence' must be an object {class: probability}")
    names = classes or [str(c) for c in probs]
    if set(probs) != set(names):
        raise ValueError(f"'presence' has classes {sorted(probs)}, line 1 has {names}")
    row = [_probability(probs[c]) for c in names]
    bad = [c for c, p in zip(names, row) if p is None]
    if bad:
        raise ValueError(f"'presence' of {bad} is not a probability in [0, 1]")
    if not isinstance(chosen, list) or not all(isinstance(c, str) for c in chosen):
        raise ValueError("'present' must be a list of class names")
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise ValueError(f"'present' names {unknown}, not in 'presence'")
    return row, chosen


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


def prediction_map_paths(path: str | Path, key: str) -> dict[str, str]:
    """``image -> map path`` from a predictions file for the lines with a ``key`` map path
    (depth, segmentation; the first line of an image counts), resolved against its folder."""
    path = Path(path)
    found: dict[str, str] = {}
    seen: set[str] = set()
    for _, obj in iter_jsonl(path):
        image, value = obj.get("image"), obj.get(key)
        if not isinstance(image, str) or image in seen:
            continue
        seen.add(image)
        if isinstance(value, str) and value:
            found[image] = str(path.parent / value)
    return found
