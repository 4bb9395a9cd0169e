"""What a checkpoint says about the data it was trained on, applied to the CLI's data section.

LightningCLI reads the model's hyperparameters from ``--ckpt_path``, but ``model.classes`` and
``model.image_size`` are link targets of ``data.classes`` / ``data.image_size``: without this
step the data defaults would overwrite a checkpoint trained on other classes, and loading its
weights would fail (or, with as many classes, silently mislabel them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.utilities import rank_zero_warn

from drivemtl.checkpoints import load_checkpoint, local_path
from drivemtl.errors import DriveMTLError

LIGHTNING_CKPT_NAMES = ("best", "last", "hpc")
"""``ckpt_path`` values that Lightning resolves to a local file itself (then read safely by
:class:`~drivemtl.checkpoint_io.SafeCheckpointIO`)."""


def read_checkpoint_hparams(path: str | Path) -> dict[str, Any]:
    """The model and datamodule hyperparameters stored in a Lightning checkpoint.

    An exported ``.onnx`` / TorchScript file (``drivemtl export``) answers from its model card.

    Returns:
        ``{"model": {...}, "data": {...}}`` (``data`` is empty when the checkpoint has none).

    Raises:
        DriveMTLError: When the file is missing, unreadable, or not a drivemtl checkpoint.
    """
    from drivemtl.deploy.runtimes import file_kind, read_card

    if Path(path).is_file() and file_kind(path) != "checkpoint":
        return {"model": dict(read_card(path).hparams), "data": {}}
    # mmap: only the small hyperparameter dicts are read, not the weights.
    ckpt = load_checkpoint(path, mmap=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise DriveMTLError(f"{path} is not a Lightning checkpoint (no 'state_dict').")
    model = dict(ckpt.get("hyper_parameters") or {})
    if "classes" not in model:
        raise DriveMTLError(
            f"{path} has no class list in its hyperparameters: it was not written by drivemtl fit."
        )
    return {"model": model, "data": dict(ckpt.get("datamodule_hyper_parameters") or {})}


def align_data_with_checkpoint(section: Any, defaults: Any) -> None:
    """Take ``data.classes``, ``data.image_size`` and the synthetic set's settings from
    ``section.ckpt_path`` when not given.

    A value counts as given when it differs from the parser default. The class list must
    match the checkpoint's (its head has one output per class, in order); the input size may
    differ (a fully convolutional trunk with global pooling runs at any size). Without a
    manifest, ``validate`` / ``test`` use the synthetic set the model was trained on (its
    other splits), not the generator's defaults: another distribution would be scored silently.

    Args:
        section: The parsed config of the subcommand (``ckpt_path`` and ``data``), edited here.
        defaults: The parser defaults of the same subcommand.

    Raises:
        DriveMTLError: For an unusable checkpoint, or classes that differ from it.
    """
    ckpt_path = section.get("ckpt_path")
    if not ckpt_path or str(ckpt_path) in LIGHTNING_CKPT_NAMES:
        return  # Lightning resolves these itself (no local file to read here)
    if str(ckpt_path).startswith("registry"):
        raise DriveMTLError(
            f"ckpt_path {ckpt_path}: Lightning's model registry is not used (a downloaded "
            "checkpoint could run code). Download the file and pass its local path."
        )
    # A file:// URL becomes its path (Lightning would not read its hyperparameters otherwise);
    # a remote URL is refused here, before Lightning could fetch and unpickle it.
    section.ckpt_path = ckpt_path = str(local_path(ckpt_path))
    hparams = read_checkpoint_hparams(ckpt_path)
    model, data = hparams["model"], hparams["data"]
    classes = list(model["classes"])
    given = list(section.data.classes)
    if given != list(defaults.data.classes) and given != classes:
        raise DriveMTLError(
            f"data.classes {given} differ from the classes the checkpoint {ckpt_path} was "
            f"trained on, {classes}. Leave data.classes out to use the checkpoint's."
        )
    section.data.classes = classes
    size = model.get("image_size") or data.get("image_size")
    if size and tuple(section.data.image_size) == tuple(defaults.data.image_size):
        section.data.image_size = tuple(int(v) for v in size)
    manifests = ("train_manifest", "val_manifest", "test_manifest")
    trained_on = data.get("synthetic")
    if not isinstance(trained_on, dict) or any(section.data.get(m) for m in manifests):
        return
    given = section.data.synthetic
    if given == defaults.data.synthetic:
        section.data.synthetic = Namespace(**trained_on)
    elif isinstance(given, Namespace) and given.as_dict() != trained_on:
        rank_zero_warn(
            f"data.synthetic {given.as_dict()} differs from the synthetic set the checkpoint "
            f"was trained on, {trained_on}: scoring the given one. Leave data.synthetic out "
            "(e.g. no --config) to score the training set's other splits."
        )
