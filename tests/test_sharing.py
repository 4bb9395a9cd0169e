"""Sharing strategies: stage cuts, what is shared, the soft penalty and the MMoE gates."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from drivemtl.checkpoints import drop_unread_stages
from drivemtl.errors import DriveMTLError
from drivemtl.models.backbones import Backbone
from drivemtl.models.sharing import (
    HardSharing,
    MixtureOfExperts,
    PartialSharing,
    SoftSharing,
    build_trunk,
)
from drivemtl.models.torchvision_backbones import _layers, _split_stages
from drivemtl.module import MultiTaskModule

TASKS = ["a", "b", "c"]
DET32 = {"levels": [3, 4, 5]}


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    torch.manual_seed(0)
    return Backbone("resnet18").eval()


def image(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "name, nodes",
    [
        ("resnet18", ["layer1", "layer2", "layer3", "layer4"]),
        ("mobilenet_v3_small", ["features.1", "features.3", "features.8", "features.12"]),
    ],
)
def test_stages_give_the_same_maps_as_torchvision_feature_extraction(name, nodes):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    stages = _split_stages(_layers(name, model))
    reference = create_feature_extractor(model, {n: n for n in nodes})
    x = image()
    with torch.no_grad():
        expected = list(reference(x).values())
        got = []
        for stage in stages:
            x = stage(x)
            got.append(x)
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


def test_hard_sharing_feeds_every_task_the_same_maps(backbone):
    trunk = HardSharing(backbone, TASKS)
    out = trunk(image())
    assert all(out[t] is out["a"] for t in TASKS)
    assert len(trunk.shared_parameters()) == len(list(backbone.parameters()))


def test_partial_sharing_shares_the_first_k_stages_only(backbone):
    trunk = PartialSharing(backbone, ["a", "b"], branch={"a": 2})  # b shares all four
    with torch.no_grad():
        for p in trunk.private["a"].parameters():  # make a's copy differ from b's stages
            p.add_(0.01)
    out = trunk(image())
    assert out["a"][0] is out["b"][0] and out["a"][1] is out["b"][1]
    assert not torch.allclose(out["a"][3], out["b"][3])
    # a's loss reaches the shared stages and a's private copy, never b's stages 3-4.
    out["a"][3].sum().backward()
    shared = {id(p) for p in trunk.shared_parameters()}
    assert shared == {id(p) for s in trunk.shared[:2] for p in s.parameters()}
    assert all(p.grad is not None for p in trunk.shared_parameters())
    assert all(p.grad is None for p in trunk.shared[2:].parameters())
    assert all(p.grad is not None for p in trunk.private["a"].parameters())


def test_partial_sharing_with_zero_stages_is_separate_networks(backbone):
    trunk = PartialSharing(backbone, ["a", "b"], branch={"a": 0, "b": 0})
    assert trunk.shared_parameters() == [] and len(trunk.shared) == 0
    out = trunk(image())
    torch.testing.assert_close(out["a"][3], out["b"][3])  # identical copies, separate weights
    assert out["a"][3] is not out["b"][3]


def test_soft_sharing_penalty_is_zero_for_identical_trunks_and_pairwise_l2_otherwise(backbone):
    trunk = SoftSharing(backbone, TASKS, weight=0.5)
    assert trunk.penalty().item() == 0.0
    first = next(trunk.backbones["a"].parameters())
    with torch.no_grad():
        first.add_(0.1)
    # a differs from b and from c by 0.1 in every entry of one tensor; b and c are equal.
    expected = 0.5 * 2 * first.numel() * 0.1**2
    assert trunk.penalty().item() == pytest.approx(expected, rel=1e-4)
    assert trunk.shared_parameters() == []


def test_mmoe_gates_sum_to_one_and_mix_the_experts(backbone):
    torch.manual_seed(3)
    trunk = MixtureOfExperts(backbone, TASKS, experts=2, stem_stages=1)
    with torch.no_grad():
        for p in trunk.experts[1].parameters():
            p.mul_(0.9)
        x = image()
        out = trunk(x)
        stem = trunk.stem[0](x)
        gates = trunk.gate_weights(stem)
        expert_maps = [trunk.experts[e][0](stem) for e in range(2)]
    for task in TASKS:
        assert gates[task].shape == (2, 2)
        torch.testing.assert_close(gates[task].sum(dim=1), torch.ones(2))
        w = gates[task]
        mixed = (
            w[:, 0, None, None, None] * expert_maps[0] + w[:, 1, None, None, None] * expert_maps[1]
        )
        torch.testing.assert_close(out[task][1], mixed)
        torch.testing.assert_close(out[task][0], stem)


def test_mmoe_with_one_expert_equals_the_backbone(backbone):
    trunk = MixtureOfExperts(backbone, ["a"], experts=1, stem_stages=2)
    x = image()
    with torch.no_grad():
        expected = backbone(x)
        got = trunk(x)["a"]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"hard": {}, "soft": {}}, "names one strategy"),
        ({"tree": {}}, "Unknown sharing strategy"),
        ({"partial": {"branch": {"z": 1}}}, "tasks not trained"),
        ({"partial": {"branch": {"a": 5}}}, "must be 0 to 4"),
        ({"soft": {"weight": -1}}, "must be >= 0"),
        ({"mmoe": {"experts": 0}}, "positive integer"),
        ({"mmoe": {"stem_stages": 4}}, "1 to 3"),
        ({"mmoe": {"gates": 2}}, "Bad options"),
    ],
)
def test_bad_sharing_options_name_the_problem(backbone, spec, message):
    with pytest.raises(DriveMTLError, match=message):
        build_trunk(spec, backbone, ["a", "b"])


def _mean_of(output) -> torch.Tensor:
    """The sum of the means of every tensor in a head's output (a tensor, dict or list)."""
    if isinstance(output, torch.Tensor):
        return output.float().mean()
    if isinstance(output, (dict, list, tuple)):
        values = output.values() if isinstance(output, dict) else output
        return sum(_mean_of(v) for v in values)
    return 0.0  # metadata such as the detection levels' sizes


