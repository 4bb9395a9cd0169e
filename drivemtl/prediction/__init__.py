"""Folder inference: ``drivemtl predict`` writes predictions.jsonl, errors.jsonl and pictures.

The pieces: :class:`PredictionWriter` (a Lightning prediction writer that streams lines to disk),
the threshold override, the checkpoint-to-data alignment the CLI applies, and overlays.
"""

from drivemtl.prediction.checkpoint import (
    LIGHTNING_CKPT_NAMES,
    align_data_with_checkpoint,
    read_checkpoint_hparams,
)
from drivemtl.prediction.files import (
    ERRORS,
    PREDICTIONS,
    RUN_INFO,
    done_images,
    iter_jsonl,
    jsonl_to_csv,
)
from drivemtl.prediction.options import add_predict_arguments, build_writer, check_predict_config
from drivemtl.prediction.overlay import render_overlay, write_overlay
from drivemtl.prediction.thresholds import apply_thresholds, parse_thresholds
from drivemtl.prediction.writer import PredictionWriter, PredictStats

__all__ = [
    "ERRORS",
    "LIGHTNING_CKPT_NAMES",
    "PREDICTIONS",
    "RUN_INFO",
    "PredictStats",
    "PredictionWriter",
    "add_predict_arguments",
    "align_data_with_checkpoint",
    "apply_thresholds",
    "build_writer",
    "check_predict_config",
    "done_images",
    "iter_jsonl",
    "jsonl_to_csv",
    "parse_thresholds",
    "read_checkpoint_hparams",
    "render_overlay",
    "write_overlay",
]
