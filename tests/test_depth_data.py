"""Depth data: formats on disk, exact values through flip and scale-crop, mixed batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from drivemtl.data.batch import collate
from drivemtl.data.datamodule import DriveDataModule
from drivemtl.data.datasets import ManifestDataset
from drivemtl.data.io import load_depth, save_depth_png
from drivemtl.data.manifest import read_manifest
from drivemtl.data.transforms import build_transform, crop_zoom
from drivemtl.errors import DriveMTLError
from drivemtl.tasks.depth import silog_loss
from tests.conftest import CLASSES, write_image, write_jsonl

H, W = 96, 160


def _unique_depth() -> np.ndarray:
    """Every valid pixel holds its own value (1 + (y * W + x) / 256, exact in float32 and in
    a KITTI PNG); a block and the top rows hold no measurement (0)."""
    ys, xs = np.mgrid[0:H, 0:W]
    depth = (1.0 + (ys * W + xs) / 256.0).astype(np.float32)
    depth[:8] = 0.0
    depth[40:60, 100:130] = 0.0
    return depth


def _nearest_resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest neighbour as OpenCV defines it: source index floor(dst * (1 / (dst_size /
    src_size))), the reciprocal computed as OpenCV does so that exact ties round alike."""

    def index(dst: int, src: int) -> np.ndarray:
        return np.minimum(np.floor(np.arange(dst) * (1.0 / (dst / src))).astype(int), src - 1)

    return array[index(height, array.shape[0])][:, index(width, array.shape[1])]


def test_flip_and_scale_crop_keep_the_values_at_the_moved_positions():
    """The training pipeline's output depth equals the source flipped, cropped and
    nearest-resized by hand from the parameters the pipeline reports it applied; colour
    jitter never changes it; invalid (0) stays exactly where its pixels moved."""
    depth = _unique_depth()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    transform = build_transform((64, 96), train=True)
    transform.save_applied_params = True
    transform.set_random_seed(1)
    seen = set()
    for _ in range(24):
        out = transform(
            image=image, masks=[depth], bboxes=np.zeros((0, 4)), box_labels=[], box_ids=[]
        )
        applied = dict(out["applied_transforms"])
        expected = depth[:, ::-1] if "HorizontalFlip" in applied else depth
        x1, y1, x2, y2 = applied["RandomResizedCrop"]["crop_coords"]
        expected = _nearest_resize(expected[y1:y2, x1:x2], 64, 96)
        np.testing.assert_array_equal(np.asarray(out["masks"][0]), expected)
        seen.add(("HorizontalFlip" in applied, "ColorJitter" in applied, (x2 - x1) < W))
    flips = {s[0] for s in seen}
    assert flips == {True, False} and any(s[1] for s in seen) and any(s[2] for s in seen)


def test_dataset_depth_through_a_kitti_png_and_the_eval_resize(tmp_path):
    depth = _unique_depth()
    write_image(tmp_path / "a.png", W, H)
    save_depth_png(depth, tmp_path / "a_depth.png")
    entry = {"image": "a.png", "presence": {"car": 1}, "depth": "a_depth.png"}
    records = read_manifest(write_jsonl(tmp_path / "m.jsonl", [entry]), CLASSES)
    sample = ManifestDataset(records, build_transform((48, 80), False), pixel_labels=["depth"])[0]
    # Halving is nearest-neighbour: every other row and column, values untouched.
    assert sample.maps["depth"].shape == (1, 48, 80)
    np.testing.assert_array_equal(sample.maps["depth"][0].numpy(), depth[::2, ::2])
    assert "depth" not in ManifestDataset(records, build_transform((48, 80), False))[0].maps


def _write_pair(tmp_path, name: str, depth_file: str) -> list:
    write_image(tmp_path / f"{name}_image.png", 6, 4)
    entry = {"image": f"{name}_image.png", "depth": depth_file}
    return read_manifest(write_jsonl(tmp_path / f"{name}.jsonl", [entry]), CLASSES)


def test_npy_metres_and_a_configured_png_scale(tmp_path):
    metres = np.array([[1.5, 0.0, np.nan, -2.0, np.inf, 80.25]] * 4, dtype=np.float32)
    np.save(tmp_path / "d.npy", metres[None])  # (1, H, W) is accepted too
    clean = np.where(np.isfinite(metres) & (metres > 0), metres, 0.0)
    np.testing.assert_array_equal(load_depth(tmp_path / "d.npy"), clean)

    # Millimetres in a 16-bit PNG (another common convention): data.depth_scale = 1000.
    Image.fromarray(np.full((4, 6), 12345, dtype=np.uint16)).save(tmp_path / "mm.png")
    _write_pair(tmp_path, "mm", "mm.png")
    module = DriveDataModule(
        train_manifest=str(tmp_path / "mm.jsonl"),
        val_manifest=str(tmp_path / "mm.jsonl"),
        image_size=(32, 48),
        pixel_labels=["depth"],
        depth_scale=1000.0,
    )
    module.setup("fit")
    assert torch.allclose(module.datasets["val"][0].maps["depth"], torch.tensor(12.345))
    with pytest.raises(DriveMTLError, match="depth_scale"):
        DriveDataModule(depth_scale=0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "data.batch_size must be at least 1"),
        ({"num_workers": -1}, "data.num_workers must be 0"),
        ({"image_size": (0, 0)}, "each at least 32 px"),
        ({"image_size": (-32, 48)}, "each at least 32 px"),
    ],
)
def test_bad_data_settings_are_clear_errors(options, message):
    with pytest.raises(DriveMTLError, match=message):
        DriveDataModule(**options)


