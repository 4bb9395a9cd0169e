"""Bad input through the real command line: one clear message, exit status 2, no traceback.

Every case runs ``python -m drivemtl ARGV`` in a process of its own (``tests/cli_runner.py``
forks them from one interpreter that imported the CLI once). Checkpoint cases include a
malicious pickle that would create a marker file if it were ever unpickled: given as a path,
``file://``, ``http://`` (served from 127.0.0.1), ``last`` and ``model.weights``, to every
subcommand; the marker must never appear.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drivemtl.cli import main
from drivemtl.errors import DriveMTLError
from tests.conftest import CLASSES, write_image, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--data.image_size=[32, 48]",
    "--data.batch_size=4",
    "--data.num_workers=0",
    "--trainer.accelerator=cpu",
    "--trainer.max_epochs=1",
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


class Evil:
    """Unpickling this runs ``touch MARKER``: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@dataclass(frozen=True)
class Case:
    """One bad input: the command line and what its error must say.

    ``argv`` items are formatted with the world's paths (``{ckpt}``, ``{root}``, ...).
    ``check`` runs extra assertions on the world after the command (files it wrote).
    """

    id: str
    argv: tuple[str, ...]
    says: tuple[str, ...]
    code: int = 2
    env: dict = field(default_factory=dict)
    check: Callable[[dict], None] | None = None


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _errors_name(image: str, reason: str):
    def check(world: dict) -> None:
        out = Path(world["root"]) / f"out-{image}"
        errors = {e["image"]: e["error"] for e in _lines(out / "errors.jsonl")}
        assert reason in errors.get(image, ""), errors
        assert [p["image"] for p in _lines(out / "predictions.jsonl")] == ["good.png"]

    return check


def _predicted(image: str):
    def check(world: dict) -> None:
        out = Path(world["root"]) / f"out-{image}"
        assert not (out / "errors.jsonl").read_text().strip()
        rows = _lines(out / "predictions.jsonl")
        assert sorted(p["image"] for p in rows) == sorted(["good.png", image])
        assert all(set(p["presence"]) == set(CLASSES) for p in rows)

    return check


def _predict_one(image: str) -> tuple[str, ...]:
    return (
        "predict",
        "--ckpt_path={ckpt}",
        f"--data.predict_dir={{root}}/predict-{image}",
        f"--output_dir={{root}}/out-{image}",
        "--data.num_workers=0",
        "--trainer.enable_progress_bar=false",
    )


def _fit_on(manifest: str, *extra: str) -> tuple[str, ...]:
    return (
        "fit",
        *TINY,
        "--data.train_manifest={root}/train.jsonl",
        f"--data.val_manifest={{root}}/{manifest}",
        "--trainer.default_root_dir={root}/runs/x",
        *extra,
    )


