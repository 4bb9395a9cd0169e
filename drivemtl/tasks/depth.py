"""Monocular metric depth from the shared trunk, trained on sparse or dense ground truth.

Ground truth is usually LiDAR projected into the camera: a few percent of the pixels, and only
on some images. Every loss and metric here runs over valid pixels only (ground truth > 0), and
images without depth contribute nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drivemtl.data.batch import Batch
from drivemtl.data.io import DEPTH_PNG_SCALE, load_depth, save_depth_png
from drivemtl.data.pixel_labels import PixelLabel
from drivemtl.errors import DriveMTLError
from drivemtl.evaluation.inputs import EvaluationInputs, TaskEvaluation
from drivemtl.evaluation.maps import score_maps
from drivemtl.metrics.depth import DEFAULT_MAX_DEPTH, DEFAULT_MIN_DEPTH, METRICS, DepthMetric
from drivemtl.models.fpn import FPNDecoder, conv_bn_relu
from drivemtl.prediction.depth_preview import colorize_depth
from drivemtl.reporting import cell, markdown_table
from drivemtl.tasks.base import Task, register_task

DEPTH_DEFINITIONS = """\
## Depth definitions

- Per image, over its valid pixels: ground truth strictly inside the cap (default
  (0.001, 80) m; 0 = no measurement is never inside); predictions are clamped into the cap.
  Each metric is computed per image, then averaged over images with at least one valid pixel.
  With `p` the prediction and `g` the ground truth, in metres:
- **abs_rel** mean(|p - g| / g); **sq_rel** mean((p - g)^2 / g); **rmse** sqrt(mean((p - g)^2));
  **rmse_log** sqrt(mean((ln p - ln g)^2)); **delta1/2/3** fraction with
  max(p / g, g / p) < 1.25, 1.25^2, 1.25^3.
- `valid_pixels` and `images` count what was scored; metrics are `null` when no image has a
  valid pixel.
"""


def _read_depth(path: str, options: Mapping[str, Any]) -> np.ndarray:
    return load_depth(path, options.get("depth_scale", DEPTH_PNG_SCALE))


DEPTH_MAP = PixelLabel("depth", _read_depth, fill=0.0, dtype="float32", zoom_scaled=True)
"""Depth ground truth: metres (0 = no measurement), divided by a scale-crop's zoom."""


def _metres(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.1f}"


DEPTH_TOLERANCE = 1e-3
"""Largest relative depth difference an exported file may show against the eager model."""


