"""Tests of the synthetic driving-scene generator: files, labels, geometry, dropout, speed knobs.

Expected geometry is recomputed here from the pinhole-camera formula, never read back from the
generator: f = (W / 2) / tan(hfov / 2), horizon row cy = horizon * H, ground depth of pixel row v is
f * camera_height / (v + 0.5 - cy).
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drivemtl.data.labels import DEFAULT_CLASSES
from drivemtl.data.manifest import read_manifest
from drivemtl.data.synthetic import (
    SyntheticConfig,
    encode_depth,
    generate_dataset,
    png16_bytes,
    render_scene,
)
from drivemtl.errors import DriveMTLError

W, H = 160, 96
SEED = 7
N = 24
ROOT = Path(__file__).resolve().parents[1]


def camera(width: int, height: int, config: SyntheticConfig | None = None):
    """Focal length, horizon row and camera height, from the documented camera model."""
    config = config or SyntheticConfig()
    focal = (width / 2) / math.tan(math.radians(config.hfov_deg) / 2)
    return focal, config.horizon * height, config.camera_height


def read_lines(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]


def all_files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def load_depth(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.float64) / 256.0


@pytest.fixture(scope="module")
def small(module_tmp) -> Path:
    """A small data set without dropout; returns its manifest."""
    out = module_tmp("synthetic") / "a"
    return generate_dataset(out, N, seed=SEED, config=SyntheticConfig(width=W, height=H))


# ------------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files(small, tmp_path):
    again = generate_dataset(
        tmp_path / "b", N, seed=SEED, config=SyntheticConfig(width=W, height=H)
    )
    first, second = all_files(small.parent), all_files(again.parent)
    assert len(first) == 3 * N + 1  # image, depth map, mask per image; the manifest
    assert first == second


def test_several_worker_processes_write_the_same_files(small, tmp_path):
    parallel = generate_dataset(
        tmp_path / "p", N, seed=SEED, config=SyntheticConfig(width=W, height=H), workers=3
    )
    assert all_files(parallel.parent) == all_files(small.parent)


def test_other_seed_gives_other_images(small, tmp_path):
    other = generate_dataset(
        tmp_path / "c", 4, seed=SEED + 1, config=SyntheticConfig(width=W, height=H)
    )
    for i in range(4):
        name = f"images/{i:06d}.jpg"
        assert (small.parent / name).read_bytes() != (other.parent / name).read_bytes()


def test_image_i_does_not_depend_on_num_images(small, tmp_path):
    few = generate_dataset(tmp_path / "d", 5, seed=SEED, config=SyntheticConfig(width=W, height=H))
    for sub in ("images", "depth", "segmentation"):
        for p in sorted((few.parent / sub).iterdir()):
            assert p.read_bytes() == (small.parent / sub / p.name).read_bytes()
    assert read_lines(few) == read_lines(small)[:5]


# ------------------------------------------------------------------------------ manifest, labels


def test_manifest_parses_and_has_the_documented_layout(small):
    records = read_manifest(small, DEFAULT_CLASSES)  # also checks files and boxes in the image
    assert len(records) == N
    for i, entry in enumerate(read_lines(small)):
        assert set(entry) == {"image", "presence", "boxes", "depth", "segmentation"}
        assert entry["image"] == f"images/{i:06d}.jpg"
        assert entry["depth"] == f"depth/{i:06d}.png"
        assert entry["segmentation"] == f"segmentation/{i:06d}.png"
        with Image.open(small.parent / entry["segmentation"]) as im:
            assert im.mode == "L" and im.size == (W, H)
        assert set(entry["presence"]) == set(DEFAULT_CLASSES)
        with Image.open(small.parent / entry["image"]) as im:
            assert im.format == "JPEG" and im.size == (W, H) and im.mode == "RGB"


def test_boxes_lie_inside_the_image_and_are_big_enough(small):
    min_height = SyntheticConfig().min_box_frac * H
    n_boxes = 0
    for entry in read_lines(small):
        for x1, y1, x2, y2, name in entry["boxes"]:
            n_boxes += 1
            assert name in DEFAULT_CLASSES
            assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H
            assert y2 - y1 >= min_height
    assert n_boxes > N  # scenes are not empty


def test_presence_matches_boxes(small):
    for entry in read_lines(small):
        for c in DEFAULT_CLASSES:
            has_box = any(b[4] == c for b in entry["boxes"])
            assert entry["presence"][c] == int(has_box)


def test_class_rates_are_balanced_and_independent(tmp_path):
    manifest = generate_dataset(
        tmp_path / "rates", 200, seed=1, config=SyntheticConfig(width=W, height=H)
    )
    labels = np.array(
        [[e["presence"][c] for c in DEFAULT_CLASSES] for e in read_lines(manifest)], dtype=float
    )
    rates = labels.mean(axis=0)
    assert np.all((rates >= 0.25) & (rates <= 0.75)), dict(zip(DEFAULT_CLASSES, rates))
    corr = np.corrcoef(labels.T)
    off_diagonal = corr[~np.eye(len(DEFAULT_CLASSES), dtype=bool)]
    assert np.all(np.abs(off_diagonal) < 0.25), corr


def test_dropout_makes_unknowns_at_the_rate_and_keeps_pixels(tmp_path):
    n = 80
    plain = generate_dataset(
        tmp_path / "plain", n, seed=3, config=SyntheticConfig(width=W, height=H)
    )
    rates = {"car": 0.5, "stop_sign": 1.0}
    dropped = generate_dataset(
        tmp_path / "drop", n, seed=3, config=SyntheticConfig(width=W, height=H, dropout=rates)
    )
    for sub in ("images", "depth", "segmentation"):
        for p in sorted((plain.parent / sub).iterdir()):
            assert p.read_bytes() == (dropped.parent / sub / p.name).read_bytes()

    unknown = {c: 0 for c in DEFAULT_CLASSES}
    for a, b in zip(read_lines(plain), read_lines(dropped)):
        for c in DEFAULT_CLASSES:
            boxes_a = [box for box in a["boxes"] if box[4] == c]
            boxes_b = [box for box in b["boxes"] if box[4] == c]
            if b["presence"][c] == "?":
                unknown[c] += 1
                assert boxes_b == []  # not annotated: its boxes are gone too
            else:
                assert b["presence"][c] == a["presence"][c]
                assert boxes_b == boxes_a
    assert unknown["stop_sign"] == n
    assert unknown["pedestrian"] == unknown["traffic_light"] == 0
    assert 0.3 * n <= unknown["car"] <= 0.7 * n

    again = generate_dataset(
        tmp_path / "drop2", n, seed=3, config=SyntheticConfig(width=W, height=H, dropout=rates)
    )
    assert again.read_bytes() == dropped.read_bytes()


def test_classes_subset_draws_and_labels_only_those(tmp_path):
    manifest = generate_dataset(
        tmp_path / "sub",
        20,
        seed=0,
        classes=("car", "pedestrian"),
        config=SyntheticConfig(width=W, height=H),
    )
    entries = read_lines(manifest)
    assert all(set(e["presence"]) == {"car", "pedestrian"} for e in entries)
    assert all(b[4] in ("car", "pedestrian") for e in entries for b in e["boxes"])
    assert read_manifest(manifest, ("car", "pedestrian"))


# ------------------------------------------------------------------------------------- depth


def test_depth_png_is_uint16_and_image_sized(small):
    _, cy, _ = camera(W, H)
    sky_zero = []
    for entry in read_lines(small):
        with Image.open(small.parent / entry["depth"]) as im:
            assert im.format == "PNG" and im.size == (W, H)
            raw = np.asarray(im)
        assert raw.dtype == np.uint16
        assert raw.max() <= 80 * 256 + 1  # scenes stay within the 80 m range
        assert raw[-1].min() > 0  # the nearest ground is always measured
        sky_zero.append((raw[: int(cy)] == 0).mean())
    assert np.mean(sky_zero) > 0.3  # above the horizon, sky (no measurement) unless a billboard


def test_ground_depth_follows_the_camera_formula(tmp_path):
    config = SyntheticConfig(width=W, height=H, presence_prob=0.0, distractors=False)
    manifest = generate_dataset(tmp_path / "ground", 3, seed=0, config=config)
    focal, cy, cam_h = camera(W, H, config)
    expected = np.zeros(H)
    for v in range(H):
        below = v + 0.5 - cy
        if below > 0 and focal * cam_h / below <= config.max_depth:
            expected[v] = focal * cam_h / below
    for entry in read_lines(manifest):
        assert entry["boxes"] == []
        depth = load_depth(manifest.parent / entry["depth"])
        assert np.all(np.abs(depth - expected[:, None]) <= 1 / 256 + 1e-6)
        # Bottom row up to the horizon: depth grows strictly while it is measured.
        column = depth[::-1, W // 2]
        valid = column[column > 0]
        assert valid.size > H / 3 and np.all(np.diff(valid) > 0)
        assert np.all(column[valid.size :] == 0)  # beyond range and sky: no measurement


def test_objects_stand_on_the_ground_at_their_depth():
    width, height = 320, 192
    config = SyntheticConfig(width=width, height=height)
    focal, cy, cam_h = camera(width, height, config)
    seen, standing, grounded = 0, 0, 0
    for i in range(30):
        scene = render_scene(np.random.default_rng(np.random.SeedSequence([11, i])), config)
        assert scene.image.shape == (height, width, 3) and scene.image.dtype == np.uint8
        assert scene.depth.shape == (height, width)
        # Through the on-disk encoding: metres x 256 in a 16-bit PNG.
        png = png16_bytes(encode_depth(scene.depth))
        depth = np.asarray(Image.open(io.BytesIO(png))).astype(np.float64) / 256
        assert [(*o.box, o.class_name) for o in scene.objects] == scene.boxes
        for obj in scene.objects:
            seen += 1
            x1, y1, x2, y2 = obj.box
            z = obj.distance
            assert 3 < z < config.max_depth
            # The object's own pixels carry its distance and reach every edge of its box.
            at_z = np.abs(depth[y1:y2, x1:x2] - z) <= 0.5 / 256 + 1e-6
            assert at_z[0].any() and at_z[-1].any() and at_z[:, 0].any() and at_z[:, -1].any()
            assert at_z.sum() >= 0.15 * (x2 - x1) * (y2 - y1)
            # Size set by distance: no object is taller than 2 m.
            assert y2 - y1 <= focal * 2.0 / z + 2
            foot = cy + focal * cam_h / z
            assert y2 <= foot + 1.5  # nothing below the ground contact row
            if obj.class_name in ("car", "pedestrian") and foot < height - 1:
                standing += 1
                grounded += abs(y2 - foot) <= 1.5
    assert seen > 30
    # Feet (or wheels) on the projected ground row, unless a nearer object hides them.
    assert grounded >= 0.7 * standing and standing > 10


def test_png16_round_trip():
    raw = np.random.default_rng(0).integers(0, 65536, size=(13, 29), dtype=np.uint16)
    decoded = np.asarray(Image.open(io.BytesIO(png16_bytes(raw))))
    assert decoded.dtype == np.uint16 and np.array_equal(decoded, raw)


# ------------------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_images": 0}, "num_images"),
        ({"num_images": -3}, "num_images"),
        ({"seed": -1}, "seed"),
        ({"config": SyntheticConfig(dropout={"bicycle": 0.5})}, "bicycle"),
        ({"config": SyntheticConfig(dropout={"car": 1.5})}, "car"),
        ({"config": SyntheticConfig(dropout={"car": -0.1})}, "car"),
        ({"config": SyntheticConfig(width=32, height=24)}, "too small"),
        ({"classes": ("car", "bus")}, "bus"),
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs, message):
    args = {"out_dir": tmp_path / "bad", "num_images": 2, **kwargs}
    with pytest.raises(DriveMTLError, match=message):
        generate_dataset(**args)


def test_cli_prints_counts(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "make_synthetic", ROOT / "data_scripts" / "make_synthetic.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(
        [
            "--out",
            str(tmp_path / "cli"),
            "--num-images",
            "6",
            "--width",
            "96",
            "--height",
            "64",
            "--dropout",
            "stop_sign=1",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert (tmp_path / "cli" / "manifest.jsonl").is_file()
    assert "stop_sign" in out and "unknown" in out
    assert module.main(["--out", str(tmp_path / "x"), "--dropout", "car"]) == 2
