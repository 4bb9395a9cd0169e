"""Segmentation end to end through the command line: fit, test, predict, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drivemtl.cli import main
from drivemtl.data.synthetic import SEGMENTATION_CLASSES, SyntheticConfig, render_scene
from tests.conftest import FAST_FIT, write_jsonl

SIZE = (64, 96)  # (height, width) on disk and at the network: test and evaluate see the same
FAST = [*FAST_FIT, f"--data.image_size=[{SIZE[0]}, {SIZE[1]}]"]


def _make_split(root: Path, name: str, n: int, seed: int) -> Path:
    """Synthetic scenes with masks; the last image has none (a partially labelled set)."""
    config = SyntheticConfig(width=SIZE[1], height=SIZE[0])
    entries = []
    for i in range(n):
        scene = render_scene(np.random.default_rng([seed, i]), config)
        image = f"images/{name}/{i:04d}.png"
        (root / image).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.image).save(root / image)
        entry = {"image": image, "presence": {}}
        if i < n - 1:
            entry["segmentation"] = f"masks/{name}/{i:04d}.png"
            (root / entry["segmentation"]).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(scene.segmentation).save(root / entry["segmentation"])
        entries.append(entry)
    return write_jsonl(root / f"{name}.jsonl", entries)


@pytest.fixture(scope="module")
def trained(module_tmp, one_thread):
    root = module_tmp("segmentation")
    train = _make_split(root, "train", 12, seed=1)
    val = _make_split(root, "val", 6, seed=2)
    run = root / "run"
    code = main(
        [
            "fit",
            *FAST,
            f"--data.train_manifest={train}",
            f"--data.val_manifest={val}",
            "--model.tasks={segmentation: {}}",
            "--trainer.max_epochs=2",
            f"--trainer.default_root_dir={run}",
        ]
    )
    assert code == 0
    return root, run, val


def _true_pixels(manifest: Path) -> int:
    total = 0
    for line in manifest.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("segmentation"):
            total += int(
                (np.asarray(Image.open(manifest.parent / entry["segmentation"])) < 255).sum()
            )
    return total


def test_fit_reports_iou_per_class_and_monitors_mean_iou(trained):
    _, run, val = trained
    report = json.loads((run / "metrics.json").read_text())["segmentation"]
    assert list(report["per_class"]) == list(SEGMENTATION_CLASSES)
    assert report["images"] == 5  # 6 validation images, one without a mask
    assert report["labelled_pixels"] == _true_pixels(val)  # same size: every pixel scored
    assert 0.0 <= report["miou"] <= 1.0
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert any("'monitor': 'val/segmentation/miou'" in k for k in ckpt["callbacks"])


def test_test_and_evaluate_agree_on_the_predicted_masks(trained, tmp_path, capsys):
    root, run, val = trained
    ckpt = run / "checkpoints" / "best.ckpt"
    tested = tmp_path / "test"
    code = main(
        [
            "test",
            *FAST,
            f"--ckpt_path={ckpt}",
            f"--data.test_manifest={val}",
            f"--trainer.default_root_dir={tested}",
        ]
    )
    assert code == 0
    in_loop = json.loads((tested / "metrics.json").read_text())["segmentation"]

    out = tmp_path / "pred"
    code = main(
        [
            "predict",
            f"--ckpt_path={ckpt}",
            f"--data.predict_dir={root / 'images' / 'val'}",
            f"--output_dir={out}",
            "--overlays",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert code == 0
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [x["segmentation"] for x in lines] == [f"segmentation/{i:04d}.png" for i in range(6)]
    mask = np.asarray(Image.open(out / "segmentation" / "0000.png"))
    assert mask.shape == SIZE and mask.dtype == np.uint8
    assert mask.max() < len(SEGMENTATION_CLASSES)
    assert (out / "segmentation_preview" / "0000.png.jpg").is_file()
    assert (out / "overlays" / "0000.png.jpg").is_file()
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["segmentation_classes"] == list(SEGMENTATION_CLASSES)
    assert run_info["stats"]["segmentation_maps"] == 6
    assert "Segmentation: " in capsys.readouterr().out

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
    offline = json.loads((evaluation / "metrics.json").read_text())["segmentation"]
    assert offline["labelled_pixels"] == in_loop["labelled_pixels"] == _true_pixels(val)
    assert offline["miou"] == pytest.approx(in_loop["miou"], abs=1e-9)
    assert offline["per_class"] == in_loop["per_class"]  # the same pixels, the same counts
    assert "## Segmentation" in (evaluation / "report.md").read_text()
    assert "segmentation: miou=" in capsys.readouterr().out