@pytest.mark.parametrize(
    "sharing",
    [
        {"hard": {}},
        {"partial": {"branch": {"presence": 2, "depth": 3}}},
        {"soft": {"weight": 0.01}},
        {"mmoe": {"experts": 2}},
    ],
)
@pytest.mark.parametrize(
    "backbone, tasks",
    [
        ("mobilenet_v3_small", {"presence": {}, "depth": {}}),
        # Detection up to stride 32: with partial sharing it alone reaches the last stage.
        ("timm/tf_efficientnet_lite0", {"presence": {}, "depth": {}, "detection": DET32}),
        ("timm/resnet18", {"presence": {}, "depth": {}, "detection": DET32}),
    ],
)
def test_every_parameter_gets_a_gradient_with_two_heads(sharing, backbone, tasks):
    """No unused parameter: DDP needs every parameter in the graph of the loss."""
    model = MultiTaskModule(
        backbone=backbone,
        tasks=tasks,
        sharing=sharing,
        image_size=(64, 96),
    )
    outputs = model(torch.randint(0, 255, (2, 3, 64, 96), dtype=torch.uint8))
    loss = sum(_mean_of(o) for o in outputs.values()) + model.net.sharing_penalty()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


@pytest.mark.parametrize(
    "sharing",
    [
        {"hard": {}},
        {"partial": {"branch": {"detection": 3}}},
        {"partial": {"branch": {"detection": 1}}},
        {"soft": {"weight": 0.01}},
        {"mmoe": {"experts": 2}},
        {"mmoe": {"experts": 2, "stem_stages": 3}},  # detection reads the stem only
    ],
)
@pytest.mark.parametrize(
    "tasks",
    [{"detection": {}}, {"presence": {}, "detection": {}}],
    ids=["detection-alone", "with-presence"],
)
def test_a_stage_no_head_reads_is_not_built(sharing, tasks):
    """Detection on its default levels (strides 4-16) leaves the stride-32 stage unread: under
    DDP a stage built but unread is an unused parameter, so it must not exist."""
    model = MultiTaskModule(backbone="mobilenet_v3_small", tasks=tasks, sharing=sharing)
    outputs = model(torch.randint(0, 255, (2, 3, 64, 96), dtype=torch.uint8))
    loss = sum(_mean_of(o) for o in outputs.values()) + model.net.sharing_penalty()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    # The stride-32 stage (index 3) exists exactly when presence, which pools it, is trained.
    built = {index for index, _ in model.net.trunk.backbone_stages()}
    assert (3 in built) == ("presence" in tasks)


