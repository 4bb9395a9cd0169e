"""Depth task: loss and metrics against hand-computed values, head, decoding, PNG round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from drivemtl.data.batch import Batch
from drivemtl.data.io import load_depth, save_depth_png
from drivemtl.metrics.depth import METRICS, DepthMetric, image_errors
from drivemtl.models.backbones import Backbone
from drivemtl.prediction.depth_preview import write_depth_preview
from drivemtl.tasks import TASKS, build_tasks
from drivemtl.tasks.depth import DepthHead, DepthTask, silog_loss

# Two 2x3 images. Zeros are "no measurement"; image 1 has a NaN too; image 2 has no valid pixel.
PRED = np.array(
    [
        [[1.0, 5.0, 7.0], [8.0, 3.0, 90.0]],
        [[9.0, 9.0, 0.5], [9.0, 25.0, 9.0]],
        [[4.0, 4.0, 4.0], [4.0, 4.0, 4.0]],
    ]
)
TRUE = np.array(
    [
        [[2.0, 4.0, 0.0], [8.0, 100.0, 10.0]],
        [[0.0, np.nan, 5.0], [0.0, 20.0, 0.0]],
        [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
    ]
)


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(array, dtype=torch.float32)[:, None]


def _silog_by_hand(pred: np.ndarray, true: np.ndarray, lam: float) -> tuple[float, int]:
    """Pixel-weighted mean over images of mean(g^2) - lam * mean(g)^2, written out."""
    total, pixels = 0.0, 0
    for p, t in zip(pred, true):
        keep = np.isfinite(t) & (t > 0)
        if not keep.any():
            continue
        g = np.log(p[keep]) - np.log(t[keep])
        total += keep.sum() * (np.mean(g**2) - lam * np.mean(g) ** 2)
        pixels += int(keep.sum())
    return total / pixels, pixels


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.85, 1.0])
def test_silog_loss_by_hand(lam):
    loss, count = silog_loss(_t(PRED), _t(TRUE), lam=lam)
    expected, pixels = _silog_by_hand(PRED, TRUE, lam)
    assert count == pixels == 7  # 100 m counts for the loss: only the metrics are capped
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_silog_loss_first_image_literal():
    # Image 0 alone: g = ln(1/2), ln(5/4), ln(8/8), ln(3/100), ln(90/10), lam = 0.85.
    g = [math.log(0.5), math.log(1.25), 0.0, math.log(0.03), math.log(9.0)]
    expected = sum(x * x for x in g) / 5 - 0.85 * (sum(g) / 5) ** 2
    loss, count = silog_loss(_t(PRED[:1]), _t(TRUE[:1]))
    assert count == 5 and float(loss) == pytest.approx(expected, rel=1e-5)


def test_sqrt_form_and_l1_term():
    silog, _ = _silog_by_hand(PRED, TRUE, 0.85)
    keep = np.isfinite(TRUE) & (TRUE > 0)
    l1 = np.abs(PRED[keep] - TRUE[keep]).mean()
    loss, _ = silog_loss(_t(PRED), _t(TRUE), sqrt=True, l1_weight=0.1)
    assert float(loss) == pytest.approx(math.sqrt(silog) + 0.1 * l1, rel=1e-5)


def test_scale_invariance_with_lambda_one():
    # lam = 1: multiplying every prediction of an image by a constant changes nothing.
    base, _ = silog_loss(_t(PRED[:2]), _t(TRUE[:2]), lam=1.0)
    scaled, _ = silog_loss(_t(PRED[:2] * np.array([3.0, 0.2])[:, None, None]), _t(TRUE[:2]), 1.0)
    assert float(scaled) == pytest.approx(float(base), rel=1e-4)


def test_loss_upsamples_a_low_resolution_prediction():
    # A constant 2x3 prediction upsampled to 4x6 stays constant: ln(4/t) per valid pixel.
    true = np.zeros((1, 4, 6))
    true[0, 1, 2], true[0, 3, 5] = 2.0, 8.0
    loss, count = silog_loss(_t(np.full((1, 2, 3), 4.0)), _t(true), lam=0.5)
    g = np.array([math.log(2.0), math.log(0.5)])
    assert count == 2 and float(loss) == pytest.approx(np.mean(g**2) - 0.5 * np.mean(g) ** 2)


def test_images_without_depth_contribute_nothing():
    # Image 2 (no valid pixel) or a missing map changes neither the loss nor the count.
    alone, n_alone = silog_loss(_t(PRED[:2]), _t(TRUE[:2]))
    padded, n_padded = silog_loss(_t(PRED), _t(TRUE))
    assert n_alone == n_padded and float(alone) == pytest.approx(float(padded), rel=1e-6)


@pytest.mark.parametrize("target", ["zeros", "none"])
def test_no_valid_pixel_gives_zero_loss_and_finite_gradients(target):
    head = DepthHead([8, 16, 32, 64], width=8)
    features = [torch.randn(2, c, 16 // 2**i, 24 // 2**i) for i, c in enumerate([8, 16, 32, 64])]
    depth = None if target == "none" else torch.zeros(2, 1, 64, 96)
    loss, count = silog_loss(head(features), depth)
    loss.backward()
    assert count == 0 and float(loss.detach()) == 0.0
    grads = [p.grad for p in head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and not g.any() for g in grads)


def test_metrics_by_hand():
    errors, count = image_errors(_t(PRED), _t(TRUE))
    assert count.tolist() == [4, 2, 0]  # 100 m is outside the 80 m cap; 0 and NaN invalid
    # Image 0, valid pairs (p, g) with p clamped to 80: (1, 2), (5, 4), (8, 8), (80, 10).
    # Image 1: (0.5, 5), (25, 20).
    by_hand = {
        "abs_rel": [(0.5 + 0.25 + 0 + 7.0) / 4, (0.9 + 0.25) / 2],
        "sq_rel": [(1 / 2 + 1 / 4 + 0 + 4900 / 10) / 4, (20.25 / 5 + 25 / 20) / 2],
        "rmse": [math.sqrt((1 + 1 + 0 + 4900) / 4), math.sqrt((20.25 + 25) / 2)],
        "rmse_log": [
            math.sqrt((math.log(0.5) ** 2 + math.log(1.25) ** 2 + math.log(8) ** 2) / 4),
            math.sqrt((math.log(0.1) ** 2 + math.log(1.25) ** 2) / 2),
        ],
        # max(p/g, g/p): 2, 1.25, 1, 8 and 10, 1.25; the thresholds are strict.
        "delta1": [1 / 4, 0.0],
        "delta2": [2 / 4, 1 / 2],
        "delta3": [2 / 4, 1 / 2],
    }
    for k, name in enumerate(METRICS):
        assert errors[:2, k].tolist() == pytest.approx(by_hand[name], rel=1e-9), name

    metric = DepthMetric()
    metric.update(_t(PRED[:2]), _t(TRUE[:2]), torch.tensor([0, 1]))
    # The padding a distributed sampler adds repeats image 0: it must count once.
    metric.update(_t(PRED[:1]), _t(TRUE[:1]), torch.tensor([0]))
    metric.update(_t(PRED[2:]), _t(TRUE[2:]), torch.tensor([2]))
    report = metric.report()
    assert report["valid_pixels"] == 6 and report["images"] == 2
    for name in METRICS:  # per image, then the plain mean over the 2 scored images
        assert report[name] == pytest.approx(sum(by_hand[name]) / 2, rel=1e-9), name


def test_metric_cap_is_configurable():
    # With the cap at 120 m, the 100 m pixel of image 0 counts and 90 m is not clamped.
    errors, count = image_errors(_t(PRED[:1]), _t(TRUE[:1]), max_depth=120.0)
    assert count.tolist() == [5]
    expected = (0.5 + 0.25 + 0 + 0.97 + 8.0) / 5
    assert float(errors[0, 0]) == pytest.approx(expected)


def test_undefined_metrics_are_null_not_zero():
    metric = DepthMetric()
    assert metric.report()["abs_rel"] is None  # nothing seen
    metric.update(_t(PRED[2:]), _t(TRUE[2:]), torch.tensor([0]))
    metric.update(_t(PRED[:1]), None, torch.tensor([1]))  # a batch without depth
    report = metric.report()
    assert all(report[name] is None for name in METRICS)
    assert report["valid_pixels"] == 0 and report["images"] == 0


def test_head_on_a_real_trunk_outputs_positive_metres_at_stride_4():
    trunk = Backbone("resnet18")
    task = build_tasks({"depth": {"output_range": [0.5, 50.0]}})["depth"]
    head = task.build_head(trunk.channels, ["car"])
    with torch.no_grad():
        depth = head(trunk(torch.randn(2, 3, 64, 96)))
    assert depth.shape == (2, 1, 16, 24) and depth.dtype == torch.float32
    assert (depth >= 0.5).all() and (depth <= 50.0).all()
    assert TASKS["depth"].monitor_mode == "min" and TASKS["presence"].monitor_mode == "max"


@pytest.mark.parametrize(
    "options",
    [{"lam": 1.5}, {"output_range": [5.0, 1.0]}, {"min_depth": 80.0}, {"l1_weight": -1}],
)
def test_bad_options_are_clear_errors(options):
    from drivemtl.errors import DriveMTLError

    with pytest.raises(DriveMTLError, match="depth"):
        build_tasks({"depth": options})


def _batch(sizes: list[tuple[int, int]]) -> Batch:
    n = len(sizes)
    return Batch(
        images=torch.zeros(n, 3, 32, 48, dtype=torch.uint8),
        presence=torch.full((n, 1), -1),
        index=torch.arange(n),
        paths=[f"{i}.png" for i in range(n)],
        original_sizes=torch.tensor(sizes),
        boxes=[None] * n,
        box_labels=[None] * n,
        ignore=[None] * n,
    )


def test_decode_maps_back_to_the_original_size_and_png_round_trips(tmp_path):
    # Stride-4 output of a 32x48 input: left half 3 m, right half 40 m.
    output = torch.full((2, 1, 8, 12), 3.0)
    output[..., 6:] = 40.0
    rows = DepthTask().decode(output, None, _batch([(75, 100), (0, 0)]), ["car"])
    assert rows[1] == {"depth": None}  # an unreadable image has no size
    depth = rows[0]["depth"]
    assert depth.shape == (75, 100) and depth.dtype == torch.float32
    assert torch.allclose(depth[:, :40], torch.tensor(3.0)) and torch.allclose(
        depth[:, 60:], torch.tensor(40.0)
    )
    path = tmp_path / "d.png"
    save_depth_png(depth.numpy(), path)
    with Image.open(path) as im:
        assert im.mode == "I;16" and im.size == (100, 75)
    back = load_depth(path)
    assert np.abs(back - depth.numpy()).max() <= 0.5 / 256 + 1e-6  # one rounding step
    assert back[0, 0] == 3.0 and back[0, -1] == 40.0  # exact multiples of 1/256

    preview = write_depth_preview(depth.numpy(), str(tmp_path / "p" / "d.jpg"), max_side=50)
    with Image.open(preview) as im:
        assert im.size == (50, 38) and im.mode == "RGB"
        pixels = np.asarray(im).astype(int)
    assert pixels[:, :15].sum() > pixels[:, -15:].sum()  # near is brighter than far


def test_synchronised_states_count_each_image_once():
    """Two processes' states through torchmetrics' own gathering code: rank 1 repeats image 0
    (a distributed sampler's padding); the report equals one process seeing each image once."""
    rank0, rank1, single = DepthMetric(), DepthMetric(), DepthMetric()
    rank0.update(_t(PRED[:1]), _t(TRUE[:1]), torch.tensor([0]))
    rank0.update(_t(PRED[2:]), _t(TRUE[2:]), torch.tensor([2]))
    rank1.update(_t(PRED[1:2]), _t(TRUE[1:2]), torch.tensor([1]))
    rank1.update(_t(PRED[:1]), _t(TRUE[:1]), torch.tensor([0]))  # padding
    single.update(_t(PRED), _t(TRUE), torch.tensor([0, 1, 2]))

    others = [torch.cat(getattr(rank1, name)) for name in ("index", "count", "errors")]

    def gather(tensor, group=None):  # what all_gather returns on rank 0: [rank 0, rank 1]
        return [tensor, others.pop(0)]

    rank0._sync_dist(dist_sync_fn=gather)
    assert not others  # every state went through the gather
    synced, expected = rank0.report(), single.report()
    assert synced["images"] == 2 and synced["valid_pixels"] == 6
    assert synced == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 7, 1), (1, 1, 5), (3, 2)])
def test_a_map_one_pixel_wide_or_high_keeps_its_axes(tmp_path, shape):
    """``predict`` on a 1x1 image crashed (the map squeezed to a scalar), and a map one pixel
    wide was written as a row, transposed."""
    value = np.arange(1, math.prod(shape) + 1, dtype=np.float32).reshape(shape)
    task = DepthTask()
    task.save_map(value, str(tmp_path / "d.png"))
    plane = value.reshape(shape[-2:])
    np.testing.assert_allclose(load_depth(tmp_path / "d.png"), plane, atol=1 / 256)
    assert task.preview(value).shape[:2] == plane.shape
