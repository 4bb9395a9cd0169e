"""Offline evaluation: ``drivemtl evaluate`` scores any predictions.jsonl against a manifest.

The numbers come from :func:`drivemtl.metrics.presence_report`, like ``drivemtl test``'s.
"""

from drivemtl.evaluation.cli import build_parser, main
from drivemtl.evaluation.evaluate import Evaluation, evaluate, manifest_classes
from drivemtl.evaluation.matching import MatchResult, manifest_image, match_images
from drivemtl.evaluation.metrics import decision_threshold, presence_metrics
from drivemtl.evaluation.predictions import Predictions, read_predictions

__all__ = [
    "Evaluation",
    "MatchResult",
    "Predictions",
    "build_parser",
    "decision_threshold",
    "evaluate",
    "main",
    "manifest_classes",
    "manifest_image",
    "match_images",
    "presence_metrics",
    "read_predictions",
]
