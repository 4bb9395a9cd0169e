"""Predicted per-pixel maps against the manifest's: the scoring loop every map task shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from drivemtl.console import progress
from drivemtl.errors import problem_list
from drivemtl.evaluation.inputs import EvaluationInputs


@dataclass
class MapScoring:
    """What :func:`score_maps` went over.

    Attributes:
        with_truth: Matched images whose manifest entry has a map.
        without_prediction: Of those, images whose prediction row has no map.
    """

    with_truth: int
    without_prediction: list[str] = field(default_factory=list)


def score_maps(
    inputs: EvaluationInputs,
    key: str,
    read_prediction: Callable[[str], np.ndarray],
    read_truth: Callable[[str], np.ndarray],
    update: Callable[[np.ndarray, np.ndarray, int], None],
    what: str,
    advice: str,
) -> MapScoring | None:
    """Feed every matched pair of ``key`` maps (predicted, true) to ``update``.

    Args:
        inputs: The matched predictions and manifest entries.
        key: The task's pixel label: the manifest key and the prediction field.
        read_prediction: Reads a predicted map; raises ``OSError`` / ``ValueError``.
        read_truth: Reads a manifest map; raises ``OSError`` / ``ValueError``.
        update: Takes ``(prediction, truth, manifest index)`` of one image, same shape.
        what: The maps' name in messages (``"depth map(s)"``).
        advice: What a scorable pair is, after the list of problems.

    Returns:
        ``None`` when no matched entry or no prediction has a map (nothing to score).

    Raises:
        DriveMTLError: Unreadable maps and size mismatches (up to 20 listed, by file).
    """
    with_truth = [(p, r) for p, r in inputs.pairs if inputs.records[r].map_path(key)]
    predicted = inputs.predictions.map_paths(key) if with_truth else {}
    if not predicted:
        return None
    missing, problems = [], []
    for p, r in progress(with_truth, desc=f"scoring {key}", unit=" img"):
        image = inputs.predictions.images[p]
        if image not in predicted:
            missing.append(image)
            continue
        try:
            pred = read_prediction(predicted[image])
        except (OSError, ValueError) as e:
            problems.append(f"  {image}: prediction {predicted[image]}: {e}")
            continue
        record = inputs.records[r]
        truth_path = record.map_path(key)
        try:
            truth = read_truth(truth_path)
        except (OSError, ValueError) as e:
            problems.append(f"  {record.source}: ground truth {truth_path}: {e}")
            continue
        if pred.shape != truth.shape:
            problems.append(
                f"  {image}: prediction {predicted[image]} is {pred.shape[1]}x{pred.shape[0]} "
                f"but ground truth {truth_path} is {truth.shape[1]}x{truth.shape[0]}"
            )
            continue
        update(pred, truth, r)
    if problems:
        raise problem_list(f"{len(problems)} {what} could not be scored", problems, advice)
    return MapScoring(len(with_truth), missing)
