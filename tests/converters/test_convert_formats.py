"""Every converter on small hand-written fixtures, bad input included.

Expected values are worked out by hand from the fixtures written in each test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drivemtl.converters import (
    ConvertOptions,
    convert_bdd100k,
    convert_cityscapes,
    convert_coco,
    convert_kitti,
    convert_voc,
    convert_yolo,
)
from drivemtl.data.labels import DEFAULT_CLASSES
from drivemtl.data.manifest import read_manifest
from drivemtl.errors import DriveMTLError

Q = "?"


def written(conversion, out: Path) -> dict[str, dict]:
    """Write the manifest, check that the project's reader accepts it, key entries by file name."""
    conversion.write(out)
    records = read_manifest(out, DEFAULT_CLASSES)
    assert len(records) == len(conversion.entries)
    return {Path(e["image"]).name: e for e in conversion.entries}


def presence(entry: dict) -> list:
    return [entry["presence"][c] for c in DEFAULT_CLASSES]


def problem_lines(conversion) -> list[str]:
    return [str(p) for p in conversion.problems]


# --- COCO ------------------------------------------------------------------------------------


@pytest.fixture
def coco_set(tmp_path, make_image):
    images = tmp_path / "images"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        make_image(images / name)
    make_image(images / "e.png", 40, 30, mode="RGBA")
    data = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
            {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48},
            {"id": 3, "file_name": "c.jpg", "width": 64, "height": 48},
            {"id": 4, "file_name": "d.jpg", "width": 64, "height": 48},  # no such file
            {"id": 5, "file_name": "e.png"},  # no size: read from the header
        ],
        "categories": [
            {"id": 1, "name": "person"},
            {"id": 3, "name": "car"},
            {"id": 8, "name": "truck"},
            {"id": 10, "name": "traffic light"},
            {"id": 13, "name": "stop sign"},
            {"id": 18, "name": "dog"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 30], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [50, 20, 30, 20], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 18, "bbox": [0, 0, 5, 5], "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [0, 0, 64, 48], "iscrowd": 1},
            {"id": 5, "image_id": 2, "category_id": 3, "bbox": [5, 5, 2, 2], "iscrowd": 0},
            {"id": 6, "image_id": 3, "category_id": 3, "bbox": [10, 10, 0, 10], "iscrowd": 0},
            {"id": 7, "image_id": 999, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0},
            {"id": 8, "image_id": 4, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0},
            {"id": 9, "image_id": 5, "category_id": 10, "bbox": [1, 1, 9, 9], "iscrowd": 0},
            {"id": 10, "image_id": 3, "category_id": 13, "bbox": [100, 100, 9, 9], "iscrowd": 0},
            {"id": 11, "image_id": 5, "category_id": 8, "bbox": [2, 2, 20, 20], "iscrowd": 0},
        ],
    }
    path = tmp_path / "ann" / "instances.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    return path, images


