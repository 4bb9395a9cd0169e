"""The count-once rule of every task metric (``IndexedMetric``): one image, one row.

A distributed sampler repeats images to even out the ranks, and the ranks' rows arrive in any
order after the gather. Every task metric must report, for any order of its updates and any
repeats, exactly what it reports for each image once, in dataset order.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drivemtl.metrics import DepthMetric, DetectionMetric, PresenceMetric
from drivemtl.metrics.indexed import IndexedMetric
from tests.test_detection_metrics import CLASSES, IMAGE_A, IMAGE_B, _img

IMAGES = 4


class Rows(IndexedMetric):
    def update(self) -> None: ...

    def compute(self) -> None: ...


def test_first_rows_by_hand():
    metric = Rows()
    metric.add_index(torch.tensor([5, 2]))
    metric.add_index(torch.tensor([5, 0, 2]))
    # First rows of dataset indices 0, 2 and 5, in that order: positions 3, 1 and 0.
    assert metric.first_rows().tolist() == [3, 1, 0]
    assert Rows().first_rows().tolist() == []


def _presence(i: int):
    rng = np.random.default_rng(i)
    scores = torch.tensor(rng.random((1, 3)), dtype=torch.float32)
    labels = torch.tensor(rng.integers(-1, 2, (1, 3)))
    return scores, labels


def _depth(i: int):
    rng = np.random.default_rng(i)
    pred = torch.tensor(rng.uniform(1, 50, (1, 1, 4, 5)), dtype=torch.float32)
    target = torch.tensor(rng.uniform(1, 50, (1, 1, 4, 5)), dtype=torch.float32)
    target[..., 0] = 0.0  # unmeasured pixels
    return pred, target


def _detection(i: int):
    extra = [_img(preds=[(1, 1, 9, 9, 1, 0.8)], gts=[(0, 0, 10, 10, 1)]), _img()]
    return ([IMAGE_A, IMAGE_B, *extra][i],)


METRICS = {
    "presence": (lambda: PresenceMetric(["a", "b", "c"]), _presence),
    "depth": (DepthMetric, _depth),
    "detection": (lambda: DetectionMetric(CLASSES, score_threshold=0.65), _detection),
}


def _report(make, data, order) -> dict:
    metric = make()
    for i in order:
        inputs = data(i)
        if isinstance(metric, DetectionMetric):
            metric.update(list(inputs), torch.tensor([i]))
        else:
            metric.update(*inputs, torch.tensor([i]))
    return metric.report()


@pytest.mark.parametrize("name", list(METRICS))
def test_any_order_and_any_repeat_count_each_image_once(name):
    make, data = METRICS[name]
    once = _report(make, data, range(IMAGES))
    # Rank 1's rows first, then rank 0's, with two padding repeats of images 0 and 2.
    gathered = _report(make, data, [3, 1, 0, 2, 0, 2])
    assert gathered == once  # the same rows in the same order: equal to the last bit
    with_fewer = _report(make, data, [3, 1, 0])
    assert with_fewer != once  # the images matter: the comparison above can fail
