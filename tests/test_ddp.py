"""Lightning DDP on 2 CPU processes gives the same validation metrics as 1 process.

A distributed sampler pads the shorter rank with repeated samples; with an odd number of
validation images, any duplicate counted by the metrics would show in the ``labelled`` counts
and in the AP values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from drivemtl.cli import main

pytestmark = pytest.mark.slow

COMMON = [
    "--data.image_size=[32, 48]",
    "--data.batch_size=4",
    "--data.num_workers=0",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
REPO = Path(__file__).resolve().parents[1]


def _run_ddp(args: list[str]) -> None:
    # DDP re-launches the command line in each process, so it must run as its own program.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "drivemtl", *args, "--trainer.devices=2", "--trainer.strategy=ddp"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("backbone", ["resnet18", "timm/tf_efficientnet_lite0"])
def test_two_processes_match_one(tmp_path, tiny_presence_set, backbone):
    train = tiny_presence_set("train", 32, seed=1, unknown_rate=0.2)
    val = tiny_presence_set("val", 37, seed=2, unknown_rate=0.1)
    data = [
        f"--data.train_manifest={train}",
        f"--data.val_manifest={val}",
        f"--model.backbone={backbone}",
    ]

    one = tmp_path / "one"
    assert (
        main(["fit", *COMMON, *data, "--trainer.max_epochs=1", f"--trainer.default_root_dir={one}"])
        == 0
    )
    best = one / "checkpoints" / "best.ckpt"
    single = json.loads((one / "metrics.json").read_text())["presence"]

    two = tmp_path / "two"
    _run_ddp(
        ["validate", *COMMON, *data, f"--ckpt_path={best}", f"--trainer.default_root_dir={two}"]
    )
    double = json.loads((two / "metrics.json").read_text())["presence"]

    labelled = {c: m["labelled"] for c, m in single["per_class"].items()}
    assert sum(m["labelled"] + m["unknown"] for m in single["per_class"].values()) == 37 * 4
    for name, metrics in double["per_class"].items():
        assert metrics["labelled"] == labelled[name]  # no padded duplicate counted
        for key, value in metrics.items():
            if value is None:
                assert single["per_class"][name][key] is None
            else:
                assert value == pytest.approx(single["per_class"][name][key], abs=1e-5), key
    assert double["map"] == pytest.approx(single["map"], abs=1e-5)

    # Training itself under DDP: runs, checkpoints, and validates every image once.
    fit_two = tmp_path / "fit_two"
    _run_ddp(
        ["fit", *COMMON, *data, "--trainer.max_epochs=1", f"--trainer.default_root_dir={fit_two}"]
    )
    assert (fit_two / "checkpoints" / "best.ckpt").is_file()
    fitted = json.loads((fit_two / "metrics.json").read_text())["presence"]
    assert {c: m["labelled"] for c, m in fitted["per_class"].items()} == labelled


def test_a_head_that_leaves_the_last_stage_unread_trains_under_ddp(tmp_path):
    """Detection on its default levels (strides 4-16) reads three stages; its private copy of
    the fourth, were it built, would be a parameter without a gradient, which DDP refuses."""
    run = tmp_path / "run"
    _run_ddp(
        [
            "fit",
            *COMMON,
            "--model.backbone=mobilenet_v3_small",
            "--model.tasks={detection: {}, presence: {}}",
            "--model.sharing={partial: {branch: {detection: 2}}}",
            "--data.synthetic.width=72",
            "--data.synthetic.height=48",
            "--data.synthetic.train=8",
            "--data.synthetic.val=4",
            "--data.synthetic.test=2",
            "--trainer.max_epochs=1",
            f"--trainer.default_root_dir={run}",
        ]
    )
    assert (run / "checkpoints" / "best.ckpt").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["detection"]["images"] == 4  # every validation image once, over 2 ranks