def test_coco_presence_boxes_crowd_and_problems(coco_set, tmp_path):
    ann, images = coco_set
    out = tmp_path / "out" / "m.jsonl"
    conv = convert_coco(ann, images, out=out, options=ConvertOptions(min_box_size=4))
    e = written(conv, out)

    assert sorted(e) == ["a.jpg", "b.jpg", "c.jpg", "e.png"]  # d.jpg is missing
    assert e["a.jpg"]["image"] == "../images/a.jpg"  # relative to the manifest's folder
    assert presence(e["a.jpg"]) == [1, 1, 0, 0]
    # The car box is clipped to the 64 px wide image; the dog is not a target class.
    assert e["a.jpg"]["boxes"] == [[10, 10, 30, 40, "pedestrian"], [50, 20, 64, 40, "car"]]
    # A crowd of people: present, an ignore region, never a box. The 2x2 car is below
    # --min-box-size: present too, and an ignore region rather than background.
    assert presence(e["b.jpg"]) == [1, 1, 0, 0]
    assert e["b.jpg"]["boxes"] == []
    assert e["b.jpg"]["ignore"] == [[0, 0, 64, 48], [5, 5, 7, 7]]
    # The only car is degenerate and the only stop sign lies outside: unknown, not 0.
    assert presence(e["c.jpg"]) == [0, Q, Q, 0]
    assert presence(e["e.png"]) == [0, 0, 0, 1]

    s = conv.summary
    assert (s.images_in_source, s.images_written, dict(s.skipped)) == (
        5,
        4,
        {"image file not found": 1},
    )
    assert s.boxes["pedestrian"] == 1 and s.boxes["car"] == 1 and s.boxes["traffic_light"] == 1
    assert s.dropped_boxes == {
        "degenerate box": 1,
        "box outside image": 1,
        "smaller than --min-box-size 4": 1,
    }
    assert s.not_converted == {"dog": 1, "truck": 1}
    assert s.clipped_boxes == 1
    assert s.positive["pedestrian"] == 2 and s.negative["pedestrian"] == 2
    assert s.unknown["car"] == 1 and s.unknown["stop_sign"] == 1

    lines = problem_lines(conv)
    assert len(lines) == 4
    assert any("instances.json: annotation id 7: unknown image id" in x for x in lines)
    assert any("image id 3, annotation id 6: degenerate box" in x for x in lines)
    assert any("annotation id 10: box outside image" in x for x in lines)
    assert any("image id 4: image file not found" in x and "d.jpg" in x for x in lines)
    problems_file = out.with_name("m.problems.txt")
    assert problems_file.read_text().count("\n") == 4


def test_coco_unknown_category_skips_image_and_absolute_paths(coco_set, tmp_path):
    ann, images = coco_set
    data = json.loads(ann.read_text())
    data["annotations"].append({"id": 12, "image_id": 1, "category_id": 77, "bbox": [1, 1, 2, 2]})
    ann.write_text(json.dumps(data))
    opts = ConvertOptions(absolute_paths=True)
    conv = convert_coco(ann, images, out=tmp_path / "m.jsonl", options=opts)
    names = {Path(e["image"]).name for e in conv.entries}
    assert "a.jpg" not in names
    assert conv.summary.skipped["unknown category id"] == 1
    assert all(Path(e["image"]).is_absolute() for e in conv.entries)


def test_coco_malformed_file_is_fatal(tmp_path):
    bad = tmp_path / "instances.json"
    bad.write_text('{"images": [')
    (tmp_path / "images").mkdir()
    with pytest.raises(DriveMTLError, match="not valid JSON"):
        convert_coco(bad, tmp_path / "images")
    bad.write_text('{"images": []}')
    with pytest.raises(DriveMTLError, match="categories"):
        convert_coco(bad, tmp_path / "images")


# --- YOLO ------------------------------------------------------------------------------------


