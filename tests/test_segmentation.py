"""The segmentation task: loss over annotated pixels, the IoU metric, masks in the data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drivemtl.data.batch import Batch, collate
from drivemtl.data.datasets import ManifestDataset
from drivemtl.data.manifest import read_manifest
from drivemtl.data.synthetic import SEGMENTATION_CLASSES, SyntheticConfig, render_scene
from drivemtl.data.transforms import build_transform
from drivemtl.errors import DriveMTLError
from drivemtl.tasks import build_tasks
from drivemtl.tasks.segmentation import (
    SegmentationMetric,
    SegmentationTask,
    confusion,
    segmentation_report,
)

CLASSES = ["a", "b", "c"]


def _batch(masks: list[np.ndarray | None], size=(2, 3)) -> Batch:
    n = len(masks)
    samples_maps = [
        torch.from_numpy(m.astype(np.int64))[None] if m is not None else None for m in masks
    ]
    maps = {}
    if any(m is not None for m in samples_maps):
        blank = torch.full((1, *size), 255, dtype=torch.long)
        maps["segmentation"] = torch.stack([m if m is not None else blank for m in samples_maps])
    return Batch(
        images=torch.zeros(n, 3, *size, dtype=torch.uint8),
        presence=torch.full((n, 1), -1),
        index=torch.arange(n),
        paths=[f"img{i}.png" for i in range(n)],
        original_sizes=torch.tensor([size] * n),
        boxes=[None] * n,
        box_labels=[None] * n,
        ignore=[None] * n,
        maps=maps,
    )


def test_confusion_and_iou_by_hand():
    pred = torch.tensor([[[0, 0, 1], [2, 2, 1]]])
    true = torch.tensor([[[0, 1, 1], [2, 255, 0]]])
    m = confusion(pred, true, 3)[0]
    # Annotated pixels: (t0,p0) (t1,p0) (t1,p1) (t2,p2) (t0,p1); the 255 pixel is not counted.
    expected = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    assert torch.equal(m, expected)
    report = segmentation_report(m, 1, CLASSES)
    # IoU a: TP 1 / (1 + FP 1 + FN 1); b the same; c: 1 / 1.
    assert report["per_class"]["a"]["iou"] == pytest.approx(1 / 3)
    assert report["per_class"]["b"]["iou"] == pytest.approx(1 / 3)
    assert report["per_class"]["c"]["iou"] == 1.0
    assert report["miou"] == pytest.approx((1 / 3 + 1 / 3 + 1) / 3)
    assert report["pixel_accuracy"] == pytest.approx(3 / 5)
    assert report["labelled_pixels"] == 5


def test_a_class_without_ground_truth_is_null_and_left_out_of_the_mean():
    m = confusion(torch.tensor([[[0, 2]]]), torch.tensor([[[0, 0]]]), 3)[0]
    report = segmentation_report(m, 1, CLASSES)
    assert report["per_class"]["b"]["iou"] is None
    assert report["per_class"]["c"]["iou"] is None  # predicted but never true: undefined
    assert report["miou"] == pytest.approx(0.5)  # only class a: 1 / (1 + 1)
    empty = segmentation_report(torch.zeros(3, 3, dtype=torch.long), 0, CLASSES)
    assert empty["miou"] is None and empty["pixel_accuracy"] is None


def test_metric_counts_a_repeated_image_once():
    metric = SegmentationMetric(CLASSES)
    pred = torch.tensor([[[0, 1, 2]], [[0, 0, 0]]])
    true = torch.tensor([[[0, 1, 2]], [[1, 1, 1]]])
    metric.update(pred, true, torch.tensor([0, 1]))
    metric.update(pred[1:], true[1:], torch.tensor([1]))  # a sampler's padding repeat
    matrices = metric.compute()
    assert matrices.shape == (2, 3, 3)
    assert int(matrices.sum()) == 6
    assert metric.report()["per_class"]["b"]["pixels"] == 4


def test_loss_is_cross_entropy_over_annotated_pixels_only():
    task = SegmentationTask(classes=CLASSES)
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 2, 3, requires_grad=True)
    mask = np.array([[0, 1, 255], [2, 2, 255]])
    batch = _batch([mask, None])
    loss, count = task.loss(logits, batch)
    assert count == 4
    # By hand: -log softmax of the true class at the four annotated pixels of image 0.
    logp = torch.log_softmax(logits[0].detach(), dim=0)
    picks = [(0, 0, 0), (1, 0, 1), (2, 1, 0), (2, 1, 1)]
    expected = -sum(logp[c, y, x] for c, y, x in picks) / 4
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    loss.backward()
    grad = logits.grad
    assert not grad[1].any()  # the image without a mask
    assert not grad[0][:, :, 2].any()  # the unannotated column
    assert grad[0][:, :, :2].abs().sum() > 0


def test_no_annotated_pixel_gives_zero_loss_and_finite_gradients():
    task = SegmentationTask(classes=CLASSES)
    for batch in (_batch([None, None]), _batch([np.full((2, 3), 255)])):
        logits = torch.randn(len(batch), 3, 2, 3, requires_grad=True)
        loss, count = task.loss(logits, batch)
        loss.backward()
        assert count == 0 and float(loss) == 0.0
        assert torch.isfinite(logits.grad).all() and not logits.grad.any()


def test_class_weights_give_the_weighted_mean():
    task = SegmentationTask(classes=CLASSES, class_weights=[1.0, 3.0, 0.5])
    logits = torch.randn(1, 3, 2, 3)
    mask = np.array([[0, 1, 1], [2, 255, 0]])
    loss, _ = task.loss(logits, _batch([mask]))
    target = torch.from_numpy(mask)[None]
    reference = torch.nn.functional.cross_entropy(
        logits, target, weight=torch.tensor([1.0, 3.0, 0.5]), ignore_index=255
    )
    assert float(loss) == pytest.approx(float(reference), rel=1e-6)


def test_a_mask_index_beyond_the_classes_names_the_image():
    task = SegmentationTask(classes=CLASSES)
    with pytest.raises(DriveMTLError, match=r"img0\.png.*class index 7.*3 classes"):
        task.loss(torch.randn(1, 3, 2, 3), _batch([np.array([[0, 7, 1], [0, 0, 0]])]))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"classes": []}, "1 to 254 unique"),
        ({"classes": ["a", "a"]}, "unique"),
        ({"width": 1}, "width"),
        ({"classes": ["a", "b"], "class_weights": [1.0]}, "one weight"),
        ({"classes": ["a"], "class_weights": [-1.0]}, "one weight"),
        (
            {"colour": 1},
            "unknown option.s. colour; segmentation takes classes, width, class_weights",
        ),
    ],
)
def test_bad_options_are_reported(options, message):
    with pytest.raises(DriveMTLError, match=message):
        build_tasks({"segmentation": options})


def test_decode_maps_back_to_the_original_size():
    task = SegmentationTask(classes=CLASSES)
    logits = torch.zeros(1, 3, 2, 3)
    logits[0, 2, :, 1:] = 5.0  # class c on the right two thirds
    batch = _batch([None])
    batch.original_sizes = torch.tensor([[8, 12]])
    (row,) = task.decode(logits, None, batch, [])
    mask = row["segmentation"]
    assert mask.shape == (8, 12) and mask.dtype == np.uint8
    # Bilinear: output column x samples input column x / 4 - 0.375 (clamped at the edge), so
    # columns 0-1 read column 0 alone (a tie: class 0) and from column 2 on class c leads.
    assert (mask[:, :2] == 0).all() and (mask[:, 2:] == 2).all()


def _write_scene(tmp_path, flip_mask=False):
    scene = render_scene(np.random.default_rng(4), SyntheticConfig(width=96, height=64))
    Image.fromarray(scene.image).save(tmp_path / "a.png")
    Image.fromarray(scene.segmentation).save(tmp_path / "a_mask.png")
    Image.fromarray(scene.image).save(tmp_path / "b.png")
    lines = [
        {"image": "a.png", "segmentation": "a_mask.png"},
        {"image": "b.png"},
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return scene


def test_masks_travel_through_the_dataset_and_collate(tmp_path):
    scene = _write_scene(tmp_path)
    records = read_manifest(tmp_path / "m.jsonl", ["car"])
    dataset = ManifestDataset(
        records, build_transform((32, 48), False), pixel_labels=["segmentation"]
    )
    first, second = dataset[0], dataset[1]
    mask = first.maps["segmentation"]
    assert mask.shape == (1, 32, 48) and mask.dtype == torch.long
    # Nearest-neighbour halving of the original mask: every other pixel.
    np.testing.assert_array_equal(mask[0].numpy(), scene.segmentation[::2, ::2])
    assert "segmentation" not in second.maps
    batch = collate([first, second])
    assert (batch.maps["segmentation"][1] == 255).all()  # no mask: nothing annotated


def test_a_mask_that_is_not_8_bit_or_not_the_image_size_is_reported(tmp_path):
    _write_scene(tmp_path)
    records = read_manifest(tmp_path / "m.jsonl", ["car"])
    dataset = ManifestDataset(
        records, build_transform((32, 48), False), pixel_labels=["segmentation"]
    )
    Image.new("RGB", (96, 64)).save(tmp_path / "a_mask.png")
    with pytest.raises(DriveMTLError, match=r"m\.jsonl:1: cannot read segmentation map.*8-bit"):
        dataset[0]
    Image.new("L", (40, 30)).save(tmp_path / "a_mask.png")
    with pytest.raises(DriveMTLError, match=r"m\.jsonl:1: segmentation map .* is 40x30"):
        dataset[0]


def test_synthetic_masks_agree_with_the_boxes_and_the_horizon():
    """Second method: object pixels of the mask lie inside the boxes of their class; sky only
    above the horizon; the ground classes only below it."""
    config = SyntheticConfig(width=160, height=96)
    index = {name: i for i, name in enumerate(SEGMENTATION_CLASSES)}
    own = {"car": "vehicle", "pedestrian": "pedestrian", "traffic_light": "traffic_light"}
    checked = 0
    for seed in range(12):
        scene = render_scene(np.random.default_rng(seed), config)
        mask = scene.segmentation
        assert mask.shape == (96, 160) and mask.max() < len(SEGMENTATION_CLASSES)
        for name, region in own.items():
            inside = np.zeros_like(mask, dtype=bool)
            for x1, y1, x2, y2, label in scene.boxes:
                if label == name:
                    inside[y1:y2, x1:x2] = True
            pixels = mask == index[region]
            assert not (pixels & ~inside).any(), (seed, name)
            checked += int(pixels.sum())
        rows = np.arange(96)[:, None] + 0.5
        horizon = scene.camera.cy
        assert not ((mask == index["sky"]) & (rows > horizon)).any()
        for ground in ("road", "lane_marking"):  # polygon edges may touch the horizon's row
            assert not ((mask == index[ground]) & (rows < horizon - 1)).any()
    assert checked > 0


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2
    )
    pred, true = _DDP_PRED, _DDP_TRUE
    metric = SegmentationMetric(CLASSES)
    if rank == 0:  # images 0 and 2
        metric.update(pred[[0, 2]], true[[0, 2]], torch.tensor([0, 2]))
    else:  # image 1 and the sampler's padding: image 0 again
        metric.update(pred[[1, 0]], true[[1, 0]], torch.tensor([1, 0]))
    report = metric.report()  # torchmetrics gathers both ranks' states first
    (Path(out_dir) / f"{rank}.json").write_text(json.dumps(report))
    torch.distributed.destroy_process_group()


_DDP_PRED = torch.tensor([[[0, 1, 2]], [[1, 1, 1]], [[2, 2, 0]]])
_DDP_TRUE = torch.tensor([[[0, 1, 1]], [[1, 255, 0]], [[2, 0, 0]]])


@pytest.mark.slow
def test_two_processes_gather_and_count_each_image_once(tmp_path):
    torch.multiprocessing.spawn(
        _ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True
    )
    matrix = confusion(_DDP_PRED, _DDP_TRUE, 3).sum(0)  # each of the three images once
    expected = segmentation_report(matrix, 3, CLASSES)
    assert expected["labelled_pixels"] == 8
    for rank in (0, 1):
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == expected


def test_a_mask_index_beyond_the_task_classes_or_a_jpeg_mask_names_the_line(tmp_path):
    _write_scene(tmp_path)
    records = read_manifest(tmp_path / "m.jsonl", ["car"])
    transform = build_transform((32, 48), False)
    three = ManifestDataset(records, transform, pixel_labels={"segmentation": {"num_classes": 3}})
    with pytest.raises(DriveMTLError, match=r"m\.jsonl:1: .*a_mask\.png: holds class index 7"):
        three[0]  # checked at the full size, before a resize could drop the pixel
    Image.open(tmp_path / "a_mask.png").save(tmp_path / "a_mask.jpg")
    (tmp_path / "m.jsonl").write_text('{"image": "a.png", "segmentation": "a_mask.jpg"}\n')
    records = read_manifest(tmp_path / "m.jsonl", ["car"])
    jpeg = ManifestDataset(records, transform, pixel_labels=["segmentation"])
    with pytest.raises(DriveMTLError, match="a JPEG image"):
        jpeg[0]


def test_evaluate_refuses_indices_outside_the_classes_on_either_side(tmp_path):
    from drivemtl.evaluation.inputs import EvaluationInputs
    from drivemtl.evaluation.predictions import read_predictions
    from drivemtl.tasks.segmentation import evaluate_segmentation

    truth = np.zeros((4, 6), np.uint8)
    Image.fromarray(truth).save(tmp_path / "t.png")
    bad_truth = truth.copy()
    bad_truth[0, 0] = 9
    Image.fromarray(bad_truth).save(tmp_path / "t9.png")
    (tmp_path / "a.png").write_bytes(b"")
    for name, value in (("p.png", 0), ("p12.png", 12), ("p255.png", 255)):
        Image.fromarray(np.full((4, 6), value, np.uint8)).save(tmp_path / name)

    def run(prediction: str, manifest_mask: str):
        (tmp_path / "pred.jsonl").write_text(
            json.dumps({"image": "a.png", "segmentation": prediction}) + "\n"
        )
        (tmp_path / "m.jsonl").write_text(
            json.dumps({"image": "a.png", "segmentation": manifest_mask}) + "\n"
        )
        records = read_manifest(tmp_path / "m.jsonl", ["car"], check_files=False)
        predictions = read_predictions(tmp_path / "pred.jsonl")
        inputs = EvaluationInputs(predictions, records, [(0, 0)], ["car"], ["car"], ["car"])
        return evaluate_segmentation(inputs, "segmentation", CLASSES)

    report, scored = run("p.png", "t.png")
    assert report["miou"] == 1.0 and report["labelled_pixels"] == 24
    assert scored.with_truth == 1 and scored.without_prediction == []
    with pytest.raises(
        DriveMTLError, match=r"m\.jsonl:1: ground truth .*t9\.png: holds class index 9"
    ):
        run("p.png", "t9.png")
    with pytest.raises(DriveMTLError, match=r"prediction .*p12\.png: holds class index 12"):
        run("p12.png", "t.png")
    with pytest.raises(DriveMTLError, match=r"prediction .*p255\.png: holds 255"):
        run("p255.png", "t.png")
