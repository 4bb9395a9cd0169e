"""Box targets through the training augmentation (flip, scale-crop), checked against boxes
computed by hand from the flip and crop that albumentations applied, after checking that those
parameters reproduce the augmented image pixel for pixel."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
from PIL import Image

from drivemtl.data.datasets import ManifestDataset
from drivemtl.data.manifest import read_manifest
from drivemtl.data.transforms import build_transform
from tests.conftest import CLASSES, write_jsonl

WIDTH, HEIGHT = 256, 160
OUT_H, OUT_W = 64, 96
BOXES = [[60, 40, 180, 120, "car"], [100.5, 60, 110, 90.25, "pedestrian"], [0, 100, 30, 160, "car"]]
IGNORE = [[200, 10, 250, 60]]


@pytest.fixture
def scene(tmp_path):
    """A random 256x160 image with three boxes and one ignore region."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    entry = {"image": "a.png", "boxes": BOXES, "ignore": IGNORE}
    return image, read_manifest(write_jsonl(tmp_path / "m.jsonl", [entry]), CLASSES)


class Recorder:
    """Wraps the pipeline and keeps the parameters albumentations applied to each call."""

    def __init__(self, transform: A.Compose):
        self.transform = transform
        self.transform.save_applied_params = True
        self.applied: list = []

    def __call__(self, **inputs):
        out = self.transform(**inputs)
        self.applied = out["applied_transforms"]
        return out


def _expected(box, flipped: bool, crop: tuple[int, int, int, int]):
    """A source box through flip, crop and resize, clipped; None if < 25 % stays visible."""
    x1, y1, x2, y2 = box
    if flipped:
        x1, x2 = WIDTH - x2, WIDTH - x1
    cx1, cy1, cx2, cy2 = crop
    sx, sy = OUT_W / (cx2 - cx1), OUT_H / (cy2 - cy1)
    full = [(x1 - cx1) * sx, (y1 - cy1) * sy, (x2 - cx1) * sx, (y2 - cy1) * sy]
    clipped = [
        min(max(full[0], 0), OUT_W),
        min(max(full[1], 0), OUT_H),
        min(max(full[2], 0), OUT_W),
        min(max(full[3], 0), OUT_H),
    ]
    area = (full[2] - full[0]) * (full[3] - full[1])
    visible = max(clipped[2] - clipped[0], 0) * max(clipped[3] - clipped[1], 0)
    return clipped if visible >= 0.25 * area else None


def test_boxes_follow_flip_and_scale_crop_exactly(scene):
    source, records = scene
    transform = build_transform((OUT_H, OUT_W), train=True)
    # Colour jitter never moves a box; switched off so the image check below is exact.
    for step in transform.transforms:
        if isinstance(step, A.ColorJitter):
            step.p = 0.0
    recorder = Recorder(transform)
    dataset = ManifestDataset(records, recorder)
    seen_flips, seen_cut = set(), False
    for seed in range(40):
        transform.set_random_seed(seed)
        sample = dataset[0]
        applied = dict(recorder.applied)
        flipped = "HorizontalFlip" in applied
        crop = applied["RandomResizedCrop"]["crop_coords"]
        # The parameters describe the image that came out: flip, crop, INTER_AREA resize.
        image = source[:, ::-1] if flipped else source
        x1, y1, x2, y2 = crop
        resized = cv2.resize(image[y1:y2, x1:x2], (OUT_W, OUT_H), interpolation=cv2.INTER_AREA)
        assert np.array_equal(sample.image.permute(1, 2, 0).numpy(), resized)
        # The same parameters, applied by hand to the boxes, give the sample's boxes.
        expected = [_expected(b[:4], flipped, crop) for b in BOXES]
        kept = [e for e in expected if e is not None]
        labels = [CLASSES.index(b[4]) for b, e in zip(BOXES, expected) if e is not None]
        assert sample.boxes.numpy() == pytest.approx(np.array(kept).reshape(-1, 4), abs=1e-4)
        assert sample.box_labels.tolist() == labels
        ignore = [e for e in (_expected(r, flipped, crop) for r in IGNORE) if e is not None]
        assert sample.ignore.numpy() == pytest.approx(np.array(ignore).reshape(-1, 4), abs=1e-4)
        seen_flips.add(flipped)
        seen_cut |= len(kept) < len(BOXES)
    # Both flipped and unflipped samples, and crops that cut a box away, were checked.
    assert seen_flips == {True, False} and seen_cut
