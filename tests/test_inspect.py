"""``drivemtl inspect``: counts on real data, every bad file listed, box sizes against strides."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drivemtl.cli import main
from drivemtl.inspection import InspectSettings, inspect_manifests, load_settings
from drivemtl.inspection.report import source_table
from drivemtl.models.fcos import assign_targets, boxes_without_centre, make_locations
from tests.conftest import CLASSES, require_shared_data, write_image, write_jsonl

# ../shared/data/README.md: images with at least one object of each class, per source.
README_POSITIVES = {
    "coco": {"pedestrian": 61, "car": 12, "traffic_light": 4, "stop_sign": 2},
    "signs": {"traffic_light": 52, "stop_sign": 46},
    "kitti": {"pedestrian": 1, "car": 2},
}
README_IMAGES = {"coco": 128, "signs": 91, "kitti": 3}
NOT_ANNOTATED = {
    "coco": [],
    "signs": ["pedestrian", "car"],
    "kitti": ["stop_sign", "traffic_light"],
}
COCO_IDS = {1: "pedestrian", 3: "car", 10: "traffic_light", 13: "stop_sign"}


def test_boxes_without_centre_agrees_with_the_target_assignment():
    # A box has no centre exactly when assign_targets gives it no location on a single level
    # whose only rule left is "centre strictly inside" (no radius, no scale range, no fallback).
    gen = torch.Generator().manual_seed(0)
    size = (40, 56)
    xy = torch.rand(300, 2, generator=gen) * torch.tensor([56.0, 40.0])
    wh = torch.rand(300, 2, generator=gen) * 20 + 0.1
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[:4] = torch.tensor(
        [[4.0, 0.0, 12.0, 8.0], [1, 1, 3.9, 30], [3, 3, 5, 5], [3.99, 3.99, 4.01, 4.01]]
    )
    for stride in (4, 8, 16):
        cells = [(math.ceil(size[0] / stride), math.ceil(size[1] / stride))]
        anchors, strides, counts = make_locations(cells, [stride])
        expected = []
        for box in boxes:
            matched, _ = assign_targets(
                box[None], anchors, strides, counts, centre_radius=1e6, tiny_box_fallback=False
            )
            expected.append(bool((matched < 0).all()))
        assert boxes_without_centre(boxes, size, stride).tolist() == expected
    # By hand at stride 8 (centres at 4, 12, 20, ...): a box whose edges sit on centres
    # (strictly inside fails), a sliver between centres, a box around (4, 4), a 0.02 px one
    # around it.
    assert boxes_without_centre(boxes[:4], size, 8).tolist() == [True, True, False, False]


def _convert_shared(tmp_path: Path) -> dict[str, Path]:
    data = require_shared_data()
    out = {name: tmp_path / f"{name}.jsonl" for name in README_IMAGES}
    commands = {
        "coco": ["coco", "--annotations", data / "coco128-train/annotations/instances.json",
                 "--images", data / "coco128-train/images"],
        "signs": ["voc", "--annotations", data / "roadsign-dev/annotations",
                  "--images", data / "roadsign-dev/images"],
        "kitti": ["kitti", "--labels", data / "kitti-dev/label_2", "--images",
                  data / "kitti-dev/image_2", "--depth", data / "kitti-dev/depth"],
    }  # fmt: skip
    for name, command in commands.items():
        assert main(["convert", *map(str, command), "--out", str(out[name])]) == 0
    return out


def test_inspect_reports_the_shared_data_counts(tmp_path, capsys):
    manifests = _convert_shared(tmp_path)
    out = tmp_path / "inspect"
    args = ["inspect", "--manifest", *map(str, manifests.values()), "--output_dir", str(out)]
    assert main([*args, "--config", "configs/demo_detection.yaml", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "inspect.json").read_text())
    assert result["settings"]["strides"] == [4, 8, 16]
    assert result["settings"]["image_size"] == [128, 224]
    assert result["problems"] == [] and not (out / "problems.txt").exists()
    for name, path in manifests.items():
        source = result["sources"][str(path)]
        images = README_IMAGES[name]
        assert source["images"] == source["decoded"] == images
        for cls in CLASSES:
            counts = source["classes"][cls]
            assert counts["positive"] + counts["negative"] + counts["unknown"] == images
            if cls in NOT_ANNOTATED[name]:
                assert counts["unknown"] == images and counts["boxes"] == 0, (name, cls)
            else:
                assert counts["positive"] == README_POSITIVES[name].get(cls, 0), (name, cls)
        assert f"{path}: {images} image(s), {images} decoded, 0 problem(s)" in printed

    # Boxes: the non-crowd annotations of the four categories, read from the COCO file.
    data = require_shared_data()
    coco = json.loads((data / "coco128-train/annotations/instances.json").read_text())
    boxes = {c: 0 for c in CLASSES}
    for ann in coco["annotations"]:
        if ann["category_id"] in COCO_IDS and not ann.get("iscrowd"):
            boxes[COCO_IDS[ann["category_id"]]] += 1
    coco_classes = result["sources"][str(manifests["coco"])]["classes"]
    assert {c: coco_classes[c]["boxes"] for c in CLASSES} == boxes
    assert sum(coco_classes[c]["size_histogram"][0] for c in CLASSES) > 0  # sub-stride boxes

    # Depth: every measured pixel of the three LiDAR maps, counted from the PNGs.
    valid = sum(
        int(np.count_nonzero(np.asarray(Image.open(p))))
        for p in sorted((data / "kitti-dev/depth").glob("*.png"))
    )
    depth = result["sources"][str(manifests["kitti"])]["depth"]
    assert depth["images"] == depth["decoded"] == 3 and depth["valid_pixels"] == valid
    assert result["sources"][str(manifests["signs"])]["modes"] == {"RGBA": 91}
    with Image.open(out / "labels.png") as im:
        assert im.format == "PNG" and im.size[0] > 800


def _bad_files(tmp_path: Path) -> tuple[Path, dict[int, str]]:
    """A manifest with good entries and one of each kind of bad file; expected line -> text."""
    write_image(tmp_path / "img" / "good.png")
    write_image(tmp_path / "img" / "good2.jpg")
    (tmp_path / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (tmp_path / "img" / "zero.jpg").write_bytes(b"")
    (tmp_path / "img" / "zero_boxed.png").write_bytes(b"")
    for name, fmt in (("truncated.jpg", "JPEG"), ("truncated.png", "PNG")):
        whole = tmp_path / "img" / f"whole_{name}"
        rng = np.random.default_rng(1)
        Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(whole, fmt)
        data = whole.read_bytes()
        (tmp_path / "img" / name).write_bytes(data[: len(data) // 2])
        whole.unlink()
    depth = tmp_path / "depth" / "small.png"
    depth.parent.mkdir()
    Image.fromarray(np.full((8, 8), 2560, dtype=np.uint16)).save(depth)
    presence = {c: 0 for c in CLASSES}
    entries = [
        {"image": "img/good.png", "presence": presence},  # 1
        {"image": "img/corrupt.png", "presence": presence},  # 2
        {"image": "img/zero.jpg", "presence": presence},  # 3
        {"image": "img/truncated.jpg", "presence": presence},  # 4
        {"image": "img/truncated.png", "presence": presence},  # 5
        {"image": "img/good2.jpg", "boxes": [], "depth": "depth/small.png"},  # 6: depth 8x8
        {"image": "img/missing.png", "presence": presence},  # 7
        {"image": "img/zero_boxed.png", "boxes": [[1, 1, 5, 5, "car"]]},  # 8: parser opens it
        {"image": "img/good.png", "presence": {"truck": 1}},  # 9
    ]
    manifest = write_jsonl(tmp_path / "bad.jsonl", entries)
    expected = {
        2: "corrupt.png",
        3: "zero.jpg: empty file (0 bytes)",
        4: "truncated.jpg",
        5: "truncated.png",
        6: "depth map",
        7: "image file not found",
        8: "cannot read image",
        9: "unknown class 'truck'",
    }
    return manifest, expected


def test_inspect_lists_every_bad_file_by_line(tmp_path, capsys):
    manifest, expected = _bad_files(tmp_path)
    out = tmp_path / "out"
    code = main(["inspect", "--manifest", str(manifest), "--output_dir", str(out), "--workers=2"])
    captured = capsys.readouterr()
    assert code == 2
    problems = (out / "problems.txt").read_text().splitlines()
    assert len(problems) == len(expected)
    lines = {int(p.split(":")[1]): p for p in problems}
    assert sorted(lines) == sorted(expected)
    for line, text in expected.items():
        assert lines[line].startswith(f"{manifest}:{line}: ") and text in lines[line], lines[line]
    assert "is 8x8 but the image is 48x32" in lines[6]
    report = json.loads((out / "inspect.json").read_text())
    source = report["sources"][str(manifest)]
    # Lines 1-6 parse (7-9 do not); of those only line 1 decodes.
    assert source["images"] == 6 and source["decoded"] == 1 and source["problems"] == 8
    assert report["problems"] == problems
    assert "8 problem(s) would stop training" in captured.err
    assert f"{manifest}:3:" in captured.out  # printed too, by file and line


def test_box_statistics_by_hand(tmp_path):
    # Two 64x32 images at a 64x32 input (scale 1): boxes with known sides and centres.
    write_image(tmp_path / "a.png", 64, 32)
    write_image(tmp_path / "b.png", 64, 32)
    depth = np.zeros((32, 64), dtype=np.uint16)
    depth[:8, :] = 256 * 10  # a quarter of the pixels, all 10 m
    Image.fromarray(depth).save(tmp_path / "d.png")
    entries = [
        # car 3x3 between stride-8 centres (x 4, 12; y 4, 12): none inside at 8, one at 4 (6, 6)
        {"image": "a.png", "boxes": [[4.5, 4.5, 7.5, 7.5, "car"], [0, 0, 40, 20, "car"]],
         "ignore": [[50, 0, 60, 10]], "depth": "d.png"},
        {"image": "b.png", "boxes": [[10, 10, 30, 14, "pedestrian"]],
         "presence": {"stop_sign": "?"}},
    ]  # fmt: skip
    manifest = write_jsonl(tmp_path / "m.jsonl", entries)
    settings = InspectSettings(tuple(CLASSES), (32, 64), (4, 8), 256.0)
    result = inspect_manifests([manifest], settings).total.report
    car, ped = result["classes"]["car"], result["classes"]["pedestrian"]
    assert (car["positive"], car["negative"], car["unknown"], car["boxes"]) == (1, 1, 0, 2)
    assert result["classes"]["stop_sign"]["unknown"] == 1
    assert result["boxes"]["size_edges_px"] == [0, 4, 8, 16, 32, 64, None]
    # Shorter sides: car 3 and 20, pedestrian 4 (height 10-14).
    assert car["size_histogram"] == [1, 0, 0, 1, 0, 0]
    assert ped["size_histogram"] == [0, 1, 0, 0, 0, 0]
    assert car["no_centre"] == {"4": 0, "8": 1}
    # Pedestrian y 10-14: stride 4 centres at 10 (not strictly inside) and 14 (neither) -> none;
    # stride 8 centre 12 -> inside, with x centres 12, 20, 28.
    assert ped["no_centre"] == {"4": 1, "8": 0}
    assert result["ignore_regions"] == {"total": 1, "images": 1}
    assert result["depth"]["coverage_mean"] == pytest.approx(0.25)
    assert result["depth"]["min_m"] == result["depth"]["max_m"] == pytest.approx(10.0)
    assert result["image_sizes"] == {"64x32": 2} and result["modes"] == {"RGB": 2}


def test_segmentation_masks_by_hand(tmp_path):
    """The mask section counts annotated pixels per class index; 255 is not annotated."""
    write_image(tmp_path / "a.png", 8, 4)
    write_image(tmp_path / "b.png", 8, 4)
    mask = np.full((4, 8), 255, dtype=np.uint8)
    mask[:2, :] = 0  # 16 road pixels
    mask[2, :4] = 3  # 4 pixels of class 3; 12 not annotated: half the mask annotated
    Image.fromarray(mask).save(tmp_path / "m.png")
    manifest = write_jsonl(
        tmp_path / "m.jsonl", [{"image": "a.png", "segmentation": "m.png"}, {"image": "b.png"}]
    )
    settings = InspectSettings(tuple(CLASSES), (4, 8), (4, 8), 256.0)
    result = inspect_manifests([manifest], settings)
    section = result.total.report["segmentation"]
    assert (section["images"], section["decoded"]) == (1, 1)
    assert section["annotated_mean"] == pytest.approx(20 / 32)
    assert section["pixels_per_index"] == {"0": 16, "3": 4}
    text = source_table("m", result.total, settings)
    assert "segmentation: 1 of 1 mask(s) decoded, 62.5% of pixels annotated, class indices 0-3" in (
        text
    )
    assert "depth: none" in text


def test_default_strides_are_those_detection_trains_with():
    from drivemtl.inspection import task_strides
    from drivemtl.tasks import build_tasks

    assert task_strides() == build_tasks({"detection": {}})["detection"].strides == (4, 8, 16)


def test_settings_from_a_training_config(tmp_path):
    demo = load_settings("configs/demo_detection.yaml")
    assert demo.strides == (4, 8, 16) and demo.image_size == (128, 224)
    config = tmp_path / "c.yaml"
    config.write_text(
        "data:\n  classes: [car]\n  image_size: [64, 96]\n"
        "model:\n  tasks:\n    presence: {}\n    detection: {levels: [3, 4, 5]}\n"
    )
    custom = load_settings(config)
    assert custom.classes == ("car",) and custom.strides == (8, 16, 32)
    assert custom.image_size == (64, 96)
    default = load_settings(None)
    assert default.strides == demo.strides and default.classes == tuple(CLASSES)


def test_fit_inspects_before_training_when_asked(tmp_path, tiny_presence_set, capsys):
    train = tiny_presence_set("train", 8)
    (tmp_path / "train" / "0003.png").write_bytes(b"")
    run = tmp_path / "run"
    code = main(
        [
            "fit",
            "--data.image_size=[32, 48]",
            "--data.num_workers=0",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            f"--data.train_manifest={train}",
            f"--data.val_manifest={train}",
            "--data.inspect=true",
            "--trainer.max_epochs=1",
            f"--trainer.default_root_dir={run}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"{train}:4: cannot read" in err and "empty file (0 bytes)" in err
    assert (run / "inspect.json").is_file() and (run / "labels.png").is_file()
    assert not (run / "checkpoints").exists()  # stopped before the first step