def test_bad_depth_files_name_the_manifest_line_and_the_problem(tmp_path):
    Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    records = _write_pair(tmp_path, "rgb", "rgb.png")
    with pytest.raises(DriveMTLError, match=r"rgb\.jsonl:1: .*rgb\.png.*16-bit.*'RGB'"):
        ManifestDataset(records, build_transform((4, 6), False), pixel_labels=["depth"])[0]

    np.save(tmp_path / "cube.npy", np.zeros((2, 4, 6)))
    records = _write_pair(tmp_path, "cube", "cube.npy")
    with pytest.raises(DriveMTLError, match=r"cube\.jsonl:1: .*2-D.*\(2, 4, 6\)"):
        ManifestDataset(records, build_transform((4, 6), False), pixel_labels=["depth"])[0]

    save_depth_png(np.ones((5, 6)), tmp_path / "tall.png")
    records = _write_pair(tmp_path, "tall", "tall.png")
    with pytest.raises(DriveMTLError, match=r"tall\.jsonl:1: .*6x5 but the image is 6x4"):
        ManifestDataset(records, build_transform((4, 6), False), pixel_labels=["depth"])[0]


def test_images_without_depth_add_nothing_to_a_mixed_batch(tmp_path):
    depth = np.zeros((4, 6), dtype=np.float32)
    depth[1, 2], depth[3, 4] = 5.0, 20.0
    write_image(tmp_path / "a.png", 6, 4, seed=1)
    write_image(tmp_path / "b.png", 6, 4, seed=2)
    save_depth_png(depth, tmp_path / "a_d.png")
    entries = [{"image": "a.png", "depth": "a_d.png"}, {"image": "b.png"}]
    records = read_manifest(write_jsonl(tmp_path / "m.jsonl", entries), CLASSES)
    dataset = ManifestDataset(records, build_transform((4, 6), False), pixel_labels=["depth"])
    batch = collate([dataset[0], dataset[1]])
    assert (
        batch.maps["depth"].shape == (2, 1, 4, 6) and not batch.maps["depth"][1].any()
    )  # zero-filled
    pred = torch.full((2, 1, 4, 6), 10.0)
    loss, count = silog_loss(pred, batch.maps["depth"])
    alone, _ = silog_loss(pred[:1], batch.maps["depth"][:1])
    assert count == 2 and float(loss) == pytest.approx(float(alone))
    assert "depth" not in collate([dataset[1], dataset[1]]).maps


def test_crop_zoom_by_hand():
    # A 127x84 crop of a 160x96 image, resized to any size: magnified 160/127 and 96/84.
    applied = [("HorizontalFlip", {}), ("RandomResizedCrop", {"crop_coords": (20, 4, 147, 88)})]
    assert crop_zoom(applied, (96, 160)) == pytest.approx(((160 / 127) * (96 / 84)) ** 0.5)
    assert crop_zoom([("Resize", {})], (96, 160)) == 1.0


def test_zoom_correction_divides_the_moved_values_by_the_crop_zoom(tmp_path):
    """With data.depth_zoom_correction, depth after scale-crop is the hand-moved source divided
    by the crop's zoom, read from a replay of the same seeded pipeline; 0 stays 0."""
    depth = _unique_depth()
    image = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    save_depth_png(depth, tmp_path / "a_depth.png")
    records = read_manifest(
        write_jsonl(tmp_path / "m.jsonl", [{"image": "a.png", "depth": "a_depth.png"}]), CLASSES
    )
    dataset = ManifestDataset(
        records, build_transform((64, 96), True), pixel_labels=["depth"], depth_zoom_correction=True
    )
    replay = build_transform((64, 96), True)
    replay.save_applied_params = True
    dataset.transform.set_random_seed(7)
    replay.set_random_seed(7)
    zooms = []
    for _ in range(6):
        sample = dataset[0]
        out = replay(
            image=image,
            mask=depth,
            bboxes=np.zeros((0, 4), dtype=np.float32),
            box_labels=[],
            box_ids=[],
        )
        applied = dict(out["applied_transforms"])
        moved = depth[:, ::-1] if "HorizontalFlip" in applied else depth
        x1, y1, x2, y2 = applied["RandomResizedCrop"]["crop_coords"]
        zoom = ((W / (x2 - x1)) * (H / (y2 - y1))) ** 0.5
        expected = _nearest_resize(moved[y1:y2, x1:x2], 64, 96) / zoom
        np.testing.assert_allclose(sample.maps["depth"][0].numpy(), expected, rtol=1e-6)
        assert ((sample.maps["depth"][0] == 0).numpy() == (expected == 0)).all()
        zooms.append(zoom)
    assert min(zooms) >= 1.0 and max(zooms) > 1.05  # real crops were exercised
