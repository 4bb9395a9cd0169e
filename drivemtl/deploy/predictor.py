"""The Python predictor: ``drivemtl.load(path).predict(images)``, no Lightning, no files needed.

Images go through the preprocessing of ``drivemtl predict`` (decode, EXIF orientation, resize
to the model's input size with the same OpenCV call), the network runs in a :mod:`runtime
<drivemtl.deploy.runtimes>` (eager PyTorch, ONNX Runtime or TorchScript), and the one decoding
path (:func:`~drivemtl.deploy.decode.decode_outputs`) gives each image the fields of
``predictions.jsonl`` in original image pixels.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from drivemtl.checkpoints import check_state_fits, drop_unread_stages, load_checkpoint
from drivemtl.data.batch import Batch
from drivemtl.data.io import load_rgb_reduced
from drivemtl.data.labels import UNKNOWN
from drivemtl.data.transforms import Resize
from drivemtl.deploy.card import DecisionState, ModelCard, decision_state, json_ready
from drivemtl.deploy.decode import decode_outputs
from drivemtl.deploy.runtimes import (
    EagerRuntime,
    OnnxRuntime,
    Precision,
    Runtime,
    TorchScriptRuntime,
    file_kind,
)
from drivemtl.errors import DriveMTLError
from drivemtl.models.factory import NO_INITIAL_WEIGHTS, network_from_hparams, tasks_from_hparams
from drivemtl.models.net import MultiTaskNet
from drivemtl.prediction.thresholds import apply_thresholds

ImageInput = str | Path | Image.Image | np.ndarray | Tensor
"""A path, a PIL image, an (H, W, 3) / (H, W) array, or a (3, H, W) tensor; uint8, or float
in [0, 1]."""


class Predictor:
    """A trained model that predicts from images in memory or on disk.

    Build one with :func:`load`. Thread-compatible, not thread-safe: use one per thread.

    Args:
        runtime: Runs the network on a uint8 batch at the input size.
        card: The model's hyperparameters, decision state and input size.
        heads: Per task, the module decoding reads its decision state from (the net's heads,
            or stand-ins holding the card's buffers).
        workers: Threads that decode and resize images while the network runs.
    """

    def __init__(
        self,
        runtime: Runtime,
        card: ModelCard,
        heads: Mapping[str, nn.Module] | None = None,
        workers: int = 2,
    ):
        self.runtime = runtime
        self.card = card
        self.classes = card.classes
        self.tasks, self.single_class = tasks_from_hparams(card.hparams)
        self.heads = (
            dict(heads)
            if heads is not None
            else {name: DecisionState(card.decision_state.get(name, {})) for name in self.tasks}
        )
        self.image_size = tuple(card.image_size)
        self.workers = max(int(workers), 0)
        self._resize = Resize(self.image_size)

    # -- options -------------------------------------------------------------------------------

    @property
    def thresholds(self) -> dict[str, float]:
        """The presence decision threshold of each class (empty without a presence head)."""
        return apply_thresholds(self.tasks, self.heads, self.classes, {})

    def set_thresholds(self, overrides: Mapping[str, float]) -> dict[str, float]:
        """Override presence decision thresholds per class; returns those now in effect."""
        return apply_thresholds(self.tasks, self.heads, self.classes, dict(overrides))

    # -- prediction ----------------------------------------------------------------------------

    def predict(
        self, images: ImageInput | Iterable[ImageInput], batch_size: int = 8
    ) -> list[dict[str, Any]]:
        """Predict every image.

        Args:
            images: One image or an iterable of them, of any sizes and kinds (see
                :data:`ImageInput`); iterated once, a batch at a time.
            batch_size: Images per network call.

        Returns:
            Per image, in order, the fields of ``predictions.jsonl``: ``image`` (the path, or
            ``None`` for an image given in memory), ``presence`` / ``present``, ``boxes``
            (``[x1, y1, x2, y2, class, score]`` in original pixels) and ``depth`` (an (H, W)
            float32 array of metres at the original size) for the heads the model has.

        Raises:
            DriveMTLError: For an image that cannot be read or has an unusable shape.
        """
        return [row for rows in self.iter_predict(images, batch_size) for row in rows]

    def iter_predict(
        self, images: ImageInput | Iterable[ImageInput], batch_size: int = 8
    ) -> Iterator[list[dict[str, Any]]]:
        """:meth:`predict`, one list of rows per batch as soon as it is done: constant memory
        over a folder of any size.

        With ``workers``, a pipeline: threads decode and resize the next images, and one thread
        decodes batch k's outputs (NMS, depth at the original size) while the network runs
        batch k + 1 and the caller writes batch k - 1. The rows are the same either way.
        """
        if batch_size < 1:
            raise DriveMTLError(f"batch_size must be >= 1, got {batch_size}.")
        single = _is_one_image(images)
        items = iter([images] if single else images)
        pool = ThreadPoolExecutor(self.workers) if self.workers else None
        decoder = ThreadPoolExecutor(1) if self.workers else None
        try:
            pending: deque = deque()

            def fill() -> None:
                # Two batches in flight: the next one decodes while the network runs.
                while len(pending) < 2 * batch_size:
                    item = next(items, _END)
                    if item is _END:
                        return
                    pending.append(pool.submit(self.prepare, item) if pool else item)

            fill()
            previous = None
            while pending:
                take = min(batch_size, len(pending))
                chunk = [p.result() if pool else self.prepare(p) for p in _popn(pending, take)]
                fill()
                batch = self._batch(chunk)
                outputs = self.runtime(batch.images)
                if decoder is None:
                    yield self.decode(outputs, batch)
                    continue
                current = decoder.submit(self.decode, outputs, batch)
                if previous is not None:
                    yield previous.result()
                previous = current
            if previous is not None:
                yield previous.result()
        finally:
            for executor in (pool, decoder):
                if executor is not None:
                    executor.shutdown(cancel_futures=True)

    def predict_batch(self, batch: Batch) -> list[dict]:
        """Rows for a batch already at the input size (e.g. decoded on the GPU)."""
        return self.decode(self.runtime(batch.images), batch)

    def decode(self, outputs: Mapping[str, Any], batch: Batch) -> list[dict]:
        """Rows from the network's raw outputs for ``batch``, arrays in place of tensors."""
        with torch.inference_mode():
            rows = decode_outputs(
                outputs, batch, self.tasks, self.heads, self.classes, self.single_class
            )
        for row in rows:
            for key, value in row.items():
                if isinstance(value, Tensor):
                    row[key] = value.numpy()
        return rows

    def _batch(self, chunk: list[tuple[Tensor, tuple[int, int], str | None]]) -> Batch:
        n = len(chunk)
        return Batch(
            images=torch.stack([c[0] for c in chunk]),
            presence=torch.full((n, len(self.classes)), UNKNOWN, dtype=torch.long),
            index=torch.arange(n),
            paths=[c[2] for c in chunk],
            original_sizes=torch.tensor([c[1] for c in chunk]),
            boxes=[None] * n,
            box_labels=[None] * n,
            ignore=[None] * n,
        )

    def prepare(self, item: ImageInput) -> tuple[Tensor, tuple[int, int], str | None]:
        """(3, H, W) uint8 at the input size, the original (height, width), and the path."""
        path = None
        if isinstance(item, (str, Path)):
            path = str(item)
            try:
                array, original = load_rgb_reduced(path, self.image_size)
            except OSError as e:
                raise DriveMTLError(f"{path}: cannot read the image ({e}).") from None
        else:
            array = _as_rgb_array(item)
            original = tuple(array.shape[:2])
        resized = self._resize(image=array, bboxes=np.zeros((0, 4)), box_labels=[], box_ids=[])
        image = torch.from_numpy(np.ascontiguousarray(resized["image"])).permute(2, 0, 1)
        return image.contiguous(), (int(original[0]), int(original[1])), path


_END = object()


def _popn(queue: deque, n: int) -> list:
    return [queue.popleft() for _ in range(n)]


def _is_one_image(images: Any) -> bool:
    if isinstance(images, (str, Path, Image.Image)):
        return True
    if isinstance(images, np.ndarray):
        return images.ndim in (2, 3)
    if isinstance(images, Tensor):
        return images.ndim == 3
    return False


def _as_rgb_array(item: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a PIL image, an array or a tensor."""
    if isinstance(item, Image.Image):
        return np.asarray(item if item.mode == "RGB" else item.convert("RGB"))
    if isinstance(item, Tensor):
        if item.ndim != 3 or item.shape[0] not in (1, 3):
            raise DriveMTLError(
                f"an image tensor must be (3, H, W) or (1, H, W), got shape {tuple(item.shape)}."
            )
        item = item.detach().cpu().permute(1, 2, 0).numpy()
    if not isinstance(item, np.ndarray):
        raise DriveMTLError(
            f"cannot predict from a {type(item).__name__}: give paths, PIL images, numpy "
            "arrays or tensors."
        )
    array = item
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or min(array.shape[:2]) < 1:
        raise DriveMTLError(
            f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}."
        )
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise DriveMTLError(
                f"image arrays must be uint8 or float in [0, 1], not {array.dtype}."
            )
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


# -- loading -----------------------------------------------------------------------------------


def net_from_checkpoint(path: str | Path) -> tuple[MultiTaskNet, ModelCard]:
    """The trained network of a checkpoint and its model card (no Lightning involved).

    Raises:
        DriveMTLError: For a file that is not a drivemtl checkpoint, or weights that do not fit
            the network its hyperparameters describe.
    """
    checkpoint = load_checkpoint(path, map_location="cpu")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise DriveMTLError(f"{path} is not a Lightning checkpoint (no 'state_dict').")
    stored = checkpoint.get("hyper_parameters") or {}
    hparams = {k: v for k, v in stored.items() if not k.startswith("_")}
    hparams.update(NO_INITIAL_WEIGHTS)  # the card's copy must never read them either
    network = network_from_hparams(hparams)
    net = network.net
    state = {k[4:]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    drop_unread_stages(state, net.state_dict(), f"checkpoint {path}")
    check_state_fits(state, net.state_dict(), f"checkpoint {path}")
    net.load_state_dict(state)
    net.eval()
    card = ModelCard(
        hparams=json_ready(hparams),
        decision_state=decision_state(net.heads),
        image_size=tuple(int(v) for v in hparams["image_size"]),
        source=str(Path(path).resolve()),
    )
    return net, card


def load(
    path: str | Path,
    device: str = "cpu",
    precision: Precision = "32",
    compile: bool = False,
    workers: int = 2,
    threads: int | None = None,
) -> Predictor:
    """Open a checkpoint, an ``.onnx`` file or a TorchScript file as a :class:`Predictor`.

    Args:
        path: A ``drivemtl fit`` checkpoint, or a file written by ``drivemtl export``.
        device: Where the network runs (checkpoints and TorchScript: ``cpu``, ``cuda``, ...;
            ONNX: ``cuda`` picks ONNX Runtime's CUDA provider when installed).
        precision: ``32``, ``bf16`` or ``16`` (checkpoints only: autocast, channels-last).
        compile: ``torch.compile`` the network (checkpoints only).
        workers: Threads that decode and resize images while the network runs (0: none).
        threads: ONNX Runtime intra-op threads (``None``: its default).

    Raises:
        DriveMTLError: For a missing or unusable file, or options its kind does not take.
    """
    from drivemtl.checkpoints import check_file, local_path

    path = check_file(local_path(path), "Model file")
    kind = file_kind(path)
    if kind != "checkpoint" and (str(precision) != "32" or compile):
        raise DriveMTLError(
            f"{path}: precision and compile apply to checkpoints; an exported file runs as "
            "it was exported."
        )
    if kind == "checkpoint":
        net, card = net_from_checkpoint(path)
        channels_last = bool(card.hparams.get("channels_last", True))
        runtime = EagerRuntime(net, device, precision, compile, channels_last)
        return Predictor(runtime, card, heads=net.heads, workers=workers)
    if kind == "onnx":
        providers = ["CUDAExecutionProvider"] if str(device).startswith("cuda") else None
        runtime = OnnxRuntime(path, providers=providers, threads=threads)
    else:
        runtime = TorchScriptRuntime(path, device=device)
    return Predictor(runtime, runtime.card, workers=workers)


__all__ = ["ImageInput", "Predictor", "load", "net_from_checkpoint"]
