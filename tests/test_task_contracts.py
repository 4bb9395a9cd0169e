"""Contracts every registered task keeps, checked on each of them (a new task is tested here
the day it is registered): no label, no loss; an unlabelled image changes nothing; a repeated
dataset index counts once; the head survives a state-dict round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from drivemtl.data.batch import Batch
from drivemtl.data.pixel_labels import PIXEL_LABELS
from drivemtl.tasks import TASKS

CLASSES = ["pedestrian", "car", "stop_sign", "traffic_light"]
CHANNELS = (8, 16, 24, 32)
SIZE = (64, 96)
NAMES = sorted(TASKS)


def _features(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = SIZE
    return [
        torch.randn(n, c, h // s, w // s, generator=g) for c, s in zip(CHANNELS, (4, 8, 16, 32))
    ]


def _batch(labelled: list[bool], seed: int = 0) -> Batch:
    """Images with every kind of label (presence, boxes, each label map), or none at all."""
    rng = np.random.default_rng(seed)
    n = len(labelled)
    h, w = SIZE
    presence = torch.tensor(rng.integers(0, 2, (n, len(CLASSES))))
    presence[~torch.tensor(labelled)] = -1
    boxes = [torch.tensor([[10.0, 8.0, 40.0, 50.0], [50.0, 20.0, 90.0, 60.0]]) for _ in range(n)]
    labels = [torch.tensor([0, 1]) for _ in range(n)]
    maps = {
        "depth": torch.tensor(rng.uniform(2, 60, (n, 1, h, w)), dtype=torch.float32),
        "segmentation": torch.tensor(rng.integers(0, 8, (n, 1, h, w))),
    }
    assert set(maps) == set(PIXEL_LABELS), "a new label map needs an entry here"
    for i, known in enumerate(labelled):
        if not known:
            boxes[i] = labels[i] = None
            for key, value in maps.items():
                value[i] = PIXEL_LABELS[key].fill
    return Batch(
        images=torch.zeros(n, 3, h, w, dtype=torch.uint8),
        presence=presence,
        index=torch.arange(n),
        paths=[f"{i}.png" for i in range(n)],
        original_sizes=torch.tensor([SIZE] * n),
        boxes=boxes,
        box_labels=labels,
        ignore=[torch.zeros(0, 4) for _ in range(n)],
        maps=maps,
    )


def _setup(name: str):
    torch.manual_seed(0)
    task = TASKS[name]()
    head = task.build_head(CHANNELS, CLASSES)
    return task, head


def _leaves(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    return [v for v in output.values() if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("name", NAMES)
def test_no_label_gives_zero_loss_and_finite_zero_gradients(name):
    task, head = _setup(name)
    features = [f.requires_grad_() for f in _features(2)]
    loss, count = task.loss(head(features), _batch([False, False]))
    loss.backward()
    assert count == 0 and float(loss.detach()) == 0.0
    for f in features:  # a level the head does not read gets no gradient at all
        assert f.grad is None or (torch.isfinite(f.grad).all() and not f.grad.any())


@pytest.mark.parametrize("name", NAMES)
def test_an_unlabelled_image_gets_exactly_zero_gradient(name):
    task, head = _setup(name)
    head.eval()  # batch-norm statistics of a training batch would mix the images
    features = [f.requires_grad_() for f in _features(2)]
    loss, count = task.loss(head(features), _batch([True, False]))
    loss.backward()
    assert count > 0 and torch.isfinite(loss)
    grads = [f.grad for f in features if f.grad is not None]
    assert all(not g[1].any() for g in grads)  # image 1 has no label of any kind
    assert any(g[0].abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_a_repeated_dataset_index_counts_once(name):
    task, head = _setup(name)
    head.eval()
    batch = _batch([True, True, False])
    with torch.no_grad():
        output = head(_features(3))
    once, twice = task.build_metric(CLASSES), task.build_metric(CLASSES)
    task.update_metric(once, output, batch)
    task.update_metric(twice, output, batch)
    task.update_metric(twice, output, batch)  # a distributed sampler's padding
    choose = name == "presence"
    assert task.report(twice, head, choose) == task.report(once, head, choose)


@pytest.mark.parametrize("name", NAMES)
def test_the_head_survives_a_state_dict_round_trip(name):
    task, head = _setup(name)
    head.eval()
    again = task.build_head(CHANNELS, CLASSES).eval()
    again.load_state_dict(head.state_dict())
    features = _features(1)
    with torch.no_grad():
        for a, b in zip(_leaves(head(features)), _leaves(again(features))):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


class _PluginTask(TASKS["presence"]):
    """A third-party task: presence under another name."""

    name = "plugin_presence"


@pytest.mark.parametrize("name", NAMES)
def test_the_default_loss_weight_is_a_usable_fixed_weight(name):
    weight = TASKS[name].loss_weight
    assert isinstance(weight, (int, float)) and not isinstance(weight, bool)
    assert math.isfinite(weight) and weight > 0  # 0 would switch the task off by default


def test_a_task_from_another_package_registers_through_its_entry_point(monkeypatch):
    import importlib.metadata

    import drivemtl.tasks as tasks

    points = [
        importlib.metadata.EntryPoint(
            "plugin_presence", f"{__name__}:_PluginTask", tasks.ENTRY_POINT_GROUP
        ),
        importlib.metadata.EntryPoint("broken", "no_such_module:Task", tasks.ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(tasks, "entry_points", lambda group: points)
    monkeypatch.delitem(TASKS, "plugin_presence", raising=False)
    with pytest.warns(UserWarning, match=r"'broken' \(no_such_module:Task\) was not loaded"):
        assert tasks.load_task_plugins() == ["plugin_presence"]
    try:
        built = tasks.build_tasks({"plugin_presence": {}})
        assert isinstance(built["plugin_presence"], _PluginTask)
    finally:
        TASKS.pop("plugin_presence")


def test_a_plugin_task_brings_its_label_map_into_manifests(tmp_path):
    """A task of another package with a new kind of map: its manifest key is read, no edit."""
    from drivemtl.data.manifest import read_manifest
    from drivemtl.data.pixel_labels import PixelLabel, pixel_labels
    from drivemtl.errors import DriveMTLError
    from drivemtl.tasks import register_task

    normals = PixelLabel("normals", lambda path, options: np.zeros((2, 2)), 0.0, "float32")

    class NormalsTask(TASKS["depth"]):
        name = "normals"
        label_map = normals

    (tmp_path / "m.jsonl").write_text('{"image": "a.png", "normals": "n.png"}\n')
    with pytest.raises(DriveMTLError, match=r"unknown key\(s\) \['normals'\]"):
        read_manifest(tmp_path / "m.jsonl", CLASSES, check_files=False)
    register_task(NormalsTask)
    try:
        assert pixel_labels()["normals"] is normals
        (record,) = read_manifest(tmp_path / "m.jsonl", CLASSES, check_files=False)
        assert record.map_path("normals") == str(tmp_path / "n.png")
    finally:
        TASKS.pop("normals")
        PIXEL_LABELS.pop("normals")


@pytest.mark.parametrize("key", ["image", "boxes", "presence"])
def test_a_label_map_cannot_take_a_key_every_manifest_has(key):
    from drivemtl.data.pixel_labels import PixelLabel, register_pixel_label
    from drivemtl.tasks import register_task

    label = PixelLabel(key, lambda path, options: np.zeros((2, 2)), 0.0, "float32")
    with pytest.raises(ValueError, match=f"{key!r} would take a manifest key"):
        register_pixel_label(label)

    class Clash(TASKS["depth"]):
        name = "clash"
        label_map = label

    with pytest.raises(ValueError, match=f"{key!r} would take a manifest key"):
        register_task(Clash)  # a plugin task's registration is refused the same way
    assert PIXEL_LABELS.get(key) is None and "clash" not in TASKS


def test_a_task_name_cannot_be_taken_twice():
    from drivemtl.tasks import register_task

    class Other(TASKS["depth"]):
        name = "presence"

    with pytest.raises(ValueError, match="'presence' is taken by drivemtl.tasks.presence"):
        register_task(Other)


def test_a_task_without_a_name_or_monitor_is_refused_at_registration():
    """Both have no default; a task without its monitor would fail at the first epoch's end."""
    from drivemtl.tasks import register_task
    from drivemtl.tasks.base import Task

    class Nameless(TASKS["depth"]):
        name = ""

    with pytest.raises(ValueError, match="Nameless has no name"):
        register_task(Nameless)
    unmonitored = type("Unmonitored", (Task,), {"name": "unmonitored"})
    with pytest.raises(ValueError, match="Unmonitored has no monitor"):
        register_task(unmonitored)
    assert "unmonitored" not in TASKS and "" not in TASKS