@pytest.fixture
def yolo_set(tmp_path, make_image):
    images, labels = tmp_path / "images", tmp_path / "labels"
    make_image(images / "x.jpg", 100, 50)
    make_image(images / "y.jpg", 100, 50)  # no label file: no objects
    make_image(images / "sub" / "z.png", 20, 20)
    make_image(images / "w.jpg", 20, 20)
    labels.mkdir()
    (labels / "x.txt").write_text(
        "0 0.5 0.5 0.2 0.4\n"  # person: [40, 15, 60, 35]
        "1 0.1 0.2 0.3 0.2 0.3 0.6\n"  # a car segment: bounding box [10, 10, 30, 30]
        "\n"
    )
    (labels / "sub").mkdir()
    (labels / "sub" / "z.txt").write_text("3 0.5 0.5 1.0 1.0\n")
    (labels / "w.txt").write_text("7 0.5 0.5 0.1 0.1\n")  # no class 7
    (labels / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # no image
    names = tmp_path / "data.yaml"
    names.write_text("names:\n  0: person\n  1: car\n  2: stop sign\n  3: dog\n")
    return labels, images, names


def test_yolo(yolo_set, tmp_path):
    labels, images, names = yolo_set
    out = tmp_path / "m.jsonl"
    conv = convert_yolo(labels, images, names, out=out)
    e = written(conv, out)
    assert sorted(e) == ["x.jpg", "y.jpg", "z.png"]
    # traffic light is not in the names list: unknown everywhere.
    assert presence(e["x.jpg"]) == [1, 1, 0, Q]
    assert e["x.jpg"]["boxes"] == [[40, 15, 60, 35, "pedestrian"], [10, 10, 30, 30, "car"]]
    assert presence(e["y.jpg"]) == [0, 0, 0, Q]
    assert presence(e["z.png"]) == [0, 0, 0, Q]
    assert e["z.png"]["image"] == "images/sub/z.png"
    lines = problem_lines(conv)
    assert any("w.txt: line 1: unknown class id" in x for x in lines)
    assert any("orphan.txt: image file not found" in x for x in lines)
    assert conv.summary.skipped == {"unknown class id": 1, "image file not found": 1}


def test_yolo_names_txt_and_missing_names(yolo_set, tmp_path):
    labels, images, _ = yolo_set
    txt = tmp_path / "names.txt"
    txt.write_text("person\ncar\nstop sign\ndog\n")
    conv = convert_yolo(labels, images, txt)
    assert len(conv.entries) == 3
    with pytest.raises(DriveMTLError, match="--names"):
        convert_yolo(labels, images, None)


# --- VOC -------------------------------------------------------------------------------------


def voc_xml(filename: str, objects: list[tuple], size=(50, 40)) -> str:
    objs = "".join(
        f"<object><name>{name}</name><difficult>{int(difficult)}</difficult><bndbox>"
        f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for name, x1, y1, x2, y2, difficult in objects
    )
    return (
        f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>"
    )


@pytest.fixture
def voc_set(tmp_path, make_image):
    images, ann = tmp_path / "images", tmp_path / "annotations"
    make_image(images / "1.png", 50, 40, mode="RGBA")
    make_image(images / "2.png", 50, 40)
    ann.mkdir()
    (ann / "1.xml").write_text(
        voc_xml("1.png", [("trafficlight", 5, 5, 15, 25, False), ("stop", 20, 5, 30, 15, True)])
    )
    # <filename> says .jpg but the file is a .png: found by its stem.
    (ann / "2.xml").write_text(voc_xml("2.jpg", [("speedlimit", 1, 1, 9, 9, False)]))
    (ann / "3.xml").write_text("<annotation><object>")
    (ann / "4.xml").write_text(voc_xml("missing.png", [("trafficlight", 1, 1, 5, 5, False)]))
    return ann, images


def test_voc_unseen_classes_are_unknown(voc_set, tmp_path):
    ann, images = voc_set
    out = tmp_path / "m.jsonl"
    conv = convert_voc(ann, images, out=out)
    e = written(conv, out)
    assert sorted(e) == ["1.png", "2.png"]
    # No file mentions a person or a car: this set does not annotate them.
    assert presence(e["1.png"]) == [Q, Q, 1, 1]
    assert e["1.png"]["boxes"] == [[5, 5, 15, 25, "traffic_light"]]
    assert e["1.png"]["ignore"] == [[20, 5, 30, 15]]  # difficult stop sign
    assert presence(e["2.png"]) == [Q, Q, 0, 0]
    assert conv.summary.unknown["pedestrian"] == 2 and conv.summary.unknown["car"] == 2
    lines = problem_lines(conv)
    assert any("3.xml: malformed file" in x for x in lines)
    assert any("4.xml: missing.png: image file not found" in x for x in lines)
    assert conv.summary.skipped == {"malformed file": 1, "image file not found": 1}


def test_voc_source_classes_declare_absent_labels(voc_set):
    ann, images = voc_set
    opts = ConvertOptions(source_classes=["trafficlight", "stop", "person"])
    conv = convert_voc(ann, images, options=opts)
    e = {Path(x["image"]).name: x for x in conv.entries}
    assert presence(e["2.png"]) == [0, Q, 0, 0]
    assert conv.summary.not_converted == {"speedlimit (not in --source-classes)": 1}


def test_voc_with_no_target_class_is_fatal(tmp_path, make_image):
    make_image(tmp_path / "images" / "1.png")
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "1.xml").write_text(voc_xml("1.png", [("speedlimit", 1, 1, 9, 9, 0)]))
    with pytest.raises(DriveMTLError, match="annotates none of the classes"):
        convert_voc(tmp_path / "ann", tmp_path / "images")


