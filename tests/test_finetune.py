"""Pretrained weights end to end: checkpoints that need no weights file or network, init_from,
freezing, held batch-norm statistics and the backbone's learning rate."""

from __future__ import annotations

import json
import logging

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from drivemtl.cli import main
from drivemtl.errors import DriveMTLError
from drivemtl.module import MultiTaskModule
from tests.conftest import write_image

BACKBONE = "timm/tf_efficientnet_lite0"
TINY = [
    "--data.image_size=[32, 48]",
    "--data.batch_size=8",
    "--data.num_workers=0",
    "--data.augment=false",
    "--trainer.accelerator=cpu",
    "--trainer.precision=32-true",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.logger=false",
    "--seed_everything=0",
]


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A timm tf_efficientnet_lite0 state dict (classifier included) with random values."""
    torch.manual_seed(7)
    state = timm.create_model("tf_efficientnet_lite0").state_dict()
    state = {
        k: torch.rand_like(v) * 0.2 + 0.9 if v.is_floating_point() else v for k, v in state.items()
    }
    path = tmp_path_factory.mktemp("weights") / "lite0.safetensors"
    save_file(state, path)
    return path


def _fit(run, train, val, *extra) -> int:
    return main(
        [
            "fit",
            *TINY,
            f"--data.train_manifest={train}",
            f"--data.val_manifest={val}",
            "--trainer.max_epochs=1",
            f"--trainer.default_root_dir={run}",
            *extra,
        ]
    )


def _trunk(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith("net.trunk.")}


def _is_norm_statistic(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


def test_a_checkpoint_needs_neither_its_weights_file_nor_the_network(
    tmp_path, tiny_presence_set, weights_file, monkeypatch, request
):
    weights = tmp_path / weights_file.name
    weights.write_bytes(weights_file.read_bytes())
    train, val = tiny_presence_set("train", 24, seed=1), tiny_presence_set("val", 12, seed=2)
    run = tmp_path / "run"
    assert (
        _fit(
            run,
            train,
            val,
            f"--model.backbone={BACKBONE}",
            f"--model.weights={weights}",
            "--model.freeze=backbone",
        )
        == 0
    )
    best = run / "checkpoints" / "best.ckpt"
    ckpt = torch.load(best, weights_only=True)
    hparams = ckpt["hyper_parameters"]
    assert hparams["weights"] is None and ckpt["initialised_from"] == {"weights": str(weights)}
    assert tuple(hparams["mean"]) == (0.5, 0.5, 0.5)  # timm's config for lite0, stored
    # The frozen backbone is the file's, tensor for tensor (statistics held too).
    reference = MultiTaskModule(backbone=BACKBONE, weights=str(weights), image_size=(32, 48))
    expected = _trunk(reference.state_dict())
    assert _trunk(ckpt["state_dict"]).keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(ckpt["state_dict"][key], value), key

    # From here on: the file is gone, and so is the network.
    weights.unlink()
    request.getfixturevalue("no_network")
    for command in (
        ["validate", "--config", str(run / "config.yaml"), f"--data.val_manifest={val}"],
        ["test", *TINY, f"--data.test_manifest={val}"],
    ):
        out = tmp_path / command[0]
        assert main([*command, f"--ckpt_path={best}", f"--trainer.default_root_dir={out}"]) == 0
        assert json.loads((out / "metrics.json").read_text())["presence"]["map"] is not None
    images = tmp_path / "frames"
    for i in range(3):
        write_image(images / f"{i}.png", seed=i)
    out = tmp_path / "predicted"
    code = main(
        [
            "predict",
            f"--ckpt_path={best}",
            f"--data.predict_dir={images}",
            f"--output_dir={out}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert code == 0
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3
    model = MultiTaskModule.load_from_checkpoint(best)
    assert model.net.mean.flatten().tolist() == [0.5, 0.5, 0.5]

    # A resumed fit reads its checkpoint, not the missing weights file in its config.
    resumed = tmp_path / "resumed"
    code = main(
        [
            "fit",
            "--config",
            str(run / "config.yaml"),
            "--trainer.max_epochs=2",
            f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
            f"--trainer.default_root_dir={resumed}",
        ]
    )
    assert code == 0
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


def test_a_checkpoint_of_downloaded_weights_loads_offline(tmp_path, tiny_presence_set, request):
    """Checkpoints written before weights were dropped from their hyperparameters, too."""
    train, val = tiny_presence_set("train", 16, seed=1), tiny_presence_set("val", 8, seed=2)
    run = tmp_path / "run"
    assert _fit(run, train, val, "--model.backbone=resnet18") == 0
    path = run / "checkpoints" / "best.ckpt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["weights"] = "DEFAULT"  # as if trained from downloaded weights
    torch.save(ckpt, path)
    request.getfixturevalue("no_network")
    out = tmp_path / "test"
    assert (
        main(
            [
                "test",
                *TINY,
                f"--data.test_manifest={val}",
                f"--ckpt_path={path}",
                f"--trainer.default_root_dir={out}",
            ]
        )
        == 0
    )
    assert MultiTaskModule.load_from_checkpoint(path).hparams.weights is None


def _checkpoint(path, **hparams) -> MultiTaskModule:
    """A drivemtl checkpoint of a fresh model (what init_from reads), and that model."""
    model = MultiTaskModule(image_size=(32, 48), **hparams)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return model


def test_init_from_loads_what_fits_and_says_what_is_new(tmp_path, caplog):
    source = _checkpoint(tmp_path / "presence.ckpt", backbone="resnet18")
    with caplog.at_level(logging.INFO):
        model = MultiTaskModule(
            backbone="resnet18",
            tasks={"presence": {}, "detection": {}},
            init_from=str(tmp_path / "presence.ckpt"),
            image_size=(32, 48),
        )
    stored = source.state_dict()
    own = model.state_dict()
    loaded = [k for k in own if k.startswith(("net.trunk.", "net.heads.presence."))]
    for key in loaded:
        assert torch.equal(own[key], stored[key]), key
    detection = [k for k in own if k.startswith("net.heads.detection.")]
    assert detection and not any(k in stored for k in detection)
    report = caplog.text
    assert f"loaded {len(loaded)} tensors" in report
    assert f"newly initialised {len(detection)} (head detection {len(detection)})" in report


def test_init_from_with_another_class_list_keeps_the_trunk_only(tmp_path, caplog):
    source = _checkpoint(tmp_path / "four.ckpt", backbone="resnet18")
    # The same classes in another order: the head's shapes fit, its outputs would be swapped.
    swapped = ["car", "pedestrian", "stop_sign", "traffic_light"]
    with caplog.at_level(logging.INFO):
        model = MultiTaskModule(
            classes=swapped, init_from=str(tmp_path / "four.ckpt"), image_size=(32, 48)
        )
    own, stored = model.state_dict(), source.state_dict()
    for key in _trunk(own):
        assert torch.equal(own[key], stored[key]), key
    head = [k for k in own if k.startswith("net.heads.")]
    assert all(own[k].shape == stored[k].shape for k in head)
    assert not torch.equal(
        own["net.heads.presence.fc.weight"], stored["net.heads.presence.fc.weight"]
    )
    assert "class list" in caplog.text and f"newly initialised {len(head)}" in caplog.text


def test_init_from_refuses_files_that_are_not_drivemtl_checkpoints(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "plain.pth")
    with pytest.raises(DriveMTLError, match="not a drivemtl checkpoint.*model.weights"):
        MultiTaskModule(init_from=str(tmp_path / "plain.pth"))
    _checkpoint(tmp_path / "resnet.ckpt", backbone="resnet18")
    with pytest.raises(DriveMTLError, match="no trunk tensor fits"):
        MultiTaskModule(backbone="mobilenet_v3_small", init_from=str(tmp_path / "resnet.ckpt"))


def test_freezing_stages_and_holding_statistics_in_a_fit(tmp_path, tiny_presence_set, weights_file):
    train, val = tiny_presence_set("train", 24, seed=1), tiny_presence_set("val", 8, seed=2)
    reference = _trunk(
        MultiTaskModule(
            backbone=BACKBONE, weights=str(weights_file), image_size=(32, 48)
        ).state_dict()
    )
    common = (f"--model.backbone={BACKBONE}", f"--model.weights={weights_file}")

    assert _fit(tmp_path / "two", train, val, *common, "--model.freeze=2") == 0
    state = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in reference.items():
        if int(key.split(".")[4]) < 2:  # net.trunk.backbone.stages.<i>...: frozen
            assert torch.equal(state["state_dict"][key], value), key
    changed = [k for k in reference if not torch.equal(state["state_dict"][k], reference[k])]
    assert changed and all(int(k.split(".")[4]) >= 2 for k in changed)

    assert _fit(tmp_path / "bn", train, val, *common, "--model.freeze_bn_stats=true") == 0
    state = torch.load(tmp_path / "bn" / "checkpoints" / "last.ckpt", weights_only=True)
    stats = [k for k in reference if _is_norm_statistic(k)]
    assert stats and all(torch.equal(state["state_dict"][k], reference[k]) for k in stats)
    trained = [k for k in reference if not _is_norm_statistic(k)]
    assert all(not torch.equal(state["state_dict"][k], reference[k]) for k in trained)


def test_frozen_batch_norm_stays_in_eval_mode_across_train_calls():
    model = MultiTaskModule(backbone="resnet18", freeze=1, image_size=(32, 48))
    stages = dict(enumerate(model.net.trunk.backbone.stages))
    norms = {
        i: [m for m in s.modules() if isinstance(m, nn.BatchNorm2d)] for i, s in stages.items()
    }
    model.eval().train()
    assert not any(m.training for m in norms[0]) and all(m.training for m in norms[1])
    assert not any(p.requires_grad for p in stages[0].parameters())
    assert all(p.requires_grad for p in stages[1].parameters())


@pytest.mark.parametrize("freeze", [5, -1, "all", True])
def test_bad_freeze_values_are_clear_errors(freeze):
    with pytest.raises(DriveMTLError, match="model.freeze"):
        MultiTaskModule(freeze=freeze)


def test_the_backbone_learning_rate_is_scaled_and_frozen_stages_left_out():
    model = MultiTaskModule(
        backbone="resnet18",
        balancing="uncertainty",
        freeze=1,
        backbone_lr_scale=0.1,
        optimizer=lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.05),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0),
    )
    optimizer = model.configure_optimizers()["optimizer"]
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    stages = model.net.trunk.backbone.stages
    assert all(id(p) not in groups for p in stages[0].parameters())
    assert all(groups[id(p)]["lr"] == pytest.approx(0.001) for p in stages[1:].parameters())
    head = list(model.net.heads.parameters())
    assert all(groups[id(p)]["lr"] == 0.01 and groups[id(p)]["weight_decay"] == 0.05 for p in head)
    own = list(model.objective.parameters())
    assert own and all(groups[id(p)]["weight_decay"] == 0.0 for p in own)
    assert len(groups) == sum(p.requires_grad for p in model.parameters())


def test_without_a_backbone_scale_the_optimiser_has_one_group_as_before():
    """Optimiser states of checkpoints written before this option still resume."""
    model = MultiTaskModule(
        backbone="resnet18",
        optimizer=lambda params: torch.optim.AdamW(params, lr=0.01),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0),
    )
    (group,) = model.configure_optimizers()["optimizer"].param_groups
    assert [id(p) for p in group["params"]] == [id(p) for p in model.parameters()]
    assert group["lr"] == 0.01
