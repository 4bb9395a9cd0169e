"""The whole pipeline on real images: two converted sources with different unknown classes."""

from __future__ import annotations

import json

from drivemtl.cli import main
from tests.conftest import require_shared_data


def test_fit_on_the_union_of_two_converted_sources(tmp_path, capsys):
    data = require_shared_data()
    coco, signs = tmp_path / "coco128.jsonl", tmp_path / "roadsign.jsonl"
    coco_dir, sign_dir = data / "coco128-train", data / "roadsign-dev"
    assert (
        main(
            [
                "convert",
                "coco",
                "--annotations",
                str(coco_dir / "annotations/instances.json"),
                "--images",
                str(coco_dir / "images"),
                "--out",
                str(coco),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "convert",
                "voc",
                "--annotations",
                str(sign_dir / "annotations"),
                "--images",
                str(sign_dir / "images"),
                "--out",
                str(signs),
            ]
        )
        == 0
    )

    run = tmp_path / "run"
    both = f"[{coco}, {signs}]"
    code = main(
        [
            "fit",
            f"--data.train_manifest={both}",
            f"--data.val_manifest={both}",
            "--data.image_size=[48, 64]",
            "--data.batch_size=16",
            "--data.num_workers=0",
            "--trainer.accelerator=cpu",
            "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={run}",
        ]
    )
    assert code == 0
    per_class = json.loads((run / "metrics.json").read_text())["presence"]["per_class"]
    # COCO annotates all four classes on its 128 images; the road-sign set (91 images) only
    # annotates signs and lights, so pedestrian and car are unknown there.
    assert (per_class["pedestrian"]["labelled"], per_class["pedestrian"]["unknown"]) == (128, 91)
    assert (per_class["car"]["labelled"], per_class["car"]["unknown"]) == (128, 91)
    assert per_class["pedestrian"]["positives"] == 61 and per_class["car"]["positives"] == 12
    assert per_class["stop_sign"]["labelled"] == 219 and per_class["stop_sign"]["positives"] == 48
    assert per_class["traffic_light"]["positives"] == 4 + 52
