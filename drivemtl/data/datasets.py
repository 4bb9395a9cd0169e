"""Datasets: manifest entries (train/val/test) and plain image folders (predict)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from drivemtl.data.batch import Batch, Sample, collate
from drivemtl.data.io import DEPTH_PNG_SCALE, IMAGE_EXTENSIONS, load_rgb_reduced
from drivemtl.data.io import load_depth as load_depth_map
from drivemtl.data.labels import POSITIVE, UNKNOWN
from drivemtl.data.manifest import Record
from drivemtl.data.transforms import Resize, crop_zoom, seed_transform
from drivemtl.errors import DriveMTLError


def _as_tensor_image(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def read_record(
    record: Record,
    load_depth: bool = True,
    depth_scale: float = DEPTH_PNG_SCALE,
    at_least: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
    """Decode a record's image and, with ``load_depth``, its depth map, as training does.

    Args:
        record: The manifest entry.
        load_depth: Decode its depth map too.
        depth_scale: Units per metre of 16-bit depth PNGs.
        at_least: Decode a JPEG at a reduced scale still this (height, width) large (see
            :func:`~drivemtl.data.io.load_rgb_reduced`); never with a depth map, which must
            match the decoded image.

    Returns:
        ``(image (h, w, 3) uint8, depth (h, w) metres or None, (H, W) of the whole image)``.

    Raises:
        DriveMTLError: Naming the manifest line when a file cannot be decoded or the depth
            map is not the image's size.
    """
    with_depth = bool(load_depth and record.depth)
    try:
        image, full = load_rgb_reduced(record.image, None if with_depth else at_least)
    except Exception as e:  # any decoder failure (OSError, a PNG's SyntaxError) is a bad file
        reason = _read_error(str(record.image), e)
        raise DriveMTLError(f"{record.source}: cannot read {record.image}: {reason}") from None
    depth = None
    if with_depth:
        try:
            depth = load_depth_map(record.depth, depth_scale)
        except (OSError, ValueError) as e:
            raise DriveMTLError(
                f"{record.source}: cannot read depth map {record.depth}: {e}"
            ) from None
    height, width = full
    if depth is not None and depth.shape != (height, width):
        raise DriveMTLError(
            f"{record.source}: depth map {record.depth} is {depth.shape[1]}x{depth.shape[0]}"
            f" but the image is {width}x{height}; they must match."
        )
    return image, depth, full


class ManifestDataset(Dataset):
    """Images and labels from manifest records, transformed together.

    Args:
        records: Parsed manifest entries.
        transform: An albumentations pipeline with box parameters (see ``build_transform``).
        load_boxes: Keep box targets (needed by detection; cheap, so on by default).
        load_depth: Decode depth maps (only when a depth task uses them).
        depth_scale: Units per metre of 16-bit depth PNGs (256: KITTI); ``.npy`` is metres.
        decode_at_least: Decode JPEGs at a reduced scale that still has this (height, width)
            (:func:`~drivemtl.data.transforms.decode_size`); ``None``: full size. Not with
            depth maps, which must match the decoded image.
        depth_zoom_correction: Divide depth by the zoom of a scale-crop (see
            :func:`~drivemtl.data.transforms.crop_zoom`), so that it matches how near the
            cropped picture looks; without it a zoomed crop teaches "looks nearer, is as far".
    """

    def __init__(
        self,
        records: Sequence[Record],
        transform: A.Compose | Resize,
        load_boxes: bool = True,
        load_depth: bool = False,
        depth_scale: float = DEPTH_PNG_SCALE,
        depth_zoom_correction: bool = False,
        decode_at_least: tuple[int, int] | None = None,
    ):
        self.records = list(records)
        self.decode_at_least = decode_at_least
        self.transform = transform
        self.load_boxes = load_boxes
        self.load_depth = load_depth
        self.depth_scale = depth_scale
        self.depth_zoom_correction = depth_zoom_correction
        if depth_zoom_correction:
            self.transform.save_applied_params = True  # to read the crop of each sample

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        image, depth, (height, width) = read_record(
            record, self.load_depth, self.depth_scale, self.decode_at_least
        )
        boxes = list(record.boxes or ())
        ignore = list(record.ignore)
        # Ignore regions ride along as boxes with label -1 so they move with the image.
        all_boxes = [b[:4] for b in boxes] + [r[:4] for r in ignore]
        labels = [b[4] for b in boxes] + [-1] * len(ignore)
        all_boxes = np.asarray(all_boxes, dtype=np.float32).reshape(-1, 4)
        if image.shape[:2] != (height, width):  # decoded at a reduced scale
            scale = [image.shape[1] / width, image.shape[0] / height] * 2
            all_boxes = all_boxes * np.float32(scale)
        inputs = {
            "image": image,
            "bboxes": all_boxes,
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
            moved = out["mask"]
            if self.depth_zoom_correction:  # 0 (no measurement) stays 0
                moved = moved / crop_zoom(out.get("applied_transforms", ()), image.shape[:2])
            sample.depth = torch.from_numpy(np.ascontiguousarray(moved))[None].float()
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


@dataclass
class ImageSample(Sample):
    """A predict-time sample; ``error`` says why the file could not be used (``None``: fine)."""

    error: str | None = None


@dataclass
class ImageBatch(Batch):
    """A predict-time batch; ``errors[i]`` is the reason image i failed, or ``None``."""

    errors: list[str | None] = field(default_factory=list)


def collate_images(samples: list[ImageSample]) -> ImageBatch:
    """:func:`collate`, keeping each image's error so the writer can route it to errors.jsonl."""
    batch = collate(samples)
    errors = [getattr(s, "error", None) for s in samples]
    return ImageBatch(**{f.name: getattr(batch, f.name) for f in fields(batch)}, errors=errors)


