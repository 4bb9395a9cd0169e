"""Folder inference: ``drivemtl predict`` writes predictions.jsonl, errors.jsonl and pictures.

The pieces: :class:`PredictionWriter` (a Lightning prediction writer that streams lines to disk),
the threshold override, the checkpoint-to-data alignment the CLI applies, and overlays. Names
load lazily: the Lightning-free predictor (:mod:`drivemtl.deploy`) uses the threshold and file
helpers without importing Lightning.
"""

from importlib import import_module

_EXPORTS = {
    "LIGHTNING_CKPT_NAMES": "drivemtl.prediction.checkpoint",
    "align_data_with_checkpoint": "drivemtl.prediction.checkpoint",
    "read_checkpoint_hparams": "drivemtl.prediction.checkpoint",
    "ERRORS": "drivemtl.prediction.files",
    "PREDICTIONS": "drivemtl.prediction.files",
    "RUN_INFO": "drivemtl.prediction.files",
    "done_images": "drivemtl.prediction.files",
    "iter_jsonl": "drivemtl.prediction.files",
    "jsonl_to_csv": "drivemtl.prediction.files",
    "add_predict_arguments": "drivemtl.prediction.options",
    "build_writer": "drivemtl.prediction.options",
    "check_predict_config": "drivemtl.prediction.options",
    "render_overlay": "drivemtl.prediction.overlay",
    "write_overlay": "drivemtl.prediction.overlay",
    "apply_thresholds": "drivemtl.prediction.thresholds",
    "parse_thresholds": "drivemtl.prediction.thresholds",
    "PredictionWriter": "drivemtl.prediction.writer",
    "PredictStats": "drivemtl.prediction.writer",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'drivemtl.prediction' has no attribute {name!r}")
