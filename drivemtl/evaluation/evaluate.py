"""``drivemtl evaluate``: a predictions file against a manifest, per class."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from drivemtl.data.io import DEPTH_PNG_SCALE
from drivemtl.data.manifest import Record, manifest_classes, read_manifest
from drivemtl.errors import DriveMTLError
from drivemtl.evaluation.inputs import EvaluationInputs
from drivemtl.evaluation.matching import MatchResult, manifest_image, match_images
from drivemtl.evaluation.predictions import Predictions, read_predictions
from drivemtl.evaluation.report import write_report
from drivemtl.metrics.depth import DEFAULT_MAX_DEPTH, DEFAULT_MIN_DEPTH
from drivemtl.prediction.files import write_json
from drivemtl.reporting import write_metrics
from drivemtl.tasks import TASKS


@dataclass
class Evaluation:
    """What :func:`evaluate` computed and wrote.

    Attributes:
        report: The ``metrics.json`` content: a section per task that found its fields in
            the predictions and, where it needs them, labels in the manifest.
        matching: The ``matching.json`` content (counts and unmatched names).
        output_dir: Where the files are.
    """

    report: dict
    matching: dict
    output_dir: Path


def _read_manifests(paths: Sequence[Path], classes: list[str]) -> tuple[list, list, list]:
    """Records, their match descriptions and duplicate entries (same file listed again)."""
    records: list[Record] = []
    images = []
    duplicates = []
    seen: set[tuple[str, ...]] = set()
    for path in paths:
        for record in read_manifest(path, classes, check_files=False):
            item = manifest_image(record.image, path.parent)
            if item.absolute in seen:
                duplicates.append(item.display)
                continue
            seen.add(item.absolute)
            records.append(record)
            images.append(item)
    return records, images, duplicates


def evaluate(
    predictions: str | Path,
    manifests: str | Path | Sequence[str | Path],
    output_dir: str | Path,
    classes: Sequence[str] | None = None,
    images_root: str | Path | None = None,
    plots: bool = True,
    min_depth: float = DEFAULT_MIN_DEPTH,
    max_depth: float = DEFAULT_MAX_DEPTH,
    depth_scale: float = DEPTH_PNG_SCALE,
    box_score_threshold: float | None = None,
) -> Evaluation:
    """Match predictions to manifest images and write metrics, a report and plots.

    Args:
        predictions: A ``predictions.jsonl`` in the contract format.
        manifests: One or more CSV / JSONL manifests (concatenated).
        output_dir: Folder for ``metrics.json``, ``matching.json``, ``report.md`` and plots.
        classes: Classes to evaluate (default: all classes of the predictions).
        images_root: The folder the prediction paths are relative to; default: the
            ``predict_dir`` recorded in ``run.json`` beside the predictions, if any.
        plots: Write the PNG plots.
        min_depth: Depth metric cap: ground truth outside (min_depth, max_depth) is not
            scored, predictions are clamped into it.
        max_depth: Upper depth cap (80 m, KITTI).
        depth_scale: Units per metre of the manifest's 16-bit depth PNGs.
        box_score_threshold: Detection operating point for precision and recall; default:
            the one recorded in ``run.json`` beside the predictions, else the task default.

    Raises:
        DriveMTLError: For unreadable inputs, unknown classes, or no image matched.
    """
    preds = read_predictions(predictions)
    fields = {name: task.read_predictions(preds) for name, task in TASKS.items()}
    preds.check()
    manifest_paths = [
        Path(m) for m in ([manifests] if isinstance(manifests, (str, Path)) else manifests)
    ]
    if not manifest_paths:
        raise DriveMTLError("Give at least one --manifest.")
    named = []
    for path in manifest_paths:
        named.extend(c for c in manifest_classes(path) if c not in named)
    # The model's classes: what its predictions state, else run.json's list, else the manifest's.
    stated_classes = preds.run_info.get("classes")
    if not isinstance(stated_classes, list):
        stated_classes = []
    from_fields = next((c for n, t in TASKS.items() if (c := t.predicted_classes(fields[n]))), [])
    predicted = from_fields or [str(c) for c in stated_classes] or named
    classes = list(classes or predicted)
    missing = [c for c in classes if c not in predicted]
    if missing:
        raise DriveMTLError(
            f"Class(es) {missing} are not in {preds.path}; its classes are {predicted}."
        )
    # Read the manifest with every class it names, so one that predictions lack is no error.
    all_classes = predicted + [c for c in named if c not in predicted]
    records, images, manifest_duplicates = _read_manifests(manifest_paths, all_classes)

    root = images_root or preds.run_info.get("predict_dir")
    matched = match_images(preds.images, images, root)
    if not matched.pairs:
        raise DriveMTLError(
            f"No prediction matched a manifest image: e.g. prediction {preds.images[0]!r}, "
            f"manifest {images[0].display!r}. Give --images_root (the folder that was "
            "predicted) if the two name images from different folders."
        )

    matching = _matching_summary(
        preds, manifest_paths, images, matched, manifest_duplicates, named, classes, predicted, root
    )
    # Each task scores its own fields (probabilities, boxes, depth maps, masks) when both
    # sides have them, with its training metric.
    options = {
        "min_depth": min_depth,
        "max_depth": max_depth,
        "depth_scale": depth_scale,
        "box_score_threshold": box_score_threshold,
    }
    inputs = EvaluationInputs(
        preds, records, matched.pairs, classes, all_classes, named, options=options
    )
    report, plotters = {}, []
    for name, task in TASKS.items():
        found = task.evaluate_files(replace(inputs, fields=fields[name]))
        if found is None:
            continue
        report[name] = found.report
        if found.matching:
            matching[name] = found.matching
        matching["lists"].update(found.lists)
        if found.plot is not None:
            plotters.append(found.plot)
    if not report:
        raise DriveMTLError(
            f"Nothing to evaluate: no task ({', '.join(TASKS)}) found its predictions in "
            f"{preds.path} and, where it needs them, labels in the manifest for the matched "
            "images. Check that the manifest is the one with the annotations these predictions "
            "are for."
        )

    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise DriveMTLError(f"--output_dir {out} is a file; give a folder for the evaluation")
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(report, out / "metrics.json")
    write_json(out / "matching.json", matching)
    figures = {}  # caption -> PNG, in report order
    for plot in plotters if plots else []:
        figures.update(plot(out))
    write_report(out / "report.md", report, matching, figures, out)
    return Evaluation(report=report, matching=matching, output_dir=out)


def _matching_summary(
    preds: Predictions,
    manifest_paths: list[Path],
    images: list,
    matched: MatchResult,
    manifest_duplicates: list[str],
    named: list[str],
    classes: list[str],
    predicted: list[str],
    root,
) -> dict:
    unmatched_manifest = [images[i].display for i in matched.unmatched_manifest]
    # Of the manifest images without a prediction, those predict could not read.
    failed = 0
    if preds.errors and matched.unmatched_manifest:
        sub = [images[i] for i in matched.unmatched_manifest]
        failed = len(match_images(preds.errors, sub, root).pairs)
    return {
        "predictions": str(preds.path),
        "manifests": [str(p) for p in manifest_paths],
        "images_root": str(root) if root else None,
        "prediction_images": len(preds.images),
        "manifest_images": len(images),
        "matched": len(matched.pairs),
        "matched_by": matched.by_rule,
        "predictions_without_manifest_entry": len(matched.unmatched_predictions),
        "ambiguous_predictions": len(matched.ambiguous_predictions),
        "predictions_for_an_already_matched_entry": len(matched.taken_predictions),
        "duplicate_prediction_lines": len(preds.duplicates),
        "duplicate_manifest_entries": len(manifest_duplicates),
        "manifest_images_without_prediction": len(unmatched_manifest),
        "of_which_unreadable_at_predict": failed,
        "manifest_classes_not_predicted": [c for c in named if c not in predicted],
        "evaluated_classes_not_in_manifest": [c for c in classes if c not in named],
        "lists": {
            "predictions_without_manifest_entry": matched.unmatched_predictions,
            "ambiguous_predictions": matched.ambiguous_predictions,
            "predictions_for_an_already_matched_entry": matched.taken_predictions,
            "duplicate_prediction_lines": preds.duplicates,
            "duplicate_manifest_entries": manifest_duplicates,
            "manifest_images_without_prediction": unmatched_manifest,
        },
    }
