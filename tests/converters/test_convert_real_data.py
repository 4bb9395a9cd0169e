"""Converters on the real files in ``<repo>/../shared/data`` (skipped when the folder is absent).

The expected counts are those of ``shared/data/README.md`` (made by reading the label files
directly), or are recomputed here from the raw files without the converters.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drivemtl.converters import convert_coco, convert_kitti, convert_voc, convert_yolo, main
from drivemtl.data.labels import DEFAULT_CLASSES
from drivemtl.data.manifest import read_manifest

# From shared/data/README.md: images with at least one object of the class.
COCO_IMAGES = 128
COCO_POSITIVE = {"pedestrian": 61, "car": 12, "traffic_light": 4, "stop_sign": 2}
ROADSIGN_IMAGES = 91
ROADSIGN_POSITIVE = {"traffic_light": 52, "stop_sign": 46}
# Valid (non-zero) pixels of kitti-dev/depth/00000{0,1,2}.png, counted once with PIL + numpy.
KITTI_VALID_DEPTH = {"000000": 20209, "000001": 18600, "000002": 20164}


def positives(path: Path) -> Counter:
    counts: Counter = Counter()
    for record in read_manifest(path, DEFAULT_CLASSES):
        for name, value in zip(DEFAULT_CLASSES, record.presence):
            counts[(name, value)] += 1
    return counts


def coco_names(instances: Path) -> list[str]:
    """The 80-class YOLO names list: COCO categories in id order."""
    categories = json.loads(instances.read_text())["categories"]
    return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]


def test_coco128_counts(shared_data, tmp_path):
    root = shared_data / "coco128-train"
    instances = root / "annotations" / "instances.json"
    out = tmp_path / "coco.jsonl"
    conv = convert_coco(instances, root / "images", out=out)
    conv.write(out)
    counts = positives(out)  # read back through the project's manifest reader
    assert sum(counts[("car", v)] for v in (1, 0, -1)) == COCO_IMAGES
    for name, n in COCO_POSITIVE.items():
        assert counts[(name, 1)] == n
        assert counts[(name, 0)] == COCO_IMAGES - n  # COCO annotates all 80 classes
        assert counts[(name, -1)] == 0
    assert not conv.problems

    # Boxes per class, counted from the raw JSON (non-crowd annotations of each category).
    raw = json.loads(instances.read_text())
    ids = {"person": "pedestrian", "car": "car", "traffic light": "traffic_light",
           "stop sign": "stop_sign"}  # fmt: skip
    cat = {c["id"]: ids.get(c["name"]) for c in raw["categories"]}
    expected = Counter(cat[a["category_id"]] for a in raw["annotations"] if not a["iscrowd"])
    boxes = Counter(b[4] for e in conv.entries for b in e["boxes"])
    assert boxes == Counter({k: v for k, v in expected.items() if k})


def test_coco128_yolo_labels_match_coco(shared_data, tmp_path):
    root = shared_data / "coco128-train"
    names = tmp_path / "coco80.txt"
    names.write_text("\n".join(coco_names(root / "annotations" / "instances.json")) + "\n")
    # The README's YOLO ids: person 0, car 2, traffic light 9, stop sign 11.
    order = names.read_text().splitlines()
    assert [order[i] for i in (0, 2, 9, 11)] == ["person", "car", "traffic light", "stop sign"]
    out = tmp_path / "yolo.jsonl"
    conv = convert_yolo(root / "labels_yolo", root / "images", names, out=out)
    conv.write(out)
    counts = positives(out)
    for name, n in COCO_POSITIVE.items():
        assert (counts[(name, 1)], counts[(name, 0)]) == (n, COCO_IMAGES - n)

    # Same boxes as the COCO JSON, to the rounding of normalised coordinates.
    coco = convert_coco(root / "annotations" / "instances.json", root / "images")
    coco_boxes = {Path(e["image"]).name: sorted(e["boxes"], key=str) for e in coco.entries}
    for entry in conv.entries:
        mine = sorted(entry["boxes"], key=str)
        theirs = coco_boxes[Path(entry["image"]).name]
        assert len(mine) == len(theirs)
        by_class = lambda boxes: sorted((b[4], *b[:4]) for b in boxes)  # noqa: E731
        for a, b in zip(by_class(mine), by_class(theirs)):
            assert a[0] == b[0] and np.allclose(a[1:], b[1:], atol=1.0)


def test_roadsign_voc_counts(shared_data, tmp_path):
    root = shared_data / "roadsign-dev"
    out = tmp_path / "roadsign.jsonl"
    conv = convert_voc(root / "annotations", root / "images", out=out)
    conv.write(out)
    counts = positives(out)
    for name, n in ROADSIGN_POSITIVE.items():
        assert (counts[(name, 1)], counts[(name, 0)]) == (n, ROADSIGN_IMAGES - n)
    # Pedestrians and cars appear in some photos but are not annotated in this source.
    assert counts[("pedestrian", -1)] == counts[("car", -1)] == ROADSIGN_IMAGES
    # Boxes: one per trafficlight / stop object in the XML files.
    raw = Counter(
        obj.findtext("name")
        for xml in (root / "annotations").glob("*.xml")
        for obj in ET.parse(xml).getroot().findall("object")
    )
    assert conv.summary.boxes["traffic_light"] == raw["trafficlight"]
    assert conv.summary.boxes["stop_sign"] == raw["stop"]


def test_kitti_presence_and_depth(shared_data, tmp_path):
    root = shared_data / "kitti-dev"
    out = tmp_path / "kitti.jsonl"
    conv = convert_kitti(root / "label_2", root / "image_2", root / "depth", out=out)
    conv.write(out)
    records = {Path(r.image).stem: r for r in read_manifest(out, DEFAULT_CLASSES)}
    assert sorted(records) == ["000000", "000001", "000002"]
    ped, car, stop, light = (DEFAULT_CLASSES.index(c) for c in DEFAULT_CLASSES)
    # README: Pedestrian in 000000, Car in 000001 and 000002; no light or stop-sign class.
    assert [records[k].presence[ped] for k in sorted(records)] == [1, -1, 0]  # 000001: DontCare
    assert [records[k].presence[car] for k in sorted(records)] == [0, 1, 1]
    assert all(r.presence[stop] == r.presence[light] == -1 for r in records.values())
    assert len(records["000001"].ignore) == 4  # its four DontCare regions
    for stem, record in records.items():
        loaded = np.asarray(Image.open(record.map_path("depth")))
        source = np.asarray(Image.open(root / "depth" / f"{stem}.png"))
        assert loaded.dtype == np.uint16
        assert int((loaded > 0).sum()) == int((source > 0).sum()) == KITTI_VALID_DEPTH[stem]


def test_cli_on_real_files(shared_data, tmp_path, capsys):
    root = shared_data / "roadsign-dev"
    out = tmp_path / "manifests" / "roadsign.jsonl"
    code = main(
        ["voc", "--annotations", str(root / "annotations"), "--images", str(root / "images"),
         "--out", str(out), "--min-box-size", "8"]
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "91 image(s) written" in text and "smaller than --min-box-size 8" in text
    entries = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(not Path(e["image"]).is_absolute() for e in entries)
    # Tiny boxes leave the boxes, but the image-level counts stay those of the README.
    counts = positives(out)
    assert counts[("traffic_light", 1)] == 52 and counts[("stop_sign", 1)] == 46


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_cli_coco128_both_formats(shared_data, tmp_path, fmt):
    root = shared_data / "coco128-train"
    out = tmp_path / f"{fmt}.jsonl"
    if fmt == "coco":
        args = ["--annotations", str(root / "annotations" / "instances.json")]
    else:
        names = tmp_path / "names.yaml"
        names.write_text(json.dumps({"names": coco_names(root / "annotations" / "instances.json")}))
        args = ["--labels", str(root / "labels_yolo"), "--names", str(names)]
    assert main([fmt, *args, "--images", str(root / "images"), "--out", str(out)]) == 0
    assert positives(out)[("pedestrian", 1)] == COCO_POSITIVE["pedestrian"]
