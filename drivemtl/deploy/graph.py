"""The exported graph: uint8 images in, the network's raw head tensors out, under fixed names.

Exporters take tensors only, while a head may return a dict that also holds plain data
(detection's per-level map sizes). The graph returns the tensors in a fixed order, named
``<task>`` for a tensor output and ``<task>.<key>`` for each tensor of a dict output; the plain
data is the same for every batch at the exported input size, so it travels in the file's
metadata (``static``) and :func:`unflatten_outputs` puts it back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from drivemtl.deploy.card import json_ready
from drivemtl.models.net import MultiTaskNet

INPUT_NAME = "images"
"""The graph's input: (batch, 3, height, width) uint8 RGB at the model's input size."""


def flatten_outputs(outputs: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, dict]]:
    """Split head outputs into named tensors and the plain data beside them.

    Returns:
        ``({name: tensor}, {task: {key: plain value}})`` in the heads' order.
    """
    tensors: dict[str, Tensor] = {}
    static: dict[str, dict] = {}
    for task, output in outputs.items():
        if isinstance(output, Tensor):
            tensors[task] = output
            continue
        for key, value in output.items():
            if isinstance(value, Tensor):
                tensors[f"{task}.{key}"] = value
            else:
                static.setdefault(task, {})[key] = json_ready(value)
    return tensors, static


def unflatten_outputs(tensors: Mapping[str, Tensor], static: Mapping[str, dict]) -> dict:
    """Head outputs as the tasks decode them, from :func:`flatten_outputs`' two parts."""
    outputs: dict[str, Any] = {}
    for name, tensor in tensors.items():
        task, _, key = name.partition(".")
        if not key:
            outputs[task] = tensor
        else:
            outputs.setdefault(task, {})[key] = tensor
    for task, values in static.items():
        outputs.setdefault(task, {}).update(values)
    return outputs


class ExportGraph(nn.Module):
    """The network as an exporter sees it: ``images -> tuple of raw head tensors``.

    Args:
        net: The trained network, in eval mode.
        names: Output names in order (from :func:`flatten_outputs` on one forward pass).
    """

    def __init__(self, net: MultiTaskNet, names: Sequence[str]):
        super().__init__()
        self.net = net
        self.names = list(names)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        outputs = self.net(images)
        picked = []
        for name in self.names:
            task, _, key = name.partition(".")
            picked.append(outputs[task][key] if key else outputs[task])
        return tuple(picked)


def describe_outputs(net: MultiTaskNet, image_size: Sequence[int]) -> tuple[list[str], dict]:
    """Output names and static data of ``net`` at ``image_size``, from one forward pass."""
    with torch.inference_mode():
        probe = torch.zeros((1, 3, *image_size), dtype=torch.uint8)
        tensors, static = flatten_outputs(net(probe))
    return list(tensors), static
