"""``drivemtl export --check``: the exported file beside the eager model on the same images.

Two comparisons: the raw head tensors (largest absolute difference, relative to each output's
scale) and the decoded predictions, through each task's
:meth:`~drivemtl.tasks.base.Task.agreement` (presence probabilities within 1e-4, boxes within
0.5 px, depth within 0.1 %).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from drivemtl.deploy.graph import flatten_outputs
from drivemtl.deploy.predictor import Predictor, load
from drivemtl.errors import DriveMTLError

RAW_TOLERANCE = 1e-3
"""Largest raw-output difference, as a fraction of the output's largest magnitude (at least 1)."""
CHECK_IMAGES = 8


@dataclass
class Measure:
    """One compared quantity: its value, the largest allowed, and whether it passed."""

    name: str
    value: float
    limit: float

    @property
    def ok(self) -> bool:
        return bool(self.value <= self.limit)


def check_export(
    exported: str | Path,
    ckpt_path: str | Path,
    images: Sequence[str | Path] | None = None,
    batch_size: int = 4,
) -> list[Measure]:
    """Compare an exported file with the checkpoint it came from.

    Args:
        exported: The ``.onnx`` / TorchScript file.
        ckpt_path: The checkpoint.
        images: Image files to run; ``None``: synthetic driving scenes rendered in memory.
        batch_size: Images per call (a file exported for a fixed batch is padded to it).

    Returns:
        Every measure; the check passed when all are ``ok``.
    """
    eager, other = load(ckpt_path, workers=0), load(exported, workers=0)
    if eager.classes != other.classes or eager.image_size != other.image_size:
        raise DriveMTLError(
            f"{exported} and {ckpt_path} are different models (classes or input size differ)."
        )
    inputs = list(images) if images is not None else synthetic_images(CHECK_IMAGES)
    if not inputs:
        raise DriveMTLError("--check needs at least one image.")
    measures = _raw_measures(eager, other, inputs[:batch_size])
    expected = eager.predict(inputs, batch_size=batch_size)
    actual = other.predict(inputs, batch_size=batch_size)
    for task in eager.tasks.values():
        for name, (value, limit) in task.agreement(expected, actual).items():
            measures.append(Measure(name, value, limit))
    return measures


def _raw_measures(eager: Predictor, other: Predictor, inputs: list) -> list[Measure]:
    images = torch.stack([eager.prepare(item)[0] for item in inputs])
    ref, _ = flatten_outputs(eager.runtime(images))
    got, _ = flatten_outputs(other.runtime(images))
    out = []
    for name, tensor in ref.items():
        a, b = tensor.float().cpu(), got[name].float().cpu()
        scale = max(1.0, float(a.abs().max()))
        gap = float((a - b).abs().max()) if a.shape == b.shape else float("inf")
        out.append(Measure(f"raw {name}, max abs difference / scale", gap / scale, RAW_TOLERANCE))
    return out


def synthetic_images(count: int) -> list[np.ndarray]:
    """Seeded synthetic driving scenes (every class the generator draws), as arrays."""
    from drivemtl.data.synthetic import SyntheticConfig, render_scene

    config = SyntheticConfig()
    return [render_scene(np.random.default_rng(seed), config).image for seed in range(count)]


def format_measures(measures: Sequence[Measure]) -> str:
    """The table ``--check`` prints."""
    width = max(len(m.name) for m in measures)
    lines = [f"{'measure':<{width}}  {'value':>10}  {'limit':>10}  result"]
    for m in measures:
        lines.append(
            f"{m.name:<{width}}  {m.value:>10.3g}  {m.limit:>10.3g}  {'ok' if m.ok else 'FAIL'}"
        )
    return "\n".join(lines)
