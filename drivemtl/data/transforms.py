"""Albumentations pipelines that move boxes and depth together with the image.

Depth travels as a mask, so geometric transforms resample it with nearest neighbour (no invented
depth between a near object and the far background) and colour transforms never touch it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import albumentations as A
import cv2
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


def build_transform(image_size: tuple[int, int], train: bool) -> A.Compose:
    """The train (flip, scale-crop, colour jitter) or eval (resize) pipeline.

    Args:
        image_size: Output (height, width).
        train: Whether to augment.
    """
    height, width = image_size
    if train:
        aspect = width / height
        steps = [
            A.HorizontalFlip(p=0.5),
            A.RandomResizedCrop(
                size=(height, width),
                scale=(0.6, 1.0),
                ratio=(aspect * 0.85, aspect / 0.85),
                interpolation=cv2.INTER_AREA,
                mask_interpolation=cv2.INTER_NEAREST,
            ),
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=0.8),
        ]
    else:
        steps = [
            A.Resize(
                height,
                width,
                interpolation=cv2.INTER_AREA,
                mask_interpolation=cv2.INTER_NEAREST,
            )
        ]
    pipeline = A.Compose(steps, bbox_params=BOX_PARAMS)
    # Albumentations keeps its own generator; without a seed it draws one from the OS, and a
    # seeded run (seed_everything) would still augment differently in the main process.
    # Loader workers reseed it per worker (seed_worker_transform).
    seed_transform(pipeline, torch.initial_seed())
    return pipeline


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
