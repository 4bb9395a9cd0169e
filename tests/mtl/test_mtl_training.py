"""Every method trains through Lightning in bf16-mixed, and skips a task that is never labelled;
fp16 with a gradient scaler gets what a plain backward gives.

One presence class (traffic light) is ``?`` on every training image: with one task per class it
is absent from every batch, so no method may log, move or NaN its weight.
"""

from __future__ import annotations

import importlib.util
import json
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from drivemtl.data.datamodule import DriveDataModule
from drivemtl.module import MultiTaskModule

METHODS = {
    "fixed": {},
    "uncertainty": {"balancing": "uncertainty"},
    "dwa": {"balancing": {"method": "dwa", "temperature": 1.0}},
    "gradnorm": {"balancing": {"method": "gradnorm", "lr": 0.5}},
    "famo": {"balancing": {"method": "famo", "lr": 0.5}},
    "pcgrad": {"gradients": "pcgrad", "diagnose_every": 1},
    "mgda": {"gradients": "mgda"},
    "upgrad": {"gradients": "upgrad"},
    "cagrad": {"gradients": {"method": "cagrad", "c": 0.4}},
    "aligned_mtl": {"gradients": "aligned_mtl"},
    "mgda@features": {"gradients": {"method": "mgda", "on": "features"}, "diagnose_every": 1},
}
ABSENT = "presence/traffic_light"


@pytest.fixture
def manifests(tiny_presence_set):
    train = tiny_presence_set("train", 16, seed=1)
    lines = [json.loads(line) for line in train.read_text().splitlines()]
    for entry in lines:
        entry["presence"]["traffic_light"] = "?"
    train.write_text("".join(json.dumps(e) + "\n" for e in lines))
    return train


@pytest.mark.parametrize("method", list(METHODS))
def test_method_trains_in_bf16_and_skips_the_absent_task(method, manifests, tmp_path):
    if method == "cagrad" and importlib.util.find_spec("cvxpy") is None:
        pytest.skip("cvxpy not installed")
    torch.manual_seed(0)
    data = DriveDataModule(
        train_manifest=str(manifests),
        val_manifest=str(manifests),
        image_size=(32, 48),
        batch_size=8,
        num_workers=0,
    )
    model = MultiTaskModule(
        image_size=(32, 48),
        backbone="mobilenet_v3_small",  # the cheapest trunk: these tests are about the loop
        granularity="class",
        warmup_steps=0,
        **METHODS[method],
    )
    before = [p.detach().clone() for p in model.parameters()]
    trainer = L.Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=tmp_path,  # where diagnostics write task_affinity.*
    )
    trainer.fit(model, data)

    assert trainer.global_step == 2
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    logged = trainer.logged_metrics
    assert math.isfinite(float(logged["train/loss"]))
    weights = {
        k.removeprefix("train/weight/"): float(v) for k, v in logged.items() if "weight/" in k
    }
    assert set(weights) == {"presence/pedestrian", "presence/car", "presence/stop_sign"}
    assert all(math.isfinite(w) for w in weights.values())

    index = model.objective.tasks.index(ABSENT)
    balancer = model.objective.balancer
    if method == "famo":  # its weights are a softmax: the absent task's logit never moved
        assert balancer.logits[index].item() == 0.0 and balancer.steps[index].item() == 0
        # Each step was followed by the update from the same batch forwarded again.
        assert [s for i, s in enumerate(balancer.steps.tolist()) if i != index] == [2, 2, 2]
        assert len(set(balancer.logits.tolist())) == 4
    else:
        assert balancer.weights()[index].item() == 1.0  # the absent task's weight never moved
    if method == "uncertainty":
        assert model.objective.balancer.log_vars[index].item() == 0.0
        assert model.objective.balancer.log_vars[0].item() != 0.0
        groups = trainer.optimizers[0].param_groups
        assert groups[1]["weight_decay"] == 0.0 and len(groups[1]["params"]) == 4
    if method == "gradnorm":
        present = [w for i, w in enumerate(balancer.weights().tolist()) if i != index]
        assert sum(present) == pytest.approx(3.0) and present != [1.0, 1.0, 1.0]
    if method in ("pcgrad", "mgda@features"):
        cosines = [k for k in logged if k.startswith("train/cos/")]
        assert len(cosines) == 3 and not any(ABSENT in k for k in cosines)
        assert model.objective.affinity.pair_counts()[0, 1].item() == 2
        assert (tmp_path / "task_affinity.json").is_file()


def _fp16_fit(manifests, tmp_path, init_scale, **options):
    """One SGD step in fp16 autocast with a real GradScaler (Lightning adds one on GPUs only)."""
    torch.manual_seed(0)
    data = DriveDataModule(
        train_manifest=str(manifests),
        val_manifest=str(manifests),
        image_size=(32, 48),
        batch_size=8,
        num_workers=0,
        augment=False,
    )
    model = MultiTaskModule(
        image_size=(32, 48),
        backbone="mobilenet_v3_small",
        granularity="class",
        warmup_steps=0,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        **options,
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    trainer = L.Trainer(
        accelerator="cpu",
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model, data)
    return before, [p.detach().clone() for p in model.parameters()], scaler.get_scale(), model


def test_fp16_grad_scaler_sees_what_a_plain_backward_gives(manifests, tmp_path):
    # A diagnostic step applies the sum of the per-task gradients, taken of the scaled terms:
    # after the scaler's unscale, the update must equal the plain backward's.
    start, plain, _, _ = _fp16_fit(manifests, tmp_path, 2.0**10)
    _, summed, scale, _ = _fp16_fit(manifests, tmp_path, 2.0**10, diagnose_every=1)
    assert scale == 2.0**10  # no overflow, the step was taken
    step_plain = torch.cat([(b - a).flatten() for a, b in zip(start, plain)])
    step_summed = torch.cat([(b - a).flatten() for a, b in zip(start, summed)])
    # fp16 rounds the per-task backward passes differently from the summed one (0.2 % apart
    # when written); a missing or doubled loss scale would be off by a factor of 1024.
    error = (step_summed - step_plain).norm() / step_plain.norm()
    assert step_plain.norm() > 0 and error < 0.01
    # An overflow (absurd scale) reaches the scaler, which skips the step and lowers its scale.
    before, after, scale, _ = _fp16_fit(manifests, tmp_path, 2.0**60, gradients="pcgrad")
    assert scale < 2.0**60
    assert all(torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("scale", [2.0**10, 2.0**60])
def test_fp16_famo_on_features_steps_or_skips_with_the_scaler(manifests, tmp_path, scale):
    options = {"balancing": "famo", "gradients": {"method": "mgda", "on": "features"}}
    before, after, final, model = _fp16_fit(manifests, tmp_path, scale, **options)
    steps = model.objective.balancer.steps
    if scale == 2.0**10:  # no overflow: the step and FAMO's update from the same batch
        assert final == scale and not all(torch.equal(a, b) for a, b in zip(before, after))
        assert steps.tolist() == [1, 1, 1, 0]  # traffic lights are never labelled
    else:  # an overflow: the scaler skips the step, and FAMO has nothing to learn from
        assert final < scale and all(torch.equal(a, b) for a, b in zip(before, after))
        assert steps.tolist() == [0, 0, 0, 0]
    assert all(torch.isfinite(p).all() for p in after)
