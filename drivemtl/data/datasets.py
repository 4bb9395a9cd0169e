"""Datasets: manifest entries (train/val/test) and plain image folders (predict)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from drivemtl.data.batch import Sample
from drivemtl.data.io import IMAGE_EXTENSIONS, load_depth, load_rgb
from drivemtl.data.labels import POSITIVE, UNKNOWN
from drivemtl.data.manifest import Record
from drivemtl.errors import DriveMTLError


def _as_tensor_image(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class ManifestDataset(Dataset):
    """Images and labels from manifest records, transformed together.

    Args:
        records: Parsed manifest entries.
        transform: An albumentations pipeline with box parameters (see ``build_transform``).
        load_boxes: Keep box targets (needed by detection; cheap, so on by default).
        load_depth: Decode depth maps (only when a depth task uses them).
    """

    def __init__(
        self,
        records: Sequence[Record],
        transform: A.Compose,
        load_boxes: bool = True,
        load_depth: bool = False,
    ):
        self.records = list(records)
        self.transform = transform
        self.load_boxes = load_boxes
        self.load_depth = load_depth

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        try:
            image = load_rgb(record.image)
            depth = load_depth(record.depth) if self.load_depth and record.depth else None
        except OSError as e:
            raise DriveMTLError(f"{record.source}: cannot read {record.image}: {e}") from None
        height, width = image.shape[:2]
        if depth is not None and depth.shape != (height, width):
            raise DriveMTLError(
                f"{record.source}: depth map {record.depth} is {depth.shape[1]}x{depth.shape[0]}"
                f" but the image is {width}x{height}; they must match."
            )
        boxes = list(record.boxes or ())
        ignore = list(record.ignore)
        # Ignore regions ride along as boxes with label -1 so they move with the image.
        all_boxes = [b[:4] for b in boxes] + [r[:4] for r in ignore]
        labels = [b[4] for b in boxes] + [-1] * len(ignore)
        inputs = {
            "image": image,
            "bboxes": np.asarray(all_boxes, dtype=np.float32).reshape(-1, 4),
            "box_labels": labels,
            "box_ids": list(range(len(all_boxes))),
        }
        if depth is not None:
            inputs["mask"] = depth
        out = self.transform(**inputs)

        presence = torch.tensor(record.presence, dtype=torch.long)
        kept = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        kept_labels = np.asarray(out["box_labels"], dtype=np.int64)
        if record.boxes is not None:
            # A crop that removed every box of a present class leaves that class unknown.
            for c in range(len(presence)):
                had = any(b[4] == c for b in boxes)
                if had and presence[c] == POSITIVE and not (kept_labels == c).any():
                    presence[c] = UNKNOWN

        sample = Sample(
            image=_as_tensor_image(out["image"]),
            presence=presence,
            index=index,
            path=str(record.image),
            original_size=(height, width),
        )
        if self.load_boxes:
            objects = kept_labels >= 0
            sample.ignore = torch.from_numpy(kept[~objects])
            if record.boxes is not None:
                sample.boxes = torch.from_numpy(kept[objects])
                sample.box_labels = torch.from_numpy(kept_labels[objects])
        if depth is not None:
            sample.depth = torch.from_numpy(np.ascontiguousarray(out["mask"]))[None].float()
        return sample


def find_images(root: str | Path) -> list[Path]:
    """Every image below ``root`` (recursive, any letter case), in a stable sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise DriveMTLError(f"Image folder not found: {root}")
    found = []
    for folder, _, names in os.walk(root):
        found.extend(Path(folder) / n for n in names if n.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(found)


class ImageFolderDataset(Dataset):
    """Unlabelled images for prediction; presence is all unknown.

    Args:
        images: Image paths.
        transform: An eval pipeline.
        num_classes: Length of the (unknown) presence vector.
    """

    def __init__(self, images: Sequence[Path], transform: A.Compose, num_classes: int):
        self.images = list(images)
        self.transform = transform
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        path = self.images[index]
        image = load_rgb(path)
        out = self.transform(image=image, bboxes=np.zeros((0, 4)), box_labels=[], box_ids=[])
        return Sample(
            image=_as_tensor_image(out["image"]),
            presence=torch.full((self.num_classes,), UNKNOWN, dtype=torch.long),
            index=index,
            path=str(path),
            original_size=image.shape[:2],
        )


def seed_worker_transform(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker its own augmentation stream.

    Albumentations keeps its own generator, which forked workers would otherwise share.
    """
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if transform is not None:
        transform.set_random_seed(torch.initial_seed() % 2**32)
