"""``drivemtl export``: a checkpoint to an ONNX or TorchScript file with its model card inside.

The file computes the raw head tensors from uint8 images at the model's input size
(:mod:`drivemtl.deploy.graph`); decoding and NMS stay in the predictor, as YOLOP and
ultralytics do for portable ONNX. Normalisation is inside the graph.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import torch

from drivemtl import __version__
from drivemtl.deploy.card import CARD_FILE, CARD_KEY, ModelCard
from drivemtl.deploy.graph import INPUT_NAME, ExportGraph, describe_outputs
from drivemtl.deploy.predictor import net_from_checkpoint
from drivemtl.deploy.runtimes import EXPORT_INSTALL
from drivemtl.errors import DriveMTLError

Format = Literal["onnx", "torchscript"]
FORMATS = ("onnx", "torchscript")
MAX_DYNAMIC_BATCH = 4096


def export_model(
    ckpt_path: str | Path,
    output: str | Path,
    format: Format = "onnx",
    batch: int | None = 1,
    opset: int | None = None,
) -> ModelCard:
    """Export a checkpoint's network.

    Args:
        ckpt_path: A ``drivemtl fit`` checkpoint.
        output: The file to write (its folder is created).
        format: ``onnx`` or ``torchscript``.
        batch: The batch size the file takes; ``None``: any (a dynamic batch axis).
        opset: ONNX opset (``None``: the exporter's default).

    Returns:
        The model card written into the file.

    Raises:
        DriveMTLError: For an unusable checkpoint or option, or a missing ``[export]`` extra.
    """
    if format not in FORMATS:
        raise DriveMTLError(f"--format must be one of {list(FORMATS)}, got {format!r}.")
    if batch is not None and batch < 1:
        raise DriveMTLError(f"--batch must be >= 1, got {batch}.")
    if opset is not None and format != "onnx":
        raise DriveMTLError("--opset applies to --format onnx only.")
    net, card = net_from_checkpoint(ckpt_path)
    net = net.to(memory_format=torch.contiguous_format).eval()
    names, static = describe_outputs(net, card.image_size)
    card.outputs, card.static, card.batch, card.version = names, static, batch, __version__
    graph = ExportGraph(net, names).eval()
    example = torch.randint(0, 256, (batch or 2, 3, *card.image_size), dtype=torch.uint8)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    try:
        if format == "onnx":
            _export_onnx(graph, example, names, partial, dynamic=batch is None, opset=opset)
            _write_onnx_card(partial, card)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # eval-mode asserts
                traced = torch.jit.trace(graph, (example,), check_trace=False)
                torch.jit.save(traced, str(partial), _extra_files={CARD_FILE: card.to_json()})
        os.replace(partial, output)  # a cut-short export never leaves a file that looks whole
    finally:
        partial.unlink(missing_ok=True)
    return card


def _export_onnx(graph, example, names, path: Path, dynamic: bool, opset: int | None) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise DriveMTLError(f"--format onnx needs onnx and onnxscript: {EXPORT_INSTALL}") from None
    shapes = None
    if dynamic:
        shapes = {INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(
            graph,
            (example,),
            input_names=[INPUT_NAME],
            output_names=list(names),
            dynamic_shapes=shapes,
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    program.save(str(path))


def _write_onnx_card(path: Path, card: ModelCard) -> None:
    import onnx

    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_KEY, card.to_json()
    model.producer_name = "drivemtl"
    onnx.save(model, str(path))