def _read_error(path: str, error: Exception) -> str:
    """A short reason for ``errors.jsonl``; an empty file says so rather than 'cannot identify'."""
    try:
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    except OSError:
        pass
    return f"{type(error).__name__}: {error}"


class ImageFolderDataset(Dataset):
    """Unlabelled images for prediction; presence is all unknown.

    A file that cannot be decoded does not raise: it yields a placeholder image with
    ``error`` set, so one bad frame never stops a DataLoader worker (and the run) and the
    reason reaches ``errors.jsonl``.

    Args:
        images: Image paths.
        transform: An eval pipeline.
        num_classes: Length of the (unknown) presence vector.
    """

    def __init__(
        self,
        images: Sequence[str | Path],
        transform: Resize | A.Compose,
        num_classes: int,
        decode_at_least: tuple[int, int] | None = None,
    ):
        # Plain strings: a Path costs several times its text, and folders hold millions of frames.
        self.images = [str(p) for p in images]
        self.decode_at_least = decode_at_least
        self.transform = transform
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> ImageSample:
        path = self.images[index]
        presence = torch.full((self.num_classes,), UNKNOWN, dtype=torch.long)
        try:
            image, original_size = load_rgb_reduced(path, self.decode_at_least)
            out = self.transform(image=image, bboxes=np.zeros((0, 4)), box_labels=[], box_ids=[])
        except Exception as e:  # any decoder failure is one bad file, not a crash of the run
            # The transform on a 1x1 black image gives a placeholder of the network's input size.
            blank = np.zeros((1, 1, 3), dtype=np.uint8)
            out = self.transform(image=blank, bboxes=np.zeros((0, 4)), box_labels=[], box_ids=[])
            return ImageSample(
                image=_as_tensor_image(out["image"]),
                presence=presence,
                index=index,
                path=path,
                original_size=(0, 0),
                error=_read_error(path, e),
            )
        return ImageSample(
            image=_as_tensor_image(out["image"]),
            presence=presence,
            index=index,
            path=path,
            original_size=original_size,
        )


def seed_worker_transform(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one OpenCV thread, and an augmentation stream per worker.

    Each worker already is a parallel lane: OpenCV's own thread pool inside it would only fight
    the training process for cores. Albumentations keeps its own generator, which forked
    workers would otherwise share.
    """
    cv2.setNumThreads(0)
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if isinstance(transform, A.Compose):  # the eval Resize draws nothing
        seed_transform(transform, torch.initial_seed())
