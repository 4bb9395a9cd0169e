"""Monocular depth metrics over valid pixels, per image, then averaged over images.

The definitions follow the KITTI / Eigen et al. (2014) evaluation protocol as implemented by
Monodepth2 and most later work:

- A ground-truth pixel counts when ``min_depth < gt < max_depth`` (0 = no measurement is never
  inside); pixels outside the cap are masked out, not clamped.
- Predictions are clamped to ``[min_depth, max_depth]`` (a prediction of 0 or of 300 m is
  scored as the nearest cap value, never skipped).
- Each image's errors are means over its valid pixels (RMSE is the square root of its own
  mean); the reported value is the plain mean over images with at least one valid pixel.

One function, :func:`image_errors`, defines the numbers; :class:`DepthMetric` (training,
validate, test) and ``drivemtl evaluate`` both use it, so they agree by construction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from drivemtl.data.io import DEFAULT_MAX_DEPTH, DEFAULT_MIN_DEPTH
from drivemtl.metrics.indexed import IndexedMetric, cat_state

METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")
"""Column order of :func:`image_errors` and keys of the report (the metrics.json contract)."""


def image_errors(
    pred: Tensor,
    target: Tensor,
    min_depth: float = DEFAULT_MIN_DEPTH,
    max_depth: float = DEFAULT_MAX_DEPTH,
) -> tuple[Tensor, Tensor]:
    """Per-image depth errors over the valid pixels of each image.

    Args:
        pred: (B, H, W) or (B, 1, H, W) predicted metres, at the target's resolution.
        target: Ground truth of the same shape, metres; 0 (or NaN) = no measurement.
        min_depth: Lower cap: ground truth at or below it is masked, predictions clamped to it.
        max_depth: Upper cap: ground truth at or above it is masked, predictions clamped to it.

    Returns:
        ``errors``: (B, 7) float64, columns in :data:`METRICS` order (zeros for an image
        without a valid pixel), and ``count``: (B,) long, valid pixels per image.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.device.type == "mps":  # Apple GPUs have no float64: score on the CPU
        pred, target = pred.cpu(), target.cpu()
    p = pred.detach().reshape(pred.shape[0], -1).double()
    g = target.detach().reshape(target.shape[0], -1).double()
    valid = torch.isfinite(g) & (g > min_depth) & (g < max_depth)
    count = valid.sum(dim=1)
    # Invalid pixels get harmless stand-ins (1 m) and are then zeroed by the mask, so a NaN or
    # a 0 there can never reach the sums.
    p = torch.nan_to_num(p, nan=min_depth).clamp(min_depth, max_depth)
    p = torch.where(valid, p, torch.ones_like(p))
    g = torch.where(valid, g, torch.ones_like(g))
    mask = valid.double()
    n = count.clamp(min=1).double()

    def mean(x: Tensor) -> Tensor:
        return (x * mask).sum(dim=1) / n

    diff = p - g
    ratio = torch.maximum(p / g, g / p)
    errors = torch.stack(
        [
            mean(diff.abs() / g),
            mean(diff**2 / g),
            mean(diff**2).sqrt(),
            mean((p.log() - g.log()) ** 2).sqrt(),
            mean((ratio < 1.25).double()),
            mean((ratio < 1.25**2).double()),
            mean((ratio < 1.25**3).double()),
        ],
        dim=1,
    )
    return errors, count


def depth_report(errors: Tensor, count: Tensor) -> dict:
    """The ``depth`` section of ``metrics.json`` from per-image errors.

    Args:
        errors: (N, 7) per-image errors (:func:`image_errors`), one row per distinct image.
        count: (N,) valid pixels per image; images with none are left out of every mean.

    Returns:
        ``{"abs_rel": ..., ..., "delta3": ..., "valid_pixels": int, "images": int}``; the
        metrics are ``None`` when no image has a valid pixel.
    """
    scored = count > 0
    report: dict = {}
    for k, name in enumerate(METRICS):
        report[name] = float(errors[scored, k].mean()) if scored.any() else None
    report["valid_pixels"] = int(count[scored].sum())
    report["images"] = int(scored.sum())
    return report


class DepthMetric(IndexedMetric):
    """Accumulates per-image depth errors over an epoch, synchronised across processes.

    Only 9 numbers per image are kept (no depth maps), keyed by the dataset index, so the
    duplicates a distributed sampler adds to even out processes count once, and memory does not
    grow with the image size.

    Args:
        min_depth: Lower cap (see :func:`image_errors`).
        max_depth: Upper cap.
    """

    def __init__(
        self,
        min_depth: float = DEFAULT_MIN_DEPTH,
        max_depth: float = DEFAULT_MAX_DEPTH,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0.0 <= min_depth < max_depth:
            raise ValueError(
                f"depth cap needs 0 <= min_depth < max_depth, got {min_depth}, {max_depth}"
            )
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        # Flat 1-D states: torchmetrics gathers them across processes without shape games.
        self.add_state("count", default=[], dist_reduce_fx="cat")
        self.add_state("errors", default=[], dist_reduce_fx="cat")

    def update(self, pred: Tensor, target: Tensor | None, index: Tensor) -> None:
        """Add one batch.

        Args:
            pred: (B, 1, H, W) predicted metres.
            target: Ground truth of the same shape (0 = invalid), or ``None`` when no image of
                the batch has depth (its images are recorded with no valid pixel).
            index: (B,) dataset index of each image.
        """
        if target is None:
            device = pred.device if pred.device.type != "mps" else torch.device("cpu")
            errors = torch.zeros(len(index), len(METRICS), dtype=torch.float64, device=device)
            count = torch.zeros(len(index), dtype=torch.long, device=device)
        else:
            errors, count = image_errors(pred, target, self.min_depth, self.max_depth)
        self.add_index(index, count.device)
        self.count.append(count)
        self.errors.append(errors.reshape(-1))

    def compute(self) -> tuple[Tensor, Tensor]:
        """Deduplicated ``(errors (N, 7), count (N,))`` of all processes, by dataset index."""
        first = self.first_rows()
        errors = cat_state(self.errors).reshape(-1, len(METRICS))
        return errors[first], cat_state(self.count)[first]

    def report(self) -> dict:
        """:func:`depth_report` over everything accumulated (all processes)."""
        if not self.update_called:
            return depth_report(torch.zeros(0, len(METRICS)), torch.zeros(0, dtype=torch.long))
        errors, count = self.compute()
        return depth_report(errors.cpu(), count.cpu())
