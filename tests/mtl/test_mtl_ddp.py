"""Multi-task methods under Lightning DDP on 2 CPU processes: both ranks apply the same update.

One task per class, with diagnostics: PCGrad with GradNorm weights, and MGDA on the shared
representation with FAMO weights (its update from the same batch forwarded again after each
step). Per-task gradients are taken outside DDP's reducer, averaged with one all_reduce (the
Gramian of the feature Jacobians summed over ranks), aggregated with rank 0's weights, and every
parameter, buffer and balancing state must end identical on both ranks. (That one process
on the global batch gives the same update is tested without batch norm in
``test_mtl_distributed.py``: here each rank normalises its own half-batch.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


METHODS = {
    "pcgrad+gradnorm": [
        "--model.balancing={method: gradnorm, lr: 0.5}",
        "--model.gradients=pcgrad",
    ],
    "mgda@features+famo": [
        "--model.balancing={method: famo, lr: 0.5}",
        "--model.gradients={method: mgda, on: features}",
    ],
}


@pytest.mark.parametrize("method", list(METHODS))
def test_gradient_method_gives_identical_ranks(tmp_path, tiny_presence_set, method):
    train = tiny_presence_set("train", 16, seed=1, unknown_rate=0.3)
    val = tiny_presence_set("val", 8, seed=2)
    dump = tmp_path / "params"
    callback = {
        "class_path": "tests.mtl.helpers.SaveParameters",
        "init_args": {"folder": str(dump)},
    }
    args = [
        "fit",
        f"--data.train_manifest={train}",
        f"--data.val_manifest={val}",
        "--data.image_size=[32, 48]",
        "--data.batch_size=4",
        "--data.num_workers=0",
        "--model.backbone=mobilenet_v3_small",
        "--model.granularity=class",
        *METHODS[method],
        "--model.diagnose_every=1",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_epochs=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.callbacks+={json.dumps(callback)}",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "drivemtl", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    zero, one = (torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert zero.keys() == one.keys()
    for name in zero:
        assert torch.equal(zero[name], one[name]), name
    if method == "pcgrad+gradnorm":
        weights = zero["objective.balancer.current"]
        assert weights.sum().item() == pytest.approx(4.0)
        assert not torch.equal(weights, torch.ones(4))
    else:  # two FAMO updates, one per step, from the global losses
        assert zero["objective.balancer.steps"].tolist() == [2, 2, 2, 2]
        assert len(set(zero["objective.balancer.logits"].tolist())) == 4
    affinity = json.loads((tmp_path / "run" / "task_affinity.json").read_text())
    assert affinity["steps"][0][1] == 2  # 16 images, 4 per rank and step: 2 steps
