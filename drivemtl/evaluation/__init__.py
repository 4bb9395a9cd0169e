"""Offline evaluation: ``drivemtl evaluate`` scores any predictions.jsonl against a manifest.

Each task scores its own fields with the metric of training (``Task.evaluate_files``), so the
numbers are ``drivemtl test``'s.
Names load lazily, so ``drivemtl evaluate --help`` answers without importing torch.
"""

from importlib import import_module

from drivemtl.evaluation.cli import build_parser, main

_EXPORTS = {
    "Evaluation": "drivemtl.evaluation.evaluate",
    "evaluate": "drivemtl.evaluation.evaluate",
    "manifest_classes": "drivemtl.data.manifest",
    "MatchResult": "drivemtl.evaluation.matching",
    "manifest_image": "drivemtl.evaluation.matching",
    "match_images": "drivemtl.evaluation.matching",
    "decision_threshold": "drivemtl.evaluation.metrics",
    "presence_metrics": "drivemtl.evaluation.metrics",
    "Predictions": "drivemtl.evaluation.predictions",
    "read_predictions": "drivemtl.evaluation.predictions",
}
__all__ = [*_EXPORTS, "build_parser", "main"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'drivemtl.evaluation' has no attribute {name!r}")
