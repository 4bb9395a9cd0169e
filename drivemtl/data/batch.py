"""Typed samples and batches that flow from the datasets to the tasks."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor

from drivemtl.data.pixel_labels import pixel_labels


@dataclass
class Sample:
    """One transformed image with its targets.

    Attributes:
        image: (3, H, W) uint8; the model normalises it, so workers ship 4x fewer bytes.
        presence: (C,) long, 1 / 0 / -1 (unknown).
        index: Position in the dataset; lets metrics drop the duplicates a distributed sampler adds.
        path: Image path, for predictions and messages.
        original_size: (height, width) before any transform.
        boxes: (N, 4) float boxes in transformed pixels, or ``None`` when not annotated.
        box_labels: (N,) long class indices, or ``None``.
        ignore: (M, 4) float regions that are neither object nor background, or ``None``.
        maps: Per-pixel label maps by key (:mod:`drivemtl.data.pixel_labels`), each
            (1, H, W): depth in float metres (0 = no measurement), segmentation as long class
            indices (255 = not annotated). A key is absent when the image has no such map.
    """

    image: Tensor
    presence: Tensor
    index: int
    path: str
    original_size: tuple[int, int]
    boxes: Tensor | None = None
    box_labels: Tensor | None = None
    ignore: Tensor | None = None
    maps: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Batch:
    """A collated batch. Per-image box lists stay lists: their lengths differ.

    ``boxes[i] is None`` means image i has no box annotation at all (not "no objects").
    ``maps[key]`` is (B, 1, H, W), present when at least one image of the batch has that map;
    the other images' maps are filled with the label's ``fill`` (no labelled pixel).
    """

    images: Tensor
    presence: Tensor
    index: Tensor
    paths: list[str]
    original_sizes: Tensor
    boxes: list[Tensor | None]
    box_labels: list[Tensor | None]
    ignore: list[Tensor | None]
    maps: dict[str, Tensor] = field(default_factory=dict)

    @property
    def presence_mask(self) -> Tensor:
        """(B, C) bool, True where the presence label is known."""
        return self.presence >= 0

    def __len__(self) -> int:
        return self.images.shape[0]

    def pin_memory(self) -> Batch:
        """Called by the DataLoader when ``pin_memory=True``."""
        return _map_tensors(self, lambda t: t.pin_memory())


def _map_tensors(batch: Batch, fn) -> Batch:
    def apply(value):
        if isinstance(value, Tensor):
            return fn(value)
        if isinstance(value, list):
            return [apply(v) for v in value]
        if isinstance(value, dict):
            return {k: apply(v) for k, v in value.items()}
        return value

    return replace(batch, **{f.name: apply(getattr(batch, f.name)) for f in fields(batch)})


def collate(samples: list[Sample]) -> Batch:
    """Stack images and presence; keep boxes as per-image lists; fill missing label maps."""
    maps = {}
    for key in dict.fromkeys(k for s in samples for k in s.maps):
        given = next(s.maps[key] for s in samples if key in s.maps)
        blank = torch.full((1, *samples[0].image.shape[-2:]), pixel_labels()[key].fill)
        blank = blank.to(given.dtype)
        maps[key] = torch.stack([s.maps.get(key, blank) for s in samples])
    return Batch(
        images=torch.stack([s.image for s in samples]),
        presence=torch.stack([s.presence for s in samples]),
        index=torch.tensor([s.index for s in samples]),
        paths=[s.path for s in samples],
        original_sizes=torch.tensor([s.original_size for s in samples]),
        boxes=[s.boxes for s in samples],
        box_labels=[s.box_labels for s in samples],
        ignore=[s.ignore for s in samples],
        maps=maps,
    )
