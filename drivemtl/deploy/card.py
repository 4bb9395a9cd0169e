"""What travels with a model outside its checkpoint: the model card of an exported file.

An exported graph holds weights only; decoding needs the classes, the task options, the
decision thresholds and the input size. The card holds them as JSON, inside the file: ONNX
``metadata_props`` under :data:`CARD_KEY`, a TorchScript extra file :data:`CARD_FILE`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from drivemtl.errors import DriveMTLError

CARD_KEY = "drivemtl"
CARD_FILE = "drivemtl.json"
CARD_FORMAT = 1
"""Version of the card layout; a reader refuses a newer one."""


@dataclass
class ModelCard:
    """Everything a predictor needs besides the network's weights.

    Attributes:
        hparams: The model's hyperparameters (plain data; initial weights cleared), enough to
            rebuild its tasks and, for a checkpoint, its network.
        decision_state: Each head's own buffers (``{task: {name: values}}``), e.g. the
            presence thresholds chosen on validation data.
        outputs: Names of the graph's outputs, in order (:mod:`drivemtl.deploy.graph`).
        static: Plain data of head outputs at the exported input size.
        image_size: Network input (height, width).
        batch: The exported batch size; ``None`` for a dynamic batch.
        source: The checkpoint the file was exported from.
        version: drivemtl version that wrote the card.
        format: :data:`CARD_FORMAT` when written.
    """

    hparams: dict[str, Any]
    decision_state: dict[str, dict[str, Any]]
    outputs: list[str] = field(default_factory=list)
    static: dict[str, dict] = field(default_factory=dict)
    image_size: tuple[int, int] = (0, 0)
    batch: int | None = None
    source: str = ""
    version: str = ""
    format: int = CARD_FORMAT

    @property
    def classes(self) -> list[str]:
        return list(self.hparams["classes"])

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> ModelCard:
        """Parse a card.

        Raises:
            DriveMTLError: For text that is not a card of a format this version reads.
        """
        try:
            data = json.loads(text)
        except ValueError as e:
            raise DriveMTLError(f"{where}: the drivemtl model card is not JSON ({e}).") from None
        if not isinstance(data, dict) or "hparams" not in data:
            raise DriveMTLError(f"{where}: the drivemtl model card has no hyperparameters.")
        if int(data.get("format", 0)) > CARD_FORMAT:
            raise DriveMTLError(
                f"{where} was exported by a newer drivemtl (card format {data['format']}, this "
                f"version reads up to {CARD_FORMAT}): upgrade drivemtl."
            )
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        card = cls(**known)
        card.image_size = tuple(int(v) for v in card.image_size)
        return card


def json_ready(value: Any) -> Any:
    """Plain data as JSON takes it (tuples become lists, keys strings).

    Raises:
        TypeError: For anything else (a tensor, an object).
    """
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    raise TypeError(f"{value!r} is not plain data (numbers, strings, lists, mappings)")


def decision_state(heads: Mapping[str, nn.Module]) -> dict[str, dict[str, list]]:
    """Each head's own buffers (not its layers'), as lists: what decoding reads from a head."""
    return {
        name: {key: buffer.tolist() for key, buffer in head.named_buffers(recurse=False)}
        for name, head in heads.items()
    }


class DecisionState(nn.Module):
    """Stands in for a head when decoding an exported file's outputs: its buffers only."""

    def __init__(self, buffers: Mapping[str, Any]):
        super().__init__()
        for key, values in buffers.items():
            self.register_buffer(key, torch.tensor(values))


def load_decision_state(heads: Mapping[str, nn.Module], state: Mapping[str, Mapping]) -> None:
    """Copy a card's decision state into heads built for the same model."""
    for name, buffers in state.items():
        for key, values in buffers.items():
            target = heads[name].get_buffer(key)
            target.copy_(torch.tensor(values, dtype=target.dtype))
