"""Semantic segmentation: one class per pixel, trained on annotated pixels only.

Ground truth is an 8-bit PNG of indices into the task's class list, 255 = not annotated (the
``segmentation`` manifest key); an image without a mask adds nothing. The head is a light
FPN-style decoder over the shared trunk; the loss is cross-entropy over annotated pixels. One
function, :func:`confusion`, counts pixels for training, ``test`` and ``drivemtl evaluate``,
so they agree by construction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drivemtl.data.batch import Batch
from drivemtl.data.pixel_labels import IGNORE_INDEX, PixelLabel, read_class_png
from drivemtl.data.synthetic import SEGMENTATION_CLASSES
from drivemtl.errors import DriveMTLError
from drivemtl.evaluation.inputs import EvaluationInputs, TaskEvaluation
from drivemtl.evaluation.maps import MapScoring, score_maps
from drivemtl.metrics.indexed import IndexedMetric, cat_state
from drivemtl.models.fpn import FPNDecoder, conv_bn_relu
from drivemtl.tasks.base import Task, register_task

SEGMENTATION_MAP = PixelLabel("segmentation", read_class_png, fill=IGNORE_INDEX, dtype="int64")
"""Segmentation ground truth: an 8-bit PNG of class indices, 255 = not annotated."""

PIXEL_TOLERANCE = 1e-3
"""Largest fraction of pixels whose class an exported file may change against the eager model."""

# Cityscapes' colours for the classes they share; others from a fixed list.
_NAMED_COLOURS = {
    "road": (128, 64, 128),
    "lane_marking": (255, 255, 255),
    "sidewalk": (244, 35, 232),
    "roadside": (152, 251, 152),
    "building": (70, 70, 70),
    "vegetation": (107, 142, 35),
    "terrain": (152, 251, 152),
    "sky": (70, 130, 180),
    "vehicle": (0, 0, 142),
    "car": (0, 0, 142),
    "pedestrian": (220, 20, 60),
    "person": (220, 20, 60),
    "sign": (220, 220, 0),
    "traffic_sign": (220, 220, 0),
    "traffic_light": (250, 170, 30),
    "pole": (153, 153, 153),
}
_OTHER_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180)]


def palette(classes: Sequence[str]) -> np.ndarray:
    """(256, 3) uint8 colours by class index; index 255 (not annotated) is black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    for i, name in enumerate(classes):
        table[i] = _NAMED_COLOURS.get(name, _OTHER_COLOURS[i % len(_OTHER_COLOURS)])
    return table