def upsample_log(depth: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of a positive depth map in log space; returns the log-depth.

    Interpolating log-depth rather than metres keeps the ratio between neighbours, which is
    what the log loss and the relative metrics measure, and keeps the result positive.

    Args:
        depth: (B, 1, h, w) positive metres.
        size: Output (height, width).
    """
    log = torch.log(depth.float())
    if tuple(log.shape[-2:]) == tuple(size):
        return log
    return F.interpolate(
        log, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False
    )


def silog_loss(
    pred: Tensor,
    target: Tensor | None,
    lam: float = 0.85,
    sqrt: bool = False,
    l1_weight: float = 0.0,
) -> tuple[Tensor, int]:
    """Scale-invariant log loss (Eigen et al., 2014) plus an optional L1 term, valid pixels only.

    With ``g = log(pred) - log(gt)`` over the ``n_i`` valid pixels of image ``i`` and ``N`` the
    valid pixels of the batch::

        silog = sum_i [ sum_p g_ip^2 - lam * (sum_p g_ip)^2 / n_i ] / N
              = pixel-weighted mean over images of  mean(g^2) - lam * mean(g)^2
        loss  = silog (or sqrt(silog) with ``sqrt``) + l1_weight * sum |pred - gt| / N

    The mean log error is discounted per image (the scale-invariant part), and every valid
    pixel weighs the same. ``lam < 1`` keeps part of the penalty on the global scale, so the
    network still learns metric depth (``lam = 1`` would be blind to scale).

    Args:
        pred: (B, 1, h, w) positive predicted metres, at any resolution (upsampled bilinearly
            in log space to the target's).
        target: (B, 1, H, W) ground truth metres, 0 = no measurement; ``None``: no depth.
        lam: The weight of the squared-mean term (0.85 as in BTS/AdaBins; Eigen used 0.5).
        sqrt: Return ``sqrt(silog)`` (the form of BTS), whose gradient does not fade as the
            error shrinks; the square root is taken of ``max(silog, 1e-12)``.
        l1_weight: Weight of the mean absolute error in metres (0: off). It is in metres,
            so far pixels dominate it; 0.01-0.1 balances it against the log loss.

    Returns:
        The loss (0 with zero, finite gradients when no pixel is valid) and the number of
        valid pixels.
    """
    valid = None if target is None else torch.isfinite(target) & (target > 0)
    count = 0 if valid is None else int(valid.sum())
    if count == 0:
        return (pred.float() * 0.0).sum(), 0
    log_pred = upsample_log(pred, target.shape[-2:])
    # where() rather than a product: an invalid pixel can never leak a NaN or -inf into the sum.
    safe = torch.where(valid, target.float(), torch.ones_like(log_pred))
    g = torch.where(valid, log_pred - torch.log(safe), torch.zeros_like(log_pred))
    n = valid.flatten(1).sum(1)
    s1 = g.flatten(1).sum(1)
    s2 = (g * g).flatten(1).sum(1)
    silog = (s2 - lam * s1**2 / n.clamp(min=1)).sum() / count
    loss = torch.sqrt(silog.clamp(min=1e-12)) if sqrt else silog
    if l1_weight:
        l1 = torch.where(valid, (torch.exp(log_pred) - safe).abs(), torch.zeros_like(g))
        loss = loss + l1_weight * l1.sum() / count
    return loss, count


class DepthHead(FPNDecoder):
    """A light FPN-style decoder: top-down over strides 32 -> 4, one depth channel at stride 4.

    Each level is projected to ``width`` channels, the coarser map is upsampled and added, and a
    3x3 convolution mixes them; the stride-4 map then predicts a logit that is mapped into
    ``[min, max]`` metres on a log scale::

        depth = exp(log(min) + (log(max) - log(min)) * sigmoid(logit))

    so the output is always positive, bounded (no overflow in bf16 or at initialisation), and
    evenly resolved in relative terms from near to far.

    Args:
        in_channels: Channels of the backbone's feature maps, stride 4 to 32.
        width: Channels of the decoder.
        output_range: (min, max) metres the head can output.
        init_depth: Depth the untrained head outputs (the final bias is set to it).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        width: int = 64,
        output_range: tuple[float, float] = (0.1, 100.0),
        init_depth: float = 10.0,
    ):
        super().__init__(in_channels, width)
        lo, hi = output_range
        self.log_min, self.log_max = math.log(lo), math.log(hi)
        self.predict = nn.Sequential(conv_bn_relu(width, width // 2), nn.Conv2d(width // 2, 1, 1))
        fraction = (math.log(init_depth) - self.log_min) / (self.log_max - self.log_min)
        fraction = min(max(fraction, 1e-3), 1 - 1e-3)
        nn.init.constant_(self.predict[-1].bias, math.log(fraction / (1 - fraction)))

    def forward(self, features: list[Tensor]) -> Tensor:
        """(B, 1, H/4, W/4) float32 metres from the stride-4..32 feature maps."""
        x = self.merge(features)
        # float32 from here: a bf16 logit would quantise depth to about 1 %.
        logit = self.predict(x).float()
        return torch.exp(self.log_min + (self.log_max - self.log_min) * torch.sigmoid(logit))


@register_task
class DepthTask(Task):
    """Per-pixel metric depth in metres.

    Loss: :func:`silog_loss` (non-square-root form by default, ``lam = 0.85``) over the valid
    pixels at the network's input resolution; ``count`` is the number of valid pixels.
    Metrics: :class:`~drivemtl.metrics.depth.DepthMetric` (AbsRel, SqRel, RMSE, RMSE log,
    delta < 1.25 / 1.25^2 / 1.25^3, per image then averaged); the best checkpoint has the
    lowest AbsRel when depth is the first task.

    Args:
        lam: Weight of the squared-mean term of the scale-invariant log loss.
        sqrt: Use the square-root form of the scale-invariant loss.
        l1_weight: Weight of an extra L1 term in metres (0: off).
        width: Decoder channels.
        output_range: (min, max) metres the head can output.
        min_depth: Metric cap: ground truth outside (min_depth, max_depth) is not scored and
            predictions are clamped into it.
        max_depth: Upper metric cap (80 m, the KITTI convention).
    """

    name = "depth"
    monitor = "abs_rel"
    monitor_mode = "min"
    label_map = DEPTH_MAP
    report_title = "Depth"
    report_rank = 2
    definitions = DEPTH_DEFINITIONS
    # Beside presence (weight 1) the trunk under-served boxes and depth: weighted 3x, the shared
    # network of the README's benchmark (setup a, 3 seeds) gains on both and on Delta_m.
    loss_weight = 3.0

    def __init__(
        self,
        lam: float = 0.85,
        sqrt: bool = False,
        l1_weight: float = 0.0,
        width: int = 64,
        output_range: tuple[float, float] = (0.1, 100.0),
        min_depth: float = DEFAULT_MIN_DEPTH,
        max_depth: float = DEFAULT_MAX_DEPTH,
    ):
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"depth lam must be in [0, 1], got {lam}")
        if l1_weight < 0:
            raise ValueError(f"depth l1_weight must be >= 0, got {l1_weight}")
        if width < 2:
            raise ValueError(f"depth width must be >= 2, got {width}")
        lo, hi = (float(v) for v in output_range)
        if not 0 < lo < hi:
            raise ValueError(f"depth output_range must be 0 < min < max, got {list(output_range)}")
        if not 0.0 <= min_depth < max_depth:
            raise ValueError(
                f"depth cap must be 0 <= min_depth < max_depth, got {min_depth}, {max_depth}"
            )
        self.lam = lam
        self.sqrt = sqrt
        self.l1_weight = l1_weight
        self.width = width
        self.output_range = (lo, hi)
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)

    def build_head(self, channels: Sequence[int], classes: Sequence[str]) -> nn.Module:
        lo, hi = self.output_range
        init = min(max(10.0, lo), hi)
        return DepthHead(channels, self.width, self.output_range, init_depth=init)

    def loss(self, output: Tensor, batch: Batch) -> tuple[Tensor, int]:
        return silog_loss(output, batch.maps.get("depth"), self.lam, self.sqrt, self.l1_weight)

    def build_metric(self, classes: Sequence[str]) -> DepthMetric:
        return DepthMetric(self.min_depth, self.max_depth)

    def update_metric(self, metric: DepthMetric, output: Tensor, batch: Batch) -> None:
        # Scored at the network's input resolution, against the nearest-resampled ground
        # truth; ``drivemtl evaluate`` scores at the original resolution instead.
        size = batch.images.shape[-2:]
        target = batch.maps.get("depth")
        metric.update(torch.exp(upsample_log(output, size)), target, batch.index)

    def report(self, metric: DepthMetric, head: nn.Module, choose_thresholds: bool) -> dict:
        return metric.report()

    def agreement(
        self, expected: Sequence[dict], actual: Sequence[dict]
    ) -> dict[str, tuple[float, float]]:
        """Largest relative depth difference over every pixel (limit 0.1 %)."""
        gap = 0.0
        for e, a in zip(expected, actual):
            if e["depth"] is None or a["depth"] is None:
                gap = gap if e["depth"] is a["depth"] else math.inf
                continue
            ref = torch.as_tensor(e["depth"]).double()
            got = torch.as_tensor(a["depth"]).double()
            if ref.shape != got.shape:
                return {"depth, max relative difference": (math.inf, DEPTH_TOLERANCE)}
            gap = max(gap, float(((got - ref).abs() / ref.clamp(min=1e-6)).max()))
        return {"depth, max relative difference": (gap, DEPTH_TOLERANCE)}

    map_format = "PNG, metres x 256"

    @classmethod
    def measure_map(cls, value: np.ndarray) -> dict:
        valid = value[value > 0]
        return {
            "pixels": int(value.size),
            "valid": int(valid.size),
            "min_m": float(valid.min()) if valid.size else None,
            "max_m": float(valid.max()) if valid.size else None,
        }

    @classmethod
    def summarise_maps(cls, measures: list[dict]) -> dict:
        """Measured fraction per map (mean, min, max), measured pixels, depth range."""
        coverage = np.array([m["valid"] / m["pixels"] for m in measures if m["pixels"]])
        lows = [m["min_m"] for m in measures if m["min_m"] is not None]
        highs = [m["max_m"] for m in measures if m["max_m"] is not None]
        return {
            "coverage_mean": float(coverage.mean()) if len(coverage) else None,
            "coverage_min": float(coverage.min()) if len(coverage) else None,
            "coverage_max": float(coverage.max()) if len(coverage) else None,
            "valid_pixels": sum(m["valid"] for m in measures),
            "min_m": min(lows, default=None),
            "max_m": max(highs, default=None),
        }

    @classmethod
    def map_line(cls, section: dict) -> str:
        cover = section["coverage_mean"]
        if cover is None:
            return (
                f"depth: {section['decoded']} of {section['images']} map(s) decoded, none readable"
            )
        return (
            f"depth: {section['decoded']} of {section['images']} map(s) decoded, "
            f"{100 * cover:.1f}% of pixels measured on average "
            f"({100 * section['coverage_min']:.1f}-{100 * section['coverage_max']:.1f}%), "
            f"{_metres(section['min_m'])}-{_metres(section['max_m'])} m"
        )

    @classmethod
    def map_histogram(cls, measures: list[dict]) -> tuple[np.ndarray, str, str]:
        coverage = np.array([100 * m["valid"] / m["pixels"] for m in measures if m["pixels"]])
        return coverage, "measured pixels, % of the image", "depth coverage"

    @classmethod
    def evaluate_files(cls, inputs: EvaluationInputs) -> TaskEvaluation | None:
        """Predicted depth PNGs against the manifest's depth maps at the original resolution,
        with the metric of training, inside the cap given (``min_depth``, ``max_depth``); the
        manifest's 16-bit PNGs in ``depth_scale`` units per metre (predictions: metres x 256).

        Raises:
            DriveMTLError: For a bad cap or scale, unreadable maps, or a prediction whose
                size differs from its ground truth.
        """
        options = inputs.options
        low = options.get("min_depth", DEFAULT_MIN_DEPTH)
        high = options.get("max_depth", DEFAULT_MAX_DEPTH)
        scale = options.get("depth_scale", DEPTH_PNG_SCALE)
        if not 0.0 <= low < high:
            raise DriveMTLError(
                f"The depth cap needs 0 <= --min_depth < --max_depth, got {low:g}, {high:g}."
            )
        if not scale > 0:
            raise DriveMTLError(f"--depth_scale must be > 0 (units per metre), got {scale:g}.")
        metric = DepthMetric(low, high)

        def update(pred: np.ndarray, truth: np.ndarray, index: int) -> None:
            as_batch = [torch.from_numpy(pred)[None, None], torch.from_numpy(truth)[None, None]]
            metric.update(*as_batch, torch.tensor([index]))

        scored = score_maps(
            inputs,
            cls.pixel_label,
            load_depth,
            partial(load_depth, scale=scale),
            update,
            "depth map(s)",
            "Each pair needs two readable single-channel maps (uint16 PNG or .npy) of the same "
            "size: predictions at the original image size, like the ground truth.",
        )
        if scored is None:
            return None
        matching = {
            "cap_metres": [float(low), float(high)],
            "images_with_ground_truth": scored.with_truth,
            "images_without_predicted_depth": len(scored.without_prediction),
        }
        lists = {"images_without_predicted_depth": scored.without_prediction}
        return TaskEvaluation(metric.report(), matching, lists)

    @classmethod
    def evaluation_lines(cls, matching: dict, lists: dict) -> list[str]:
        from drivemtl.evaluation.report import shown_names

        lo, hi = matching["cap_metres"]
        lines = [
            f"Depth: {matching['images_with_ground_truth']} matched image(s) have ground truth, "
            f"scored within ({lo:g}, {hi:g}) m."
        ]
        count = matching["images_without_predicted_depth"]
        if count:
            names = shown_names(lists["images_without_predicted_depth"], count)
            lines.append(
                f"WARNING: {count} image(s) with depth ground truth have no predicted depth "
                f"(not in the depth metrics): {names}"
            )
        return lines

    @classmethod
    def markdown(cls, section: dict) -> str:
        """The depth metrics as a one-row Markdown table, with the counts."""
        head = (*METRICS, "valid_pixels", "images")
        return markdown_table([head, tuple(cell(section.get(k)) for k in head)])

    def save_map(self, value: np.ndarray, path: str) -> None:
        save_depth_png(_plane(np.asarray(value, dtype=np.float32)), path)

    def preview(self, value: np.ndarray) -> np.ndarray:
        return colorize_depth(_plane(np.asarray(value)))

    def decode(
        self, output: Tensor, head: nn.Module, batch: Batch, classes: Sequence[str]
    ) -> list[dict]:
        """Depth in metres at each image's original size, as a (H, W) float32 CPU tensor.

        The eval transform is a plain resize of the whole image, so resizing the map to the
        original size maps every pixel back to where it came from. An image that could not be
        read (original size 0) gets ``None``.
        """
        rows = []
        for i, (height, width) in enumerate(batch.original_sizes.tolist()):
            if height <= 0 or width <= 0:
                rows.append({"depth": None})
                continue
            log = upsample_log(output[i : i + 1], (height, width))
            rows.append({"depth": torch.exp(log)[0, 0].cpu()})
        return rows


def _plane(value: np.ndarray) -> np.ndarray:
    """The (H, W) map of a (1, H, W) or (H, W) array; unlike ``squeeze``, an image one pixel
    wide or high keeps its two axes (a 1x1 map became a scalar, a 3000x1 one a row)."""
    return value.reshape(value.shape[-2:])