def test_a_trunk_gives_each_task_the_stages_it_reads(backbone):
    full = copy.deepcopy(backbone)
    x = image()
    with torch.no_grad():
        expected = full(x)
        partial = PartialSharing(copy.deepcopy(backbone), {"a": 3, "b": 4}, branch={"a": 1})
        out = partial(x)
        hard = HardSharing(copy.deepcopy(backbone), {"a": 3, "b": 2})(x)
        stemmed = MixtureOfExperts(copy.deepcopy(backbone), {"a": 2, "b": 4}, 1, stem_stages=2)
        mixed = stemmed(x)
    # a: the shared first stage, then its own copies of stages 2-3; nothing past what it reads.
    assert len(partial.private["a"]) == 2 and len(partial.shared) == 4
    assert len(out["a"]) == 3 and len(out["b"]) == 4
    for got in (out["a"], out["b"], hard["a"], mixed["a"], mixed["b"]):
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e)
    assert len(hard["a"]) == 3  # the deepest any task reads
    assert list(stemmed.gates) == ["b"] and len(mixed["a"]) == 2  # a reads the stem only


def test_a_trunk_refuses_a_task_reading_no_stage(backbone):
    with pytest.raises(ValueError, match="reads 0 stages"):
        HardSharing(copy.deepcopy(backbone), {"a": 0})


def test_checkpoints_with_stages_no_head_reads_still_load(caplog):
    """Before unread stages were left out, a detection-only model carried the stride-32 stage:
    its tensors are dropped, and only when they are the whole difference."""
    model = MultiTaskModule(backbone="mobilenet_v3_small", tasks={"detection": {}})
    legacy = MultiTaskModule(backbone="mobilenet_v3_small", tasks={"detection": {}, "presence": {}})
    stage = {k: v for k, v in legacy.state_dict().items() if ".stages.3." in k}
    assert stage
    state = {**model.state_dict(), **stage}
    with caplog.at_level(logging.INFO, logger="drivemtl"):
        drop_unread_stages(state, model.state_dict(), "old.ckpt")
    assert state.keys() == model.state_dict().keys()
    assert f"old.ckpt: left out {len(stage)} tensors" in caplog.text
    # A head tensor too many, or a tensor missing, is a different model: nothing is dropped.
    for extra in ({"net.heads.presence.fc.weight": torch.zeros(1)}, {}):
        state = {**model.state_dict(), **stage, **extra}
        if not extra:
            del state[next(iter(model.state_dict()))]
        drop_unread_stages(state, model.state_dict())
        assert stage.keys() <= state.keys()


def test_a_legacy_checkpoint_tests_but_refuses_to_resume_with_its_optimiser(tmp_path, capsys):
    from drivemtl.cli import main

    run = tmp_path / "run"
    tiny = [
        "--model.backbone=mobilenet_v3_small",
        "--model.tasks={detection: {}}",
        "--data.image_size=[48, 72]",
        "--data.synthetic.width=72",
        "--data.synthetic.height=48",
        "--data.synthetic.train=4",
        "--data.synthetic.val=2",
        "--data.synthetic.test=2",
        "--data.batch_size=2",
        "--data.num_workers=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    assert main(["fit", *tiny, "--trainer.max_steps=1", f"--trainer.default_root_dir={run}"]) == 0
    # As an earlier version wrote it: the stride-32 stage's tensors in the state dict.
    path = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    legacy = MultiTaskModule(backbone="mobilenet_v3_small", tasks={"detection": {}, "presence": {}})
    stage = {k: v for k, v in legacy.state_dict().items() if ".stages.3." in k}
    checkpoint["state_dict"].update(stage)
    torch.save(checkpoint, path)
    assert (
        main(["test", f"--ckpt_path={path}", f"--trainer.default_root_dir={tmp_path / 't'}"]) == 0
    )
    capsys.readouterr()
    resumed = ["fit", *tiny, "--trainer.max_steps=2", f"--ckpt_path={path}"]
    assert main([*resumed, f"--trainer.default_root_dir={run}"]) != 0
    err = capsys.readouterr().err
    assert f"carries {len(stage)} tensors of a backbone stage that no head reads" in err
    assert f"--model.init_from {path}" in err