def confusion(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Per-image confusion matrices over annotated pixels.

    Args:
        pred: (B, H, W) predicted class indices.
        target: (B, H, W) true class indices; 255 (or any index outside the classes) is not
            annotated and not counted.
        num_classes: K.

    Returns:
        (B, K, K) long: ``[b, t, p]`` pixels of true class ``t`` predicted as ``p``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    b, k = pred.shape[0], num_classes
    t = target.reshape(b, -1).long()
    # Predictions are arg maxes (always classes); evaluate checks files before they get here.
    p = pred.reshape(b, -1).long().clamp(0, k - 1)
    valid = (t >= 0) & (t < k)
    cell = torch.where(valid, t * k + p, torch.full_like(t, k * k))  # k*k: a bin thrown away
    offset = torch.arange(b, device=t.device)[:, None] * (k * k + 1)
    counts = torch.bincount((cell + offset).reshape(-1), minlength=b * (k * k + 1))
    return counts.reshape(b, k * k + 1)[:, : k * k].reshape(b, k, k)


def segmentation_report(matrix: Tensor, images: int, classes: Sequence[str]) -> dict:
    """The ``segmentation`` section of ``metrics.json`` from a summed confusion matrix.

    IoU of class c = TP / (TP + FP + FN); it is ``None`` for a class without ground-truth
    pixels (undefined, as in the Cityscapes protocol's per-image-set sense), and ``miou`` is the
    mean over classes with ground-truth pixels. Pixel accuracy: correct / annotated pixels.
    """
    m = matrix.double()
    tp = m.diag()
    truth = m.sum(1)
    predicted = m.sum(0)
    union = truth + predicted - tp
    per_class = {}
    ious = []
    for c, name in enumerate(classes):
        iou = float(tp[c] / union[c]) if truth[c] > 0 else None
        if iou is not None:
            ious.append(iou)
        per_class[name] = {"iou": iou, "pixels": int(truth[c])}
    total = float(truth.sum())
    return {
        "miou": float(np.mean(ious)) if ious else None,
        "pixel_accuracy": float(tp.sum() / total) if total else None,
        "labelled_pixels": int(total),
        "images": int(images),
        "per_class": per_class,
    }


class SegmentationMetric(IndexedMetric):
    """Per-image confusion matrices over an epoch, each image counted once (by dataset index).

    Args:
        classes: The task's class list (K classes: K x K numbers per image).
    """

    def __init__(self, classes: Sequence[str], **kwargs):
        super().__init__(**kwargs)
        self.classes = list(classes)
        self.add_state("matrices", default=[], dist_reduce_fx="cat")

    def update(self, pred: Tensor, target: Tensor | None, index: Tensor) -> None:
        """Add one batch: (B, H, W) predicted and true class indices (``None``: no masks)."""
        k = len(self.classes)
        if target is None:
            matrices = torch.zeros(len(index), k, k, dtype=torch.long, device=pred.device)
        else:
            matrices = confusion(pred, target, k)
        self.add_index(index, matrices.device)
        self.matrices.append(matrices.reshape(-1))

    def compute(self) -> Tensor:
        """(N, K, K) deduplicated per-image matrices of all processes."""
        k = len(self.classes)
        if not self.update_called:
            return torch.zeros(0, k, k, dtype=torch.long)
        return cat_state(self.matrices).reshape(-1, k, k)[self.first_rows()]

    def report(self) -> dict:
        """:func:`segmentation_report` over every image with an annotated pixel."""
        matrices = self.compute().cpu()
        k = len(self.classes)
        annotated = matrices.reshape(-1, k * k).sum(1) > 0
        return segmentation_report(matrices.sum(0), int(annotated.sum()), self.classes)


class SegmentationHead(FPNDecoder):
    """FPN decoder, then a 3x3 block and a 1x1 classifier: (B, K, H/4, W/4) float32 logits."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, width: int = 64):
        super().__init__(in_channels, width)
        self.predict = nn.Sequential(conv_bn_relu(width, width), nn.Conv2d(width, num_classes, 1))

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.predict(self.merge(features)).float()


def upsample_logits(logits: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of class logits to ``size`` (height, width)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    size = tuple(int(s) for s in size)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


@register_task
class SegmentationTask(Task):
    """Per-pixel classes over the shared trunk.

    Loss: cross-entropy over annotated pixels (255 and images without a mask are left out),
    at the network's input resolution (logits upsampled bilinearly); ``count`` is the number of
    annotated pixels. Metrics: per-class IoU, mean IoU over classes with ground truth, pixel
    accuracy. The best checkpoint has the highest mean IoU when segmentation is the first task.

    Args:
        classes: Class names, in the index order of the masks (default: the synthetic set's).
        width: Decoder channels.
        class_weights: Optional weight per class for the cross-entropy (rare thin classes).
    """

    name = "segmentation"
    monitor = "miou"
    monitor_mode = "max"
    label_map = SEGMENTATION_MAP
    map_format = "PNG, class indices"

    @classmethod
    def measure_map(cls, value: np.ndarray) -> dict:
        counts = np.bincount(value.ravel(), minlength=IGNORE_INDEX + 1)
        return {
            "pixels": int(value.size),
            "counts": {int(i): int(counts[i]) for i in np.flatnonzero(counts[:IGNORE_INDEX])},
        }

    @classmethod
    def summarise_maps(cls, measures: list[dict]) -> dict:
        """Annotated fraction per mask (mean), annotated pixels per class index."""
        annotated = [sum(m["counts"].values()) / m["pixels"] for m in measures if m["pixels"]]
        per_index: dict[int, int] = {}
        for m in measures:
            for index, count in m["counts"].items():
                per_index[index] = per_index.get(index, 0) + count
        return {
            "annotated_mean": float(np.mean(annotated)) if annotated else None,
            "pixels_per_index": {str(i): per_index[i] for i in sorted(per_index)},
        }

    @classmethod
    def map_line(cls, section: dict) -> str:
        line = f"segmentation: {section['decoded']} of {section['images']} mask(s) decoded"
        if section["annotated_mean"] is None:
            return line + ", none readable"
        indices = [int(i) for i in section["pixels_per_index"]]
        seen = f"class indices {min(indices)}-{max(indices)} seen" if indices else "no class"
        return line + f", {100 * section['annotated_mean']:.1f}% of pixels annotated, {seen}"

    @classmethod
    def map_histogram(cls, measures: list[dict]) -> tuple[np.ndarray, str, str]:
        values = [100 * sum(m["counts"].values()) / m["pixels"] for m in measures if m["pixels"]]
        return np.array(values), "annotated pixels, % of the image", "segmentation masks"

    @classmethod
    def evaluate_files(cls, inputs: EvaluationInputs) -> TaskEvaluation | None:
        """Predicted masks against the manifest's (:func:`evaluate_segmentation`), in the class
        list ``run.json`` records (else the default one)."""
        stated = inputs.predictions.run_info.get("segmentation_classes")
        classes = stated if isinstance(stated, list) else list(SEGMENTATION_CLASSES)
        found = evaluate_segmentation(inputs, cls.pixel_label, classes)
        if found is None:
            return None
        report, scored = found
        matching = {
            "classes": classes,
            "classes_from": "run.json" if isinstance(stated, list) else "default",
            "images_with_mask": scored.with_truth,
            "images_without_predicted_mask": len(scored.without_prediction),
        }
        lists = {"images_without_predicted_mask": scored.without_prediction}
        return TaskEvaluation(report, matching, lists)

    @classmethod
    def evaluation_lines(cls, matching: dict, lists: dict) -> list[str]:
        from drivemtl.evaluation.report import shown_names

        source = "run.json" if matching["classes_from"] == "run.json" else "the default list"
        lines = [
            f"Segmentation: {matching['images_with_mask']} matched image(s) have a mask; "
            f"classes from {source}."
        ]
        count = matching["images_without_predicted_mask"]
        if count:
            names = shown_names(lists["images_without_predicted_mask"], count)
            lines.append(
                f"WARNING: {count} image(s) with a true mask have no predicted mask "
                f"(not in the segmentation metrics): {names}"
            )
        return lines

    def __init__(
        self,
        classes: list[str] | None = None,
        width: int = 64,
        class_weights: list[float] | None = None,
    ):
        if isinstance(classes, str) or not all(isinstance(c, str) for c in classes or ()):
            raise ValueError(f"segmentation classes must be a list of names, got {classes!r}")
        classes = list(SEGMENTATION_CLASSES if classes is None else classes)
        if not classes or len(set(classes)) != len(classes) or len(classes) >= IGNORE_INDEX:
            raise ValueError(
                f"segmentation classes must be 1 to {IGNORE_INDEX - 1} unique names, got {classes}"
            )
        if width < 2:
            raise ValueError(f"segmentation width must be >= 2, got {width}")
        if class_weights is not None and (
            len(class_weights) != len(classes)
            or not all(math.isfinite(w) and w >= 0 for w in class_weights)
        ):
            raise ValueError(
                f"segmentation class_weights needs one weight >= 0 per class ({len(classes)}), "
                f"got {class_weights}"
            )
        self.classes = classes
        self.width = width
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def build_head(self, channels: Sequence[int], classes: Sequence[str]) -> nn.Module:
        return SegmentationHead(channels, len(self.classes), self.width)

    @staticmethod
    def _target(batch: Batch) -> Tensor | None:
        target = batch.maps.get("segmentation")
        return None if target is None else target[:, 0]

    def loss(self, output: Tensor, batch: Batch) -> tuple[Tensor, int]:
        target = self._target(batch)
        if target is not None:
            self._check_indices(target, batch)
        count = 0 if target is None else int((target != IGNORE_INDEX).sum())
        if count == 0:
            return (output.float() * 0.0).sum(), 0
        logits = upsample_logits(output.float(), target.shape[-2:])
        weight = None
        if self.class_weights is not None:
            weight = torch.tensor(self.class_weights, device=logits.device)
        total = F.cross_entropy(
            logits, target, weight=weight, ignore_index=IGNORE_INDEX, reduction="sum"
        )
        if weight is None:
            return total / count, count
        # The weighted mean, as cross_entropy's own "mean" reduction defines it.
        labelled = target[target != IGNORE_INDEX]
        return total / weight[labelled].sum().clamp(min=1e-12), count

    def _check_indices(self, target: Tensor, batch: Batch) -> None:
        """A mask index that is neither a class nor 255 is a mask made for another class list."""
        bad = (target >= len(self.classes)) & (target != IGNORE_INDEX)
        if bool(bad.any()):
            i = int(bad.flatten(1).any(1).nonzero()[0])
            value = int(target[i][bad[i]][0])
            raise DriveMTLError(
                f"{batch.paths[i]}: its segmentation mask holds class index {value}, but "
                f"model.tasks.segmentation.classes has {len(self.classes)} classes "
                f"{self.classes}; masks index into that list (255 = not annotated). Give the "
                "class list the masks were made with."
            )

    def build_metric(self, classes: Sequence[str]) -> SegmentationMetric:
        return SegmentationMetric(self.classes)

    def update_metric(self, metric: SegmentationMetric, output: Tensor, batch: Batch) -> None:
        # Scored at the network's input resolution, against the nearest-resampled masks;
        # ``drivemtl evaluate`` scores at the original resolution instead.
        size = batch.images.shape[-2:]
        pred = upsample_logits(output, size).argmax(1)
        metric.update(pred, self._target(batch), batch.index)

    def report(self, metric: SegmentationMetric, head: nn.Module, choose_thresholds: bool) -> dict:
        return metric.report()

    def decode(
        self, output: Tensor, head: nn.Module, batch: Batch, classes: Sequence[str]
    ) -> list[dict]:
        """Class indices (uint8 (H, W) array) at each image's original size; ``None`` for an
        image that could not be read."""
        rows = []
        for i, (height, width) in enumerate(batch.original_sizes.tolist()):
            if height <= 0 or width <= 0:
                rows.append({"segmentation": None})
                continue
            logits = upsample_logits(output[i : i + 1].float(), (height, width))
            rows.append({"segmentation": logits.argmax(1)[0].to(torch.uint8).cpu().numpy()})
        return rows

    def agreement(
        self, expected: Sequence[dict], actual: Sequence[dict]
    ) -> dict[str, tuple[float, float]]:
        """Fraction of pixels whose class differs (limit 0.1 %)."""
        differ, total = 0, 0
        for e, a in zip(expected, actual):
            ref, got = e["segmentation"], a["segmentation"]
            if ref is None or got is None or np.shape(ref) != np.shape(got):
                if ref is not got:
                    return {"segmentation, pixels of another class": (math.inf, PIXEL_TOLERANCE)}
                continue
            differ += int((np.asarray(ref) != np.asarray(got)).sum())
            total += np.size(ref)
        fraction = differ / total if total else 0.0
        return {"segmentation, pixels of another class": (fraction, PIXEL_TOLERANCE)}

    def pixel_label_options(self) -> dict:
        return {"num_classes": len(self.classes)}

    def run_info(self, options: Mapping[str, Any]) -> dict:
        return {"segmentation_classes": list(self.classes)}

    def save_map(self, value: np.ndarray, path: str) -> None:
        import cv2

        done, encoded = cv2.imencode(".png", np.asarray(value, dtype=np.uint8))
        if not done:
            raise OSError(f"could not encode the segmentation mask for {path}")
        Path(path).write_bytes(encoded.tobytes())

    def preview(self, value: np.ndarray) -> np.ndarray:
        return palette(self.classes)[np.asarray(value, dtype=np.uint8)]

    def draw_overlay(self, picture: np.ndarray, value: np.ndarray) -> np.ndarray:
        """The mask's colours blended half and half over the picture."""
        colours = self.preview(value)
        if colours.shape[:2] != picture.shape[:2]:
            return picture  # a picture of another size (never from predict): leave it
        blend = (picture.astype(np.uint16) + colours.astype(np.uint16)) // 2
        return blend.astype(np.uint8)


def evaluate_segmentation(
    inputs: EvaluationInputs, key: str, classes: Sequence[str]
) -> tuple[dict, MapScoring] | None:
    """Score predicted masks (the rows' ``key`` paths) against the manifest's, at the original
    resolution, with the metric of training.

    Returns:
        The ``segmentation`` report and what was scored; ``None`` when no matched entry has a
        mask or no prediction has one.

    Raises:
        DriveMTLError: For unreadable masks or a size mismatch (up to 20 listed).
    """
    metric = SegmentationMetric(classes)
    limit = {"num_classes": len(classes)}

    def read_prediction(path: str) -> np.ndarray:
        pred = read_class_png(path, limit)
        if (pred == IGNORE_INDEX).any():
            raise ValueError("holds 255 (not annotated): a prediction gives every pixel a class")
        return pred

    def update(pred: np.ndarray, truth: np.ndarray, index: int) -> None:
        as_batch = [torch.from_numpy(m.astype(np.int64))[None] for m in (pred, truth)]
        metric.update(*as_batch, torch.tensor([index]))

    scored = score_maps(
        inputs,
        key,
        read_prediction,
        partial(read_class_png, options=limit),
        update,
        "segmentation mask(s)",
        "Each pair needs two single-channel 8-bit PNGs of class indices of the same size.",
    )
    return None if scored is None else (metric.report(), scored)
