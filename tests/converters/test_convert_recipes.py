"""The helper scripts of ``data_scripts/recipes`` on hand-made input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

RECIPES = Path(__file__).resolve().parents[2] / "data_scripts" / "recipes"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_velodyne_projection_keeps_nearest_point(tmp_path):
    k = load("kitti_velodyne_to_depth")
    calib = tmp_path / "000000.txt"
    # Camera looks along velodyne x; image y down = velodyne -z; image x right = velodyne -y.
    calib.write_text(
        "P2: 100 0 50 0 0 100 20 0 0 0 1 0\n"
        "R0_rect: 1 0 0 0 1 0 0 0 1\n"
        "Tr_velo_to_cam: 0 -1 0 0 0 0 -1 0 1 0 0 0\n"
    )
    c = k.read_calib(calib)
    points = np.array(
        [
            [10.0, 0.0, 0.0],  # centre pixel (50, 20) at 10 m
            [20.0, 0.0, 0.0],  # same pixel, farther: hidden
            [10.0, -1.0, 0.0],  # 1 m to the right at 10 m: u = 50 + 100 * 1 / 10 = 60
            [-5.0, 0.0, 0.0],  # behind the camera
            [300.0, 0.0, 0.0],  # beyond what uint16 metres x 256 can hold
        ]
    )
    depth = k.encode(k.project(points, c, (100, 40)))
    assert depth[20, 50] == 10 * 256 and depth[20, 60] == 10 * 256
    assert int((depth > 0).sum()) == 2


def test_count_manifest_checks_expectations(tmp_path, make_image, capsys):
    count = load("count_manifest")
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.png")
    entries = [
        {"image": "a.png", "presence": {"pedestrian": 1, "car": "?"}},
        {"image": "b.png", "presence": {"pedestrian": 0, "car": "?"}},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))
    assert count.main([str(manifest), "--expect", "images=2", "pedestrian=1", "car?=2"]) == 0
    assert count.main([str(manifest), "--expect", "pedestrian=2"]) == 1
    assert "MISMATCH pedestrian" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["coco", "yolo", "voc", "bdd100k", "kitti", "cityscapes"])
def test_every_format_has_a_recipe(name):
    text = (RECIPES / f"{name}.md").read_text()
    assert f"drivemtl convert {name}" in text and "**Expect**" in text
