"""Boxes and depth stay aligned with the image through every augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from drivemtl.data.datasets import ManifestDataset
from drivemtl.data.io import save_depth_png
from drivemtl.data.manifest import read_manifest
from drivemtl.data.transforms import build_transform
from tests.conftest import CLASSES, write_jsonl


@pytest.fixture
def scene(tmp_path):
    """A 160x96 image: a white car-box at (40, 30)-(100, 70), depth 10 m there, 50 m elsewhere,
    no measurement (0) in the top rows."""
    image = np.zeros((96, 160, 3), dtype=np.uint8)
    image[30:70, 40:100] = 255
    depth = np.full((96, 160), 50.0, dtype=np.float32)
    depth[30:70, 40:100] = 10.0
    depth[:10] = 0.0
    Image.fromarray(image).save(tmp_path / "a.png")
    save_depth_png(depth, tmp_path / "a_depth.png")
    entry = {"image": "a.png", "boxes": [[40, 30, 100, 70, "car"]], "depth": "a_depth.png"}
    return read_manifest(write_jsonl(tmp_path / "m.jsonl", [entry]), CLASSES)


@pytest.mark.parametrize("train", [True, False])
def test_box_and_depth_follow_the_image(scene, train):
    transform = build_transform((64, 96), train=train)
    if train:
        transform.set_random_seed(0)
    dataset = ManifestDataset(scene, transform, pixel_labels=["depth"])
    flips_seen = set()
    for _ in range(30):
        sample = dataset[0]
        image = sample.image.float().mean(0)  # (H, W); colour jitter keeps white bright
        depth = sample.maps["depth"][0]
        # Nearest-neighbour resampling: no invented values between 10 m and 50 m.
        assert set(torch.unique(depth).tolist()) <= {0.0, 10.0, 50.0}
        if sample.presence[1] == -1:  # the crop cut the car away: unknown, never 0
            assert len(sample.boxes) == 0
            continue
        assert sample.presence.tolist() == [0, 1, 0, 0]
        ((x1, y1, x2, y2),) = sample.boxes.tolist()
        inner = (slice(int(y1) + 1, int(y2) - 1), slice(int(x1) + 1, int(x2) - 1))
        assert (depth[inner] == 10.0).all()
        assert image[inner].mean() > 3 * image[depth == 50.0].mean()
        # The box is tight: the depth-10 region fits inside it, up to a pixel of rounding.
        ys, xs = torch.nonzero(depth == 10.0, as_tuple=True)
        assert xs.min() >= x1 - 1 and xs.max() <= x2 and ys.min() >= y1 - 1 and ys.max() <= y2
        flips_seen.add(x1 + x2 < 96)  # box centre left of the middle?
    if train:
        assert flips_seen == {True, False}  # both flipped and unflipped samples were checked


def test_eval_resize_scales_boxes_exactly(scene):
    sample = ManifestDataset(scene, build_transform((48, 80), train=False))[0]
    # 160x96 -> 80x48 halves every coordinate.
    assert sample.boxes.tolist() == [[20.0, 15.0, 50.0, 35.0]]
    assert sample.original_size == (96, 160)


def test_eval_resize_equals_albumentations_resize(scene):
    """The eval pipeline computes what A.Compose([A.Resize]) does, without its overhead."""
    import albumentations as A
    import cv2

    from drivemtl.data.io import load_depth, load_rgb
    from drivemtl.data.transforms import BOX_PARAMS

    record = scene[0]
    inputs = {
        "image": load_rgb(record.image),
        "masks": [load_depth(record.map_path("depth"))],
        "bboxes": np.float32([[40, 30, 100, 70], [0, 0, 160.005, 96]]),  # one a hair outside
        "box_labels": [1, 0],
        "box_ids": [0, 1],
    }
    reference = A.Compose(
        [A.Resize(48, 80, interpolation=cv2.INTER_AREA, mask_interpolation=cv2.INTER_NEAREST)],
        bbox_params=BOX_PARAMS,
    )(**inputs)
    ours = build_transform((48, 80), train=False)(**inputs)
    assert np.array_equal(ours["image"], reference["image"])
    assert np.array_equal(ours["masks"][0], np.asarray(reference["masks"][0]))
    assert np.allclose(ours["bboxes"], np.asarray(reference["bboxes"]), atol=1e-4)
    assert ours["box_labels"] == list(reference["box_labels"])


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_with_its_boxes(tmp_path):
    """A 640x384 JPEG for a 96x160 input decodes at 1/4 (160x96) and for 100x170 at 1/2
    (the largest reduction still as large as the input): boxes follow, and the sample keeps
    the full size for predictions."""
    from drivemtl.data.io import load_rgb_reduced

    image = np.zeros((384, 640, 3), dtype=np.uint8)
    image[120:280, 160:400] = 255
    Image.fromarray(image).save(tmp_path / "a.jpg", quality=95)
    decoded, full = load_rgb_reduced(tmp_path / "a.jpg", (96, 160))
    assert decoded.shape == (96, 160, 3) and full == (384, 640)
    assert load_rgb_reduced(tmp_path / "a.jpg", (100, 170))[0].shape == (192, 320, 3)
    records = read_manifest(
        write_jsonl(
            tmp_path / "m.jsonl", [{"image": "a.jpg", "boxes": [[160, 120, 400, 280, "car"]]}]
        ),
        CLASSES,
    )
    reduced = ManifestDataset(records, build_transform((96, 160), False), decode_at_least=(96, 160))
    whole = ManifestDataset(records, build_transform((96, 160), False))
    a, b = reduced[0], whole[0]
    assert a.original_size == b.original_size == (384, 640)
    assert a.boxes.tolist() == b.boxes.tolist() == [[40.0, 30.0, 100.0, 70.0]]
    # The same picture, up to JPEG's own scaled decoding.
    assert (a.image.float() - b.image.float()).abs().mean() < 3.0


def test_augmentation_follows_the_torch_seed():
    """A seeded run augments the same way in the main process (no loader workers) too."""
    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)

    def augmented(seed: int) -> np.ndarray:
        torch.manual_seed(seed)  # what seed_everything does before the DataModule is built
        transform = build_transform((32, 48), train=True)
        empty = {"bboxes": np.zeros((0, 4)), "box_labels": [], "box_ids": []}
        return np.stack([transform(image=image, **empty)["image"] for _ in range(4)])

    assert np.array_equal(augmented(3), augmented(3))
    assert not np.array_equal(augmented(3), augmented(4))
