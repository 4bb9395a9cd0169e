"""A trained model outside the CLI: the Python predictor, export with ``--check``, and exported
files run by ``drivemtl predict``, for every head set (presence, + detection, + depth and
segmentation)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import drivemtl
from drivemtl.checkpoints import load_checkpoint
from drivemtl.cli import main
from drivemtl.data.io import load_depth
from drivemtl.deploy.card import CARD_FILE
from drivemtl.deploy.check import synthetic_images
from drivemtl.deploy.runtimes import file_kind, read_card
from drivemtl.errors import DriveMTLError
from drivemtl.prediction import iter_jsonl

pytest.importorskip("onnxruntime", reason="the [export] extra is not installed")

HEAD_SETS = {
    "presence": "{presence: {}}",
    "presence+detection": "{presence: {}, detection: {min_score: 0.0}}",
    "all heads": "{presence: {}, detection: {min_score: 0.0}, depth: {}, segmentation: {}}",
}
FULL = "all heads"
TINY = [
    "--data.image_size=[64, 96]",
    "--data.synthetic.width=120",
    "--data.synthetic.height=80",
    "--data.synthetic.train=4",
    "--data.synthetic.val=2",
    "--data.synthetic.test=2",
    "--data.batch_size=2",
    "--data.num_workers=0",
    "--trainer.max_steps=2",
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--seed_everything=0",
]
QUIET = ["--trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def checkpoints(module_tmp) -> dict[str, Path]:
    """One barely trained checkpoint per head set (boxes down to score 0, so every image has
    some)."""
    root = module_tmp("deploy")
    out = {}
    for name, tasks in HEAD_SETS.items():
        run = root / name
        code = main(
            [
                "fit",
                *TINY,
                f"--model.tasks={tasks}",
                f"--data.cache_dir={root / 'cache'}",
                f"--trainer.default_root_dir={run}",
            ]
        )
        assert code == 0
        out[name] = run / "checkpoints" / "last.ckpt"
    return out


@pytest.fixture(scope="module")
def images(module_tmp) -> Path:
    """Synthetic scenes of two sizes, as JPEG and PNG files."""
    folder = module_tmp("deploy-images")
    for i, array in enumerate(synthetic_images(5)):
        if i % 2:
            array = np.ascontiguousarray(array[: array.shape[0] // 2 + 7, ::2])  # other size
        Image.fromarray(array).save(folder / f"scene{i}.{'png' if i % 2 else 'jpg'}")
    return folder


def _predict_cli(ckpt: Path, images: Path, out: Path, *extra: str) -> list[dict]:
    args = ["predict", f"--ckpt_path={ckpt}", f"--data.predict_dir={images}"]
    code = main([*args, "--data.batch_size=2", f"--output_dir={out}", *QUIET, *extra])
    assert code == 0
    rows = [row for _, row in iter_jsonl(out / "predictions.jsonl")]
    for row in rows:
        if "depth" in row:
            row["depth"] = load_depth(out / row["depth"])
        if "segmentation" in row:
            row["segmentation"] = np.asarray(Image.open(out / row["segmentation"]))
    return sorted(rows, key=lambda r: r["image"])


def _agreement(ckpt: Path, expected: list[dict], actual: list[dict]) -> dict:
    predictor = drivemtl.load(ckpt, workers=0)
    found = {}
    for task in predictor.tasks.values():
        found.update(task.agreement(expected, actual))
    return found


# -- the Python predictor -------------------------------------------------------------------------


def test_predictor_returns_what_predict_writes(checkpoints, images, tmp_path):
    """Same images, same batches: the same presence and boxes to the last digit, and the depth
    map that the PNG stores (metres x 256, rounded)."""
    ckpt = checkpoints[FULL]
    written = _predict_cli(ckpt, images, tmp_path / "out")
    paths = sorted(images.iterdir())
    rows = drivemtl.load(ckpt).predict(paths, batch_size=2)
    assert [Path(r["image"]).name for r in rows] == [r["image"] for r in written]
    for row, line in zip(rows, written):
        assert row["presence"] == line["presence"]
        assert row["present"] == line["present"]
        assert row["boxes"] == line["boxes"]
        assert row["boxes"], "min_score 0 lists boxes on every image"
        depth = row["depth"]
        assert isinstance(depth, np.ndarray) and depth.dtype == np.float32
        assert depth.shape == line["depth"].shape == Image.open(row["image"]).size[::-1]
        np.testing.assert_allclose(depth, line["depth"], atol=0.5 / 256 + 1e-6)
        mask = row["segmentation"]
        assert mask.dtype == np.uint8 and mask.shape == depth.shape
        np.testing.assert_array_equal(mask, line["segmentation"])  # PNG: lossless


def test_predictor_takes_paths_pil_arrays_and_tensors(checkpoints, images):
    predictor = drivemtl.load(checkpoints[FULL], workers=2)
    path = sorted(images.glob("*.png"))[0]
    array = np.asarray(Image.open(path).convert("RGB"))
    kinds = [
        path,
        str(path),
        Image.open(path),
        array,
        torch.from_numpy(array).permute(2, 0, 1),
        torch.from_numpy(array).permute(2, 0, 1).float() / 255.0,
    ]
    rows = predictor.predict(kinds, batch_size=4)
    assert [r["image"] for r in rows] == [str(path), str(path), None, None, None, None]
    for row in rows[1:]:
        assert row["presence"] == rows[0]["presence"]
        assert row["boxes"] == rows[0]["boxes"]
        np.testing.assert_array_equal(row["depth"], rows[0]["depth"])
    one = predictor.predict(array)  # a single image is a list of one
    assert len(one) == 1 and one[0]["presence"] == rows[0]["presence"]
    height, width = array.shape[:2]
    for x1, y1, x2, y2, name, score in rows[0]["boxes"]:
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert name in predictor.classes and 0.0 <= score <= 1.0


def test_predictor_thresholds_decide_presence(checkpoints, images):
    predictor = drivemtl.load(checkpoints["presence"])
    image = sorted(images.iterdir())[0]
    assert predictor.set_thresholds({c: 0.0 for c in predictor.classes})
    assert predictor.predict(image)[0]["present"] == predictor.classes
    predictor.set_thresholds({c: 1.0 for c in predictor.classes})
    row = predictor.predict(image)[0]
    assert row["present"] == [c for c, p in row["presence"].items() if p >= 1.0]
    with pytest.raises(DriveMTLError, match="not_a_class"):
        predictor.set_thresholds({"not_a_class": 0.5})


def test_predictor_is_lightning_free(checkpoints, images):
    image = str(images / "scene0.jpg")
    code = (
        "import sys, drivemtl\n"
        f"rows = drivemtl.load({str(checkpoints[FULL])!r}).predict({image!r})\n"
        "assert rows[0]['boxes']\n"
        "print(sorted(m for m in sys.modules if m == 'lightning' or m.startswith('lightning.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_predictor_bad_inputs_say_what_is_wrong(checkpoints, tmp_path):
    predictor = drivemtl.load(checkpoints["presence"])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DriveMTLError, match="broken.jpg: cannot read the image"):
        predictor.predict([broken])
    with pytest.raises(DriveMTLError, match=r"\(H, W, 3\)"):
        predictor.predict(np.zeros((4, 5, 7), dtype=np.uint8))
    with pytest.raises(DriveMTLError, match="uint8 or float"):
        predictor.predict(np.zeros((4, 5, 3), dtype=np.int64))
    with pytest.raises(DriveMTLError, match="batch_size"):
        predictor.predict([], batch_size=0)
    with pytest.raises(DriveMTLError, match="not found"):
        drivemtl.load(tmp_path / "missing.ckpt")


# -- export ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("heads", list(HEAD_SETS))
def test_export_check_and_predict_from_onnx(heads, checkpoints, images, tmp_path, capsys):
    """Export with --check passes, and predictions.jsonl from the ONNX file agrees with the
    checkpoint's within the tolerances (presence 1e-4, boxes 0.5 px, depth 0.1 % plus the PNG's
    rounding)."""
    ckpt, onnx_file = checkpoints[heads], tmp_path / "model.onnx"
    args = ["export", f"--ckpt_path={ckpt}", f"--output={onnx_file}", "--dynamic-batch"]
    assert main([*args, "--check", f"--check_images={images}"]) == 0
    printed = capsys.readouterr().out
    assert "Check passed." in printed and "FAIL" not in printed
    assert file_kind(onnx_file) == "onnx"
    expected = _predict_cli(ckpt, images, tmp_path / "from-ckpt")
    actual = _predict_cli(onnx_file, images, tmp_path / "from-onnx")
    assert [r["image"] for r in actual] == [r["image"] for r in expected]
    info = json.loads((tmp_path / "from-onnx" / "run.json").read_text())
    assert info["checkpoint"] == str(onnx_file.resolve()) and info["status"] == "complete"
    for measure, (value, limit) in _agreement(ckpt, expected, actual).items():
        if not measure.startswith("depth"):  # depth: from PNGs, compared below
            assert value <= limit, (measure, value, limit)
    for e, a in zip(expected, actual):
        if "depth" in e:  # each PNG rounds to 1/256 m: two roundings apart at most
            assert np.all(np.abs(a["depth"] - e["depth"]) <= 1 / 256 + 1e-3 * e["depth"] + 1e-6)
    if "detection" in heads:
        assert all(r["boxes"] for r in actual)


def test_model_card_travels_in_the_files(checkpoints, tmp_path):
    ckpt = checkpoints[FULL]
    stored = load_checkpoint(ckpt)
    thresholds = stored["state_dict"]["net.heads.presence.thresholds"].tolist()
    files = {"onnx": tmp_path / "m.onnx", "torchscript": tmp_path / "m.ts"}
    for fmt, path in files.items():
        assert main(["export", f"--ckpt_path={ckpt}", f"--format={fmt}", f"--output={path}"]) == 0
        card = read_card(path)
        assert card.classes == stored["hyper_parameters"]["classes"]
        assert card.decision_state["presence"]["thresholds"] == pytest.approx(thresholds)
        assert card.image_size == (64, 96) and card.batch == 1
        assert card.outputs[0] == "presence" and "depth" in card.outputs
        assert card.static["detection"]["sizes"] == [[16, 24], [8, 12], [4, 6]]
    with zipfile.ZipFile(files["torchscript"]) as archive:
        assert any(n.endswith(f"/extra/{CARD_FILE}") for n in archive.namelist())


def test_torchscript_fixed_batch_runs_any_batch(checkpoints, images, tmp_path, capsys):
    """A file exported for batch 2 takes 3 images (the last call padded) and agrees with the
    checkpoint through the Python predictor."""
    ckpt, path = checkpoints[FULL], tmp_path / "model.ts"
    args = ["export", f"--ckpt_path={ckpt}", "--format=torchscript", f"--output={path}"]
    assert main([*args, "--batch=2", "--check"]) == 0
    assert "Check passed." in capsys.readouterr().out
    inputs = sorted(images.iterdir())[:3]
    expected = drivemtl.load(ckpt).predict(inputs, batch_size=3)
    actual = drivemtl.load(path).predict(inputs, batch_size=3)
    for measure, (value, limit) in _agreement(ckpt, expected, actual).items():
        assert value <= limit, (measure, value, limit)


def test_check_fails_on_a_file_of_other_weights(checkpoints, tmp_path, capsys):
    """--check compares for real: another checkpoint's export, renamed, does not pass."""
    other = tmp_path / "other.ts"  # TorchScript: the same check, a fraction of ONNX's export time
    args = ["export", f"--ckpt_path={checkpoints['presence']}", "--format=torchscript"]
    code = main([*args, f"--output={other}"])
    assert code == 0
    from drivemtl.deploy.check import check_export

    retrained = tmp_path / "retrained.ckpt"
    stored = load_checkpoint(checkpoints["presence"])
    stored["state_dict"]["net.heads.presence.fc.bias"] += 1.0  # every logit 1 higher
    torch.save(stored, retrained)
    failed = [m for m in check_export(other, retrained) if not m.ok]
    assert any(m.name.startswith("raw presence") for m in failed)


