"""2D detection (FCOS) on the shared trunk, trained from partially labelled boxes.

The partial-label rules of the loss (the metric follows the same ones):

- An image whose ``boxes`` are ``None`` (not annotated for boxes) contributes nothing.
- On an image where class c's presence is ``?`` (-1), c is not annotated: locations are not
  pushed towards background for c (the negative classification entries of c on that image are
  masked out), while the annotated classes train as usual. Boxes of c that are given stay
  positives: a box is a statement that an object is there, even if others may be missing.
- Locations inside an ignore region (crowd, DontCare) are not negatives for any class.

Masked entries are removed with ``torch.where``, so their gradient is exactly zero. The loss is
normalised, as in torchvision's FCOS, by the number of positive locations in the batch (at
least 1); masking removes only negative entries, which do not enter that count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxLinearCoder
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from drivemtl.data.batch import Batch
from drivemtl.evaluation.inputs import EvaluationInputs, TaskEvaluation
from drivemtl.metrics.detection import DEFAULT_SCORE_THRESHOLD, DetectionMetric, ImageBoxes
from drivemtl.models.fcos import (
    GROUP_NORM_GROUPS,
    TRUNK_LEVELS,
    FCOSDetectionHead,
    assign_targets,
    check_levels,
    make_locations,
    postprocess,
)
from drivemtl.reporting import cell, fixed_width, markdown_table, per_class_rows
from drivemtl.tasks.base import Task, register_task

DETECTION_DEFINITIONS = """\
## Detection definitions

- Only images whose manifest entry has `boxes` count (`boxes: null` is not annotated); on an
  image where a class is `?`, its predicted and true boxes are left out (`images` counts the
  images where the class is annotated). Ignore regions (crowds, DontCare) are COCO crowd
  boxes: a detection covering one is neither right nor wrong.
- **ap50**, **ap**: COCO average precision (101-point interpolated) at IoU 0.5 and averaged
  over IoU 0.50:0.05:0.95, from every listed box (torchmetrics `MeanAveragePrecision`,
  faster-coco-eval backend); **map50** and **map** average them over the classes with ground
  truth. `null` for a class without ground truth.
