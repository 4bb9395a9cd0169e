"""The ``drivemtl predict`` options beyond LightningCLI's, and the writer they configure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import ActionYesNo

from drivemtl.errors import DriveMTLError
from drivemtl.prediction.checkpoint import LIGHTNING_CKPT_NAMES
from drivemtl.prediction.thresholds import ThresholdSpec, parse_thresholds
from drivemtl.prediction.writer import PredictionWriter

DEFAULT_OVERLAY_SIDE = 1280
MIN_OVERLAY_SIDE = 64
"""Overlays smaller than this could not show their labels."""

OPTION_KEYS = (
    "output_dir",
    "thresholds",
    "box_score_threshold",
    "overlays",
    "overlay_max_side",
    "depth_preview",
    "csv",
    "resume",
    "overwrite",
)


def add_predict_arguments(parser: Any) -> None:
    """Add the output options to the ``predict`` subcommand's parser."""
    group = parser.add_argument_group("Prediction output (drivemtl)")
    group.add_argument(
        "--output_dir",
        type=str | None,
        default=None,
        help="Folder for predictions.jsonl, errors.jsonl, run.json, overlays/ and "
        "config.yaml (default: the run folder, runs/predict-<time>).",
    )
    group.add_argument(
        "--thresholds",
        type=ThresholdSpec,
        default=None,
        help="Override the checkpoint's decision thresholds per class: car=0.3,stop_sign=0.6 "
        "(or --thresholds.car=0.3, or a mapping in a config file).",
    )
    group.add_argument(
        "--box_score_threshold",
        type=float | None,
        default=None,
        help="Override the detection operating point (recorded in run.json, drawn on overlays; "
        "predictions.jsonl lists every box down to the task's min_score either way).",
    )
    group.add_argument(
        "--overlays",
        action=ActionYesNo,
        default=False,
        help="Also write overlays/<image>.jpg: present classes with probabilities, and boxes.",
    )
    group.add_argument(
        "--overlay_max_side",
        type=int,
        default=DEFAULT_OVERLAY_SIDE,
        help="Longer side of overlay pictures in pixels (larger images are scaled down).",
    )
    group.add_argument(
        "--depth_preview",
        action=ActionYesNo,
        default=True,
        help="With a depth head: also write depth_preview/<image>.jpg, the depth map in "
        "colour (fixed log scale, 1 m bright to 80 m dark); with a segmentation head, "
        "segmentation_preview/<image>.jpg; --no_depth_preview skips them.",
    )
    group.add_argument(
        "--csv", action=ActionYesNo, default=False, help="Also write predictions.csv at the end."
    )
    group.add_argument(
        "--resume",
        action=ActionYesNo,
        default=False,
        help="Continue a run in --output_dir: skip images already in predictions.jsonl.",
    )
    group.add_argument(
        "--overwrite",
        action=ActionYesNo,
        default=False,
        help="Delete an earlier run's outputs in --output_dir first.",
    )


def check_predict_config(section: Any) -> None:
    """Fail early, before any model is built, when predict cannot run.

    Call it after :func:`align_data_with_checkpoint`, which sets the checkpoint's classes.

    Raises:
        DriveMTLError: Without a checkpoint or a usable image folder, or for a threshold
            override that is malformed or names a class the checkpoint lacks.
    """
    ckpt_path = section.get("ckpt_path")
    if not ckpt_path or str(ckpt_path) in LIGHTNING_CKPT_NAMES:
        # "best" / "last" name a checkpoint of the current fit; predict runs no fit.
        given = f" (got {ckpt_path!r})" if ckpt_path else ""
        raise DriveMTLError(
            f"predict needs a trained model: give --ckpt_path the checkpoint file{given}, "
            "e.g. RUN/checkpoints/best.ckpt."
        )
    folder = section.data.get("predict_dir")
    if not folder:
        raise DriveMTLError("No images to predict: give --data.predict_dir DIR.")
    if not Path(folder).is_dir():
        raise DriveMTLError(f"Image folder not found (or not a folder): {folder}")
    # After align_data_with_checkpoint, data.classes are the checkpoint's.
    unknown = sorted(set(parse_thresholds(section.get("thresholds"))) - set(section.data.classes))
    if unknown:
        raise DriveMTLError(
            f"--thresholds names class(es) {unknown} that the checkpoint does not have; "
            f"its classes are {list(section.data.classes)}."
        )

    output_dir = section.get("output_dir")
    if output_dir and Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise DriveMTLError(f"--output_dir {output_dir} is a file; give a folder for the outputs.")
    side = section.get("overlay_max_side")
    if side is not None and side < MIN_OVERLAY_SIDE:
        raise DriveMTLError(
            f"--overlay_max_side must be at least {MIN_OVERLAY_SIDE} px (default 1280): {side}"
        )
    box = section.get("box_score_threshold")
    if box is not None and not 0.0 <= box <= 1.0:
        raise DriveMTLError(f"--box_score_threshold must be in [0, 1], got {box}.")


def build_writer(section: Any, output_dir: str | Path) -> PredictionWriter:
    """The writer for a parsed ``predict`` config section."""
    return PredictionWriter(
        output_dir=output_dir,
        predict_dir=section.data.predict_dir,
        checkpoint=section.get("ckpt_path"),
        thresholds=section.get("thresholds"),
        box_score_threshold=section.get("box_score_threshold"),
        overlays=bool(section.get("overlays")),
        overlay_max_side=int(section.get("overlay_max_side") or DEFAULT_OVERLAY_SIDE),
        depth_preview=bool(section.get("depth_preview", True)),
        csv=bool(section.get("csv")),
        resume=bool(section.get("resume")),
        overwrite=bool(section.get("overwrite")),
    )
