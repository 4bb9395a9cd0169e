"""Detection metrics with partial labels: COCO AP per class, precision and recall at a threshold.

One function, :func:`detection_report`, defines the numbers; the training loop (through
:class:`DetectionMetric`) and ``drivemtl evaluate`` both call it, so they agree by construction.

Partial labels, per image:

- An image without box annotation (``boxes: null``) is left out entirely.
- A class whose presence is ``?`` on an image is not annotated there: its predictions and its
  ground truth on that image are left out (a correct detection of an unlabelled object would
  otherwise count as a false positive).
- Ignore regions (crowds, DontCare) enter COCO's evaluation as ``iscrowd`` ground truth of every
  evaluated class: a detection covering one (intersection over the detection's area >= the IoU
  threshold) is neither a true nor a false positive, and nothing is missed there.

AP is COCO's (101-point interpolated precision, computed by torchmetrics'
``MeanAveragePrecision`` on the faster-coco-eval backend): ``ap50`` at IoU 0.5, ``ap`` averaged
over IoU 0.50:0.05:0.95. Precision and recall are at the operating score threshold, matching
detections to ground truth as COCO does at IoU 0.5 (best-scored detection first, each to the
unmatched box it overlaps most).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_area, box_iou

from drivemtl.metrics.indexed import IndexedMetric, cat_state

DEFAULT_SCORE_THRESHOLD = 0.5
"""The default operating point of the detection score (FCOS: sqrt(class x centre-ness)). On
the synthetic demo's validation set, of 0.3 / 0.4 / 0.5 / 0.6 it gave the best F1 averaged over
the classes (0.57 / 0.77 / 0.85 / 0.76)."""

MATCH_IOU = 0.5


def _empty_boxes() -> Tensor:
    return torch.zeros((0, 4))


def _empty_long() -> Tensor:
    return torch.zeros((0,), dtype=torch.long)


@dataclass
class ImageBoxes:
    """Detections and ground truth of one image, in the same pixel frame.

    Attributes:
        pred_boxes: (P, 4) x1, y1, x2, y2.
        pred_scores: (P,).
        pred_labels: (P,) class indices.
        gt_boxes: (G, 4).
        gt_labels: (G,) class indices.
        known: (C,) bool, whether each class is annotated on this image.
        ignore: (M, 4) regions that are neither objects nor background.
    """

    pred_boxes: Tensor = field(default_factory=_empty_boxes)
    pred_scores: Tensor = field(default_factory=lambda: torch.zeros((0,)))
    pred_labels: Tensor = field(default_factory=_empty_long)
    gt_boxes: Tensor = field(default_factory=_empty_boxes)
    gt_labels: Tensor = field(default_factory=_empty_long)
    known: Tensor = field(default_factory=lambda: torch.zeros((0,), dtype=torch.bool))
    ignore: Tensor = field(default_factory=_empty_boxes)

    def evaluated(self) -> ImageBoxes:
        """This image with every box of a class that is not annotated here removed."""
        known = self.known.bool().cpu()
        pred = known[self.pred_labels.long().cpu()] if len(self.pred_labels) else None
        gt = known[self.gt_labels.long().cpu()] if len(self.gt_labels) else None

        def take(t: Tensor, keep: Tensor | None) -> Tensor:
            return t.cpu() if keep is None else t.cpu()[keep]

        return ImageBoxes(
            take(self.pred_boxes.float(), pred),
            take(self.pred_scores.float(), pred),
            take(self.pred_labels.long(), pred),
            take(self.gt_boxes.float(), gt),
            take(self.gt_labels.long(), gt),
            known,
            self.ignore.float().cpu().reshape(-1, 4),
        )


def _coco_inputs(images: Sequence[ImageBoxes]) -> tuple[list[dict], list[dict]]:
    """torchmetrics inputs; ignore regions become crowd boxes of each evaluated class."""
    preds, targets = [], []
    for img in images:
        preds.append(
            {"boxes": img.pred_boxes, "scores": img.pred_scores, "labels": img.pred_labels}
        )
        classes = torch.nonzero(img.known).squeeze(1)
        crowd_boxes = img.ignore.repeat(len(classes), 1)
        crowd_labels = classes.repeat_interleave(len(img.ignore))
        targets.append(
            {
                "boxes": torch.cat([img.gt_boxes, crowd_boxes]),
                "labels": torch.cat([img.gt_labels, crowd_labels]),
                "iscrowd": torch.cat(
                    [torch.zeros(len(img.gt_labels)), torch.ones(len(crowd_labels))]
                ).long(),
            }
        )
    return preds, targets


def coco_ap(images: Sequence[ImageBoxes], num_classes: int) -> dict:
    """COCO AP per class and overall, from torchmetrics' ``MeanAveragePrecision``.

    Returns:
        ``{"map50", "map", "ap50": [per class], "ap": [per class]}``; ``None`` where undefined
        (a class without ground truth on any image where it is annotated).
    """
    out = {"map50": None, "map": None, "ap50": [None] * num_classes, "ap": [None] * num_classes}
    if not images:
        return out
    metric = MeanAveragePrecision(
        box_format="xyxy",
        iou_type="bbox",
        class_metrics=True,
        extended_summary=True,  # the precision array gives per-class AP at IoU 0.5
        backend="faster_coco_eval",
        sync_on_compute=False,  # DetectionMetric has gathered every process's images already
    )
    preds, targets = _coco_inputs(images)
    metric.update(preds, targets)
    result = metric.compute()
    present = [int(c) for c in result["classes"].reshape(-1).tolist()]
    if not present:
        return out
    # precision: (IoU thresholds, recall thresholds, classes, areas, max detections); area
    # "all" and 100 detections are index 0 and -1; -1 marks "no ground truth".
    precision = result["precision"][:, :, :, 0, -1]
    per_class_ap = result["map_per_class"].reshape(-1).tolist()
    for k, c in enumerate(present):
        if not 0 <= c < num_classes:
            continue
        p50 = precision[0, :, k]
        if (p50 > -1).any():
            out["ap50"][c] = float(p50[p50 > -1].mean())
        if per_class_ap[k] > -1:
            out["ap"][c] = float(per_class_ap[k])
    out["map50"] = None if float(result["map_50"]) < 0 else float(result["map_50"])
    out["map"] = None if float(result["map"]) < 0 else float(result["map"])
    return out


def match_counts(
    img: ImageBoxes, label: int, threshold: float, iou_threshold: float = MATCH_IOU
) -> tuple[int, int, int]:
    """True positives, false positives and ground-truth count of one class on one image.

    Detections scoring ``>= threshold`` are taken best first; each matches the unmatched box
    of its class it overlaps most, if the IoU is ``>= iou_threshold``; otherwise one that
    covers an ignore region (intersection over its own area ``>= iou_threshold``) is left out,
    and any other is a false positive (COCO's matching rule).
    """
    gt = img.gt_boxes[img.gt_labels == label]
    chosen = (img.pred_labels == label) & (img.pred_scores >= threshold)
    boxes, scores = img.pred_boxes[chosen], img.pred_scores[chosen]
    boxes = boxes[torch.argsort(scores, descending=True, stable=True)]
    ious = box_iou(boxes, gt) if len(gt) and len(boxes) else torch.zeros(len(boxes), len(gt))
    if len(img.ignore) and len(boxes):
        lt = torch.max(boxes[:, None, :2], img.ignore[None, :, :2])
        rb = torch.min(boxes[:, None, 2:], img.ignore[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=2)
        covered = (inter / box_area(boxes).clamp(min=1e-12)[:, None] >= iou_threshold).any(1)
    else:
        covered = torch.zeros(len(boxes), dtype=torch.bool)
    taken = torch.zeros(len(gt), dtype=torch.bool)
    tp = fp = 0
    for d in range(len(boxes)):
        overlap = ious[d].masked_fill(taken, -1.0)
        if len(gt) and float(overlap.max()) >= iou_threshold:
            taken[int(overlap.argmax())] = True
            tp += 1
        elif not covered[d]:
            fp += 1
    return tp, fp, len(gt)


def detection_report(
    images: Sequence[ImageBoxes],
    classes: Sequence[str],
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
) -> dict:
    """The ``detection`` section of ``metrics.json``.

    Args:
        images: Box-annotated images (not-annotated ones are left out by the caller).
        classes: Class names; labels index them.
        score_threshold: The operating point for precision and recall.

    Returns:
        ``{"map50", "map", "score_threshold", "images", "per_class": {name: {"ap50", "ap",
        "precision", "recall", "f1", "ground_truth", "detections", "images"}}}``; undefined
        values are ``None``: AP and recall without ground truth, precision without a detection
        at the threshold.
    """
    evaluated = [img.evaluated() for img in images]
    ap = coco_ap(evaluated, len(classes))
    per_class = {}
    for c, name in enumerate(classes):
        tp = fp = n_gt = labelled = 0
        for img in evaluated:
            if not bool(img.known[c]):
                continue
            labelled += 1
            t, f, g = match_counts(img, c, score_threshold)
            tp, fp, n_gt = tp + t, fp + f, n_gt + g
        precision = tp / (tp + fp) if tp + fp else None
        recall = tp / n_gt if n_gt else None
        f1 = 2 * tp / (2 * tp + fp + (n_gt - tp)) if n_gt else None
        per_class[name] = {
            "ap50": ap["ap50"][c],
            "ap": ap["ap"][c],
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "ground_truth": n_gt,
            "detections": tp + fp,
            "images": labelled,
        }
    return {
        "map50": ap["map50"],
        "map": ap["map"],
        "score_threshold": float(score_threshold),
        "images": len(evaluated),
        "per_class": per_class,
    }


class DetectionMetric(IndexedMetric):
    """Accumulates detections and ground truth over an epoch, synchronised across processes.

    The states are flat tensors concatenated across steps and processes, with per-image row
    counts, so each image's boxes can be cut out again after the gather. Each image carries its
    dataset index, and duplicates (the padding a distributed sampler adds to even out ranks)
    are dropped before computing, so every image counts once (:class:`IndexedMetric`).
    torchmetrics' ``MeanAveragePrecision`` cannot drop them itself (its states carry no image
    identity), so it runs once in :meth:`report` over the de-duplicated images.

    Args:
        classes: Class names.
        score_threshold: The operating point for precision and recall.
    """

    def __init__(
        self, classes: Sequence[str], score_threshold: float = DEFAULT_SCORE_THRESHOLD, **kwargs
    ):
        super().__init__(**kwargs)
        self.classes = list(classes)
        self.score_threshold = float(score_threshold)
        for name in (
            "known",
            "counts",
            "pred_boxes",
            "pred_scores",
            "pred_labels",
            "gt_boxes",
            "gt_labels",
            "ignore",
        ):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, images: Sequence[ImageBoxes], index: Tensor) -> None:
        """Add box-annotated images with their dataset indices."""
        if not images:
            return
        device = self.device
        self.add_index(index, device)
        # As integers: not every distributed backend gathers bool tensors.
        self.known.append(torch.stack([img.known.long().to(device) for img in images]))
        self.counts.append(
            torch.tensor(
                [[len(i.pred_scores), len(i.gt_labels), len(i.ignore)] for i in images],
                device=device,
            )
        )
        for name in ("pred_boxes", "pred_scores", "pred_labels", "gt_boxes", "gt_labels"):
            values = [getattr(img, name).detach().to(device) for img in images]
            getattr(self, name).append(torch.cat(values))
        ignore = [img.ignore.detach().float().reshape(-1, 4).to(device) for img in images]
        self.ignore.append(torch.cat(ignore))

    def images(self) -> list[ImageBoxes]:
        """The accumulated images, each once (first occurrence), ordered by dataset index.

        Reads the states as they are: inside :meth:`compute`, torchmetrics has gathered every
        process's states into them.
        """

        first = self.first_rows()
        if not len(first):
            return []
        known, counts = cat_state(self.known).bool(), cat_state(self.counts).long()
        preds = [cat_state(self.pred_boxes), cat_state(self.pred_scores)]
        preds.append(cat_state(self.pred_labels))
        gts = [cat_state(self.gt_boxes), cat_state(self.gt_labels)]
        ignore = cat_state(self.ignore)
        ends = counts.reshape(-1, 3).cumsum(0)
        starts = ends - counts.reshape(-1, 3)
        images = []
        for i in first.tolist():
            p = slice(int(starts[i, 0]), int(ends[i, 0]))
            g = slice(int(starts[i, 1]), int(ends[i, 1]))
            m = slice(int(starts[i, 2]), int(ends[i, 2]))
            images.append(
                ImageBoxes(
                    preds[0][p].reshape(-1, 4),
                    preds[1][p].reshape(-1),
                    preds[2][p].reshape(-1),
                    gts[0][g].reshape(-1, 4),
                    gts[1][g].reshape(-1),
                    known[i],
                    ignore[m].reshape(-1, 4),
                )
            )
        return images

    def compute(self) -> dict:
        """:func:`detection_report` over every process's images (torchmetrics syncs first).

        The report, not the images, is what leaves ``compute``: torchmetrics squeezes
        one-element tensors in its result, which would break per-image box lists.
        """
        return detection_report(self.images(), self.classes, self.score_threshold)

    def report(self) -> dict:
        """The ``detection`` section of ``metrics.json`` (see :meth:`compute`)."""
        return self.compute()
