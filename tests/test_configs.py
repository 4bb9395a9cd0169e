"""Every shipped config parses and trains: one ``fast_dev_run`` step each on a tiny synthetic set.

The configs are the recipes users copy first; a renamed option or a moved class would otherwise
surface only when someone runs them for minutes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from drivemtl.cli import main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
TINY = [
    "--data.image_size=[64, 96]",
    "--data.synthetic.width=96",
    "--data.synthetic.height=64",
    "--data.synthetic.train=4",
    "--data.synthetic.val=2",
    "--data.synthetic.test=2",
    "--data.batch_size=2",
    "--data.num_workers=0",
    "--trainer.accelerator=cpu",
    "--trainer.fast_dev_run=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def test_every_config_is_covered():
    assert len(CONFIGS) >= 6, CONFIGS  # demo, demo_all, demo_depth, demo_detection, finetune*


@pytest.fixture(scope="module")
def cache(module_tmp) -> Path:
    """One tiny synthetic set for every config."""
    return module_tmp("configs-cache")


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_runs_one_step(config, cache, tmp_path):
    code = main(
        [
            "fit",
            f"--config={config}",
            *TINY,
            f"--data.cache_dir={cache}",
            f"--trainer.default_root_dir={tmp_path / 'run'}",
        ]
    )
    assert code == 0
