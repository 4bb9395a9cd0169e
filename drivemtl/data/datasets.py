"""Datasets: manifest entries (train/val/test) and plain image folders (predict)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from drivemtl.data.batch import Batch, Sample, collate
from drivemtl.data.io import DEPTH_PNG_SCALE, IMAGE_EXTENSIONS, load_rgb_reduced
from drivemtl.data.labels import POSITIVE, UNKNOWN
from drivemtl.data.manifest import Record
from drivemtl.data.pixel_labels import pixel_labels as label_maps
from drivemtl.data.transforms import Resize, crop_zoom, seed_transform
from drivemtl.errors import DriveMTLError


def _as_tensor_image(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def read_record(
    record: Record,
    labels: Sequence[str] | Mapping[str, Mapping[str, Any]] = (),
    options: Mapping[str, Any] | None = None,
    at_least: tuple[int, int] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], tuple[int, int]]:
    """Decode a record's image and the label maps it has of ``labels``, as training does.

    Args:
        record: The manifest entry.
        labels: Keys of the per-pixel label maps to decode (the tasks' ``pixel_label``), or a
            mapping from key to the task's reader options (``num_classes``).
        options: Options of the maps' readers (``depth_scale``: units per metre of 16-bit
            depth PNGs).
        at_least: Decode a JPEG at a reduced scale still this (height, width) large (see
            :func:`~drivemtl.data.io.load_rgb_reduced`); never with a label map, which must
            match the decoded image.

    Returns:
        ``(image (h, w, 3) uint8, {key: (h, w) map}, (H, W) of the whole image)``.

    Raises:
        DriveMTLError: Naming the manifest line when a file cannot be decoded or a map is not
            the image's size.
    """
    own = labels if isinstance(labels, Mapping) else dict.fromkeys(labels, {})
    wanted = [(key, path) for key in own if (path := record.map_path(key))]
    try:
        image, full = load_rgb_reduced(record.image, None if wanted else at_least)
    except Exception as e:  # any decoder failure (OSError, a PNG's SyntaxError) is a bad file
        reason = _read_error(str(record.image), e)
        raise DriveMTLError(f"{record.source}: cannot read {record.image}: {reason}") from None
    height, width = full
    maps = {}
    for key, path in wanted:
        try:
            value = label_maps()[key].read(path, {**(options or {}), **(own[key] or {})})
        except (OSError, ValueError) as e:
            raise DriveMTLError(f"{record.source}: cannot read {key} map {path}: {e}") from None
        if value.shape != (height, width):
            raise DriveMTLError(
                f"{record.source}: {key} map {path} is {value.shape[1]}x{value.shape[0]}"
                f" but the image is {width}x{height}; they must match."
            )
        maps[key] = value
    return image, maps, full


class ManifestDataset(Dataset):
    """Images and labels from manifest records, transformed together.

    Args:
        records: Parsed manifest entries.
        transform: An albumentations pipeline with box parameters (see ``build_transform``).
        load_boxes: Keep box targets (needed by detection; cheap, so on by default).
        pixel_labels: Keys of the per-pixel label maps to decode (those of the trained
            tasks: ``Task.pixel_label``), or a mapping from key to the task's reader options
            (``Task.pixel_label_options``).
        depth_scale: Units per metre of 16-bit depth PNGs (256: KITTI); ``.npy`` is metres.
        decode_at_least: Decode JPEGs at a reduced scale that still has this (height, width)
            (:func:`~drivemtl.data.transforms.decode_size`); ``None``: full size. Not with
            label maps, which must match the decoded image.
        depth_zoom_correction: Divide depth (maps whose label is ``zoom_scaled``) by the
            zoom of a scale-crop (see
            :func:`~drivemtl.data.transforms.crop_zoom`), so that it matches how near the
            cropped picture looks; without it a zoomed crop teaches "looks nearer, is as far".
    """

    def __init__(
        self,
        records: Sequence[Record],
        transform: A.Compose | Resize,
        load_boxes: bool = True,
        pixel_labels: Sequence[str] | Mapping[str, Mapping[str, Any]] = (),
        depth_scale: float = DEPTH_PNG_SCALE,
        depth_zoom_correction: bool = False,
        decode_at_least: tuple[int, int] | None = None,
    ):
        self.records = list(records)
        self.decode_at_least = decode_at_least
        self.transform = transform
        self.load_boxes = load_boxes
        unknown = [key for key in pixel_labels if key not in label_maps()]
        if unknown:
            raise DriveMTLError(f"Unknown pixel label(s) {unknown}; known: {sorted(label_maps())}")
        self.pixel_labels = (
            dict(pixel_labels)
            if isinstance(pixel_labels, Mapping)
            else dict.fromkeys(pixel_labels, {})
        )
        self.depth_scale = depth_scale
        self.depth_zoom_correction = depth_zoom_correction
        if depth_zoom_correction:
            self.transform.save_applied_params = True  # to read the crop of each sample

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        image, maps, (height, width) = read_record(
            record, self.pixel_labels, {"depth_scale": self.depth_scale}, self.decode_at_least
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
        if maps:
            inputs["masks"] = list(maps.values())
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
        for key, moved in zip(maps, out.get("masks", ())):
            label = label_maps()[key]
            moved = np.asarray(moved)
            if label.zoom_scaled and self.depth_zoom_correction:  # 0 (no measurement) stays 0
                moved = moved / crop_zoom(out.get("applied_transforms", ()), image.shape[:2])
            moved = np.ascontiguousarray(moved.astype(label.dtype, copy=False))
            sample.maps[key] = torch.from_numpy(moved)[None]
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