# --- BDD100K ---------------------------------------------------------------------------------


def test_bdd100k_official_json(tmp_path, make_image):
    images = tmp_path / "images"
    make_image(images / "f1.jpg", 128, 72)
    make_image(images / "f2.jpg", 128, 72)
    frames = [
        {
            "name": "f1.jpg",
            "attributes": {"weather": "rainy", "scene": "city street", "timeofday": "night"},
            "labels": [
                {
                    "id": "1",
                    "category": "pedestrian",
                    "box2d": {"x1": 1, "y1": 2, "x2": 9, "y2": 30},
                },
                {
                    "id": "2",
                    "category": "car",
                    "box2d": {"x1": 40, "y1": 20, "x2": 90, "y2": 60},
                    "attributes": {"crowd": True, "occluded": False},
                },
                {"id": "3", "category": "lane/single white", "poly2d": [[[0, 0], [5, 5]]]},
                {
                    "id": "4",
                    "category": "traffic light",
                    "box2d": {"x1": 5, "y1": 5, "x2": 5, "y2": 9},
                },
                {
                    "id": "5",
                    "category": "traffic sign",
                    "box2d": {"x1": 5, "y1": 5, "x2": 9, "y2": 9},
                },
            ],
        },
        {"name": "f2.jpg"},  # no labels: no object of any category
        {"name": "f3.jpg", "labels": []},  # no such image
    ]
    labels = tmp_path / "det_val.json"
    labels.write_text(json.dumps(frames))
    out = tmp_path / "m.jsonl"
    conv = convert_bdd100k(labels, images, out=out)
    e = written(conv, out)
    assert sorted(e) == ["f1.jpg", "f2.jpg"]
    # BDD100K has no stop-sign class; the only traffic light is degenerate.
    assert presence(e["f1.jpg"]) == [1, 1, Q, Q]
    assert e["f1.jpg"]["boxes"] == [[1, 2, 9, 30, "pedestrian"]]
    assert e["f1.jpg"]["ignore"] == [[40, 20, 90, 60]]
    assert e["f1.jpg"]["meta"] == {"weather": "rainy", "scene": "city street", "timeofday": "night"}
    assert presence(e["f2.jpg"]) == [0, 0, Q, 0]
    lines = problem_lines(conv)
    assert any("det_val.json: frame 0 (f1.jpg), label 4: degenerate box" in x for x in lines)
    assert any("frame 2 (f3.jpg): image file not found" in x for x in lines)
    assert conv.summary.unknown["stop_sign"] == 2


def test_bdd100k_per_image_json(tmp_path, make_image):
    images, labels = tmp_path / "images", tmp_path / "labels"
    make_image(images / "b1c66a42-6f7d68ca.jpg", 128, 72)
    labels.mkdir()
    frame = {
        "name": "b1c66a42-6f7d68ca",  # the 2018 files omit the extension
        "attributes": {"weather": "clear"},
        "frames": [
            {
                "timestamp": 10000,
                "objects": [
                    {"category": "person", "box2d": {"x1": 1, "y1": 1, "x2": 8, "y2": 20}},
                    {"category": "traffic light", "box2d": {"x1": 60, "y1": 2, "x2": 66, "y2": 14}},
                    {"category": "area/drivable", "poly2d": [[0, 0, "L"], [9, 9, "L"]]},
                ],
            }
        ],
    }
    (labels / "b1c66a42-6f7d68ca.json").write_text(json.dumps(frame))
    (labels / "broken.json").write_text("{")
    conv = convert_bdd100k(labels, images)
    assert len(conv.entries) == 1
    assert presence(conv.entries[0]) == [1, 0, Q, 1]
    assert any("broken.json: malformed file" in str(p) for p in conv.problems)


# --- KITTI -----------------------------------------------------------------------------------


def kitti_line(kind: str, x1, y1, x2, y2) -> str:
    return f"{kind} 0.00 0 -0.20 {x1} {y1} {x2} {y2} 1.89 0.48 1.20 1.84 1.47 8.41 0.01\n"


