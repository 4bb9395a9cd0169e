"""Depth part of ``drivemtl evaluate``: predicted depth PNGs against the manifest's depth maps.

The numbers come from :class:`drivemtl.metrics.DepthMetric`, the metric of training, fed one
image at a time at the ground truth's (original) resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from drivemtl.console import progress
from drivemtl.data.io import DEPTH_PNG_SCALE, load_depth
from drivemtl.data.manifest import Record
from drivemtl.errors import DriveMTLError
from drivemtl.evaluation.predictions import prediction_map_paths
from drivemtl.metrics.depth import DEFAULT_MAX_DEPTH, DEFAULT_MIN_DEPTH, DepthMetric

MAX_REPORTED = 20


@dataclass
class DepthEvaluation:
    """The ``depth`` section of ``metrics.json`` and the bookkeeping behind it.

    Attributes:
        report: ``abs_rel`` ... ``delta3``, ``valid_pixels``, ``images`` (see
            :func:`drivemtl.metrics.depth.depth_report`), as ``drivemtl test`` writes it.
        cap: The ``(min_depth, max_depth)`` cap used.
        ground_truth_images: Matched images whose manifest entry has a depth map.
        without_prediction: Of those, images whose prediction line has no ``depth``.
    """

    report: dict
    cap: tuple[float, float]
    ground_truth_images: int
    without_prediction: list[str] = field(default_factory=list)


def evaluate_depth(
    predictions: str | Path,
    prediction_images: Sequence[str],
    records: Sequence[Record],
    pairs: Sequence[tuple[int, int]],
    min_depth: float = DEFAULT_MIN_DEPTH,
    max_depth: float = DEFAULT_MAX_DEPTH,
    depth_scale: float = DEPTH_PNG_SCALE,
) -> DepthEvaluation | None:
    """Score predicted depth maps against the manifest's, over matched images.

    Args:
        predictions: The ``predictions.jsonl``; its ``depth`` paths are relative to it.
        prediction_images: Image of each prediction row (index ``p`` of ``pairs``).
        records: Manifest entries (index ``r`` of ``pairs``).
        pairs: Matched ``(prediction index, manifest index)``.
        min_depth: Lower cap (ground truth masked, predictions clamped).
        max_depth: Upper cap.
        depth_scale: Units per metre of the manifest's 16-bit depth PNGs (prediction PNGs are
            always metres x 256).

    Returns:
        ``None`` when no matched manifest entry has depth or no prediction has a depth map
        (nothing to score); else the evaluation.

    Raises:
        DriveMTLError: For unreadable maps, or a prediction whose size differs from its
            ground truth (up to 20 listed).
    """
    if not 0.0 <= min_depth < max_depth:
        raise DriveMTLError(
            f"The depth cap needs 0 <= --min_depth < --max_depth, got {min_depth:g}, {max_depth:g}."
        )
    if not depth_scale > 0:
        raise DriveMTLError(f"--depth_scale must be > 0 (units per metre), got {depth_scale:g}.")
    with_truth = [(p, r) for p, r in pairs if records[r].map_path("depth") is not None]
    if not with_truth:
        return None
    predicted = prediction_map_paths(predictions, "depth")
    if not predicted:
        return None
    metric = DepthMetric(min_depth, max_depth)
    missing, problems = [], []
    for p, r in progress(with_truth, desc="scoring depth maps", unit=" img"):
        image = prediction_images[p]
        if image not in predicted:
            missing.append(image)
            continue
        try:
            pred = load_depth(predicted[image])
        except (OSError, ValueError) as e:
            problems.append(f"  {image}: prediction {predicted[image]}: {e}")
            continue
        truth_path = records[r].map_path("depth")
        try:
            truth = load_depth(truth_path, depth_scale)
        except (OSError, ValueError) as e:
            problems.append(f"  {records[r].source}: ground truth {truth_path}: {e}")
            continue
        if pred.shape != truth.shape:
            problems.append(
                f"  {image}: prediction {predicted[image]} is {pred.shape[1]}x{pred.shape[0]} "
                f"but ground truth {truth_path} is {truth.shape[1]}x{truth.shape[0]}"
            )
            continue
        metric.update(
            torch.from_numpy(pred)[None, None],
            torch.from_numpy(truth)[None, None],
            torch.tensor([r]),
        )
    if problems:
        shown = problems[:MAX_REPORTED]
        if len(problems) > MAX_REPORTED:
            shown.append(f"  ... and {len(problems) - MAX_REPORTED} more")
        raise DriveMTLError(
            f"{len(problems)} depth map(s) could not be scored:\n" + "\n".join(shown) + "\n"
            "Each pair needs two readable single-channel maps (uint16 PNG or .npy) of the same "
            "size: predictions at the original image size, like the ground truth."
        )
    cap = (float(min_depth), float(max_depth))
    return DepthEvaluation(metric.report(), cap, len(with_truth), missing)