def test_export_bad_inputs(checkpoints, tmp_path, capsys):
    ckpt = checkpoints["presence"]
    assert main(["export", f"--ckpt_path={tmp_path / 'missing.ckpt'}"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["export", f"--ckpt_path={ckpt}", "--batch=0"]) == 2
    assert "--batch must be >= 1" in capsys.readouterr().err
    out = tmp_path / "m.ts"
    assert (
        main(
            [
                "export",
                f"--ckpt_path={ckpt}",
                "--format=torchscript",
                "--opset=17",
                f"--output={out}",
            ]
        )
        == 2
    )
    assert "--opset applies to --format onnx" in capsys.readouterr().err
    assert main(["export", f"--ckpt_path={ckpt}", f"--output={tmp_path / 'm.bin'}"]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: the two batch options exclude each other
        main(["export", f"--ckpt_path={ckpt}", "--batch=2", "--dynamic-batch"])
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"\x08\x07garbage")
    with pytest.raises(DriveMTLError, match="fake.onnx: not a readable ONNX file"):
        drivemtl.load(fake)
    assert not list(tmp_path.glob(".*.partial")), "a failed export leaves no partial file"
    # An existing file is replaced only on request; the checkpoint itself never is.
    kept = tmp_path / "kept.ts"
    kept.write_bytes(b"an earlier export")
    ts = ["export", f"--ckpt_path={ckpt}", "--format=torchscript", f"--output={kept}"]
    assert main(ts) == 2
    assert "already exists: pass --overwrite" in capsys.readouterr().err
    assert kept.read_bytes() == b"an earlier export"
    assert main([*ts, "--overwrite"]) == 0
    assert drivemtl.load(kept).card.classes
    # validate / test / fit need the checkpoint; torch.load's error advised an unsafe retry.
    onnx = tmp_path / "m.onnx"
    assert main(["export", f"--ckpt_path={ckpt}", f"--output={onnx}"]) == 0
    for exported, kind in ((kept, "TorchScript"), (onnx, "ONNX")):
        for command in ("test", "fit"):
            assert main([command, f"--ckpt_path={exported}"]) == 2
            err = capsys.readouterr().err
            assert f"{command} --ckpt_path {exported}: this is an exported {kind} file" in err
    before = Path(ckpt).read_bytes()
    itself = ["export", f"--ckpt_path={ckpt}", "--format=torchscript", f"--output={ckpt}"]
    assert main([*itself, "--overwrite"]) == 2
    assert "is the checkpoint itself" in capsys.readouterr().err
    assert Path(ckpt).read_bytes() == before


def test_onnx_without_a_card_is_refused(tmp_path):
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 1, 1), (torch.zeros(1, 3, 4, 4),), str(plain), dynamo=True)
    with pytest.raises(DriveMTLError, match="no drivemtl model card"):
        drivemtl.load(plain)