REFUSED = "was refused: it names Python code (posix.system)"
NOT_FIT = "do not fit the model its hyperparameters describe"
CASES = [
    # -- checkpoints: a malicious pickle in every form and subcommand --------------------------
    Case("evil-predict", ("predict", "--ckpt_path={evil}", "--data.predict_dir={root}/img"),
         (REFUSED,)),
    Case("evil-validate", ("validate", *TINY, "--ckpt_path={evil}"), (REFUSED,)),
    Case("evil-test", ("test", *TINY, "--ckpt_path={evil}"), (REFUSED,)),
    Case("evil-fit-resume", (*_fit_on("val.jsonl"), "--ckpt_path={evil}"), (REFUSED,)),
    Case("evil-file-url", ("predict", "--ckpt_path=file://{evil}",
                           "--data.predict_dir={root}/img"), (REFUSED,)),
    Case("evil-http-predict", ("predict", "--ckpt_path={url}/evil.ckpt",
                               "--data.predict_dir={root}/img"), ("remote paths are not loaded",)),
    Case("evil-http-fit", (*_fit_on("val.jsonl"), "--ckpt_path={url}/evil.ckpt"),
         ("remote paths are not loaded",)),
    Case("evil-http-test", ("test", *TINY, "--ckpt_path={url}/evil.ckpt"),
         ("remote paths are not loaded",)),
    Case("evil-fit-last", ("fit", *TINY, "--data.train_manifest={root}/train.jsonl",
                           "--data.val_manifest={root}/val.jsonl",
                           "--trainer.default_root_dir={root}/evil-run", "--ckpt_path=last"),
         (REFUSED, "last.ckpt")),
    Case("evil-weights", (*_fit_on("val.jsonl"), "--model.weights={evil}"),
         (REFUSED, "model.weights file")),
    Case("validate-best", ("validate", *TINY, "--ckpt_path=best"),
         ("give --ckpt_path the checkpoint file",)),
    Case("registry", ("test", *TINY, "--ckpt_path=registry:someone/model"),
         ("model registry is not used",)),
    # -- checkpoints: damaged or foreign files -------------------------------------------------
    Case("ckpt-empty", ("predict", "--ckpt_path={root}/empty.ckpt",
                        "--data.predict_dir={root}/img"), ("is empty (0 bytes)",)),
    Case("ckpt-text", ("validate", *TINY, "--ckpt_path={root}/text.ckpt"),
         ("is not a file torch.save writes",)),
    Case("ckpt-random", ("test", *TINY, "--ckpt_path={root}/random.ckpt"),
         ("is not a file torch.save writes",)),
    Case("ckpt-truncated", ("predict", "--ckpt_path={root}/truncated.ckpt",
                            "--data.predict_dir={root}/img"),
         ("is not a readable PyTorch file",)),
    Case("ckpt-folder", ("predict", "--ckpt_path={root}/img", "--data.predict_dir={root}/img"),
         ("is a folder",)),
    Case("ckpt-missing", ("test", *TINY, "--ckpt_path={root}/nope.ckpt"),
         ("Checkpoint not found",)),
    Case("ckpt-edited-classes", ("predict", "--ckpt_path={root}/edited.ckpt",
                                 "--data.predict_dir={root}/img"), (NOT_FIT, "edited.ckpt")),
    Case("ckpt-not-lightning", ("predict", "--ckpt_path={root}/plain.pt",
                                "--data.predict_dir={root}/img"),
         ("is not a Lightning checkpoint",)),
    # -- manifests -----------------------------------------------------------------------------
    Case("manifest-missing", _fit_on("nope.jsonl"), ("Manifest not found", "nope.jsonl")),
    Case("manifest-folder", _fit_on("img"), ("is a folder",)),
    Case("manifest-latin1", _fit_on("latin1.jsonl"), ("latin1.jsonl:2: not UTF-8 text",)),
    Case("manifest-nested", _fit_on("nested.jsonl"), ("nested.jsonl:2: JSON nested too deeply",)),
    Case("manifest-malformed", _fit_on("malformed.jsonl"), ("malformed.jsonl:2: malformed JSON",)),
    Case("manifest-unknown-class", _fit_on("unknown.jsonl"),
         ("unknown.jsonl:1: unknown class 'cyclist'",)),
    Case("manifest-box-outside", _fit_on("outside.jsonl"),
         ("outside.jsonl:1: box 0", "lies outside the 48x32 image")),
    Case("manifest-csv-row", _fit_on("rows.csv"), ("rows.csv:3: 2 cells, but the header has 5",)),
    Case("manifest-image-missing", _fit_on("missing.jsonl"),
         ("missing.jsonl:1: image file not found",)),
    Case("manifest-symlink-loop", _fit_on("loop.jsonl"),
         ("loop.jsonl:1: cannot open image file", "symbolic links")),
    Case("manifest-fifo", _fit_on("fifo.jsonl"), ("fifo.jsonl:1: image", "not a regular file")),
    Case("manifest-bomb-boxes", _fit_on("bomb_boxes.jsonl"),
         ("bomb_boxes.jsonl:1: cannot read image", "over the limit", "DRIVEMTL_MAX_IMAGE_PIXELS")),
    Case("manifest-bomb-worker", ("validate", *TINY, "--ckpt_path={ckpt}",
                                  "--data.val_manifest={root}/bomb.jsonl", "--data.num_workers=1"),
         ("bomb.jsonl:1: cannot read", "over the limit", "DRIVEMTL_MAX_IMAGE_PIXELS")),
    Case("manifest-truncated-jpeg", _fit_on("truncated.jsonl"),
         ("truncated.jsonl:1: cannot read", "Truncated File Read")),
    Case("manifest-zero-byte", _fit_on("zero.jsonl"), ("zero.jsonl:1: cannot read",)),
    Case("manifest-text-as-jpeg", _fit_on("text.jsonl"),
         ("text.jsonl:1: cannot read", "cannot identify image file")),
    # -- predict: every unusual image is predicted or listed, and the run goes on --------------
    Case("predict-truncated", _predict_one("truncated.jpg"), (), code=0,
         check=_errors_name("truncated.jpg", "Truncated File Read")),
    Case("predict-zero-byte", _predict_one("zero.jpg"), (), code=0,
         check=_errors_name("zero.jpg", "empty file (0 bytes)")),
    Case("predict-text-as-jpeg", _predict_one("text.jpg"), (), code=0,
         check=_errors_name("text.jpg", "cannot identify image file")),
    Case("predict-fifo", _predict_one("fifo.jpg"), (), code=0,
         check=_errors_name("fifo.jpg", "not a regular file")),
    Case("predict-bomb", _predict_one("bomb.png"), (), code=0,
         check=_errors_name("bomb.png", "over the limit")),
    Case("predict-symlink-loop", _predict_one("loop.jpg"), (), code=0,
         check=_errors_name("loop.jpg", "Too many levels of symbolic links")),
    Case("predict-cmyk", _predict_one("cmyk.jpg"), (), code=0, check=_predicted("cmyk.jpg")),
    Case("predict-16-bit", _predict_one("deep.png"), (), code=0, check=_predicted("deep.png")),
    Case("predict-1x1", _predict_one("dot.png"), (), code=0, check=_predicted("dot.png")),
    Case("predict-exif-rotated", _predict_one("rotated.jpg"), (), code=0,
         check=_predicted("rotated.jpg")),
    Case("predict-output-is-file", ("predict", "--ckpt_path={ckpt}",
                                    "--data.predict_dir={root}/img",
                                    "--output_dir={root}/train.jsonl"), ("is a file",)),
    Case("predict-dir-missing", ("predict", "--ckpt_path={ckpt}",
                                 "--data.predict_dir={root}/nowhere"),
         ("Image folder not found",)),
    Case("predict-resume-latin1", ("predict", "--ckpt_path={ckpt}", "--data.predict_dir={root}/img",
                                   "--output_dir={root}/latin1-out", "--resume"),
         ("predictions.jsonl:1: not UTF-8 text",)),
    # -- evaluate and compare --------------------------------------------------------------------
    Case("evaluate-latin1", ("evaluate", "--predictions={root}/latin1-out/predictions.jsonl",
                             "--manifest={root}/val.jsonl", "--output_dir={root}/eval1"),
         ("predictions.jsonl:1: not UTF-8 text",)),
    Case("evaluate-nested", ("evaluate", "--predictions={root}/nested-pred.jsonl",
                             "--manifest={root}/val.jsonl", "--output_dir={root}/eval2"),
         ("nested-pred.jsonl:1: JSON nested too deeply",)),
    Case("evaluate-output-is-file", ("evaluate", "--predictions={root}/good-pred.jsonl",
                                     "--manifest={root}/val.jsonl",
                                     "--output_dir={root}/train.jsonl"), ("train.jsonl",)),
    Case("compare-not-json", ("compare", "--multi={root}/text.ckpt",
                              "--single={root}/text.ckpt"), ("is not valid JSON",)),
    # -- configs and flags -------------------------------------------------------------------
    Case("config-missing", ("fit", "--config={root}/nope.yaml"), ("Config file not found",)),
    Case("config-list", ("fit", "--config={root}/list.yaml"), ("holds a list, not a mapping",)),
    Case("config-string", ("fit", "--config={root}/string.yaml"), ("holds a str, not a mapping",)),
    Case("config-binary", ("fit", "--config={root}/random.ckpt"), ("is not UTF-8 text",)),
    Case("config-bad-yaml", ("fit", "--config={root}/bad.yaml"), ("bad.yaml:2: not valid YAML",)),
    Case("flag-unknown", ("fit", "--model.nope=3"), ("unrecognized arguments: --model.nope",)),
    Case("flag-batch-size", ("fit", "--data.batch_size=0"),
         ("data.batch_size must be at least 1",)),
    Case("flag-unknown-task", (*_fit_on("val.jsonl"), "--model.tasks={{segmentaton: {{}}}}"),
         ("Unknown task 'segmentaton'",)),
    Case("flag-task-option", (*_fit_on("val.jsonl"), "--model.tasks={{presence: {{dropuot: 0}}}}"),
         ("Bad options for task 'presence': unknown option(s) dropuot; presence takes",)),
    Case("flag-accelerator", (*_fit_on("val.jsonl"), "--trainer.accelerator=tpu"),
         ("torch_xla",)),
    Case("flag-strategy", (*_fit_on("val.jsonl"), "--trainer.strategy=dpp"),
         ("Bad trainer setting: You selected an invalid strategy name: `strategy='dpp'`",)),
    Case("flag-accumulate", (*_fit_on("val.jsonl"), "--trainer.accumulate_grad_batches=0"),
         ("trainer.accumulate_grad_batches must be 1 or more, got 0",)),
    Case("flag-negative-clip", (*_fit_on("val.jsonl"), "--trainer.gradient_clip_val=-1"),
         ("trainer.gradient_clip_val must be 0 or more",)),
    # -- converters ------------------------------------------------------------------------------
    Case("convert-yolo-on-voc", ("convert", "yolo", "--labels={root}/voc", "--images={root}/img",
                                 "--names={root}/names.yaml", "--out={root}/c1.jsonl"),
         ("has a YOLO label file", ".xml file(s): Pascal VOC")),
    Case("convert-kitti-on-yolo", ("convert", "kitti", "--labels={root}/yolo",
                                   "--images={root}/img", "--out={root}/c2.jsonl"),
         ("are not KITTI object labels", "convert yolo")),
    Case("convert-coco-nested", ("convert", "coco", "--annotations={root}/nested-pred.jsonl",
                                 "--images={root}/img", "--out={root}/c3.jsonl"),
         ("is not usable JSON: nested too deeply",)),
    Case("convert-voc-no-xml", ("convert", "voc", "--annotations={root}/img",
                                "--images={root}/img", "--out={root}/c4.jsonl"),
         ("No VOC .xml files",)),
    Case("convert-out-exists", ("convert", "coco", "--annotations={root}/coco.json",
                                "--images={root}/img", "--out={root}/val.jsonl"),
         ("already exists: pass --overwrite",)),
]  # fmt: skip


