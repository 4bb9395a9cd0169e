"""Runtimes: run a network (eager, ONNX Runtime or TorchScript) on a uint8 batch and return its
raw head outputs, as the tasks decode them."""

from __future__ import annotations

import contextlib
import warnings
import zipfile
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from drivemtl.deploy.card import CARD_FILE, CARD_KEY, ModelCard
from drivemtl.deploy.graph import INPUT_NAME, unflatten_outputs
from drivemtl.errors import DriveMTLError
from drivemtl.models.net import MultiTaskNet

Precision = Literal["32", "bf16", "16"]
PRECISIONS = ("32", "bf16", "16")
EXPORT_INSTALL = 'pip install "drivemtl[export]"'


class Runtime(Protocol):
    """Runs the network: (B, 3, H, W) uint8 at the input size -> raw outputs by task."""

    def __call__(self, images: Tensor) -> dict: ...


class EagerRuntime:
    """The PyTorch network itself.

    Args:
        net: The trained network; put in eval mode and moved to ``device`` here.
        device: Where it runs (``cpu``, ``cuda``, ``cuda:1``).
        precision: ``32``, or ``bf16`` / ``16`` autocast.
        compile: Compile the network with ``torch.compile`` (the first batches are slow).
        channels_last: Run in channels-last layout, as the model trained (``model.channels_last``;
            always with bf16 / fp16, where it is what makes oneDNN and cuDNN fast).
    """

    def __init__(
        self,
        net: MultiTaskNet,
        device: str | torch.device = "cpu",
        precision: Precision = "32",
        compile: bool = False,
        channels_last: bool = True,
    ):
        if str(precision) not in PRECISIONS:
            raise DriveMTLError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}.")
        self.device = torch.device(device)
        self.precision = str(precision)
        self.channels_last = channels_last or self.precision != "32"
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        self.net = net.eval().to(self.device, memory_format=layout)
        self._forward = torch.compile(self.net) if compile else self.net

    def __call__(self, images: Tensor) -> dict:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(self.precision)
        autocast = (
            torch.autocast(self.device.type, dtype=dtype)
            if dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            return self._forward(images)


class _FixedBatch:
    """Runs a file exported for a fixed batch size on any batch: pads the last one, splits
    larger ones."""

    def __init__(self, batch: int | None):
        self.batch = batch

    def chunks(self, images: Tensor) -> list[tuple[Tensor, int]]:
        if self.batch is None:
            return [(images, len(images))]
        out = []
        for start in range(0, len(images), self.batch):
            part = images[start : start + self.batch]
            used = len(part)
            if used < self.batch:
                pad = part[-1:].expand(self.batch - used, *part.shape[1:])
                part = torch.cat([part, pad])
            out.append((part, used))
        return out


def _joined(parts: list[list[Tensor]], names: list[str]) -> dict[str, Tensor]:
    return {name: torch.cat([p[i] for p in parts]) for i, name in enumerate(names)}


class OnnxRuntime:
    """An exported ``.onnx`` file in ONNX Runtime.

    Args:
        path: The file.
        card: Its model card; ``None``: read from the file.
        providers: ONNX Runtime execution providers (default: CUDA when available, else CPU).
        threads: Intra-op threads (``None``: ONNX Runtime's default, one per core).
    """

    def __init__(
        self,
        path: str | Path,
        card: ModelCard | None = None,
        providers: list[str] | None = None,
        threads: int | None = None,
    ):
        ort = _onnxruntime()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        available = ort.get_available_providers()
        wanted = providers or [
            p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available
        ]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=wanted)
        except Exception as e:  # onnxruntime raises its own exception types
            raise DriveMTLError(f"{path}: not a readable ONNX file ({e}).") from None
        self.card = card or _card_text(
            self.session.get_modelmeta().custom_metadata_map.get(CARD_KEY), path
        )
        self.names = [o.name for o in self.session.get_outputs()]
        self._batches = _FixedBatch(self.card.batch)

    def __call__(self, images: Tensor) -> dict:
        parts = []
        for chunk, used in self._batches.chunks(images.cpu()):
            outputs = self.session.run(self.names, {INPUT_NAME: chunk.contiguous().numpy()})
            parts.append([torch.from_numpy(np.asarray(o))[:used] for o in outputs])
        return unflatten_outputs(_joined(parts, self.names), self.card.static)


class TorchScriptRuntime:
    """An exported TorchScript file.

    Args:
        path: The file.
        card: Its model card; ``None``: read from the file.
        device: Where it runs.
    """

    def __init__(
        self, path: str | Path, card: ModelCard | None = None, device: str | torch.device = "cpu"
    ):
        self.device = torch.device(device)
        extra = {CARD_FILE: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
                module = torch.jit.load(str(path), map_location=self.device, _extra_files=extra)
        except Exception as e:  # a damaged archive
            raise DriveMTLError(f"{path}: not a readable TorchScript file ({e}).") from None
        self.module = module.eval()
        self.card = card or _card_text(extra[CARD_FILE], path)
        self._batches = _FixedBatch(self.card.batch)

    def __call__(self, images: Tensor) -> dict:
        parts = []
        with torch.inference_mode():
            for chunk, used in self._batches.chunks(images):
                outputs = self.module(chunk.to(self.device))
                parts.append([o[:used] for o in outputs])
        return unflatten_outputs(_joined(parts, self.card.outputs), self.card.static)


# -- files -------------------------------------------------------------------------------------

FileKind = Literal["checkpoint", "onnx", "torchscript"]


def file_kind(path: str | Path) -> FileKind:
    """What a model file is: an ONNX file (``.onnx``), a TorchScript archive (a zip with
    ``code/``), or else a checkpoint."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any("/code/" in name for name in archive.namelist()):
                return "torchscript"
    return "checkpoint"


def read_card(path: str | Path) -> ModelCard:
    """The model card inside an exported file (read without building a runtime).

    Raises:
        DriveMTLError: For a file without a drivemtl card (not exported by drivemtl export),
            a checkpoint, or a file that cannot be read.
    """
    kind = file_kind(path)
    if kind == "checkpoint":
        raise DriveMTLError(f"{path} is a checkpoint, not an exported file.")
    if kind == "torchscript":
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith(f"/extra/{CARD_FILE}")), None)
            return _card_text(archive.read(name) if name else None, path)
    try:
        import onnx
    except ImportError:
        return OnnxRuntime(path).card  # onnxruntime alone can read it too
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises its own exception types
        raise DriveMTLError(f"{path}: not a readable ONNX file ({e}).") from None
    props = {p.key: p.value for p in model.metadata_props}
    return _card_text(props.get(CARD_KEY), path)


def _card_text(text: str | bytes | None, path: str | Path) -> ModelCard:
    text = text.decode() if isinstance(text, bytes) else text
    if not text:
        raise DriveMTLError(
            f"{path} has no drivemtl model card: it was not written by drivemtl export "
            "(the card holds the classes, task options and thresholds that decoding needs)."
        )
    return ModelCard.from_json(text, str(path))


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise DriveMTLError(
            f"ONNX files need onnxruntime, which is not installed: {EXPORT_INSTALL}"
        ) from None
    return onnxruntime