@pytest.fixture
def kitti_set(tmp_path, make_image):
    images, labels, depth = tmp_path / "image_2", tmp_path / "label_2", tmp_path / "depth"
    for i in range(3):
        make_image(images / f"00000{i}.png", 60, 40)
    labels.mkdir()
    (labels / "000000.txt").write_text(
        kitti_line("Pedestrian", 10, 5, 20, 35) + kitti_line("Van", 30, 10, 50, 30)
    )
    (labels / "000001.txt").write_text(
        kitti_line("Car", 5, 5, 25, 20) + kitti_line("DontCare", 30, 5, 59, 20)
    )
    (labels / "000002.txt").write_text(
        kitti_line("Car", 40, 10, 70, 30) + "Pedestrian 0.00 0 -0.20 abc 1 2 3\n"
    )
    depth.mkdir()
    values = np.zeros((40, 60), np.uint16)
    values[10:20, 10:30] = 20 * 256  # 200 pixels at 20 m
    Image.fromarray(values).save(depth / "000000.png")
    Image.fromarray(np.zeros((10, 10), np.uint16)).save(depth / "000001.png")  # wrong size
    return labels, images, depth


def test_kitti_dontcare_van_and_depth(kitti_set, tmp_path):
    labels, images, depth = kitti_set
    out = tmp_path / "m.jsonl"
    conv = convert_kitti(labels, images, depth, out=out)
    e = written(conv, out)
    assert presence(e["000000.png"]) == [1, 0, Q, Q]
    assert e["000000.png"]["ignore"] == [[30, 10, 50, 30]]  # Van: ignored, as in the benchmark
    assert e["000000.png"]["depth"] == "depth/000000.png"
    # A DontCare region may hide a pedestrian: not a negative.
    assert presence(e["000001.png"]) == [Q, 1, Q, Q]
    assert e["000001.png"]["ignore"] == [[30, 5, 59, 20]]
    assert "depth" not in e["000001.png"]  # 10x10 depth for a 60x40 image: dropped
    # Car clipped to the image; the pedestrian line is malformed: unknown.
    assert presence(e["000002.png"]) == [Q, 1, Q, Q]
    assert e["000002.png"]["boxes"] == [[40, 10, 60, 30, "car"]]
    lines = problem_lines(conv)
    assert any("000001.txt: 000001.png: depth size differs from image" in x for x in lines)
    assert any("000002.txt: line 2: malformed box" in x for x in lines)
    assert conv.summary.with_depth == 1
    assert any("no depth PNG" in n for n in conv.summary.notes)

    record = read_manifest(out, DEFAULT_CLASSES)[0]
    loaded = np.asarray(Image.open(record.map_path("depth")))
    assert int((loaded > 0).sum()) == 200 and loaded.max() == 20 * 256


def test_kitti_dontcare_negative_option(kitti_set):
    labels, images, _ = kitti_set
    conv = convert_kitti(labels, images, options=ConvertOptions(dontcare_negative=True))
    assert presence(conv.entries[1]) == [0, 1, Q, Q]


# --- Cityscapes ------------------------------------------------------------------------------


@pytest.fixture
def cityscapes_root(tmp_path, make_image):
    root = tmp_path / "cityscapes"
    city = "aachen"
    frames = ["aachen_000000_000019", "aachen_000001_000019"]
    for prefix in frames:
        make_image(root / "leftImg8bit" / "val" / city / f"{prefix}_leftImg8bit.png", 64, 32)
    gt = root / "gtFine" / "val" / city
    gt.mkdir(parents=True)
    objects = [
        {"label": "person", "polygon": [[10, 5], [20, 5], [15, 25]]},
        {"label": "persongroup", "polygon": [[30, 2], [40, 2], [40, 12]]},
        {"label": "cargroup", "polygon": [[42, 10], [60, 10], [60, 30]]},
        {"label": "traffic sign", "polygon": [[1, 1], [3, 1], [3, 3]]},
        {"label": "car", "polygon": [[0, 0], [5, 5]], "deleted": 1},
        {"label": "road", "polygon": [[0, 20], [63, 20], [63, 31]]},
    ]
    size = {"imgHeight": 32, "imgWidth": 64}
    (gt / f"{frames[0]}_gtFine_polygons.json").write_text(json.dumps({**size, "objects": objects}))
    car = [{"label": "car", "polygon": [[2, 3], [70, 3], [70, 20]]}]
    (gt / f"{frames[1]}_gtFine_polygons.json").write_text(json.dumps({**size, "objects": car}))
    # Disparity and camera for the first frame only.
    stored = np.full((32, 64), 1 + 256 * 10, np.uint16)  # disparity 10 px
    stored[0, :] = 0  # invalid
    stored[1, :] = 1  # disparity 0: infinitely far
    stored[2, :3] = 1 + 128  # disparity 0.5 px: 400 m, beyond uint16 metres x 256
    disp = root / "disparity" / "val" / city
    disp.mkdir(parents=True)
    Image.fromarray(stored).save(disp / f"{frames[0]}_disparity.png")
    cam = root / "camera" / "val" / city
    cam.mkdir(parents=True)
    camera = {"extrinsic": {"baseline": 0.2}, "intrinsic": {"fx": 1000.0, "fy": 1000.0}}
    (cam / f"{frames[0]}_camera.json").write_text(json.dumps(camera))
    return root