def _write_jpeg_variants(folder: Path) -> dict[str, Path]:
    """Unusual but valid images, and broken ones, each in a folder of its own for predict."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)
    made = {}

    def put(name: str, write) -> None:
        target = folder / f"predict-{name}"
        target.mkdir(parents=True)
        Image.fromarray(pixels).save(target / "good.png")
        write(target / name)
        made[name] = target / name

    put("truncated.jpg", lambda p: p.write_bytes(_jpeg_bytes(pixels)[:300]))
    put("zero.jpg", lambda p: p.write_bytes(b""))
    put("text.jpg", lambda p: p.write_text("this is not a picture\n"))
    put("fifo.jpg", lambda p: os.mkfifo(p))
    put("bomb.png", lambda p: Image.new("1", (10_000, 9_000)).save(p))
    put("loop.jpg", lambda p: (os.symlink(p.with_name("loop2.jpg"), p),
                               os.symlink(p, p.with_name("loop2.jpg"))))  # fmt: skip
    put("cmyk.jpg", lambda p: Image.fromarray(pixels).convert("CMYK").save(p))
    put("deep.png", lambda p: Image.fromarray(rng.integers(0, 65535, (32, 48), dtype=np.uint16)).save(p))  # fmt: skip  # noqa: E501
    put("dot.png", lambda p: Image.fromarray(pixels[:1, :1]).save(p))

    def rotated(p: Path) -> None:
        exif = Image.Exif()
        exif[0x0112] = 6  # rotated 90 degrees: displayed 32 wide, 48 high
        Image.fromarray(pixels).save(p, exif=exif)

    put("rotated.jpg", rotated)
    return made


def _jpeg_bytes(pixels: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _entry(image: str, boxes=None) -> dict:
    entry = {"image": image, "presence": dict.fromkeys(CLASSES, 0)}
    if boxes is not None:
        entry["boxes"] = boxes
    return entry


def build_world(root: Path) -> dict:
    """Every file the cases need, and one tiny trained checkpoint."""
    img = root / "img"
    for i in range(8):
        write_image(img / f"{i}.png", seed=i)
    rel = [f"img/{i}.png" for i in range(8)]
    write_jsonl(root / "train.jsonl", [_entry(r) for r in rel[:6]])
    write_jsonl(root / "val.jsonl", [_entry(r) for r in rel[6:]])
    run = root / "run"
    assert main(["fit", *TINY, f"--data.train_manifest={root / 'train.jsonl'}",
                 f"--data.val_manifest={root / 'val.jsonl'}",
                 f"--trainer.default_root_dir={run}"]) == 0  # fmt: skip
    ckpt = run / "checkpoints" / "best.ckpt"

    # Checkpoints: malicious, damaged, foreign, edited.
    marker = root / "MARKER"
    evil = root / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"classes": CLASSES}, "x": Evil(marker)},
               evil)  # fmt: skip
    (root / "evil-run" / "checkpoints").mkdir(parents=True)
    (root / "evil-run" / "checkpoints" / "last.ckpt").write_bytes(evil.read_bytes())
    (root / "empty.ckpt").write_bytes(b"")
    (root / "text.ckpt").write_text("not a checkpoint\n")
    (root / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    data = ckpt.read_bytes()
    (root / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    stored = torch.load(ckpt, weights_only=True)
    stored["hyper_parameters"]["classes"] = [*CLASSES, "cyclist"]
    torch.save(stored, root / "edited.ckpt")
    torch.save({"weight": torch.zeros(2)}, root / "plain.pt")

    # Manifests.
    (root / "latin1.jsonl").write_bytes(
        json.dumps(_entry(rel[0])).encode() + b"\n" + '{"image": "caf\xe9.png"}\n'.encode("latin-1")
    )
    (root / "nested.jsonl").write_text(json.dumps(_entry(rel[0])) + "\n" + "[" * 100_000 + "\n")
    (root / "malformed.jsonl").write_text(json.dumps(_entry(rel[0])) + '\n{"image": "img/1.png",\n')
    write_jsonl(root / "unknown.jsonl", [{"image": rel[0], "presence": {"cyclist": 1}}])
    write_jsonl(root / "outside.jsonl", [_entry(rel[0], [[10, 10, 90, 20, "car"]])])
    (root / "rows.csv").write_text(
        "image,pedestrian,car,stop_sign,traffic_light\nimg/0.png,1,0,?,1\nimg/1.png,1\n"
    )
    write_jsonl(root / "missing.jsonl", [_entry("img/nope.png")])
    os.symlink(root / "loop_b.png", root / "loop_a.png")
    os.symlink(root / "loop_a.png", root / "loop_b.png")
    write_jsonl(root / "loop.jsonl", [_entry("loop_a.png")])
    os.mkfifo(root / "fifo.png")
    write_jsonl(root / "fifo.jsonl", [_entry("fifo.png")])
    Image.new("1", (10_000, 9_000)).save(root / "bomb.png")
    write_jsonl(root / "bomb_boxes.jsonl", [_entry("bomb.png", [[1, 1, 5, 5, "car"]])])
    write_jsonl(root / "bomb.jsonl", [_entry("bomb.png")])
    pixels = np.random.default_rng(1).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    (root / "truncated.jpg").write_bytes(_jpeg_bytes(pixels)[:300])
    write_jsonl(root / "truncated.jsonl", [_entry("truncated.jpg")])
    (root / "zero.png").write_bytes(b"")
    write_jsonl(root / "zero.jsonl", [_entry("zero.png")])
    (root / "text.jpg").write_text("not a picture\n")
    write_jsonl(root / "text.jsonl", [_entry("text.jpg")])

    # Predict folders, predictions, configs, converter inputs.
    _write_jpeg_variants(root)
    (root / "latin1-out").mkdir()
    (root / "latin1-out" / "predictions.jsonl").write_bytes('{"image": "\xe9"}\n'.encode("latin-1"))
    (root / "nested-pred.jsonl").write_text("[" * 100_000 + "\n")
    probs = dict.fromkeys(CLASSES, 0.5)
    write_jsonl(
        root / "good-pred.jsonl", [{"image": "img/6.png", "presence": probs, "present": []}]
    )
    (root / "list.yaml").write_text("- model\n- data\n")
    (root / "string.yaml").write_text("just some words\n")
    (root / "bad.yaml").write_text("model:\n\tbackbone: resnet18\n")  # a tab
    (root / "voc").mkdir()
    (root / "voc" / "0.xml").write_text(
        "<annotation><object><name>car</name></object></annotation>"
    )
    (root / "names.yaml").write_text("[person, car]\n")
    (root / "yolo").mkdir()
    (root / "yolo" / "0.txt").write_text("0 0.5 0.5 0.2 0.3\n")
    (root / "coco.json").write_text('{"images": [], "annotations": [], "categories": []}')
    return {"root": str(root), "ckpt": str(ckpt), "evil": str(evil), "marker": str(marker)}


@pytest.fixture(scope="module")
def world(module_tmp):
    root = module_tmp("bad-inputs")
    world = build_world(root)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    world["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield world
    server.shutdown()


@pytest.fixture(scope="module")
def results(world, module_tmp):
    """Run every case once, in processes of their own."""
    folder = module_tmp("runner")
    cases = [
        {
            "id": c.id,
            "argv": [a.format(**world) for a in c.argv],
            "env": {**c.env, "DRIVEMTL_CACHE": str(folder / "cache")},
            "cwd": world["root"],
        }
        for c in CASES
    ]
    (folder / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, str(ROOT / "tests" / "cli_runner.py"), "cases.json", "results.json"],
        cwd=folder,
        env=env,
        check=True,
        timeout=1200,
    )
    return {r["id"]: r for r in json.loads((folder / "results.json").read_text())}


def test_there_are_enough_cases():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_message(case, results, world):
    result = results[case.id]
    err = result["stderr"]
    assert result["code"] == case.code, err[-3000:]
    assert "Traceback" not in err and "Traceback" not in result["stdout"], err[-3000:]
    for text in case.says:
        assert text in err, err[-3000:]
    if case.code == 2:  # one message: drivemtl's, or a usage error that names the command
        assert re.search(r"^(drivemtl[\w ]*: error: |usage: drivemtl)", err, re.M), err[-3000:]
        assert sum("error:" in line for line in err.splitlines()) == 1, err[-3000:]
    if case.check is not None:
        case.check(world)
    assert not Path(world["marker"]).exists(), "a checkpoint's code ran"


def test_the_console_script_behaves_like_the_runner(world, results):
    """One case through the installed ``drivemtl`` script, as a user runs it."""
    case = next(c for c in CASES if c.id == "evil-predict")
    argv = [a.format(**world) for a in case.argv]
    done = subprocess.run(["drivemtl", *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and REFUSED in done.stderr and "Traceback" not in done.stderr
    assert done.stderr == results[case.id]["stderr"]
    assert not Path(world["marker"]).exists()


def test_debug_lets_the_traceback_through(world, monkeypatch, capsys):
    """--debug (or DRIVEMTL_DEBUG=1) shows what lies behind a message."""
    argv = [
        "predict",
        f"--ckpt_path={world['root']}/empty.ckpt",
        f"--data.predict_dir={world['root']}/img",
    ]
    assert main(argv) == 2 and "is empty (0 bytes)" in capsys.readouterr().err
    with pytest.raises(DriveMTLError, match="is empty"):
        main([*argv, "--debug"])
    monkeypatch.setenv("DRIVEMTL_DEBUG", "1")
    with pytest.raises(DriveMTLError, match="is empty"):
        main(argv)