- **precision**, **recall**, **f1**: boxes scoring at least the score threshold (the producing
  run's operating point, `run.json`), matched one to one at IoU >= 0.5, best score first.
  Precision is `null` without such a box, recall and F1 without ground truth.
"""

DETECTION_COLUMNS = (
    "ap50",
    "ap",
    "precision",
    "recall",
    "f1",
    "ground_truth",
    "detections",
    "images",
)
"""The per-class columns of detection tables, in order."""

BOX_TOLERANCE_PX = 0.5
BOX_SCORE_SLACK = 1e-3
"""An exported file's boxes: coordinates within 0.5 px of the eager model's; a box within 1e-3
of ``min_score`` may be missing from either."""

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


def _in_regions(points: Tensor, regions: Tensor | None) -> Tensor:
    """(L,) whether each point lies inside any of the (M, 4) regions (edges included)."""
    if regions is None or len(regions) == 0:
        return torch.zeros(len(points), dtype=torch.bool, device=points.device)
    regions = regions.to(points)
    x, y = points[:, 0:1], points[:, 1:2]
    inside = (x >= regions[:, 0]) & (x <= regions[:, 2]) & (y >= regions[:, 1])
    return (inside & (y <= regions[:, 3])).any(dim=1)


@register_task
class DetectionTask(Task):
    """FCOS-style anchor-free detection of the configured classes.

    Args:
        levels: Pyramid levels to detect on (level l: stride 2**l; 2-5 come from the trunk,
            6 and 7 are added on top). The default, strides 4-16, suits this package's small
            inputs (about 100-400 px) where distant objects are 3-15 px wide: on the synthetic
            demo, dropping the stride-4 level cut mAP@0.5 after one epoch from 0.57 to 0.03.
            For large images add 5 (and 6, 7), as torchvision's FCOS does (3-7 at 800 px).
        fpn_channels: Channels of the pyramid and the head (a multiple of 32; torchvision: 256).
        head_convs: Convolutions per tower in the head (torchvision: 4). The light defaults
            keep the stride-4 level affordable on a CPU.
        score_threshold: Operating point of the score, for precision / recall, overlays and
            the decision a user makes from ``predictions.jsonl``.
        min_score: Detections scoring below this are dropped before NMS; the rest (up to
            ``max_detections``) are kept for AP and written to ``predictions.jsonl``.
        nms_iou: IoU above which a lower-scored box of the same class is suppressed.
        max_detections: Detections kept per image after NMS.
        topk_candidates: Candidates per level before NMS.
        centre_radius: Centre-sampling radius in strides (torchvision: 1.5).
        tiny_box_fallback: Give a box that contains no location its nearest location on the
            first level, so tiny objects are learnt rather than treated as background.
    """

    name = "detection"
    monitor = "map50"
    prediction_fields = ("boxes",)
    default_strides = (4, 8, 16)  # levels (2, 3, 4)
    prediction_options = ("box_score_threshold",)
    report_title = "Detection"
    report_rank = 1
    definitions = DETECTION_DEFINITIONS
    # Beside presence (weight 1) the trunk under-served boxes and depth: weighted 3x, the shared
    # network of the README's benchmark (setup a, 3 seeds) gains on both and on Delta_m.
    loss_weight = 3.0

    @classmethod
    def evaluate_files(cls, inputs: EvaluationInputs) -> TaskEvaluation | None:
        """Predicted boxes against the manifest's (``evaluate_detection``), at the operating
        point given, else the one ``run.json`` records, else the task default."""
        from drivemtl.evaluation.detection import evaluate_detection

        threshold = inputs.options.get("box_score_threshold")
        stated = inputs.predictions.run_info.get("box_score_threshold")
        if threshold is None and isinstance(stated, (int, float)) and not isinstance(stated, bool):
            threshold = float(stated)
        found = evaluate_detection(
            inputs.predictions,
            inputs.records,
            inputs.pairs,
            inputs.classes,
            inputs.record_classes,
            inputs.named,
            threshold,
        )
        if found is None:
            return None
        matching = {
            "images_with_box_annotation": found.annotated_images,
            "images_without_predicted_boxes": len(found.without_prediction),
        }
        lists = {"images_without_predicted_boxes": found.without_prediction}
        return TaskEvaluation(found.report, matching, lists)

    @classmethod
    def evaluation_lines(cls, matching: dict, lists: dict) -> list[str]:
        from drivemtl.evaluation.report import shown_names

        lines = [
            f"Detection: {matching['images_with_box_annotation']} matched image(s) are "
            "annotated for boxes."
        ]
        count = matching["images_without_predicted_boxes"]
        if count:
            names = shown_names(lists["images_without_predicted_boxes"], count)
            lines.append(
                f"WARNING: {count} box-annotated image(s) have no predicted boxes "
                f"(not in the detection metrics): {names}"
            )
        return lines

    @classmethod
    def _footer(cls, section: dict) -> tuple[str, ...]:
        blanks = [""] * (len(DETECTION_COLUMNS) - 2)
        return ("mean", cell(section.get("map50")), cell(section.get("map")), *blanks)

    @classmethod
    def main_metrics(cls, section: dict) -> list[str]:
        """COCO mAP (IoU 0.5:0.95), stricter than the checkpoints' mAP@0.5."""
        return ["map"]

    @classmethod
    def text_table(cls, section: dict) -> str:
        """The per-class table as fixed-width text, with mAP@0.5 and mAP below."""
        rows = per_class_rows(section["per_class"], DETECTION_COLUMNS)
        threshold = cell(section.get("score_threshold"))
        return (
            "detection\n"
            + fixed_width([*rows, cls._footer(section)])
            + f"\n(precision, recall, f1 at score >= {threshold}, IoU 0.5)"
        )

    @classmethod
    def markdown(cls, section: dict) -> str:
        """The per-class detection table in Markdown, with mAP@0.5 and mAP below."""
        table = markdown_table(
            per_class_rows(section["per_class"], DETECTION_COLUMNS), cls._footer(section)
        )
        threshold = cell(section.get("score_threshold"))
        return table + f"\n\nScore threshold for precision and recall: {threshold}."

    def __init__(
        self,
        levels: Sequence[int] = (2, 3, 4),
        fpn_channels: int = 64,
        head_convs: int = 1,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        min_score: float = 0.05,
        nms_iou: float = 0.6,
        max_detections: int = 100,
        topk_candidates: int = 1000,
        centre_radius: float = 1.5,
        tiny_box_fallback: bool = True,
    ):
        self.levels = check_levels(levels)
        for option, value in (("score_threshold", score_threshold), ("min_score", min_score)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"detection {option} must be in [0, 1], got {value}")
        if min_score > score_threshold:
            raise ValueError(
                f"detection min_score ({min_score}) must not exceed score_threshold "
                f"({score_threshold}): boxes at the operating point would be dropped"
            )
        if not 0.0 < nms_iou <= 1.0:
            raise ValueError(f"detection nms_iou must be in (0, 1], got {nms_iou}")
        if max_detections < 1 or topk_candidates < 1:
            raise ValueError("detection max_detections and topk_candidates must be >= 1")
        if fpn_channels <= 0 or fpn_channels % GROUP_NORM_GROUPS:
            raise ValueError(
                f"detection fpn_channels must be a positive multiple of {GROUP_NORM_GROUPS} "
                f"(GroupNorm groups in torchvision's FCOS head), got {fpn_channels}"
            )
        if head_convs < 0:
            raise ValueError(f"detection head_convs must be >= 0, got {head_convs}")
        if centre_radius <= 0:
            raise ValueError(f"detection centre_radius must be > 0, got {centre_radius}")
        self.fpn_channels = fpn_channels
        self.head_convs = head_convs
        self.score_threshold = float(score_threshold)
        self.min_score = float(min_score)
        self.nms_iou = float(nms_iou)
        self.max_detections = int(max_detections)
        self.topk_candidates = int(topk_candidates)
        self.centre_radius = float(centre_radius)
        self.tiny_box_fallback = bool(tiny_box_fallback)
        self.strides = tuple(2**lv for lv in self.levels)
        self.box_coder = BoxLinearCoder(normalize_by_size=True)

    def build_head(self, channels: Sequence[int], classes: Sequence[str]) -> nn.Module:
        return FCOSDetectionHead(
            channels, len(classes), self.levels, self.fpn_channels, self.head_convs
        )

    def stages_read(self) -> int:
        """Up to the deepest trunk level detected on (levels 6-7 are computed from it):
        the default levels 2-4 leave the stride-32 stage to the other heads."""
        return max(lv for lv in self.levels if lv in TRUNK_LEVELS) - TRUNK_LEVELS[0] + 1

    # -- loss ----------------------------------------------------------------------------------

    def targets(self, output: dict, batch: Batch) -> dict[str, Tensor]:
        """Per-location targets and masks of a batch (see the module docstring).

        Returns:
            ``labels`` (B, L, C) 0/1 classification targets; ``valid`` (B, L, C) entries that
            enter the classification loss; ``foreground`` (B, L) positive locations; ``boxes``
            (B, L, 4) their boxes; ``fallback`` (B, L) positives from the tiny-box fallback;
            ``anchors`` (L, 4) the location boxes.
        """
        cls = output["cls_logits"]
        device = cls.device
        num_images, num_locations, num_classes = cls.shape
        anchors, strides, counts = make_locations(output["sizes"], self.strides, device)
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2
        labels = torch.zeros((num_images, num_locations, num_classes), device=device)
        valid = torch.zeros((num_images, num_locations, num_classes), dtype=torch.bool)
        valid = valid.to(device)
        foreground = torch.zeros((num_images, num_locations), dtype=torch.bool, device=device)
        fallback = torch.zeros_like(foreground)
        boxes = torch.zeros((num_images, num_locations, 4), device=device)
        for i in range(num_images):
            if batch.boxes[i] is None:
                continue  # not annotated for boxes: every entry stays masked
            gt = batch.boxes[i].to(device=device, dtype=torch.float32).reshape(-1, 4)
            gt_labels = batch.box_labels[i].to(device=device, dtype=torch.long).reshape(-1)
            matched, from_fallback = assign_targets(
                gt, anchors, strides, counts, self.centre_radius, self.tiny_box_fallback
            )
            positive = matched >= 0
            where = torch.nonzero(positive).squeeze(1)
            labels[i, where, gt_labels[matched[where]]] = 1.0
            foreground[i] = positive
            fallback[i] = from_fallback
            boxes[i, where] = gt[matched[where]]
            unknown = batch.presence[i].to(device) < 0  # (C,)
            ignored = _in_regions(centres, batch.ignore[i])  # (L,)
            masked_negative = (unknown[None, :] | ignored[:, None]) & (labels[i] == 0)
            valid[i] = ~masked_negative
        return {
            "labels": labels,
            "valid": valid,
            "foreground": foreground,
            "boxes": boxes,
            "fallback": fallback,
            "anchors": anchors,
        }

    def loss(self, output: dict, batch: Batch) -> tuple[Tensor, int]:
        """Focal + GIoU + centre-ness loss over annotated entries, and their count.

        The count is the number of (image, class) entries annotated for boxes: on images with
        box annotation, the classes that are known or have a box.
        """
        cls = output["cls_logits"].float()
        reg = output["bbox_regression"].float()
        ctr = output["bbox_ctrness"].float().squeeze(-1)
        t = self.targets(output, batch)
        fg = t["foreground"]
        num_fg = max(int(fg.sum()), 1)

        focal = sigmoid_focal_loss(
            cls, t["labels"], alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA, reduction="none"
        )
        # where(), not a product: a masked entry contributes exactly 0, gradient included.
        loss_cls = torch.where(t["valid"], focal, torch.zeros_like(focal)).sum()

        anchors = t["anchors"].expand(len(cls), -1, -1)[fg]
        gt_boxes = t["boxes"][fg]
        pred_boxes = self.box_coder.decode(reg[fg], anchors)
        loss_box = generalized_box_iou_loss(pred_boxes, gt_boxes, reduction="sum")

        # Centre-ness target: sqrt of the left/right and top/bottom balance (torchvision's);
        # a fallback location (nearest to a box too small to contain one) is the best this box
        # can get, so its target is 1.
        ltrb = self.box_coder.encode(anchors, gt_boxes).clamp(min=0)
        lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
        balance = (lr.amin(1) / lr.amax(1).clamp(min=1e-6)) * (
            tb.amin(1) / tb.amax(1).clamp(min=1e-6)
        )
        ctr_target = torch.where(t["fallback"][fg], torch.ones_like(balance), balance.sqrt())
        loss_ctr = F.binary_cross_entropy_with_logits(ctr[fg], ctr_target, reduction="sum")

        annotated = torch.tensor([b is not None for b in batch.boxes], device=cls.device)
        known = batch.presence.to(cls.device) >= 0
        has_box = torch.zeros_like(known)  # (B, C): the image has a box of that class
        for i, labels in enumerate(batch.box_labels):
            if labels is not None and len(labels):
                has_box[i, labels.to(cls.device).long()] = True
        count = int(((known | has_box) & annotated[:, None]).sum())
        return (loss_cls + loss_box + loss_ctr) / num_fg, count

    # -- metrics -------------------------------------------------------------------------------

    def detect(self, output: dict, image_size: tuple[int, int]) -> list[dict[str, Tensor]]:
        """Detections per image in input pixels (after NMS), best first."""
        return postprocess(
            output,
            self.strides,
            image_size,
            self.min_score,
            self.nms_iou,
            self.max_detections,
            self.topk_candidates,
        )

    def build_metric(self, classes: Sequence[str]) -> DetectionMetric:
        return DetectionMetric(classes, self.score_threshold)

    def update_metric(self, metric: DetectionMetric, output: dict, batch: Batch) -> None:
        annotated = [i for i, b in enumerate(batch.boxes) if b is not None]
        if not annotated:
            return
        detections = self.detect(output, tuple(batch.images.shape[-2:]))
        images = []
        for i in annotated:
            d = detections[i]
            ignore = batch.ignore[i]
            images.append(
                ImageBoxes(
                    d["boxes"],
                    d["scores"],
                    d["labels"],
                    batch.boxes[i].float().reshape(-1, 4),
                    batch.box_labels[i].long().reshape(-1),
                    batch.presence[i] >= 0,
                    d["boxes"].new_zeros((0, 4))
                    if ignore is None
                    else ignore.float().reshape(-1, 4),
                )
            )
        metric.update(images, batch.index[annotated])

    def report(self, metric: DetectionMetric, head: nn.Module, choose_thresholds: bool) -> dict:
        """The epoch's ``detection`` section. The operating point is the configured
        ``score_threshold`` (carried by the checkpoint's hyperparameters), not re-chosen on
        validation data, so ``choose_thresholds`` changes nothing here."""
        return metric.report()

    # -- prediction ----------------------------------------------------------------------------

    def run_info(self, options: Mapping[str, Any]) -> dict:
        # predictions.jsonl lists every box down to min_score (AP needs them); this operating
        # point is what overlays draw and evaluate's precision/recall use.
        chosen = options.get("box_score_threshold")
        return {"box_score_threshold": self.score_threshold if chosen is None else float(chosen)}

    def agreement(
        self, expected: Sequence[dict], actual: Sequence[dict]
    ) -> dict[str, tuple[float, float]]:
        """Boxes matched per class, best score first, to the nearest unused box of the other
        decoding: their largest coordinate difference in pixels (limit 0.5), and how many boxes
        found no partner (limit 0). A box scoring within 1e-3 of ``min_score`` may appear in
        one decoding only: a last-digit score difference can cross the cut-off."""
        gap, lonely = 0.0, 0
        for e, a in zip(expected, actual):
            unused = list(a["boxes"])
            for box in sorted(e["boxes"], key=lambda b: -b[5]):
                same = [b for b in unused if b[4] == box[4]]
                if not same:
                    lonely += box[5] > self.min_score + BOX_SCORE_SLACK
                    continue
                near = min(same, key=lambda b: max(abs(b[k] - box[k]) for k in range(4)))
                unused.remove(near)
                gap = max(gap, max(abs(near[k] - box[k]) for k in range(4)))
            lonely += sum(b[5] > self.min_score + BOX_SCORE_SLACK for b in unused)
        return {
            "boxes, max coordinate difference (px)": (gap, BOX_TOLERANCE_PX),
            "boxes without a partner": (float(lonely), 0.0),
        }

    def decode(
        self, output: dict, head: nn.Module, batch: Batch, classes: Sequence[str]
    ) -> list[dict]:
        """Boxes after NMS in original image pixels, ``[x1, y1, x2, y2, class, score]``.

        The eval transform is a plain resize, so a coordinate scales by original / input size
        along its axis. Every detection scoring ``>= min_score`` is listed (AP needs them);
        the operating point ``score_threshold`` is recorded beside the predictions.
        """
        height, width = batch.images.shape[-2:]
        rows = []
        for d, size in zip(self.detect(output, (height, width)), batch.original_sizes.tolist()):
            scale = torch.tensor([size[1] / width, size[0] / height] * 2)
            boxes = (d["boxes"].cpu() * scale).tolist()
            listed = []
            for box, c, s in zip(boxes, d["labels"].tolist(), d["scores"].tolist()):
                x1, y1, x2, y2 = (round(v, 2) for v in box)
                # A sliver thinner than the rounding is no box (and breaks x1 < x2 downstream).
                if x2 > x1 and y2 > y1:
                    listed.append([x1, y1, x2, y2, classes[int(c)], round(float(s), 6)])
            rows.append({"boxes": listed})
        return rows
