"""``drivemtl predict`` end to end: checkpoint-derived settings, image formats, bad files,
threshold overrides, kill-and-resume, agreement with ``drivemtl test``, and real images."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from PIL import Image

from drivemtl.cli import main
from drivemtl.data.batch import _map_tensors
from drivemtl.data.datasets import ImageBatch, ImageFolderDataset, collate_images, find_images
from drivemtl.data.transforms import build_transform
from drivemtl.errors import DriveMTLError
from drivemtl.prediction import parse_thresholds
from tests.conftest import require_shared_data, run_in_fork, write_jsonl

# Not the default class list, in another order: the checkpoint must carry it to every command.
CLASSES = ["cyclist", "car", "pedestrian"]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def _toy_image(rng: np.random.Generator, on: list[bool]) -> np.ndarray:
    """Class c is present iff a bright square sits in quadrant c (learnable in one epoch)."""
    img = rng.integers(0, 60, (32, 48, 3), dtype=np.uint8)
    for c, flag in enumerate(on):
        if flag:
            y, x = (c // 2) * 16, (c % 2) * 24
            img[y + 4 : y + 12, x + 6 : x + 18] = 255
    return img


def _make_split(root: Path, name: str, n: int, seed: int, unknown_rate: float = 0.0) -> Path:
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(n):
        on = [bool(rng.random() < 0.5) for _ in CLASSES]
        rel = f"{name}/{i:04d}.png"
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_toy_image(rng, on)).save(root / rel)
        presence = {
            c: "?" if rng.random() < unknown_rate else int(flag) for c, flag in zip(CLASSES, on)
        }
        entries.append({"image": rel, "presence": presence})
    return write_jsonl(root / f"{name}.jsonl", entries)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on these tiny inputs, thread start-up and spin-waiting cost more
    than the work (30x more on a loaded 2-core machine). Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(module_tmp, one_thread):
    """One tiny checkpoint for the whole module, trained on a non-default class list."""
    root = module_tmp("trained")
    train = _make_split(root, "train", 24, seed=1, unknown_rate=0.2)
    val = _make_split(root, "val", 16, seed=2, unknown_rate=0.15)
    run = root / "run"
    code = main(
        [
            "fit",
            "--data.image_size=[32, 48]",
            "--data.batch_size=8",
            "--data.num_workers=0",
            f"--data.classes={json.dumps(CLASSES)}",
            f"--data.train_manifest={train}",
            f"--data.val_manifest={val}",
            "--model.backbone=resnet18",
            "--trainer.max_epochs=1",
            "--trainer.accelerator=cpu",
            "--trainer.logger=false",  # no TensorBoard start-up: only the checkpoint matters
            f"--trainer.default_root_dir={run}",
            *QUIET,
        ]
    )
    assert code == 0
    # A test split apart from validation: its thresholds were chosen on val scores exactly,
    # so on val images the boundary case is the norm, not the exception.
    test = _make_split(root, "test", 16, seed=3, unknown_rate=0.15)
    return {"ckpt": run / "checkpoints" / "best.ckpt", "root": root, "val": val, "test": test}


def _predict(ckpt: Path, folder: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "predict",
            f"--ckpt_path={ckpt}",
            f"--data.predict_dir={folder}",
            f"--output_dir={out}",
            "--data.num_workers=0",
            "--data.batch_size=4",
            *QUIET,
            *extra,
        ]
    )


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _checkpoint_thresholds(ckpt: Path) -> list[float]:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return state["net.heads.presence.thresholds"].tolist()


def _mixed_folder(folder: Path) -> list[str]:
    """Every accepted format and mode, nested and in mixed letter case; returns their paths."""
    rng = np.random.default_rng(5)
    rgb = _toy_image(rng, [True, False, True])
    files = {
        "top.png": Image.fromarray(rgb),
        "sub/UPPER.JPG": Image.fromarray(rgb),
        "sub/deeper/b.jpeg": Image.fromarray(rgb),
        "sub/deeper/c.bmp": Image.fromarray(rgb),
        "d.webp": Image.fromarray(rgb),
        "gray.png": Image.fromarray(rgb[..., 0]),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])),
        "sixteen.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
    }
    for rel, image in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / rel)
    (folder / "notes.txt").write_text("not an image extension: ignored")
    return sorted(files)


def test_checkpoint_alone_configures_predict(trained, tmp_path, capsys):
    folder, out = tmp_path / "frames", tmp_path / "out"
    expected = _mixed_folder(folder)
    # Exactly the command of the docs: nothing but checkpoint, folder and output.
    code = main(
        [
            "predict",
            f"--ckpt_path={trained['ckpt']}",
            f"--data.predict_dir={folder}",
            f"--output_dir={out}",
        ]
    )
    assert code == 0
    rows = _lines(out / "predictions.jsonl")
    assert sorted(r["image"] for r in rows) == expected  # relative, "/"-separated
    thresholds = _checkpoint_thresholds(trained["ckpt"])
    for row in rows:
        assert list(row["presence"]) == CLASSES
        for c, t in zip(CLASSES, thresholds):  # probabilities are written with 6 decimals
            assert (c in row["present"]) == (row["presence"][c] >= t - 1e-6), (row, c, t)
    info = json.loads((out / "run.json").read_text())
    assert info["classes"] == CLASSES and info["image_size"] == [32, 48]
    assert info["thresholds"] == pytest.approx(dict(zip(CLASSES, thresholds)))
    assert info["status"] == "complete"
    assert _lines(out / "errors.jsonl") == []
    assert "8 predicted, 0 failed" in capsys.readouterr().out


def test_bad_files_go_to_errors_and_the_run_goes_on(trained, tmp_path, capsys):
    folder, out = tmp_path / "frames", tmp_path / "out"
    good = _mixed_folder(folder)
    jpeg = (folder / "sub" / "UPPER.JPG").read_bytes()
    (folder / "corrupt.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # truncated mid-scan
    (folder / "sub" / "empty.png").write_bytes(b"")
    (folder / "sub" / "notes.jpg").write_text("a text file with an image extension\n")

    code = _predict(trained["ckpt"], folder, out, "--csv", "--overlays", "--thresholds=car=0")
    assert code == 0
    rows = _lines(out / "predictions.jsonl")
    assert sorted(r["image"] for r in rows) == good
    assert all("car" in r["present"] for r in rows)  # the CLASS=VALUE form of --thresholds
    errors = {e["image"]: e["error"] for e in _lines(out / "errors.jsonl")}
    assert set(errors) == {"corrupt.jpg", "sub/empty.png", "sub/notes.jpg"}
    assert errors["sub/empty.png"] == "empty file (0 bytes)"
    assert "truncated" in errors["corrupt.jpg"].lower()
    assert "cannot identify image file" in errors["sub/notes.jpg"]
    assert f"{len(good)} predicted, 3 failed" in capsys.readouterr().out

    # CSV on request, same rows; one overlay per predicted image, none for failures.
    csv_rows = (out / "predictions.csv").read_text().splitlines()
    assert csv_rows[0] == "image,cyclist,car,pedestrian,present"
    assert len(csv_rows) == len(good) + 1
    pictures = [p for p in (out / "overlays").rglob("*") if p.is_file()]
    overlays = sorted(p.relative_to(out / "overlays").as_posix() for p in pictures)
    assert len(overlays) == len(good) and "sub/UPPER.JPG" in overlays
    assert "top.png.jpg" in overlays  # the full name is kept: top.png and top.jpg stay apart
    assert Image.open(out / "overlays" / "top.png.jpg").size == (48, 32)  # original pixels

    # Without --resume or --overwrite, an existing run is not clobbered.
    assert _predict(trained["ckpt"], folder, out) == 2
    assert "--resume" in capsys.readouterr().err


def test_a_data_sets_own_map_folders_are_never_written_or_deleted(trained, tmp_path, capsys):
    """A data set laid out as img/ + depth/ (ground truth) with --output_dir at its root: predict
    would write its maps into depth/ under the same names, and --overwrite delete the folder."""
    root = tmp_path / "data"
    _mixed_folder(root / "img")
    truth = root / "depth" / "a.png"
    truth.parent.mkdir(parents=True)
    truth.write_bytes(b"ground truth")
    for extra in ((), ("--overwrite",)):
        assert _predict(trained["ckpt"], root / "img", root, *extra) == 2
        assert f"{root / 'depth'} holds files that no predict run wrote" in capsys.readouterr().err
        assert truth.read_bytes() == b"ground truth"
    # A predict run's own folder (its run.json beside it) is overwritten on request.
    out = tmp_path / "out"
    assert _predict(trained["ckpt"], root / "img", out, "--overlays") == 0
    assert _predict(trained["ckpt"], root / "img", out, "--overwrite") == 0
    assert not (out / "overlays").exists()


def test_nothing_readable_or_nothing_usable_is_an_error(trained, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "b.jpg").write_text("text")
    assert _predict(trained["ckpt"], folder, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "No image could be read: all 2 failed" in err and "Traceback" not in err

    cases = {
        "Checkpoint not found": (tmp_path / "missing.ckpt", folder),
        "Image folder not found": (trained["ckpt"], tmp_path / "nowhere"),
    }
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    cases["is not a file torch.save writes"] = (tmp_path / "junk.ckpt", folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    cases["No images in"] = (trained["ckpt"], empty)
    cases["give --ckpt_path the checkpoint file (got 'best')"] = ("best", folder)
    for message, (ckpt, where) in cases.items():
        assert _predict(ckpt, where, tmp_path / "o2") == 2, message
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert _predict(trained["ckpt"], folder, tmp_path / "o3", "--overlay_max_side=0") == 2
    assert "--overlay_max_side must be at least 64 px" in capsys.readouterr().err


def test_threshold_overrides_reach_the_decisions(trained, tmp_path, capsys):
    folder, out = tmp_path / "frames", tmp_path / "out"
    _mixed_folder(folder)
    code = _predict(trained["ckpt"], folder, out, "--thresholds.cyclist=0", "--thresholds.car=1")
    assert code == 0
    rows = _lines(out / "predictions.jsonl")
    assert all("cyclist" in r["present"] for r in rows)
    assert not any("car" in r["present"] for r in rows)
    info = json.loads((out / "run.json").read_text())
    assert info["thresholds"]["cyclist"] == 0.0 and info["thresholds"]["car"] == 1.0
    expected = _checkpoint_thresholds(trained["ckpt"])[2]
    assert info["thresholds"]["pedestrian"] == pytest.approx(expected)  # untouched

    # A class the checkpoint lacks is refused, naming the checkpoint's classes.
    assert _predict(trained["ckpt"], folder, tmp_path / "o2", "--thresholds", "truck=0.2") == 2
    err = capsys.readouterr().err
    assert "truck" in err and str(CLASSES) in err


def test_threshold_strings_parse():
    assert parse_thresholds("car=0.3, stop_sign=0.65") == {"car": 0.3, "stop_sign": 0.65}
    assert parse_thresholds({"car": "0.5"}) == {"car": 0.5}
    assert parse_thresholds(None) == {}
    for bad in ("car", "car=x", "car=1.5", "=0.2"):
        with pytest.raises(DriveMTLError):
            parse_thresholds(bad)


def test_data_classes_come_from_the_checkpoint(trained, tmp_path, capsys):
    # A class list that contradicts the checkpoint is refused before anything is built.
    code = main(
        [
            "test",
            f"--ckpt_path={trained['ckpt']}",
            f"--data.test_manifest={trained['val']}",
            "--data.classes=[car, truck, bus]",
            f"--trainer.default_root_dir={tmp_path / 't'}",
            *QUIET,
        ]
    )
    assert code == 2
    assert "differ from the classes the checkpoint" in capsys.readouterr().err


def test_unreadable_marks_survive_collate_and_device_transfer(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(good)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    dataset = ImageFolderDataset(
        [good, tmp_path / "bad.png"], build_transform((32, 48), train=False), len(CLASSES)
    )
    batch = collate_images([dataset[0], dataset[1]])
    assert batch.images.shape == (2, 3, 32, 48)  # a placeholder keeps the batch stackable
    assert batch.errors[0] is None and "cannot identify image file" in batch.errors[1]
    # What pin_memory (on GPU machines) and Lightning's device transfer do to a batch.
    for moved in (_map_tensors(batch, lambda t: t.clone()), move_data_to_device(batch, "cpu")):
        assert isinstance(moved, ImageBatch) and moved.errors == batch.errors


class KillAfter(L.Callback):
    """Kills its own process with SIGKILL when batch ``batches`` starts: a hard crash."""

    def __init__(self, batches: int = 2):
        self.batches = batches

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == self.batches:
            os.kill(os.getpid(), signal.SIGKILL)


def test_killed_run_resumes_with_each_image_once(trained, tmp_path):
    folder, out = tmp_path / "frames", tmp_path / "out"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(14):
        on = [i % 2 == 0, i % 3 == 0, False]
        Image.fromarray(_toy_image(rng, on)).save(folder / f"{i:02d}.png")
    (folder / "zz_bad.png").write_bytes(b"")
    args = [
        "predict",
        f"--ckpt_path={trained['ckpt']}",
        f"--data.predict_dir={folder}",
        f"--output_dir={out}",
        "--data.num_workers=0",
        "--data.batch_size=3",
        *QUIET,
    ]
    # A child that SIGKILLs itself mid-run.
    killer = [{"class_path": f"{__name__}.KillAfter", "init_args": {"batches": 2}}]
    code = run_in_fork(main, [*args, f"--trainer.callbacks={json.dumps(killer)}"], timeout=120)
    assert code == -signal.SIGKILL
    assert len(_lines(out / "predictions.jsonl")) == 6  # two whole batches of three

    # A kill in the middle of a write could leave half a line: resume must cut it off.
    with open(out / "predictions.jsonl", "a") as f:
        f.write('{"image": "07.png", "presence": {"cyc')
    assert main([*args, "--resume"]) == 0
    images = [r["image"] for r in _lines(out / "predictions.jsonl")]
    assert sorted(images) == [f"{i:02d}.png" for i in range(14)]  # each exactly once
    assert [e["image"] for e in _lines(out / "errors.jsonl")] == ["zz_bad.png"]

    # Resuming a finished run predicts nothing and still succeeds.
    assert main([*args, "--resume"]) == 0
    assert len(_lines(out / "predictions.jsonl")) == 14
    assert len(_lines(out / "errors.jsonl")) == 1

    # The same scores as a run that was never interrupted.
    whole = tmp_path / "whole"
    assert main([*args[:3], f"--output_dir={whole}", *args[4:]]) == 0
    resumed = {r["image"]: r for r in _lines(out / "predictions.jsonl")}
    assert {r["image"]: r for r in _lines(whole / "predictions.jsonl")} == resumed


def test_test_and_evaluate_report_the_same_numbers(trained, tmp_path, capsys):
    """`drivemtl test` and predict + `drivemtl evaluate` on the same images and checkpoint."""
    run = tmp_path / "test-run"
    code = main(
        [
            "test",
            f"--ckpt_path={trained['ckpt']}",
            f"--data.test_manifest={trained['test']}",  # no classes given: the checkpoint's
            "--data.num_workers=0",
            f"--trainer.default_root_dir={run}",
            *QUIET,
        ]
    )
    assert code == 0
    tested = json.loads((run / "metrics.json").read_text())["presence"]

    out, evaluation = tmp_path / "pred", tmp_path / "eval"
    # The batch size of test, so the network sees the same batches (batching moves float rounding).
    folder = trained["root"] / "test"
    assert _predict(trained["ckpt"], folder, out, "--data.batch_size=32") == 0
    code = main(
        [
            "evaluate",
            f"--predictions={out / 'predictions.jsonl'}",
            f"--manifest={trained['test']}",
            f"--output_dir={evaluation}",
            "--no_plots",
        ]
    )
    assert code == 0
    evaluated = json.loads((evaluation / "metrics.json").read_text())["presence"]
    assert set(evaluated["per_class"]) == set(CLASSES)
    assert evaluated["map"] == pytest.approx(tested["map"], abs=1e-5)
    for name in CLASSES:
        a, b = tested["per_class"][name], evaluated["per_class"][name]
        for key in ("positives", "labelled", "unknown"):
            assert a[key] == b[key], (name, key)
        for key in ("ap", "f1", "precision", "recall", "threshold"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), (name, key)
    matching = json.loads((evaluation / "matching.json").read_text())
    assert matching["matched"] == 16 and matching["matched_by"]["same file"] == 16


def test_real_images_predict_then_evaluate(trained, tmp_path, capsys):
    shared = require_shared_data()
    coco, road = tmp_path / "coco.jsonl", tmp_path / "road.jsonl"
    coco_dir, road_dir = shared / "coco128-train", shared / "roadsign-dev"
    convert = [
        ["coco", "--annotations", coco_dir / "annotations" / "instances.json"],
        ["voc", "--annotations", road_dir / "annotations"],
    ]
    for (fmt, *args), folder, manifest in zip(convert, (coco_dir, road_dir), (coco, road)):
        command = ["convert", fmt, *map(str, args), "--images", str(folder / "images")]
        assert main([*command, "--out", str(manifest)]) == 0

    out, evaluation = tmp_path / "pred", tmp_path / "eval"
    # Every real folder at once: JPEG, RGBA PNG, 16-bit depth PNGs, nested folders.
    assert _predict(trained["ckpt"], shared, out, "--data.batch_size=32") == 0
    found = len(find_images(shared))
    assert len(_lines(out / "predictions.jsonl")) + len(_lines(out / "errors.jsonl")) == found
    capsys.readouterr()

    code = main(
        [
            "evaluate",
            f"--predictions={out / 'predictions.jsonl'}",
            "--manifest",
            str(coco),
            str(road),
            f"--output_dir={evaluation}",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    matching = json.loads((evaluation / "matching.json").read_text())
    in_manifests = len(_lines(coco)) + len(_lines(road))
    assert matching["matched"] == in_manifests
    assert matching["manifest_images_without_prediction"] == 0
    # The KITTI images and depth maps have no entry in these manifests: counted, listed.
    assert matching["predictions_without_manifest_entry"] == found - in_manifests
    assert "without a manifest entry" in printed

    per_class = json.loads((evaluation / "metrics.json").read_text())["presence"]["per_class"]
    # "cyclist" is in no manifest: all unknown, every metric undefined (null), never 0.
    assert per_class["cyclist"]["labelled"] == 0
    assert per_class["cyclist"]["ap"] is None and per_class["cyclist"]["f1"] is None
    # Cars are labelled on COCO (0/1) and unknown on the road-sign set.
    assert per_class["car"]["labelled"] == len(_lines(coco))
    assert per_class["car"]["unknown"] == len(_lines(road))
    assert per_class["car"]["positives"] > 0 and per_class["car"]["ap"] is not None
    for name in ("report.md", "ap_f1.png", "pr_curves/car.png", "pr_curves/cyclist.png"):
        assert (evaluation / name).is_file(), name


def test_csv_has_each_tasks_columns(tmp_path):
    """Probabilities per class, names joined, boxes as JSON (``[]`` too), map paths as is."""
    from drivemtl.prediction.files import jsonl_to_csv
    from drivemtl.tasks import build_tasks

    tasks = build_tasks({"presence": {}, "detection": {}, "segmentation": {}}).values()
    rows = [
        {"image": "a.png", "presence": {"car": 0.9, "bus": 0.1}, "present": ["car"],
         "boxes": [[1, 2, 3, 4, "car", 0.8]], "segmentation": "segmentation/a.png"},
        {"image": "b.png", "presence": {"car": 0.2, "bus": 0.7}, "present": [],
         "boxes": [], "segmentation": None},
    ]  # fmt: skip
    source = tmp_path / "p.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(jsonl_to_csv(source, tmp_path / "p.csv", tasks, ["car", "bus"]), newline="") as f:
        table = list(csv.reader(f))
    assert table == [
        ["image", "car", "bus", "present", "boxes", "segmentation"],
        ["a.png", "0.9", "0.1", "car", '[[1, 2, 3, 4, "car", 0.8]]', "segmentation/a.png"],
        ["b.png", "0.2", "0.7", "", "[]", ""],
    ]
    assert not (tmp_path / "p.csv.partial").exists()
    # No prediction (every image failed): the header alone.
    source.write_text("")
    with open(jsonl_to_csv(source, tmp_path / "e.csv", tasks, ["car"]), newline="") as f:
        assert list(csv.reader(f)) == [["image", "car", "present", "boxes", "segmentation"]]


def test_overlay_caption_and_threshold_overrides_follow_the_tasks():
    from drivemtl.errors import DriveMTLError
    from drivemtl.prediction.thresholds import apply_thresholds
    from drivemtl.tasks import build_tasks

    tasks = build_tasks({"presence": {}, "depth": {}})
    row = {"presence": {"car": 0.91, "bus": 0.4}, "present": ["car"]}
    assert [t.caption(row) for t in tasks.values()] == ["car 0.91", ""]
    row["present"] = []
    assert tasks["presence"].caption(row) == "none present (top: car 0.91)"
    depth_only = build_tasks({"depth": {}})
    assert apply_thresholds(depth_only, {}, ["car"], {}) == {}
    with pytest.raises(DriveMTLError, match=r"--thresholds needs a model with a presence head"):
        apply_thresholds(depth_only, {}, ["car"], {"car": 0.3})
