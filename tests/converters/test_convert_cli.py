"""``drivemtl convert`` options, class mapping and error reporting (hand-written fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drivemtl.converters import ClassMapping, ConvertOptions, convert_coco, main
from drivemtl.data.labels import DEFAULT_CLASSES
from drivemtl.data.manifest import read_manifest
from drivemtl.errors import DriveMTLError


@pytest.fixture
def coco(tmp_path, make_image):
    """Two images: a truck and a bus on one, a person and a stop sign on the other; one bad id."""
    make_image(tmp_path / "imgs" / "1.jpg")
    make_image(tmp_path / "imgs" / "2.jpg")
    data = {
        "images": [
            {"id": 1, "file_name": "1.jpg", "width": 64, "height": 48},
            {"id": 2, "file_name": "2.jpg", "width": 64, "height": 48},
        ],
        "categories": [
            {"id": 1, "name": "person"},
            {"id": 6, "name": "bus"},
            {"id": 8, "name": "truck"},
            {"id": 13, "name": "stop sign"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 8, "bbox": [1, 1, 20, 20], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 6, "bbox": [30, 1, 20, 20], "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [1, 1, 10, 30], "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 13, "bbox": [20, 1, 10, 10], "iscrowd": 0},
            {"id": 5, "image_id": 7, "category_id": 1, "bbox": [1, 1, 10, 30], "iscrowd": 0},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path, tmp_path / "imgs"


def args(coco, out: Path, *extra: str) -> list[str]:
    ann, images = coco
    return ["coco", "--annotations", str(ann), "--images", str(images), "--out", str(out), *extra]


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_cli_writes_manifest_summary_and_problems(coco, tmp_path, capsys):
    out = tmp_path / "runs" / "m.jsonl"
    assert main(args(coco, out)) == 0
    captured = capsys.readouterr()
    assert "2 image(s) written" in captured.out and "problems: 1" in captured.out
    assert "instances.json: annotation id 5: unknown image id: image_id 7" in captured.err
    problems = (tmp_path / "runs" / "m.problems.txt").read_text()
    assert "annotation id 5: unknown image id" in problems
    entries = lines(out)
    assert entries[0]["image"] == "../imgs/1.jpg"
    # No mapping for truck and bus: no car box, and car is not annotated by this source at all.
    assert entries[0]["presence"] == {"pedestrian": 0, "car": "?", "stop_sign": 0,
                                      "traffic_light": "?"}  # fmt: skip
    assert len(read_manifest(out, DEFAULT_CLASSES)) == 2

    # An existing manifest is not replaced without --overwrite, and stays as it was.
    before = out.read_bytes()
    assert main(args(coco, out)) == 2
    assert "already exists: pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before

    # A clean run removes the stale problem list of an earlier run.
    data = json.loads(coco[0].read_text())
    data["annotations"].pop()
    coco[0].write_text(json.dumps(data))
    assert main([*args(coco, out), "--overwrite"]) == 0
    assert not (tmp_path / "runs" / "m.problems.txt").exists()


def test_map_options_merge_truck_and_bus_into_car(coco, tmp_path):
    out = tmp_path / "m.jsonl"
    assert main(args(coco, out, "--map", "truck=car", "--map", "Bus=car")) == 0
    first, second = lines(out)
    assert [b[4] for b in first["boxes"]] == ["car", "car"]
    assert first["presence"]["car"] == 1 and second["presence"]["car"] == 0


def test_mapping_yaml_add_class_and_drop_label(coco, tmp_path):
    mapping = tmp_path / "map.yaml"
    mapping.write_text("truck: truck\nbus: ignore\nperson: null\n")
    classes = [*DEFAULT_CLASSES, "truck"]
    out = tmp_path / "m.jsonl"
    code = main(args(coco, out, "--classes", ",".join(classes), "--mapping", str(mapping)))
    assert code == 0
    first, second = lines(out)
    assert first["boxes"] == [[1, 1, 21, 21, "truck"]]
    assert first["ignore"] == [[30, 1, 50, 21]]
    # person is dropped: the source no longer annotates pedestrians for this manifest.
    assert second["presence"] == {"pedestrian": "?", "car": "?", "stop_sign": 1,
                                  "traffic_light": "?", "truck": 0}  # fmt: skip
    assert len(read_manifest(out, classes)) == 2


def test_mapping_errors_are_fatal_and_clear(coco, tmp_path, capsys):
    out = tmp_path / "m.jsonl"
    assert main(args(coco, out, "--map", "truck=lorry")) == 2
    err = capsys.readouterr().err
    assert "'lorry' is not a configured class" in err and "Traceback" not in err
    assert main(args(coco, out, "--map", "truck")) == 2
    assert "SOURCE=TARGET" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    assert main(args(coco, out, "--mapping", str(bad))) == 2
    assert "must be a YAML mapping" in capsys.readouterr().err
    assert not out.exists()


def test_fatal_inputs_exit_2_without_traceback(coco, tmp_path, capsys):
    out = tmp_path / "m.jsonl"
    ann, images = coco
    ann.write_text("{not json")
    assert main(args(coco, out)) == 2
    err = capsys.readouterr().err
    assert "not valid JSON" in err and str(ann) in err and "Traceback" not in err
    assert main(["coco", "--annotations", str(tmp_path / "nope.json"), "--images",
                 str(images), "--out", str(out)]) == 2  # fmt: skip
    assert "not found" in capsys.readouterr().err
    assert main(args(coco, tmp_path / "m.csv")) == 2
    # --out naming the annotations (or a folder) is refused before anything is written.
    ann.write_text('{"images": [], "annotations": [], "categories": []}')
    before = ann.read_text()
    assert main(args(coco, ann)) == 2 and ann.read_text() == before
    assert "use a file name ending in .jsonl" in capsys.readouterr().err
    assert main(args(coco, tmp_path)) == 2 and "is a folder" in capsys.readouterr().err
    assert main(["kitti", "--labels", str(tmp_path)]) == 2  # usage error from argparse
    assert main(["--help"]) == 0


def test_strict_refuses_to_write_with_problems(coco, tmp_path, capsys):
    out = tmp_path / "m.jsonl"
    assert main(args(coco, out, "--strict")) == 2
    assert not out.exists()
    assert "with --strict" in capsys.readouterr().err
    assert (tmp_path / "m.problems.txt").is_file()


def test_class_mapping_lookup():
    mapping = ClassMapping.build("kitti", DEFAULT_CLASSES, overrides=["truck=car"])
    assert mapping.target("Truck") == "car"  # names compare case- and separator-insensitively
    assert mapping.target("Van") == "ignore"
    assert mapping.target("Traffic_Light") == "traffic_light"  # identity fallback
    assert mapping.target("Cyclist") is None
    assert mapping.annotated(["Car", "Van", "Tram"]) == ["car"]
    with pytest.raises(DriveMTLError):
        ClassMapping.build("coco", DEFAULT_CLASSES, overrides=["x=nothing"])


def test_duplicate_classes_rejected(coco):
    with pytest.raises(DriveMTLError, match="distinct"):
        convert_coco(*coco, options=ConvertOptions(classes=["car", "car"]))