def test_cityscapes_boxes_groups_and_depth(cityscapes_root, tmp_path):
    out = tmp_path / "out" / "val.jsonl"
    conv = convert_cityscapes(cityscapes_root, "val", out=out)
    e = written(conv, out)
    first, second = (
        e["aachen_000000_000019_leftImg8bit.png"],
        e["aachen_000001_000019_leftImg8bit.png"],
    )
    # Groups are crowds: present, ignore regions. No stop-sign class in Cityscapes.
    assert presence(first) == [1, 1, Q, 0]
    assert first["boxes"] == [[10, 5, 20, 25, "pedestrian"]]
    assert first["ignore"] == [[30, 2, 40, 12], [42, 10, 60, 30]]
    assert presence(second) == [0, 1, Q, 0]
    assert second["boxes"] == [[2, 3, 64, 20, "car"]]  # clipped to the 64 px image

    depth = np.asarray(Image.open(out.parent / first["depth"]))
    assert first["depth"] == "val_depth/aachen/aachen_000000_000019_depth.png"
    assert depth.dtype == np.uint16 and depth.shape == (32, 64)
    # 0.2 m x 1000 px / 10 px = 20 m -> 20 x 256.
    assert (depth[3:] == 20 * 256).all()
    assert (depth[:2] == 0).all() and (depth[2, :3] == 0).all() and (depth[2, 3:] == 5120).all()
    assert "depth" not in second
    assert any("depth input not found" in str(p) for p in conv.problems)
    assert any("3 disparity pixel(s) beyond" in n for n in conv.summary.notes)


def test_cityscapes_missing_split_is_fatal(cityscapes_root):
    with pytest.raises(DriveMTLError, match="splits found: val"):
        convert_cityscapes(cityscapes_root, "train", depth=False)


def test_a_conversion_that_skips_most_images_warns(yolo_set, tmp_path):
    labels, images, _ = yolo_set
    txt = tmp_path / "names.txt"
    txt.write_text("person\n")  # the labels use class ids up to 3
    conv = convert_yolo(labels, images, txt)
    skipped = sum(conv.summary.skipped.values())
    assert skipped * 2 > conv.summary.images_in_source
    assert (
        f"WARNING: {skipped} of {conv.summary.images_in_source} source image(s) were skipped"
        in (conv.summary.table())
    )
    # A clean conversion has no such line.
    txt.write_text("person\ncar\nstop sign\ndog\n")
    assert "WARNING" not in convert_yolo(labels, images, txt).summary.table()


def test_yolo_on_an_exif_rotated_photo_uses_the_upright_size(tmp_path):
    # Stored 100 wide x 50 high, EXIF orientation 6: upright (as loaded) 50 x 100. YOLO's
    # normalised coordinates refer to the upright picture.
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (100, 50)).save(images / "phone.jpg", exif=exif)
    (labels / "phone.txt").write_text("0 0.5 0.5 0.2 0.4\n")  # person: [20, 30, 30, 70]
    names = tmp_path / "names.txt"
    names.write_text("person\n")
    out = tmp_path / "m.jsonl"
    conv = convert_yolo(labels, images, names, out=out)
    entry = written(conv, out)["phone.jpg"]  # read back: the box lies inside the 50 x 100 image
    assert entry["boxes"] == [[20.0, 30.0, 30.0, 70.0, "pedestrian"]]


