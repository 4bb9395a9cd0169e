"""Golden files: the user-visible outputs of ``evaluate``, ``predict`` and ``test``, frozen.

The contracts (``metrics.json``, ``report.md``, ``matching.json``, the printed tables,
``predictions.jsonl``, ``errors.jsonl``, ``run.json``) are compared with the files under
``tests/golden/``, so a refactor cannot change them by accident:

- ``evaluate`` on hand-written predictions for presence, boxes and depth is deterministic: its
  files and its printed output must match byte for byte (the temporary folder written as
  ``<tmp>``; the floats of ``metrics.json`` to 9 decimals).
- ``predict`` and ``test`` run a seeded, barely trained network whose numbers differ in their last
  bits between CPUs: their outputs are compared as *shapes* (every key in order, every type,
  every literal string), with each float written as ``<float>`` and each number of a table
  as ``#``.

A deliberate change of a contract regenerates the files:
``DRIVEMTL_UPDATE_GOLDEN=1 pytest tests/test_golden.py``, then review the diff.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drivemtl.cli import main
from drivemtl.data.io import save_depth_png
from tests.conftest import CLASSES, FAST_FIT, write_jsonl

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("DRIVEMTL_UPDATE_GOLDEN") == "1"
SIZE = (40, 60)  # (height, width) of every image and depth map on disk


def check_golden(name: str, text: str) -> None:
    """Compare ``text`` with ``tests/golden/<name>`` (or write it when updating)."""
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.is_file(), f"{path} is missing: DRIVEMTL_UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == path.read_text(), f"{name} differs from its golden file"


def shape(value):
    """A JSON value with its numbers replaced by their type, for outputs of a network.

    A list of scalars (a box, a class list) keeps every position; a list of containers (the
    boxes of an image) keeps one entry per distinct item shape, as its length depends on the
    network. Strings inside such items (a box's class) become ``<str>``.
    """
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        if not any(isinstance(item, (list, dict)) for item in value):
            return [shape(item) for item in value]
        shapes = []
        for item in value:
            item_shape = _strings_hidden(shape(item))
            if item_shape not in shapes:
                shapes.append(item_shape)
        return shapes
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return "<float>"
    if isinstance(value, int):
        return "<int>"
    return value


def rounded(value, digits: int = 9):
    """A JSON value with every float rounded to ``digits`` decimals."""
    if isinstance(value, dict):
        return {key: rounded(item, digits) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item, digits) for item in value]
    return round(value, digits) if isinstance(value, float) else value


def _strings_hidden(value):
    if isinstance(value, list):
        return [_strings_hidden(item) for item in value]
    if isinstance(value, dict):
        return {key: _strings_hidden(item) for key, item in value.items()}
    return "<str>" if isinstance(value, str) and not value.startswith("<") else value


def masked(text: str, *folders: Path) -> str:
    """``text`` with each temporary folder written as ``<tmp>``."""
    for folder in folders:
        text = text.replace(str(folder), "<tmp>")
    return text


def numbers_hashed(text: str) -> str:
    """Every number and every empty cell (``-``) of a printed table as `` #``: the headers, the
    rows and the words are the contract, the values (and so the cell widths) the network's."""
    hashed = re.sub(r"(?<![\w.-])(-?\d+(\.\d+)?(e-?\d+)?|-)(?![\w.-])", "#", text)
    return re.sub(r" +#", " #", hashed)


# -- evaluate: byte for byte -------------------------------------------------------------

PRESENCE = {  # per image: label per class (manifest), probability per class (prediction)
    "a.png": (
        {"pedestrian": 1, "car": 0, "stop_sign": "?", "traffic_light": 1},
        (0.9, 0.6, 0.4, 0.7),
    ),
    "b.png": (
        {"pedestrian": 0, "car": 1, "stop_sign": 0, "traffic_light": "?"},
        (0.7, 0.8, 0.1, 0.5),
    ),
    "c.png": (
        {"pedestrian": 1, "car": 1, "stop_sign": 1, "traffic_light": 0},
        (0.6, 0.55, 0.9, 0.2),
    ),
    "d.png": (
        {"pedestrian": 0, "car": "?", "stop_sign": 0, "traffic_light": 0},
        (0.45, 0.5, 0.3, 0.6),
    ),
}
BOXES = {  # per image: ground truth, predictions (x1, y1, x2, y2, class[, score])
    "a.png": ([[2, 2, 20, 30, "pedestrian"]], [[3, 2, 21, 29, "pedestrian", 0.9]]),
    "b.png": ([[10, 5, 50, 35, "car"]], [[12, 6, 49, 33, "car", 0.7], [0, 0, 8, 8, "car", 0.3]]),
    "c.png": (
        [[1, 1, 15, 30, "pedestrian"], [30, 10, 58, 38, "car"], [40, 0, 50, 10, "stop_sign"]],
        [[30, 12, 57, 38, "car", 0.8], [41, 1, 50, 9, "stop_sign", 0.6]],
    ),
    "d.png": ([], [[5, 5, 25, 25, "pedestrian", 0.4]]),
}


def _depth_map(seed: int, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.linspace(40.0, 3.0, SIZE[0])[:, None] * np.ones(SIZE[1])
    return rows * scale * (1 + 0.05 * rng.standard_normal(SIZE))


def _write_evaluation_case(root: Path) -> tuple[Path, Path]:
    manifest, predictions = [], []
    for i, (image, (labels, scores)) in enumerate(PRESENCE.items()):
        truth, predicted = BOXES[image]
        entry = {"image": f"img/{image}", "presence": labels, "boxes": truth}
        row = {
            "image": f"img/{image}",
            "presence": dict(zip(CLASSES, scores)),
            "present": [c for c, s in zip(CLASSES, scores) if s >= 0.5],
            "boxes": predicted,
        }
        if i < 3:  # the last image has no depth ground truth
            entry["depth"] = f"depth/{image}"
            gt = _depth_map(i)
            gt[::3] = 0.0  # sparse, as from a lidar
            (root / "data" / "depth").mkdir(parents=True, exist_ok=True)
            save_depth_png(gt, root / "data" / entry["depth"])
        row["depth"] = f"depth/img/{Path(image).stem}.png"
        (root / "pred" / "depth" / "img").mkdir(parents=True, exist_ok=True)
        save_depth_png(_depth_map(10 + i, 1.1), root / "pred" / row["depth"])
        manifest.append(entry)
        predictions.append(row)
    write_jsonl(root / "data" / "labels.jsonl", manifest)
    write_jsonl(root / "pred" / "predictions.jsonl", predictions)
    return root / "pred" / "predictions.jsonl", root / "data" / "labels.jsonl"


def test_evaluate_outputs_are_unchanged(tmp_path, capsys):
    predictions, manifest = _write_evaluation_case(tmp_path)
    out = tmp_path / "eval"
    args = [f"--predictions={predictions}", "--manifest", str(manifest), f"--output_dir={out}"]
    assert main(["evaluate", *args, "--no_plots", "--quiet"]) == 0
    printed = capsys.readouterr()
    check_golden("evaluate/stdout.txt", masked(printed.out, tmp_path))
    for name in ("report.md", "matching.json"):
        check_golden(f"evaluate/{name}", masked((out / name).read_text(), tmp_path))
    # Its floats to 9 decimals: a sum's last bits follow the CPU's vector width.
    metrics = json.loads((out / "metrics.json").read_text())
    check_golden("evaluate/metrics.json", json.dumps(rounded(metrics), indent=2) + "\n")


# -- predict and test: shapes ------------------------------------------------------------

FAST = [*FAST_FIT, "--data.image_size=[64, 96]", "--data.batch_size=2"]  # the last one counts


@pytest.fixture(scope="module")
def trained(module_tmp):
    """A presence + detection + depth network after two steps on the evaluation case."""
    root = module_tmp("golden")
    _, manifest = _write_evaluation_case(root)
    for image in PRESENCE:
        rng = np.random.default_rng(len(image))
        pixels = rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8)
        (root / "data" / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "data" / "img" / image)
    (root / "data" / "img" / "empty.png").write_bytes(b"")  # a line of errors.jsonl
    run = root / "run"
    code = main(
        [
            "fit",
            *FAST,
            "--seed_everything=0",
            f"--data.train_manifest={manifest}",
            f"--data.val_manifest={manifest}",
            # min_score 0: every image has boxes, however untrained the network.
            "--model.tasks={presence: {}, detection: {min_score: 0.0}, depth: {}}",
            "--trainer.max_steps=2",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={run}",
        ]
    )
    assert code == 0
    return root, run / "checkpoints" / "last.ckpt", manifest


def _jsonl_shapes(path: Path) -> str:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return "".join(json.dumps(shape(line)) + "\n" for line in lines)


def test_predict_outputs_keep_their_shape(trained, tmp_path):
    root, checkpoint, _ = trained
    out = tmp_path / "pred"
    code = main(
        [
            "predict",
            f"--ckpt_path={checkpoint}",
            f"--data.predict_dir={root / 'data' / 'img'}",
            f"--output_dir={out}",
            # Every class decided present: the decisions of a barely trained network would
            # otherwise hang on its last bits.
            "--thresholds=pedestrian=0,car=0,stop_sign=0,traffic_light=0",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert code == 0
    check_golden("predict/predictions.jsonl", _jsonl_shapes(out / "predictions.jsonl"))
    # errors.jsonl holds no number of the network's: byte for byte.
    check_golden("predict/errors.jsonl", masked((out / "errors.jsonl").read_text(), root))
    run = json.loads(masked((out / "run.json").read_text(), root, tmp_path))
    check_golden("predict/run.json", json.dumps(shape(run), indent=2) + "\n")


def test_test_prints_its_tables_and_metrics_unchanged_in_shape(trained, tmp_path, capsys):
    root, checkpoint, manifest = trained
    run = tmp_path / "test"
    code = main(
        [
            "test",
            *FAST,
            f"--ckpt_path={checkpoint}",
            f"--data.test_manifest={manifest}",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={run}",
        ]
    )
    assert code == 0
    printed = masked(capsys.readouterr().out, root, tmp_path)
    check_golden("test/stdout.txt", numbers_hashed(printed))
    metrics = json.loads((run / "metrics.json").read_text())
    check_golden("test/metrics.json", json.dumps(shape(metrics), indent=2) + "\n")
