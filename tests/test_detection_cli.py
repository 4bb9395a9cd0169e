"""Presence + detection through the command line: fit (fast mode), test, predict with
overlays, evaluate, and the same on the real COCO subset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drivemtl.cli import main
from tests.conftest import CLASSES, require_shared_data, write_jsonl

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
# A light head; score threshold at the candidate floor so the tiny model's boxes are counted.
TASKS = (
    "--model.tasks={presence: {}, detection: {levels: [3, 4], fpn_channels: 32, head_convs: 1,"
    " score_threshold: 0.05}}"
)
COLOURS = [(255, 40, 40), (40, 255, 40), (40, 40, 255), (255, 255, 40)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on these tiny inputs, thread start-up costs more than the work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _box_split(root: Path, name: str, n: int, seed: int) -> Path:
    """192x128 images with coloured rectangles of the four classes and their boxes.

    Every fourth image has no box annotation (``boxes: null``); every third one leaves the
    traffic light unannotated (``?``, its boxes dropped), as partially labelled sources do.
    """
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(n):
        image = rng.integers(0, 50, (128, 192, 3), dtype=np.uint8)
        boxes = []
        for c, cls in enumerate(CLASSES):
            if rng.random() < 0.5:
                w, h = rng.integers(20, 60), rng.integers(20, 50)
                x, y = rng.integers(0, 192 - w), rng.integers(0, 128 - h)
                image[y : y + h, x : x + w] = COLOURS[c]
                boxes.append([int(x), int(y), int(x + w), int(y + h), cls])
        rel = f"{name}/{i:03d}.png"
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / rel)
        entry = {"image": rel, "boxes": boxes}
        if i % 4 == 3:
            present = {cls: int(any(b[4] == cls for b in boxes)) for cls in CLASSES}
            entry = {"image": rel, "presence": present, "boxes": None}
        elif i % 3 == 2:
            entry["boxes"] = [b for b in boxes if b[4] != "traffic_light"]
            entry["presence"] = {"traffic_light": "?"}
        entries.append(entry)
    return write_jsonl(root / f"{name}.jsonl", entries)


def _fit(root: Path, train: Path, val: Path, *extra: str) -> int:
    return main(
        [
            "fit",
            TASKS,
            f"--data.train_manifest={train}",
            f"--data.val_manifest={val}",
            "--data.image_size=[64, 96]",
            "--data.batch_size=8",
            "--data.num_workers=0",
            "--model.backbone=mobilenet_v3_small",
            "--trainer.accelerator=cpu",
            "--seed_everything=0",
            f"--trainer.default_root_dir={root / 'run'}",
            *QUIET,
            *extra,
        ]
    )


def test_fit_fast_dev_run_with_presence_and_detection(tmp_path, capsys):
    train = _box_split(tmp_path, "train", 16, seed=1)
    assert _fit(tmp_path, train, train, "--trainer.fast_dev_run=true") == 0
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(report) == {"presence", "detection"}
    detection = report["detection"]
    # fast_dev_run validates one batch of 8: images 3 and 7 have no box annotation.
    assert detection["images"] == 6
    light = detection["per_class"]["traffic_light"]
    assert light["images"] == 4  # images 2 and 5 leave the traffic light unannotated
    assert set(light) == {
        "ap50",
        "ap",
        "precision",
        "recall",
        "f1",
        "ground_truth",
        "detections",
        "images",
    }
    assert "detection" in capsys.readouterr().out  # the closing table


@pytest.fixture(scope="module")
def trained(module_tmp):
    root = module_tmp("detection")
    train = _box_split(root, "train", 24, seed=1)
    val = _box_split(root, "val", 12, seed=2)
    code = _fit(root, train, val, "--trainer.max_epochs=1", "--trainer.logger=false")
    assert code == 0
    return {"root": root, "val": val, "ckpt": root / "run" / "checkpoints" / "best.ckpt"}


def test_test_and_predict_then_evaluate_agree(trained, tmp_path, capsys):
    run = tmp_path / "test-run"
    args = [f"--ckpt_path={trained['ckpt']}", "--data.num_workers=0", *QUIET]
    code = main(
        [
            "test",
            *args,
            f"--data.test_manifest={trained['val']}",
            f"--trainer.default_root_dir={run}",
        ]
    )
    assert code == 0
    tested = json.loads((run / "metrics.json").read_text())["detection"]

    out, evaluation = tmp_path / "pred", tmp_path / "eval"
    folder = trained["root"] / "val"
    code = main(
        ["predict", *args, f"--data.predict_dir={folder}", f"--output_dir={out}", "--overlays"]
    )
    assert code == 0
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 12
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["box_score_threshold"] == 0.05
    for line in lines:
        for x1, y1, x2, y2, name, score in line["boxes"]:
            # Original pixels: the 192x128 images, not the 96x64 network input.
            assert 0 <= x1 < x2 <= 192 and 0 <= y1 < y2 <= 128 and name in CLASSES
            assert 0.05 <= score <= 1
    assert max(x2 for line in lines for _, _, x2, *_ in line["boxes"]) > 96
    assert len(list((out / "overlays").rglob("*.jpg"))) == 12
    # The operating point can be overridden for one run; the boxes listed stay the same.
    other = tmp_path / "pred-0.7"
    extra = [f"--data.predict_dir={folder}", f"--output_dir={other}", "--box_score_threshold=0.7"]
    assert main(["predict", *args, *extra]) == 0
    assert json.loads((other / "run.json").read_text())["box_score_threshold"] == 0.7
    assert (other / "predictions.jsonl").read_text() == (out / "predictions.jsonl").read_text()

    code = main(
        [
            "evaluate",
            f"--predictions={out / 'predictions.jsonl'}",
            f"--manifest={trained['val']}",
            f"--output_dir={evaluation}",
            "--no_plots",
        ]
    )
    assert code == 0
    evaluated = json.loads((evaluation / "metrics.json").read_text())["detection"]
    # The same images, boxes and partial-label rules: the same numbers (boxes are rounded to
    # 0.01 px in predictions.jsonl, so AP may move in the last digits).
    assert evaluated["images"] == tested["images"] == 9
    assert evaluated["score_threshold"] == tested["score_threshold"] == 0.05
    for name in CLASSES:
        a, b = tested["per_class"][name], evaluated["per_class"][name]
        for key in ("ground_truth", "detections", "images"):
            assert a[key] == b[key], (name, key)
        for key in ("ap50", "ap", "precision", "recall"):
            assert b[key] == pytest.approx(a[key], abs=2e-3), (name, key)
    assert "## Detection" in (evaluation / "report.md").read_text()
    assert "detection" in capsys.readouterr().out


def test_real_coco_subset_fit_predict_evaluate(tmp_path, capsys):
    shared = require_shared_data()
    coco_dir = shared / "coco128-train"
    manifest = tmp_path / "coco.jsonl"
    command = ["convert", "coco", "--annotations", str(coco_dir / "annotations/instances.json")]
    assert main([*command, "--images", str(coco_dir / "images"), "--out", str(manifest)]) == 0
    run = tmp_path / "run"
    code = main(
        [
            "fit",
            TASKS,
            f"--data.train_manifest={manifest}",
            f"--data.val_manifest={manifest}",
            "--data.image_size=[64, 96]",
            "--data.batch_size=32",
            "--data.num_workers=0",
            "--model.backbone=mobilenet_v3_small",
            "--trainer.accelerator=cpu",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={run}",
            *QUIET,
        ]
    )
    assert code == 0
    out, evaluation = tmp_path / "pred", tmp_path / "eval"
    ckpt = run / "checkpoints" / "best.ckpt"
    code = main(
        [
            "predict",
            f"--ckpt_path={ckpt}",
            f"--data.predict_dir={coco_dir / 'images'}",
            f"--output_dir={out}",
            "--data.num_workers=0",
            *QUIET,
        ]
    )
    assert code == 0
    code = main(
        [
            "evaluate",
            f"--predictions={out / 'predictions.jsonl'}",
            f"--manifest={manifest}",
            f"--output_dir={evaluation}",
            "--no_plots",
        ]
    )
    assert code == 0
    detection = json.loads((evaluation / "metrics.json").read_text())["detection"]
    # Ground truth counted from the COCO file itself: non-crowd boxes of each category.
    instances = json.loads((coco_dir / "annotations/instances.json").read_text())
    ids = {"pedestrian": 1, "car": 3, "traffic_light": 10, "stop_sign": 13}
    for name, category in ids.items():
        expected = sum(
            1
            for a in instances["annotations"]
            if a["category_id"] == category and not a.get("iscrowd")
        )
        assert detection["per_class"][name]["ground_truth"] == expected, name
        assert detection["per_class"][name]["images"] == 128
        assert detection["per_class"][name]["ap50"] is not None
    assert detection["images"] == 128