def test_cityscapes_label_ids_become_segmentation_masks(cityscapes_root, tmp_path):
    from drivemtl.data.synthetic import SEGMENTATION_CLASSES

    prefix = "aachen_000000_000019"
    ids = np.zeros((32, 64), np.uint8)  # 0: unlabeled
    ids[20:, :] = 7  # road
    ids[10:20, :16] = 8  # sidewalk
    ids[:5, :] = 23  # sky
    ids[12:18, 30:40] = 26  # car
    ids[12:18, 40:44] = 33  # bicycle
    ids[5:10, 50:55] = 25  # rider
    ids[5:10, 0:4] = 4  # static: no mapping
    gt = cityscapes_root / "gtFine" / "val" / "aachen"
    Image.fromarray(ids).save(gt / f"{prefix}_gtFine_labelIds.png")
    out = tmp_path / "out" / "val.jsonl"
    conv = convert_cityscapes(cityscapes_root, "val", out=out, depth=False)
    e = written(conv, out)
    first, second = e[f"{prefix}_leftImg8bit.png"], e["aachen_000001_000019_leftImg8bit.png"]
    assert first["segmentation"] == f"val_segmentation/aachen/{prefix}_segmentation.png"
    assert "segmentation" not in second  # no labelIds file for it
    mask = np.asarray(Image.open(out.parent / first["segmentation"]))
    assert mask.dtype == np.uint8 and mask.shape == (32, 64)
    index = {name: i for i, name in enumerate(SEGMENTATION_CLASSES)}
    expected = np.full((32, 64), 255, np.uint8)
    expected[20:, :] = index["road"]
    expected[10:20, :16] = index["roadside"]
    expected[:5, :] = index["sky"]
    expected[12:18, 30:44] = index["vehicle"]
    expected[5:10, 50:55] = index["pedestrian"]
    np.testing.assert_array_equal(mask, expected)
    assert "segmentation masks: 1 of 2 image(s)" in conv.summary.table()
    assert any("without a *_gtFine_labelIds.png" in n for n in conv.summary.notes)


def test_cityscapes_writes_no_mask_or_depth_for_a_missing_image(cityscapes_root, tmp_path):
    prefix = "aachen_000000_000019"  # has disparity, camera and (here) label ids
    gt = cityscapes_root / "gtFine" / "val" / "aachen"
    Image.fromarray(np.full((32, 64), 7, np.uint8)).save(gt / f"{prefix}_gtFine_labelIds.png")
    (cityscapes_root / "leftImg8bit" / "val" / "aachen" / f"{prefix}_leftImg8bit.png").unlink()
    out = tmp_path / "out" / "val.jsonl"
    conv = convert_cityscapes(cityscapes_root, "val", out=out)
    assert list(written(conv, out)) == ["aachen_000001_000019_leftImg8bit.png"]
    assert any(f"{prefix}_leftImg8bit.png" in str(p) for p in conv.problems)
    # The skipped entry leaves no file behind that no manifest line names.
    assert not list((out.parent / "val_segmentation").rglob("*.png"))
    assert not list((out.parent / "val_depth").rglob("*.png"))


def test_cityscapes_label_ids_beyond_255_are_refused(cityscapes_root, tmp_path):
    ids = np.full((32, 64), 7, np.uint16)
    ids[0, 0] = 263  # would wrap to 7 (road) in 8 bits
    gt = cityscapes_root / "gtFine" / "val" / "aachen"
    Image.fromarray(ids).save(gt / "aachen_000000_000019_gtFine_labelIds.png")
    out = tmp_path / "out" / "val.jsonl"
    conv = convert_cityscapes(cityscapes_root, "val", out=out, depth=False)
    first = written(conv, out)["aachen_000000_000019_leftImg8bit.png"]
    assert "segmentation" not in first
    assert any("ids outside 0-255" in str(p) for p in conv.problems)
