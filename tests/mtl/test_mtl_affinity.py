"""Task affinity and grouping on hand-made gradients and matrices."""

from __future__ import annotations

import json
import math

import pytest
import torch

from drivemtl.mtl.affinity import (
    TaskAffinity,
    affinity_report,
    cosine_matrix,
    suggest_groups,
    write_affinity,
)

NAN = math.nan


def test_cosines_and_their_mean_over_steps():
    affinity = TaskAffinity(["a", "b", "c"])
    # Step 1: a = (1, 0), b = (1, 1): cos 1/sqrt(2); c absent.
    logs = affinity.update(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), ["a", "b"])
    assert logs == {"a~b": pytest.approx(1 / math.sqrt(2))}
    # Step 2 (rows in another order): b = (0, 2), a = (-1, 0), c = (0, -3).
    logs = affinity.update(torch.tensor([[0.0, 2.0], [-1.0, 0.0], [0.0, -3.0]]), ["b", "a", "c"])
    assert logs == pytest.approx({"a~b": 0.0, "b~c": -1.0, "a~c": 0.0})
    matrix = affinity.matrix()
    assert matrix[0, 1].item() == pytest.approx((1 / math.sqrt(2) + 0.0) / 2)
    assert matrix[1, 0].item() == matrix[0, 1].item() and matrix[1, 2].item() == -1.0
    assert torch.diagonal(matrix).tolist() == [1.0, 1.0, 1.0]
    assert affinity.pair_counts().tolist() == [[0, 2, 1], [2, 0, 1], [1, 1, 0]]


def test_a_zero_gradient_has_no_cosine():
    cos = cosine_matrix(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert math.isnan(cos[0, 1].item())
    affinity = TaskAffinity(["a", "b"])
    assert affinity.update(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), ["a", "b"]) == {}
    assert math.isnan(affinity.matrix()[0, 1].item())


def test_grouping_by_total_within_group_affinity():
    tasks = ["A", "B", "C", "D"]
    a = torch.tensor(
        [
            [1.0, 0.5, -0.3, -0.2],
            [0.5, 1.0, -0.1, 0.05],
            [-0.3, -0.1, 1.0, 0.4],
            [-0.2, 0.05, 0.4, 1.0],
        ]
    )
    # {A,B}{C,D}: 0.5 + 0.4 = 0.9; all together: 0.35; {A,B,D}{C}: 0.35; singletons: 0.
    groups, score = suggest_groups(a, tasks)
    assert groups == [["A", "B"], ["C", "D"]] and score == pytest.approx(0.9)
    positive = torch.full((3, 3), 0.2)
    assert suggest_groups(positive, ["x", "y", "z"])[0] == [["x", "y", "z"]]
    negative = torch.full((3, 3), -0.2)
    assert suggest_groups(negative, ["x", "y", "z"])[0] == [["x"], ["y"], ["z"]]
    # Undefined or zero affinity: a tie, which goes to fewer networks.
    unknown = torch.tensor([[1.0, NAN], [NAN, 1.0]])
    assert suggest_groups(unknown, ["x", "y"]) == ([["x", "y"]], 0.0)


def test_greedy_grouping_beyond_eight_tasks():
    # Two blocks of five that agree within and conflict across.
    block = torch.tensor([0] * 5 + [1] * 5)
    a = torch.where(block[:, None] == block[None, :], 0.5, -0.5)
    tasks = [f"t{i}" for i in range(10)]
    groups, score = suggest_groups(a, tasks)
    assert groups == [tasks[:5], tasks[5:]]
    assert score == pytest.approx(2 * 10 * 0.5)


def test_report_files(tmp_path):
    affinity = TaskAffinity(["a", "b", "c"])
    affinity.update(torch.tensor([[1.0, 0.0], [-1.0, 0.2], [1.0, 0.1]]), ["a", "b", "c"])
    report = affinity_report(affinity, every=10)
    json_path, png_path = write_affinity(report, tmp_path)
    saved = json.loads(json_path.read_text())
    assert saved["tasks"] == ["a", "b", "c"] and saved["diagnose_every"] == 10
    assert saved["grouping"]["groups"] == [["a", "c"], ["b"]]
    assert [p["tasks"] for p in saved["negative_pairs"]] == [["a", "b"], ["b", "c"]]
    assert "mean cosine" in saved["definition"]
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_state_round_trip_and_a_changed_task_list():
    affinity = TaskAffinity(["a", "b"])
    affinity.update(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), ["a", "b"])
    again = TaskAffinity(["a", "b"])
    assert again.load_state_dict(affinity.state_dict())
    assert torch.equal(again.sums, affinity.sums) and torch.equal(again.counts, affinity.counts)
    other = TaskAffinity(["a", "c"])
    assert not other.load_state_dict(affinity.state_dict())
    assert other.counts.sum() == 0
