"""An FCOS detector head on the shared trunk: feature pyramid, torchvision's FCOS head, and the
anchor-free pieces torchvision keeps inside its own ``FCOS`` model (locations, target
assignment, post-processing), rewritten only where the shared trunk and partial labels need it.

Reused from torchvision: :class:`~torchvision.ops.FeaturePyramidNetwork` (+ ``LastLevelP6P7``),
:class:`~torchvision.models.detection.fcos.FCOSHead` (classification, regression and centre-ness
towers), ``BoxLinearCoder``, ``batched_nms`` and the box ops. Written here:

- :func:`make_locations`: one location per feature-map cell, at the cell centre.
- :func:`assign_targets`: ``torchvision.models.detection.FCOS.compute_loss``'s rule (centre
  sampling, one scale range per level, the smallest box wins), plus a fallback for boxes that
  contain no location at all (see there).
- :func:`postprocess`: ``FCOS.postprocess_detections`` for the batched output layout.

The loss with its partial-label masks lives in :mod:`drivemtl.tasks.detection`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxLinearCoder
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops import (
    FeaturePyramidNetwork,
    batched_nms,
    clip_boxes_to_image,
    remove_small_boxes,
)
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

TRUNK_LEVELS = (2, 3, 4, 5)
"""Pyramid levels of the trunk's four stages (stride ``2 ** level``: 4, 8, 16, 32)."""

GROUP_NORM_GROUPS = 32
"""torchvision's FCOS towers use ``GroupNorm(32, channels)``."""

MIN_BOX_SIZE = 1.0
"""Smallest side of a detection, in network-input pixels."""


def check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    """Validate pyramid levels: consecutive, from the trunk's levels 2-5, optionally up to 7.

    Levels 6 and 7 come from torchvision's ``LastLevelP6P7``, which makes both at once; a P7
    that no level uses would hold parameters without gradients, which DDP refuses.

    Raises:
        ValueError: With the rule that was broken.
    """
    levels = tuple(int(v) for v in levels)
    if not levels:
        raise ValueError("detection levels must name at least one pyramid level (2 to 7)")
    if list(levels) != list(range(levels[0], levels[0] + len(levels))):
        raise ValueError(f"detection levels must be consecutive and ascending, got {list(levels)}")
    if levels[0] not in TRUNK_LEVELS:
        raise ValueError(
            f"detection levels must start at a trunk level (2, 3, 4 or 5; stride 4 to 32), "
            f"got {list(levels)}"
        )
    if levels[-1] > 5 and levels[-1] != 7:
        raise ValueError(
            f"detection levels above 5 come as the pair 6, 7 (torchvision's LastLevelP6P7), "
            f"got {list(levels)}"
        )
    return levels


