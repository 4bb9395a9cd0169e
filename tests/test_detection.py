"""Detection: FCOS target assignment by hand, the partial-label masks of the loss (checked on
gradients), and decoding back to original image pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from drivemtl.data.batch import Batch
from drivemtl.data.datasets import ImageFolderDataset, collate_images
from drivemtl.data.transforms import build_transform
from drivemtl.errors import DriveMTLError
from drivemtl.models.fcos import FCOSDetectionHead, assign_targets, make_locations
from drivemtl.tasks import build_tasks
from drivemtl.tasks.detection import DetectionTask

C = 4  # pedestrian, car, stop_sign, traffic_light
PED, CAR = 0, 1


def _batch(boxes, labels, presence, ignore=None, size=(64, 64)) -> Batch:
    """A batch of len(boxes) blank images of ``size`` (height, width) with these targets."""
    n = len(boxes)
    return Batch(
        images=torch.zeros((n, 3, *size), dtype=torch.uint8),
        presence=torch.tensor(presence, dtype=torch.long).reshape(n, C),
        index=torch.arange(n),
        paths=[f"{i}.png" for i in range(n)],
        original_sizes=torch.tensor([size] * n),
        boxes=[
            None if b is None else torch.tensor(b, dtype=torch.float32).reshape(-1, 4)
            for b in boxes
        ],
        box_labels=[
            None if b is None else torch.tensor(lb, dtype=torch.long)
            for b, lb in zip(boxes, labels)
        ],
        ignore=[
            torch.zeros((0, 4)) if r is None else torch.tensor(r, dtype=torch.float32)
            for r in (ignore or [None] * n)
        ],
    )


def _output(n: int, sizes, seed: int = 0) -> dict:
    """A hand-made head output, the same random (finite) values for every image, with
    gradients enabled."""
    g = torch.Generator().manual_seed(seed)
    count = sum(h * w for h, w in sizes)
    values = {
        "cls_logits": torch.randn(1, count, C, generator=g),
        "bbox_regression": torch.rand(1, count, 4, generator=g).add(0.5),
        "bbox_ctrness": torch.randn(1, count, 1, generator=g),
    }
    out = {k: v.repeat(n, 1, 1).requires_grad_() for k, v in values.items()}
    return out | {"sizes": list(sizes)}


def _centres(sizes, strides) -> torch.Tensor:
    anchors, _, _ = make_locations(sizes, strides)
    return (anchors[:, :2] + anchors[:, 2:]) / 2


# -- target assignment -------------------------------------------------------------------------


def test_locations_are_cell_centres_in_row_major_order():
    anchors, strides, counts = make_locations([(2, 3), (1, 2)], [8, 16])
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    expected = [(4, 4), (12, 4), (20, 4), (4, 12), (12, 12), (20, 12), (8, 8), (24, 8)]
    assert centres.tolist() == [list(map(float, p)) for p in expected]
    assert (anchors[:, 2] - anchors[:, 0]).tolist() == [8.0] * 6 + [16.0] * 2
    assert strides.tolist() == [8.0] * 6 + [16.0] * 2 and counts == [6, 2]


def test_centre_sampling_by_hand():
    # One stride-8 level over 64x64: location centres at 4, 12, ..., 60 on both axes.
    # Box (10, 10)-(30, 26), centre (20, 18). Within 1.5 strides (12 px) of the centre and
    # strictly inside: x in {12, 20, 28}, y in {12, 20} -> 6 positive locations.
    anchors, strides, counts = make_locations([(8, 8)], [8])
    matched, fallback = assign_targets(torch.tensor([[10.0, 10, 30, 26]]), anchors, strides, counts)
    centres = _centres([(8, 8)], [8])
    positives = {tuple(p) for p in centres[matched == 0].tolist()}
    assert positives == {(x, y) for x in (12.0, 20.0, 28.0) for y in (12.0, 20.0)}
    assert (matched[matched != 0] == -1).all() and not fallback.any()


def test_scale_ranges_send_a_large_box_to_the_coarser_level():
    # Levels at strides 8 and 16: stride 8 takes reaches (max distance to an edge) below 64 px,
    # stride 16 the rest. Box (0, 0)-(200, 100), centre (100, 50): every candidate location
    # reaches more than 64 px, so all positives are on the stride-16 level: x in {88, 104,
    # 120} (within 24 px of 100), y in {40, 56, 72} (within 24 px of 50).
    sizes = [(32, 32), (16, 16)]
    anchors, strides, counts = make_locations(sizes, [8, 16])
    matched, _ = assign_targets(torch.tensor([[0.0, 0, 200, 100]]), anchors, strides, counts)
    assert not (matched[: counts[0]] >= 0).any()
    centres = _centres(sizes, [8, 16])[counts[0] :]
    positives = {tuple(p) for p in centres[matched[counts[0] :] == 0].tolist()}
    assert positives == {(x, y) for x in (88.0, 104.0, 120.0) for y in (40.0, 56.0, 72.0)}


def test_smallest_box_wins_a_shared_location():
    anchors, strides, counts = make_locations([(8, 8)], [8])
    big, small = [2.0, 2, 40, 40], [14.0, 14, 26, 26]  # both contain the location (20, 20)
    matched, _ = assign_targets(torch.tensor([big, small]), anchors, strides, counts)
    centres = _centres([(8, 8)], [8])
    at = (centres == torch.tensor([20.0, 20.0])).all(1)
    assert matched[at].item() == 1


def test_a_box_between_locations_gets_its_nearest_one_with_the_fallback():
    # 2 px wide: no stride-8 location centre (4, 12, 20, ...) lies inside x in (13, 15).
    anchors, strides, counts = make_locations([(8, 8)], [8])
    box = torch.tensor([[13.0, 13, 15, 20]])  # centre (14, 16.5)
    matched, fallback = assign_targets(box, anchors, strides, counts, tiny_box_fallback=False)
    assert not (matched >= 0).any()
    matched, fallback = assign_targets(box, anchors, strides, counts)
    centres = _centres([(8, 8)], [8])
    # Nearest centre: (12, 20) at sqrt(4 + 12.25), closer than (12, 12) at sqrt(4 + 20.25).
    assert centres[matched == 0].tolist() == [[12.0, 20.0]]
    assert fallback.tolist() == (matched == 0).tolist()


# -- the loss and its masks --------------------------------------------------------------------

SIZES = [(8, 8)]


def _task(**options) -> DetectionTask:
    return DetectionTask(levels=[3], **options)


def _cls_grad(task, output, batch) -> torch.Tensor:
    loss, _ = task.loss(output, batch)
    (grad,) = torch.autograd.grad(loss, output["cls_logits"])
    return grad


def test_unknown_class_negatives_are_masked_and_known_classes_train():
    task = _task()
    car = [[10.0, 10, 30, 26]]
    # Image 0: pedestrian unknown; image 1: the same image with pedestrian a known 0.
    batch = _batch([car, car], [[CAR], [CAR]], [[-1, 1, 0, 0], [0, 1, 0, 0]])
    output = _output(2, SIZES)
    grad = _cls_grad(task, output, batch)
    assert (grad[0, :, PED] == 0).all()  # never pushed towards background
    assert (grad[1, :, PED] != 0).all()  # a known negative trains everywhere
    for c in (CAR, 2, 3):  # the annotated classes train normally on both images
        assert (grad[0, :, c] != 0).all() and torch.equal(grad[0, :, c], grad[1, :, c])


def test_given_boxes_of_an_unknown_class_stay_positives():
    task = _task()
    batch = _batch([[[10.0, 10, 30, 26]]], [[PED]], [[-1, 0, 0, 0]])
    output = _output(1, SIZES)
    grad = _cls_grad(task, output, batch)
    positive = task.targets(output, batch)["foreground"][0]
    assert positive.sum() == 6
    assert (grad[0, positive, PED] != 0).all() and (grad[0, ~positive, PED] == 0).all()


def test_ignore_regions_are_not_negatives():
    task = _task()
    region = [0.0, 32, 64, 64]  # the bottom half: location rows at y = 36, ..., 60
    batch = _batch([[[10.0, 10, 30, 26]]], [[CAR]], [[0, 1, 0, 0]], ignore=[[region]])
    output = _output(1, SIZES)
    grad = _cls_grad(task, output, batch)
    inside = _centres(SIZES, [8])[:, 1] > 32
    assert inside.sum() == 32
    assert (grad[0, inside] == 0).all() and (grad[0, ~inside] != 0).all()


def test_an_image_without_boxes_contributes_nothing():
    task = _task()
    car = [[10.0, 10, 30, 26]]
    both = _batch([None, car], [None, [CAR]], [[1, 1, 0, 0], [0, 1, 0, 0]])
    output = _output(2, SIZES)
    loss, count = task.loss(output, both)
    grads = torch.autograd.grad(
        loss, [output[k] for k in ("cls_logits", "bbox_regression", "bbox_ctrness")]
    )
    assert all((g[0] == 0).all() for g in grads)
    # The same loss as the annotated image alone, whatever the other image's outputs are.
    alone = _batch([car], [[CAR]], [[0, 1, 0, 0]])
    single = {k: (v[1:] if torch.is_tensor(v) else v) for k, v in output.items()}
    expected, expected_count = task.loss(single, alone)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert count == expected_count == C


def test_nothing_annotated_gives_zero_loss_and_finite_gradients():
    task = _task()
    batch = _batch([None, None], [None, None], [[1, 0, -1, 0], [-1, -1, -1, -1]])
    output = _output(2, SIZES)
    with torch.no_grad():
        output["cls_logits"].mul_(1e4)  # extreme logits must not leak inf or NaN
    loss, count = task.loss(output, batch)
    loss.backward()
    assert loss.item() == 0.0 and count == 0
    for key in ("cls_logits", "bbox_regression", "bbox_ctrness"):
        assert torch.isfinite(output[key].grad).all() and (output[key].grad == 0).all()


def test_loss_by_hand_on_one_positive_location():
    """Focal + GIoU + centre-ness normalised by the one positive location, computed by hand."""
    task = _task(centre_radius=0.5)  # only the location nearest the centre is a candidate
    box = [6.0, 6, 18, 18]  # centred on the location (12, 12); its neighbours are 8 px away
    batch = _batch([[box]], [[CAR]], [[0, 1, 0, 0]])
    output = _output(1, SIZES, seed=3)
    loss, _ = task.loss(output, batch)
    centres = _centres(SIZES, [8])
    at = int(torch.nonzero((centres == torch.tensor([12.0, 12.0])).all(1)))
    logits = output["cls_logits"][0].detach().double()
    p = torch.sigmoid(logits)
    target = torch.zeros_like(p)
    target[at, CAR] = 1
    pt = p * target + (1 - p) * (1 - target)
    ce = -torch.log(pt)
    alpha = 0.25 * target + 0.75 * (1 - target)
    focal = (alpha * ce * (1 - pt) ** 2).sum().item()
    # Regression: distances (l, t, r, b) = 8 * outputs around (12, 12); GIoU with the box.
    left, t, r, b = (8 * output["bbox_regression"][0, at].detach().double()).tolist()
    pred = (12 - left, 12 - t, 12 + r, 12 + b)
    inter = max(0, min(pred[2], 18) - max(pred[0], 6)) * max(0, min(pred[3], 18) - max(pred[1], 6))
    union = (r + left) * (t + b) + 144 - inter
    hull = (max(pred[2], 18) - min(pred[0], 6)) * (max(pred[3], 18) - min(pred[1], 6))
    giou_loss = 1 - (inter / union - (hull - union) / hull)
    # Centre-ness target 1 (the box is centred on the location): BCE = softplus(-x).
    x = output["bbox_ctrness"][0, at, 0].item()
    ctr = math.log1p(math.exp(-x))
    assert loss.item() == pytest.approx(focal + giou_loss + ctr, rel=1e-5)


# -- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"levels": [3, 5]}, "consecutive"),
        ({"levels": [1, 2]}, "trunk level"),
        ({"levels": [5, 6]}, "pair 6, 7"),
        ({"fpn_channels": 48}, "multiple of 32"),
        ({"score_threshold": 1.5}, "score_threshold"),
        ({"min_score": 0.5, "score_threshold": 0.3}, "min_score"),
        ({"nms_iou": 0.0}, "nms_iou"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(DriveMTLError, match="detection") as info:
        task = build_tasks({"detection": options})["detection"]
        task.build_head([64, 128, 256, 512], ["a", "b"])
    assert message in str(info.value)


def test_head_outputs_match_the_locations():
    head = FCOSDetectionHead(
        [64, 128, 256, 512], C, levels=[3, 4, 5, 6, 7], channels=32, num_convs=1
    )
    feats = [
        torch.randn(2, ch, 64 // s, 96 // s) for ch, s in zip([64, 128, 256, 512], [4, 8, 16, 32])
    ]
    out = head(feats)
    assert out["sizes"] == [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    count = sum(h * w for h, w in out["sizes"])
    assert out["cls_logits"].shape == (2, count, C) and out["bbox_regression"].shape == (
        2,
        count,
        4,
    )


# -- decoding to original pixels ---------------------------------------------------------------


def test_decoded_boxes_are_in_original_image_pixels(tmp_path):
    # A 288x128 image, resized by the eval transform to the 96x64 network input: x scales
    # by 3, y by 2 on the way back.
    path = tmp_path / "frame.png"
    Image.fromarray(np.zeros((128, 288, 3), dtype=np.uint8)).save(path)
    dataset = ImageFolderDataset([path], build_transform((64, 96), train=False), C)
    batch = collate_images([dataset[0]])
    assert batch.images.shape[-2:] == (64, 96) and batch.original_sizes.tolist() == [[128, 288]]

    sizes = [(8, 12)]  # stride 8
    count = 8 * 12
    output = {
        "cls_logits": torch.full((1, count, C), -10.0),
        "bbox_regression": torch.zeros((1, count, 4)),
        "bbox_ctrness": torch.full((1, count, 1), 10.0),
        "sizes": sizes,
    }
    at = 3 * 12 + 5  # row 3, column 5: centre (44, 28)
    output["cls_logits"][0, at, CAR] = 10.0
    # (l, t, r, b) in strides: 1, 0.5, 2, 1.5 -> (36, 24)-(60, 40) in network pixels.
    output["bbox_regression"][0, at] = torch.tensor([1.0, 0.5, 2.0, 1.5])
    classes = ["pedestrian", "car", "stop_sign", "traffic_light"]
    (row,) = _task().decode(output, None, batch, classes)
    score = round(1 / (1 + math.exp(-10)), 6)  # sqrt(sigmoid(10) * sigmoid(10))
    assert row["boxes"] == [[108.0, 48.0, 180.0, 80.0, "car", score]]


def test_slivers_under_one_input_pixel_are_dropped():
    # One stride-8 level over a 16x16 input: 2x2 locations centred at (4, 4), (12, 4), ...
    output = {
        "cls_logits": torch.full((1, 4, C), -10.0),
        "bbox_regression": torch.zeros((1, 4, 4)),
        "bbox_ctrness": torch.full((1, 4, 1), 10.0),
        "sizes": [(2, 2)],
    }
    output["cls_logits"][0, :, PED] = 10.0
    # (l, t, r, b) in strides. Location 0: (0, 0)-(8, 8), kept. Location 1: 0.16 px wide, a
    # sliver. Location 2, centre (4, 12): (0, 8)-(16, 16) once clipped, kept. Location 3,
    # centre (12, 12): 0.8 px high after clipping at the bottom edge (16 - 15.2), a sliver.
    output["bbox_regression"][0] = torch.tensor(
        [[0.5, 0.5, 0.5, 0.5], [0.01, 0.5, 0.01, 0.5], [0.5, 0.5, 2.0, 3.0], [0.5, -0.4, 0.5, 1.0]]
    )
    (found,) = _task().detect(output, (16, 16))
    kept = sorted(found["boxes"].tolist())
    assert kept == [[0.0, 0.0, 8.0, 8.0], [0.0, 8.0, 16.0, 16.0]]
