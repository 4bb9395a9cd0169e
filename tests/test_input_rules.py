"""Inputs that used to give wrong results silently: repeated manifest rows, and a predict run
whose output folder is its input folder."""

from __future__ import annotations

import json

import pytest

from drivemtl.cli import main
from drivemtl.data.manifest import read_manifest, unique_records
from tests.conftest import CLASSES, write_image, write_jsonl

TINY = [
    "--data.image_size=[32, 48]",
    "--data.batch_size=4",
    "--data.num_workers=0",
    "--trainer.accelerator=cpu",
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def _entry(image: str, value: int) -> dict:
    return {"image": image, "presence": dict.fromkeys(CLASSES, value)}


@pytest.fixture(scope="module")
def trained(module_tmp) -> dict:
    root = module_tmp("rules")
    for i in range(8):
        write_image(root / "img" / f"{i}.png", seed=i)
    write_jsonl(root / "train.jsonl", [_entry(f"img/{i}.png", i % 2) for i in range(6)])
    write_jsonl(root / "val.jsonl", [_entry(f"img/{i}.png", i % 2) for i in (6, 7)])
    run = root / "run"
    assert main(["fit", *TINY, "--trainer.max_epochs=1", f"--trainer.default_root_dir={run}",
                 f"--data.train_manifest={root / 'train.jsonl'}",
                 f"--data.val_manifest={root / 'val.jsonl'}"]) == 0  # fmt: skip
    return {"root": root, "ckpt": run / "checkpoints" / "best.ckpt"}


def test_unique_records_keeps_the_first_entry_of_each_image(tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    manifest = write_jsonl(
        tmp_path / "m.jsonl",
        [_entry("a.png", 1), _entry("b.png", 0), _entry("./a.png", 0), _entry("a.png", 0)],
    )
    records = read_manifest(manifest, CLASSES)
    with pytest.warns(UserWarning, match=r"2 manifest entr\(ies\) list an image already listed"):
        kept = unique_records(records)
    assert [r.source.rsplit(":", 1)[1] for r in kept] == ["1", "2"]
    assert kept[0].presence == (1, 1, 1, 1)  # the first entry's labels, not a later one's


def test_a_repeated_image_is_scored_once(trained, tmp_path, capsys):
    root = trained["root"]
    # Image 6 twice, with contradicting labels, and image 7 once: 2 images, not 3.
    val = write_jsonl(
        root / "repeated.jsonl",
        [_entry("img/6.png", 0), _entry("img/7.png", 1), _entry("img/6.png", 1)],
    )
    run = tmp_path / "validated"
    with pytest.warns(UserWarning, match="list an image already listed"):
        code = main(
            ["validate", *TINY, f"--ckpt_path={trained['ckpt']}", f"--data.val_manifest={val}",
             f"--trainer.default_root_dir={run}"]
        )  # fmt: skip
    assert code == 0
    per_class = json.loads((run / "metrics.json").read_text())["presence"]["per_class"]
    assert {c["labelled"] for c in per_class.values()} == {2}
    assert {c["positives"] for c in per_class.values()} == {1}  # image 6 is 0: its first entry


def test_predicting_into_the_image_folder_never_reads_its_own_outputs(trained):
    folder = trained["root"] / "frames"
    for i in range(3):
        write_image(folder / f"{i}.png", seed=10 + i)

    def predict(*extra: str) -> int:
        return main(["predict", f"--ckpt_path={trained['ckpt']}", f"--data.predict_dir={folder}",
                     f"--output_dir={folder}", "--data.num_workers=0", "--overlays",
                     "--trainer.enable_progress_bar=false", *extra])  # fmt: skip

    assert predict() == 0
    assert sorted(p.name for p in (folder / "overlays").iterdir()) == ["0.png.jpg", "1.png.jpg",
                                                                       "2.png.jpg"]  # fmt: skip
    assert predict("--resume") == 0
    assert predict("--overwrite") == 0
    lines = [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]
    assert sorted(x["image"] for x in lines) == ["0.png", "1.png", "2.png"]
    assert not (folder / "overlays" / "overlays").exists()
    run = json.loads((folder / "run.json").read_text())
    assert run["stats"]["found"] == 3
