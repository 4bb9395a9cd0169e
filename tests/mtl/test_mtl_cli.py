"""The MTL options through the command line: resume continues the method's state, the
single-task switch, diagnostics files, ``compare`` on real run folders, and clear errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from drivemtl.cli import main

TINY = [
    "--data.image_size=[32, 48]",
    "--data.batch_size=8",
    "--data.num_workers=0",
    "--model.backbone=mobilenet_v3_small",
    "--model.warmup_steps=0",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.log_every_n_steps=1",
    "--trainer.num_sanity_val_steps=0",
]


def _fit(run, train, val, *extra):
    args = ["fit", *TINY, f"--data.train_manifest={train}", f"--data.val_manifest={val}"]
    return main([*args, f"--trainer.default_root_dir={run}", *extra])


def _balancer(path):
    state = torch.load(path, weights_only=True)["state_dict"]
    return {k.rsplit(".", 1)[1]: v for k, v in state.items() if "objective.balancer" in k}


def _rows(path):
    return list(csv.DictReader(path.open()))


def test_resume_continues_dwa_and_the_task_affinity(tmp_path, tiny_presence_set, capsys):
    train = tiny_presence_set("train", 16, seed=1, unknown_rate=0.1)
    val = tiny_presence_set("val", 8, seed=2)
    tasks = [f"presence/{c}" for c in ("pedestrian", "car", "stop_sign", "traffic_light")]
    mtl = ["--model.granularity=class", "--model.balancing=dwa", "--model.diagnose_every=1"]
    run = tmp_path / "run"
    assert _fit(run, train, val, *mtl, "--trainer.max_epochs=1") == 0
    saved = _balancer(run / "checkpoints" / "last.ckpt")
    # Epoch 1's sums are still accumulating: they are folded in when the next epoch starts,
    # so that a checkpoint written at the end of an epoch resumes exactly.
    assert (saved["epoch_count"] > 0).all() and torch.isnan(saved["history"]).all()
    affinity = json.loads((run / "task_affinity.json").read_text())
    assert affinity["tasks"] == tasks and affinity["steps"][0][1] == 2  # 2 batches, every step
    assert (run / "task_affinity.png").is_file()
    header = next(csv.reader((run / "metrics.csv").open()))
    assert "train/weight/presence/car" in header
    assert "train/cos/presence/pedestrian~presence/car" in header

    resumed = tmp_path / "resumed"
    last = run / "checkpoints" / "last.ckpt"
    assert _fit(resumed, train, val, *mtl, "--trainer.max_epochs=3", f"--ckpt_path={last}") == 0
    rows = [r for r in _rows(resumed / "metrics.csv") if r.get("train/loss")]
    # Epoch 2 (index 1) still has one epoch of history: weights 1. Epoch 3's weights use
    # L(1) from the checkpoint and L(2) from this run's logged losses; a run that had not
    # restored the state would still be at weight 1 here.
    assert {float(r["train/weight/presence/car"]) for r in rows if r["epoch"] == "1"} == {1.0}
    first = saved["epoch_sum"] / saved["epoch_count"]
    second = []
    for task in tasks:
        pairs = [
            (float(r[f"train/{task}/loss"]), float(r[f"train/{task}/labelled"]))
            for r in rows
            if r["epoch"] == "1"
        ]
        second.append(sum(v * n for v, n in pairs) / sum(n for _, n in pairs))
    expected = 4 * torch.softmax(torch.tensor(second, dtype=torch.float64) / first / 2.0, dim=0)
    for r in (r for r in rows if r["epoch"] == "2"):
        logged = [float(r[f"train/weight/{task}"]) for task in tasks]
        assert logged == pytest.approx(expected.tolist(), abs=1e-5)
        assert logged != pytest.approx([1.0] * 4, abs=1e-4)
    affinity = json.loads((resumed / "task_affinity.json").read_text())
    assert affinity["steps"][0][1] == 2 + 4  # continued from the checkpoint's 2 steps
    multi = resumed / "metrics.json"

    single = tmp_path / "single"
    assert (
        _fit(single, train, val, "--model.single_task=presence/car", "--trainer.max_epochs=1") == 0
    )
    report = json.loads((single / "metrics.json").read_text())
    assert list(report) == ["presence"] and list(report["presence"]["per_class"]) == ["car"]
    assert report["presence"]["map"] == report["presence"]["per_class"]["car"]["ap"]
    capsys.readouterr()
    assert main(["compare", f"--multi={multi}", "--single", str(single / "metrics.json")]) == 0
    out = capsys.readouterr().out
    assert "presence/car/ap" in out and "Delta_m = " in out


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--model.balancing=equal", "Unknown model.balancing method 'equal'; choose one of"),
        ("--model.gradients={method: cagrad, alpha: 1}", "has no option ['alpha']"),
        ("--model.single_task=presence/truck", "'presence/truck' is not a configured task"),
        ("--model.loss_weights={depth: 2}", "names tasks not trained: ['depth']"),
    ],
)
def test_bad_options_are_clear_errors(tmp_path, tiny_presence_set, capsys, option, message):
    train = tiny_presence_set("train", 4)
    code = _fit(tmp_path / "run", train, train, option, "--trainer.fast_dev_run=true")
    err = capsys.readouterr().err
    assert code == 2 and "drivemtl: error: " in err and message in err and "Traceback" not in err


def test_resume_restores_famo_state(tmp_path, tiny_presence_set):
    train = tiny_presence_set("train", 16, seed=1, unknown_rate=0.1)
    val = tiny_presence_set("val", 8, seed=2)
    tasks = [f"presence/{c}" for c in ("pedestrian", "car", "stop_sign", "traffic_light")]
    famo = ["--model.granularity=class", "--model.balancing={method: famo, lr: 0.5}"]
    run = tmp_path / "run"
    assert _fit(run, train, val, *famo, "--trainer.max_epochs=1") == 0
    last = run / "checkpoints" / "last.ckpt"
    saved = _balancer(last)
    assert saved["steps"].tolist() == [2, 2, 2, 2]  # one update per step, every task labelled
    assert saved["exp_avg_sq"].min() > 0 and len(set(saved["logits"].tolist())) == 4

    resumed = tmp_path / "resumed"
    assert _fit(resumed, train, val, *famo, "--trainer.max_epochs=2", f"--ckpt_path={last}") == 0
    first = next(r for r in _rows(resumed / "metrics.csv") if r.get("train/loss"))
    # The first resumed step weighs each loss by 4 (z_i / L_i) / sum_j (z_j / L_j) with z the
    # softmax of the checkpoint's logits; a fresh FAMO (z uniform) would weigh by 1 / L_i.
    losses = torch.tensor([float(first[f"train/{t}/loss"]) for t in tasks], dtype=torch.float64)
    logged = [float(first[f"train/weight/{t}"]) for t in tasks]
    for logits in (saved["logits"].double(), torch.zeros(4, dtype=torch.float64)):
        ratio = torch.softmax(logits, 0) / losses
        expected = (4 * ratio / ratio.sum()).tolist()
        if logits.any():
            assert logged == pytest.approx(expected, abs=1e-4)
        else:
            assert logged != pytest.approx(expected, abs=1e-3)
    assert _balancer(resumed / "checkpoints" / "last.ckpt")["steps"].tolist() == [4, 4, 4, 4]
