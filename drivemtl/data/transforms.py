"""Albumentations pipelines that move boxes and label maps together with the image.

Label maps (depth, segmentation) travel as masks, so geometric transforms resample them with
nearest neighbour (no invented depth between a near object and the far background, no class
between two others) and colour transforms never touch them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

BOX_PARAMS = A.BboxParams(
    format="pascal_voc",
    label_fields=["box_labels", "box_ids"],
    clip=True,
    # A box cut to less than a quarter of its area no longer shows its object reliably;
    # the dataset then turns that class's presence into "unknown" rather than a false 0.
    min_visibility=0.25,
    # No area limit: downscaling must not delete a small object that is still fully visible.
    min_area=0.0,
)


def build_transform(image_size: tuple[int, int], train: bool) -> A.Compose | Resize:
    """The train (flip, scale-crop, colour jitter) or eval (resize) pipeline.

    Args:
        image_size: Output (height, width).
        train: Whether to augment.
    """
    if not train:
        return Resize(image_size)
    height, width = image_size
    aspect = width / height
    steps = [
        A.HorizontalFlip(p=0.5),
        A.RandomResizedCrop(
            size=(height, width),
            scale=(MIN_CROP_AREA, 1.0),
            ratio=(aspect * CROP_ASPECT, aspect / CROP_ASPECT),
            interpolation=cv2.INTER_AREA,
            mask_interpolation=cv2.INTER_NEAREST,
        ),
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=0.8),
    ]
    pipeline = A.Compose(steps, bbox_params=BOX_PARAMS)
    # Albumentations keeps its own generator; without a seed it draws one from the OS, and a
    # seeded run (seed_everything) would still augment differently in the main process.
    # Loader workers reseed it per worker (seed_worker_transform).
    seed_transform(pipeline, torch.initial_seed())
    return pipeline


MIN_CROP_AREA = 0.6
CROP_ASPECT = 0.85
"""The scale-crop keeps 60-100 % of the image area, at the input's aspect ratio +- 15 %."""


def decode_size(image_size: tuple[int, int], train: bool) -> tuple[int, int]:
    """The smallest decoded image (height, width) that loses no detail for a pipeline.

    JPEG files can be decoded at 1/2, 1/4 or 1/8 of their size for a fraction of the cost
    (:func:`~drivemtl.data.io.load_rgb`); the eval pipeline needs the input size, the
    scale-crop the input size over the smallest crop side (the crop is then magnified).
    """
    height, width = image_size
    if not train:
        return height, width
    side = math.sqrt(MIN_CROP_AREA * CROP_ASPECT)  # smallest crop side, as a fraction
    return math.ceil(height / side), math.ceil(width / side)


class Resize:
    """The eval pipeline: the image to the input size, boxes and label maps with it.

    What ``A.Compose([A.Resize(...)], bbox_params=BOX_PARAMS)`` computes (the same OpenCV
    resizes; boxes scaled and clipped to the image), without its per-call bookkeeping, which
    cost as much as decoding the JPEG (see ``benchmarks/data_scale.py``). Called like an
    albumentations pipeline.

    Args:
        image_size: Output (height, width).
    """

    def __init__(self, image_size: tuple[int, int]):
        self.height, self.width = image_size

    def __call__(self, image, bboxes, box_labels, box_ids, masks=None) -> dict:
        height, width = image.shape[:2]
        size = (self.width, self.height)
        out = {"image": cv2.resize(image, size, interpolation=cv2.INTER_AREA)}
        boxes = np.asarray(bboxes, dtype=np.float32).reshape(-1, 4)
        if len(boxes):
            boxes = np.clip(boxes, 0, [width, height, width, height])
            boxes = boxes * np.float32([self.width / width, self.height / height] * 2)
        out.update(bboxes=boxes, box_labels=list(box_labels), box_ids=list(box_ids))
        if masks is not None:
            out["masks"] = [cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in masks]
        return out


def seed_transform(pipeline: A.Compose, seed: int) -> None:
    """Seed a pipeline with one random stream that all its steps draw from.

    Albumentations' own seeding gives every step a generator of its own with the same seed
    (so the steps' draws are correlated); one shared pair of generators is also one random
    state to save in a checkpoint and restore on resume (see ``DriveDataModule.state_dict``).
    """
    pipeline.set_random_seed(seed % 2**32)
    pipeline.set_random_state(pipeline.random_generator, pipeline.py_random)


def crop_zoom(applied: Sequence[tuple[str, dict]], original_size: tuple[int, int]) -> float:
    """How much closer a scale-crop makes the scene look than the eval view of the whole image.

    The eval pipeline resizes the whole ``W x H`` image to the input size; a crop of
    ``w x h`` resized to the same size magnifies it by ``W / w`` horizontally and ``H / h``
    vertically. Magnifying by ``z`` is what a camera sees from ``z`` times closer (sizes, and
    distances from the horizon, scale as ``1 / depth``), so the depth consistent with the
    cropped picture is the measured depth divided by ``z`` (Eigen et al., 2014). The geometric
    mean of the two axes is used (the crop's aspect ratio varies by up to 15 %).

    Args:
        applied: ``out["applied_transforms"]`` of a pipeline built with
            ``save_applied_params=True``.
        original_size: (height, width) of the image given to the pipeline.

    Returns:
        The zoom factor ``z`` (1.0 when nothing was cropped).
    """
    height, width = original_size
    for _, params in applied:
        if "crop_coords" in params:
            x1, y1, x2, y2 = params["crop_coords"]
            return math.sqrt(width / (x2 - x1) * height / (y2 - y1))
    return 1.0
