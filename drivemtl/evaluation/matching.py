"""Pair prediction images (relative to the predicted folder) with manifest entries.

The two sides name images from different roots: ``predictions.jsonl`` relative to the folder
given to ``predict``, a manifest relative to its own file. The rules, in order:

1. Same file: when the predicted folder is known (``--images_root``, or ``run.json`` beside
   the predictions), ``root / image`` is a manifest path.
2. Same name: among manifest images with the prediction's file name, the one whose path
   shares the most trailing components with it: the same path relative to the manifest when
   the roots coincide ("relative path"), else a shared trailing part ("path suffix"), else
   the file name alone, which must then be unique ("file name"). A tie is *ambiguous* and
   left unmatched.

A manifest entry is matched at most once. Everything left over is counted and listed, never
silently dropped.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

EXACT, RELATIVE, SUFFIX, FILENAME = "same file", "relative path", "path suffix", "file name"


@dataclass
class ManifestImage:
    """One manifest entry's image, as absolute and manifest-relative path components."""

    absolute: tuple[str, ...]
    relative: tuple[str, ...]
    display: str


@dataclass
class MatchResult:
    """How predictions and manifest entries were paired.

    Attributes:
        pairs: ``(prediction index, manifest index)``.
        by_rule: Matched count per rule.
        unmatched_predictions: Prediction images with no manifest entry.
        ambiguous_predictions: Prediction images with several equally good manifest entries.
        taken_predictions: Prediction images whose manifest entry an earlier one took.
        unmatched_manifest: Manifest indices with no prediction.
    """

    pairs: list[tuple[int, int]] = field(default_factory=list)
    by_rule: dict[str, int] = field(default_factory=dict)
    unmatched_predictions: list[str] = field(default_factory=list)
    ambiguous_predictions: list[str] = field(default_factory=list)
    taken_predictions: list[str] = field(default_factory=list)
    unmatched_manifest: list[int] = field(default_factory=list)


def _parts(path: str) -> tuple[str, ...]:
    # String work, not pathlib: this runs for every image of a manifest and a predictions file.
    text = str(path).replace(os.sep, "/")
    return tuple(p for p in text.split("/") if p not in ("", "."))


def manifest_image(image: str | Path, manifest_dir: str | Path) -> ManifestImage:
    """Describe a resolved manifest path for matching."""
    absolute = os.path.abspath(image)
    relative = os.path.relpath(absolute, os.path.abspath(manifest_dir))
    rel = () if relative.startswith("..") else _parts(relative)
    return ManifestImage(_parts(absolute), rel, rel and "/".join(rel) or absolute)


def _common_suffix(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def match_images(
    predicted: Sequence[str],
    manifest: Sequence[ManifestImage],
    images_root: str | Path | None = None,
) -> MatchResult:
    """Pair prediction images with manifest images by the rules of this module.

    Args:
        predicted: Prediction image paths, relative to the predicted folder.
        manifest: Manifest images (see :func:`manifest_image`).
        images_root: The predicted folder, when known.
    """
    result = MatchResult(by_rule={EXACT: 0, RELATIVE: 0, SUFFIX: 0, FILENAME: 0})
    taken = [False] * len(manifest)
    by_absolute: dict[tuple[str, ...], int] = {}
    by_name: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(manifest):
        by_absolute.setdefault(item.absolute, index)
        if item.absolute:
            by_name[item.absolute[-1]].append(index)

    pending = []
    for p, image in enumerate(predicted):
        parts = _parts(image)
        if images_root is not None:
            key = _parts(os.path.abspath(os.path.join(images_root, image)))
            index = by_absolute.get(key)
            if index is not None and not taken[index]:
                taken[index] = True
                result.pairs.append((p, index))
                result.by_rule[EXACT] += 1
                continue
        pending.append((p, image, parts))

    for p, image, parts in pending:
        candidates = [
            (_common_suffix(parts, manifest[index].absolute), index)
            for index in by_name.get(parts[-1] if parts else "", ())
        ]
        if not candidates:
            result.unmatched_predictions.append(image)
            continue
        best = max(score for score, _ in candidates)
        winners = [index for score, index in candidates if score == best]
        if len(winners) > 1:
            result.ambiguous_predictions.append(image)
            continue
        index = winners[0]
        if taken[index]:
            result.taken_predictions.append(image)
            continue
        taken[index] = True
        result.pairs.append((p, index))
        same_relative = parts == manifest[index].relative
        result.by_rule[RELATIVE if same_relative else FILENAME if best == 1 else SUFFIX] += 1

    result.unmatched_manifest = [i for i, used in enumerate(taken) if not used]
    return result
