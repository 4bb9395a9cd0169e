"""Albumentations pipelines that move boxes and depth together with the image.

Depth travels as a mask, so geometric transforms resample it with nearest neighbour (no invented
depth between a near object and the far background) and colour transforms never touch it.
"""

from __future__ import annotations

import albumentations as A
import cv2

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
    return A.Compose(steps, bbox_params=BOX_PARAMS, seed=None)