class FCOSDetectionHead(nn.Module):
    """Feature pyramid over the trunk's stages and torchvision's FCOS head over the pyramid.

    Args:
        in_channels: Channels of the trunk's four stages (stride 4 to 32).
        num_classes: Number of object classes (sigmoid outputs, no background class).
        levels: Pyramid levels to detect on (level ``l`` has stride ``2 ** l``).
        channels: Channels of the pyramid and of the head's towers (a multiple of 32).
        num_convs: Convolutions in each tower (torchvision: 4).

    Returns from ``forward``: ``{"cls_logits": (B, L, C), "bbox_regression": (B, L, 4),
    "bbox_ctrness": (B, L, 1), "sizes": [(h, w) per level]}``, locations ordered level by level,
    row-major within a level (as :func:`make_locations` orders them).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        levels: Sequence[int] = (2, 3, 4),
        channels: int = 64,
        num_convs: int = 1,
    ):
        super().__init__()
        self.levels = check_levels(levels)
        if channels <= 0 or channels % GROUP_NORM_GROUPS:
            raise ValueError(
                f"detection fpn_channels must be a positive multiple of {GROUP_NORM_GROUPS} "
                f"(GroupNorm groups in torchvision's FCOS head), got {channels}"
            )
        if num_convs < 0:
            raise ValueError(f"detection head_convs must be >= 0, got {num_convs}")
        self.trunk_levels = [lv for lv in self.levels if lv in TRUNK_LEVELS]
        extra = LastLevelP6P7(channels, channels) if self.levels[-1] == 7 else None
        self.fpn = FeaturePyramidNetwork(
            [in_channels[lv - TRUNK_LEVELS[0]] for lv in self.trunk_levels], channels, extra
        )
        self.head = FCOSHead(channels, 1, num_classes, num_convs)

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(2**lv for lv in self.levels)

    def forward(self, features: list[Tensor]) -> dict:
        inputs = OrderedDict((f"p{lv}", features[lv - TRUNK_LEVELS[0]]) for lv in self.trunk_levels)
        pyramid = list(self.fpn(inputs).values())
        out = self.head(pyramid)
        out["sizes"] = [tuple(p.shape[-2:]) for p in pyramid]
        return out


def location_centres(cells: int, stride: int, device: torch.device | None = None) -> Tensor:
    """Input-pixel coordinates of the cell centres along one axis of a stride-``stride`` map."""
    return (torch.arange(cells, device=device, dtype=torch.float32) + 0.5) * stride


def boxes_without_centre(boxes: Tensor, image_size: tuple[int, int], stride: int) -> Tensor:
    """Which boxes contain no location centre of the stride-``stride`` map.

    :func:`assign_targets` makes a location a candidate only when its centre lies strictly
    inside the box; such boxes train only through its ``tiny_box_fallback``. The grid is a
    product of two axes, so the test runs per axis (cheap for any number of boxes).

    Args:
        boxes: (M, 4) boxes (x1, y1, x2, y2) in network-input pixels.
        image_size: Network input (height, width); a map has ``ceil(side / stride)`` cells.
        stride: The level's stride.

    Returns:
        (M,) bool.
    """
    height, width = image_size
    boxes = boxes.float()
    xs = location_centres(math.ceil(width / stride), stride, boxes.device)
    ys = location_centres(math.ceil(height / stride), stride, boxes.device)
    in_x = ((xs[None] > boxes[:, 0:1]) & (xs[None] < boxes[:, 2:3])).any(dim=1)
    in_y = ((ys[None] > boxes[:, 1:2]) & (ys[None] < boxes[:, 3:4])).any(dim=1)
    return ~(in_x & in_y)


def make_locations(
    sizes: Sequence[tuple[int, int]], strides: Sequence[int], device: torch.device | None = None
) -> tuple[Tensor, Tensor, list[int]]:
    """Locations of every feature-map cell, as stride-sized boxes around the cell centres.

    The cell ``(y, x)`` of a stride-``s`` map looks at ``((x + 0.5) s, (y + 0.5) s)`` in input
    pixels (the FCOS paper's ``s // 2 + x s``). ``BoxLinearCoder(normalize_by_size=True)``
    divides distances by the box size, i.e. by the stride, as torchvision's FCOS does.

    Returns:
        ``(anchors (L, 4), stride per location (L,), locations per level)``.
    """
    anchors, location_strides, counts = [], [], []
    for (h, w), s in zip(sizes, strides):
        ys, xs = location_centres(h, s, device), location_centres(w, s, device)
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)
        anchors.append(torch.cat([centres - s / 2, centres + s / 2], dim=1))
        location_strides.append(torch.full((h * w,), float(s), device=device))
        counts.append(h * w)
    return torch.cat(anchors), torch.cat(location_strides), counts


def assign_targets(
    boxes: Tensor,
    anchors: Tensor,
    strides: Tensor,
    counts: Sequence[int],
    centre_radius: float = 1.5,
    tiny_box_fallback: bool = True,
) -> tuple[Tensor, Tensor]:
    """FCOS target assignment for one image: which box each location regresses, if any.

    The rule of ``torchvision.models.detection.FCOS.compute_loss``: a location is a candidate
    for a box when it lies inside the box, within ``centre_radius`` strides of its centre, and
    the largest of its four distances to the box edges falls in its level's range (4 to 8
    strides; the first level from 0, the last without limit); among several boxes the smallest
    one wins.

    The fallback (``tiny_box_fallback``): a box narrower than the stride can lie between
    location centres and would never get a positive location, so the model would learn it as
    background. Driving scenes are full of such boxes (distant pedestrians, traffic lights a
    few pixels wide). Each box without a candidate takes the location of the first level
    nearest to its centre (still subject to the smallest-box rule).

    Args:
        boxes: (M, 4) ground-truth boxes (x1, y1, x2, y2) in input pixels.
        anchors: (L, 4) location boxes from :func:`make_locations`.
        strides: (L,) stride of each location.
        counts: Locations per level.
        centre_radius: Centre-sampling radius in strides.
        tiny_box_fallback: Give boxes without a candidate their nearest location.

    Returns:
        ``(matched (L,), fallback (L,))``: the index of the box each location is positive for
        (-1: background), and whether that match came from the fallback.
    """
    num_locations = anchors.shape[0]
    matched = torch.full((num_locations,), -1, dtype=torch.long, device=anchors.device)
    fallback = torch.zeros(num_locations, dtype=torch.bool, device=anchors.device)
    if boxes.numel() == 0:
        return matched, fallback
    boxes = boxes.to(anchors)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    box_centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    candidate = (centres[:, None, :] - box_centres[None]).abs().amax(dim=2) < (
        centre_radius * strides[:, None]
    )
    x, y = centres[:, 0:1], centres[:, 1:2]
    dist = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], 2)
    candidate &= dist.amin(dim=2) > 0
    lower = strides * 4
    lower[: counts[0]] = 0
    upper = strides * 8
    upper[-counts[-1] :] = math.inf
    reach = dist.amax(dim=2)
    candidate &= (reach > lower[:, None]) & (reach < upper[:, None])

    orphans = ~candidate.any(dim=0)
    if tiny_box_fallback and orphans.any():
        first = centres[: counts[0]]
        gap = torch.cdist(first, box_centres[orphans])  # (L0, orphans)
        nearest = gap.argmin(dim=0)
        candidate[nearest, torch.nonzero(orphans).squeeze(1)] = True

    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    smallest, index = torch.where(candidate, areas[None], math.inf).min(dim=1)
    found = torch.isfinite(smallest)
    matched[found] = index[found]
    if tiny_box_fallback:
        fallback = found & orphans[index]
    return matched, fallback


def postprocess(
    output: dict,
    strides: Sequence[int],
    image_size: tuple[int, int],
    min_score: float = 0.05,
    nms_iou: float = 0.6,
    max_detections: int = 100,
    topk_candidates: int = 1000,
) -> list[dict[str, Tensor]]:
    """Detections per image in input pixels, as ``FCOS.postprocess_detections`` makes them.

    Score = sqrt(sigmoid(class logit) x sigmoid(centre-ness)); per level the best
    ``topk_candidates`` scores above ``min_score``; boxes clipped to the image; boxes under
    ``MIN_BOX_SIZE`` input pixels wide or high dropped; per-class NMS;
    the best ``max_detections``.

    Returns:
        One ``{"boxes": (D, 4), "scores": (D,), "labels": (D,)}`` per image, best first.
    """
    coder = BoxLinearCoder(normalize_by_size=True)
    cls = output["cls_logits"].detach().float()
    reg = output["bbox_regression"].detach().float()
    ctr = output["bbox_ctrness"].detach().float()
    anchors, _, counts = make_locations(output["sizes"], strides, cls.device)
    num_classes = cls.shape[-1]
    scores_all = torch.sqrt(torch.sigmoid(cls) * torch.sigmoid(ctr))  # (B, L, C)
    results = []
    for i in range(cls.shape[0]):
        boxes, scores, labels = [], [], []
        start = 0
        for count in counts:
            level = slice(start, start + count)
            start += count
            flat = scores_all[i, level].reshape(-1)
            keep = torch.nonzero(flat > min_score).squeeze(1)
            if keep.numel() > topk_candidates:
                keep = keep[flat[keep].topk(topk_candidates).indices]
            location = keep // num_classes + level.start
            boxes.append(coder.decode(reg[i, location], anchors[location]))
            scores.append(flat[keep])
            labels.append(keep % num_classes)
        boxes = clip_boxes_to_image(torch.cat(boxes), image_size)
        scores, labels = torch.cat(scores), torch.cat(labels)
        # A sliver under one input pixel (often a box clipped at the border) is no object; it
        # could also vanish when predictions are rounded in original pixels, so that test-time
        # metrics and `evaluate` on predictions.jsonl would count different detections.
        solid = remove_small_boxes(boxes, MIN_BOX_SIZE)
        boxes, scores, labels = boxes[solid], scores[solid], labels[solid]
        keep = batched_nms(boxes, scores, labels, nms_iou)[:max_detections]
        results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return results
