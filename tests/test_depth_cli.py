"""Depth end to end through the command line: fit, validate, predict, evaluate; KITTI frames."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drivemtl.cli import main
from drivemtl.converters import main as convert
from drivemtl.data.datasets import ImageFolderDataset, collate_images, find_images
from drivemtl.data.io import load_depth, save_depth_png
from drivemtl.data.transforms import build_transform
from drivemtl.metrics.depth import METRICS
from drivemtl.module import MultiTaskModule
from tests.conftest import CLASSES, FAST_FIT, require_shared_data, write_jsonl

FAST = FAST_FIT
ORIGINAL = (75, 110)  # (height, width) on disk; the network sees 64x96


def _make_split(root: Path, name: str, n: int, seed: int) -> Path:
    """Images under images/<name>/sub/, sparse depth (nearer towards the bottom, about 30 %
    of pixels measured) under depth/<name>/; the last image has no depth."""
    rng = np.random.default_rng(seed)
    height, width = ORIGINAL
    rows = np.linspace(60.0, 4.0, height, dtype=np.float32)[:, None]
    entries = []
    for i in range(n):
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        rel = f"images/{name}/sub/{i:04d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / rel)
        entry = {"image": rel, "presence": {c: int(rng.random() < 0.5) for c in CLASSES}}
        if i < n - 1:
            depth = np.where(rng.random((height, width)) < 0.3, rows * (1 + 0.1 * i), 0.0)
            entry["depth"] = f"depth/{name}/{i:04d}.png"
            (root / entry["depth"]).parent.mkdir(parents=True, exist_ok=True)
            save_depth_png(depth, root / entry["depth"])
        entries.append(entry)
    return write_jsonl(root / f"{name}.jsonl", entries)


@pytest.fixture(scope="module")
def trained(module_tmp, one_thread):
    """A depth-first (so the best checkpoint minimises AbsRel) presence + depth model."""
    root = module_tmp("depth")
    train = _make_split(root, "train", 12, seed=1)
    val = _make_split(root, "val", 6, seed=2)
    run = root / "run"
    code = main(
        [
            "fit",
            *FAST,
            "--data.image_size=[64, 96]",
            f"--data.train_manifest={train}",
            f"--data.val_manifest={val}",
            "--model.tasks={depth: {}, presence: {}}",
            "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=2",
            f"--trainer.default_root_dir={run}",
        ]
    )
    assert code == 0
    return root, run, val


def _gt_pixels(manifest: Path, max_depth: float = 80.0) -> int:
    """Non-zero ground-truth pixels below the cap, read straight from the PNGs."""
    total = 0
    for line in manifest.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("depth"):
            raw = np.asarray(Image.open(manifest.parent / entry["depth"])).astype(np.float64)
            total += int(((raw > 0) & (raw / 256 < max_depth)).sum())
    return total


def test_fit_reports_depth_and_keeps_the_lowest_abs_rel(trained):
    root, run, _ = trained
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"depth", "presence"}
    depth = metrics["depth"]
    assert set(depth) == {*METRICS, "valid_pixels", "images"}
    # Depth was decoded although no data option asked for it: linked from model.tasks.
    assert depth["images"] == 5  # 6 validation images, one without depth
    assert all(isinstance(depth[m], float) for m in METRICS)
    # Scored at the 64x96 input: about 30 % of 5 * 64 * 96 nearest-resampled pixels.
    assert 0.25 * 5 * 64 * 96 < depth["valid_pixels"] < 0.35 * 5 * 64 * 96

    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    # The callback that keeps best.ckpt (another one writes last.ckpt every epoch).
    (key,) = [k for k in ckpt["callbacks"] if "'monitor': 'val/depth/abs_rel'" in k]
    assert key.startswith("ModelCheckpoint") and "'mode': 'min'" in key
    with open(run / "metrics.csv") as f:
        per_epoch = [
            float(r["val/depth/abs_rel"]) for r in csv.DictReader(f) if r.get("val/depth/abs_rel")
        ]
    # Two epochs, then the best checkpoint validated again after fit.
    assert len(per_epoch) == 3
    best = ckpt["callbacks"][key]["best_model_score"]
    assert float(best) == pytest.approx(min(per_epoch[:2])) == pytest.approx(per_epoch[2])
    assert depth["abs_rel"] == pytest.approx(min(per_epoch), rel=1e-5)


def test_validate_from_the_checkpoint_alone_loads_depth(trained, tmp_path):
    _, run, val = trained
    code = main(
        [
            "validate",
            *FAST,
            f"--ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
            f"--data.val_manifest={val}",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert code == 0
    again = json.loads((tmp_path / "metrics.json").read_text())["depth"]
    first = json.loads((run / "metrics.json").read_text())["depth"]
    assert again["valid_pixels"] == first["valid_pixels"] > 0
    assert again["abs_rel"] == pytest.approx(first["abs_rel"], rel=1e-5)


def test_predict_writes_depth_pngs_in_metres_and_evaluate_scores_them(trained, tmp_path, capsys):
    root, run, val = trained
    ckpt = run / "checkpoints" / "best.ckpt"
    folder, out = root / "images" / "val", tmp_path / "pred"
    code = main(
        ["predict", f"--ckpt_path={ckpt}", f"--data.predict_dir={folder}", f"--output_dir={out}"]
    )
    assert code == 0
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [x["depth"] for x in lines] == [f"depth/sub/{i:04d}.png" for i in range(6)]
    assert (out / "depth_preview" / "sub" / "0000.png.jpg").is_file()

    # The PNG holds the model's own output at the original size, to 1/512 m.
    model = MultiTaskModule.load_from_checkpoint(ckpt).eval()
    dataset = ImageFolderDataset(find_images(folder), build_transform((64, 96), False), 4)
    batch = collate_images([dataset[0], dataset[1]])
    with torch.no_grad():
        rows = model.predict_step(batch, 0)
    for i, row in enumerate(rows):
        written = load_depth(out / "depth" / "sub" / f"{i:04d}.png")
        assert written.shape == ORIGINAL
        np.testing.assert_allclose(written, row["depth"].numpy(), atol=0.5 / 256 + 1e-4)

    evaluation = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            f"--predictions={out / 'predictions.jsonl'}",
            f"--manifest={val}",
            f"--output_dir={evaluation}",
        ]
    )
    assert code == 0
    depth = json.loads((evaluation / "metrics.json").read_text())["depth"]
    # At the original resolution every measured pixel counts.
    assert depth["valid_pixels"] == _gt_pixels(val) and depth["images"] == 5
    assert "## Depth" in (evaluation / "report.md").read_text()
    assert "depth: abs_rel=" in capsys.readouterr().out


def test_kitti_frames_end_to_end(tmp_path, capsys):
    """Converted KITTI frames (sparse LiDAR): fit fast, predict, evaluate; every non-zero
    ground-truth pixel is scored (all lie within the default 80 m cap, checked here)."""
    kitti = require_shared_data() / "kitti-dev"
    manifest = tmp_path / "kitti.jsonl"
    code = convert(
        [
            "kitti",
            f"--labels={kitti / 'label_2'}",
            f"--images={kitti / 'image_2'}",
            f"--depth={kitti / 'depth'}",
            f"--out={manifest}",
        ]
    )
    assert code == 0
    nonzero, largest = 0, 0.0
    for png in sorted((kitti / "depth").glob("*.png")):
        raw = np.asarray(Image.open(png)).astype(np.float64)
        nonzero += int((raw > 0).sum())
        largest = max(largest, raw.max() / 256)
    assert nonzero == 20209 + 18600 + 20164  # the data README's counts
    assert largest < 80.0, "GT beyond the 80 m cap: the count check needs --max_depth"

    run = tmp_path / "run"
    code = main(
        [
            "fit",
            *FAST,
            "--data.image_size=[64, 192]",
            f"--data.train_manifest={manifest}",
            f"--data.val_manifest={manifest}",
            "--model.tasks={presence: {}, depth: {}}",
            "--trainer.max_epochs=1",
            f"--trainer.default_root_dir={run}",
        ]
    )
    assert code == 0
    assert json.loads((run / "metrics.json").read_text())["depth"]["images"] == 3

    out = tmp_path / "pred"
    code = main(
        [
            "predict",
            f"--ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
            f"--data.predict_dir={kitti / 'image_2'}",
            f"--output_dir={out}",
        ]
    )
    assert code == 0
    for name in ("000000", "000001", "000002"):
        with (
            Image.open(out / "depth" / f"{name}.png") as pred,
            Image.open(kitti / "image_2" / f"{name}.png") as image,
        ):
            assert pred.size == image.size and pred.mode == "I;16"

    evaluation = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            f"--predictions={out / 'predictions.jsonl'}",
            f"--manifest={manifest}",
            f"--output_dir={evaluation}",
        ]
    )
    assert code == 0
    depth = json.loads((evaluation / "metrics.json").read_text())["depth"]
    assert depth["valid_pixels"] == nonzero and depth["images"] == 3
    assert all(depth[m] is not None for m in METRICS)


def test_images_sharing_a_stem_keep_separate_depth_maps(trained, tmp_path):
    _, run, _ = trained
    folder, out = tmp_path / "frames", tmp_path / "pred"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for name in ("a.png", "a.jpg", "b.png"):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(folder / name)
    ckpt = run / "checkpoints" / "best.ckpt"
    code = main(
        [
            "predict",
            f"--ckpt_path={ckpt}",
            f"--data.predict_dir={folder}",
            f"--output_dir={out}",
            "--no_depth_preview",
        ]
    )
    assert code == 0
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    # The contract's depth/<stem>.png, except where two images share the stem.
    assert {x["image"]: x["depth"] for x in lines} == {
        "a.jpg": "depth/a.jpg.png",
        "a.png": "depth/a.png.png",
        "b.png": "depth/b.png",
    }
    assert all((out / x["depth"]).is_file() for x in lines)
    assert not (out / "depth_preview").exists()
