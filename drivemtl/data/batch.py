"""Typed samples and batches that flow from the datasets to the tasks."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


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
        depth: (1, H, W) float metres, 0 = no measurement, or ``None``.
    """

    image: Tensor
    presence: Tensor
    index: int
    path: str
    original_size: tuple[int, int]
    boxes: Tensor | None = None
    box_labels: Tensor | None = None
    ignore: Tensor | None = None
    depth: Tensor | None = None


@dataclass
class Batch:
    """A collated batch. Per-image box lists stay lists: their lengths differ.

    ``boxes[i] is None`` means image i has no box annotation at all (not "no objects").
    ``depth`` is ``None`` when no image of the batch has depth; otherwise images without depth
    have an all-zero map (no valid pixel).
    """

    images: Tensor
    presence: Tensor
    index: Tensor
    paths: list[str]
    original_sizes: Tensor
    boxes: list[Tensor | None]
    box_labels: list[Tensor | None]
    ignore: list[Tensor | None]
    depth: Tensor | None = None

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
        return value

    return replace(batch, **{f.name: apply(getattr(batch, f.name)) for f in fields(batch)})


def collate(samples: list[Sample]) -> Batch:
    """Stack images and presence; keep boxes as per-image lists; zero-fill missing depth."""
    depth = None
    if any(s.depth is not None for s in samples):
        shape = (1, *samples[0].image.shape[-2:])
        depth = torch.stack(
            [s.depth if s.depth is not None else torch.zeros(shape) for s in samples]
        )
    return Batch(
        images=torch.stack([s.image for s in samples]),
        presence=torch.stack([s.presence for s in samples]),
        index=torch.tensor([s.index for s in samples]),
        paths=[s.path for s in samples],
        original_sizes=torch.tensor([s.original_size for s in samples]),
        boxes=[s.boxes for s in samples],
        box_labels=[s.box_labels for s in samples],
        ignore=[s.ignore for s in samples],
        depth=depth,
    )
