"""Backbones by provider: timm stage cuts, weights files, named weights offline, normalisation."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from drivemtl.errors import DriveMTLError
from drivemtl.models.backbones import Backbone, split_name
from drivemtl.models.timm_backbones import cut_stages
from drivemtl.module import MultiTaskModule

TIMM_FAMILIES = ["tf_efficientnet_lite0", "resnet18", "convnext_nano"]


def image(seed: int = 1, size: tuple[int, int] = (64, 96)) -> torch.Tensor:
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", TIMM_FAMILIES)
def test_timm_stages_give_the_maps_of_timm_features_only(name):
    """The four stages reproduce timm's own features_only extractor, same weights."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    stages = cut_stages(model)
    reductions = [f["reduction"] for f in model.feature_info]
    features = timm.create_model(
        name,
        features_only=True,
        out_indices=[i for i, r in enumerate(reductions) if r in (4, 8, 16, 32)],
        pretrained=True,
        pretrained_cfg_overlay={"state_dict": model.state_dict()},
    ).eval()
    x = image()
    with torch.no_grad():
        expected = features(x)
        got = []
        for stage in stages:
            x = stage(x)
            got.append(x)
    assert [g.shape[-1] for g in got] == [96 // s for s in (4, 8, 16, 32)]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


def test_timm_efficientnet_folds_its_stride_2_stem_into_the_first_stage():
    backbone = Backbone("timm/tf_efficientnet_lite0")
    first = list(backbone.stages[0])
    # conv_stem and bn1 (stride 2), blocks 0 (stride 2) and 1 (stride 4).
    assert len(first) == 4 and isinstance(first[0], torch.nn.Conv2d)
    assert backbone.channels == [24, 40, 112, 320]


def test_backbone_names_choose_the_provider():
    assert split_name("resnet18") == ("torchvision", "resnet18")
    assert split_name("torchvision/resnet18") == ("torchvision", "resnet18")
    assert split_name("timm/convnext_nano") == ("timm", "convnext_nano")
    with pytest.raises(DriveMTLError, match="provider"):
        split_name("hub/resnet18")


@pytest.mark.parametrize(
    "name, message",
    [
        ("timm/vit_tiny_patch16_224", "no feature maps at strides"),
        ("timm/not_a_model", "Unknown timm backbone"),
        ("alexnet", "Unsupported backbone"),
    ],
)
def test_unusable_backbones_are_clear_errors(name, message):
    with pytest.raises(DriveMTLError, match=message):
        Backbone(name)


def test_normalisation_defaults_to_the_backbones_pretrained_config():
    lite = MultiTaskModule(backbone="timm/tf_efficientnet_lite0", image_size=(64, 64))
    assert lite.hparams.mean == (0.5, 0.5, 0.5) and lite.hparams.std == (0.5, 0.5, 0.5)
    assert lite.net.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    imagenet = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    resnet = MultiTaskModule(backbone="resnet18", image_size=(64, 64))
    assert resnet.hparams.mean == tuple(imagenet.mean)
    given = MultiTaskModule(
        backbone="timm/tf_efficientnet_lite0", mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0)
    )
    assert given.net.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])


def _timm_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    """A state dict of ``name`` whose every float tensor is random (none at its init value)."""
    torch.manual_seed(seed)
    state = timm.create_model(name, pretrained=False).state_dict()
    return {k: torch.rand_like(v) + 0.5 if v.is_floating_point() else v for k, v in state.items()}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("with_classifier", [True, False])
def test_a_timm_weights_file_loads_every_stage_tensor(tmp_path, suffix, with_classifier):
    state = _timm_state("tf_efficientnet_lite0", seed=5)
    if not with_classifier:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    path = tmp_path / f"lite0{suffix}"
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    backbone = Backbone("timm/tf_efficientnet_lite0", str(path))
    # Stage 1 starts with conv_stem; stage 4 ends with the last block (blocks.6).
    torch.testing.assert_close(backbone.stages[0][0].weight, state["conv_stem.weight"])
    last = backbone.stages[3][-1][0].conv_pw.weight
    torch.testing.assert_close(last, state["blocks.6.0.conv_pw.weight"])
    # No stage tensor kept its random initialisation.
    torch.manual_seed(123)
    fresh = Backbone("timm/tf_efficientnet_lite0")
    for (key, a), b in zip(backbone.state_dict().items(), fresh.state_dict().values()):
        if a.is_floating_point():
            assert not torch.equal(a, b), key


def test_a_torchvision_weights_file_without_classifier_loads(tmp_path):
    torch.manual_seed(2)
    state = torchvision.models.resnet18().state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    torch.save({"state_dict": state}, tmp_path / "resnet18.pt")  # nested, as trainers save
    backbone = Backbone("resnet18", str(tmp_path / "resnet18.pt"))
    torch.testing.assert_close(
        backbone.stages[3][-1][-1].conv2.weight, state["layer4.1.conv2.weight"]
    )


def test_a_weights_file_that_does_not_fit_is_refused_with_counts(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(_timm_state("resnet18", seed=0), path)
    with pytest.raises(DriveMTLError) as error:
        Backbone("timm/tf_efficientnet_lite0", str(path))
    message = str(error.value)
    assert str(path) in message and "does not fit backbone timm/tf_efficientnet_lite0" in message
    # Counted from the two layouts: only bn1 shares names (4 of its 5 tensors differ in shape).
    resnet = set(_timm_state("resnet18", 0))
    lite = set(_timm_state("tf_efficientnet_lite0", 0))
    stages = {k for k in lite if not k.startswith(("conv_head.", "bn2.", "classifier."))}
    assert len(resnet & stages) == 5
    assert f"missing tensors {len(stages - resnet)} (e.g. blocks.0.0" in message
    assert f"unexpected tensors {len(resnet - lite)} " in message
    assert "tensors of another shape 4 (e.g. bn1." in message


def test_a_drivemtl_checkpoint_as_weights_points_to_init_from(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {"net.trunk.x": torch.zeros(1)}}, path)
    with pytest.raises(DriveMTLError, match="use model.init_from"):
        Backbone("resnet18", str(path))


@pytest.mark.parametrize("content", [b"", b"not a torch file"])
def test_an_unreadable_weights_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(DriveMTLError, match=str(path)):
        Backbone("timm/tf_efficientnet_lite0", str(path))


def test_a_missing_weights_file_is_not_taken_for_a_weights_name(tmp_path):
    with pytest.raises(DriveMTLError, match="not found"):
        Backbone("resnet18", str(tmp_path / "gone.pth"))


@pytest.mark.parametrize(
    "name, weights",
    [("resnet18", "DEFAULT"), ("timm/resnet18", "a1_in1k"), ("timm/resnet18", "DEFAULT")],
)
def test_named_weights_without_network_say_how_to_get_them(
    no_network, tmp_path, monkeypatch, name, weights
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached download either
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(DriveMTLError, match="Could not download.*machine with network access"):
        Backbone(name, weights)


@pytest.mark.parametrize(
    "name, weights, message",
    [
        ("resnet18", "IMAGENET9K", "Unknown weights 'IMAGENET9K' for resnet18"),
        ("timm/resnet18", "no_such_tag", "Invalid pretrained tag"),
    ],
)
def test_unknown_weight_names_are_clear_errors(name, weights, message):
    with pytest.raises(DriveMTLError, match=message):
        Backbone(name, weights)
