"""``report.md`` and the terminal summary of an evaluation."""

from __future__ import annotations

import os
from pathlib import Path

from drivemtl.reporting import DETECTION_COLUMNS, PRESENCE_COLUMNS, format_report

SHOWN_FIRST = ("presence", "detection", "depth")
"""The order of the sections in report.md and on the terminal; other tasks' follow."""


def shown_order(report: dict) -> list[str]:
    """The report's sections in the order report.md and the terminal show them."""
    return [t for t in SHOWN_FIRST if t in report] + [t for t in report if t not in SHOWN_FIRST]


LISTED = 10
"""How many names of each unmatched kind the terminal and report.md show (matching.json: all)."""

DEFINITIONS = """\
## Definitions

- Images are matched to manifest entries first as the same file (prediction path under the
  predicted folder), then by file name, choosing the manifest path that shares the longest
  trailing part with the prediction's (a tie is ambiguous); see `matching.json`. Unmatched
  images on either side are counted above, not scored.
- `null` in `metrics.json` (shown as `-`) means undefined, never 0.
"""

PRESENCE_DEFINITIONS = """\
## Presence definitions

- Per class, only images where the class is labelled `1` or `0` count; `?` is excluded
  (`unknown`). `labelled` = `1` + `0` entries, `positives` = `1` entries.
- **AP**: average precision from the probabilities (area under the precision-recall step
  curve, ties in score grouped, as torchmetrics computes it); `null` without a positive.
- **F1, precision, recall**: from the decisions in `present` (the producing system's
  thresholds). F1 and recall are `null` without a positive; precision is `null` when the
  class is never decided present.
- **threshold**: the decision threshold the producing run recorded (`run.json`) when the
  decisions follow it; else the smallest probability among images decided present, when
  every image at or above it is decided present; else `null`.
"""


DEPTH_DEFINITIONS = """\
## Depth definitions

- Per image, over its valid pixels: ground truth strictly inside the cap (default
  (0.001, 80) m; 0 = no measurement is never inside); predictions are clamped into the cap.
  Each metric is computed per image, then averaged over images with at least one valid pixel.
  With `p` the prediction and `g` the ground truth, in metres:
- **abs_rel** mean(|p - g| / g); **sq_rel** mean((p - g)^2 / g); **rmse** sqrt(mean((p - g)^2));
  **rmse_log** sqrt(mean((ln p - ln g)^2)); **delta1/2/3** fraction with
  max(p / g, g / p) < 1.25, 1.25^2, 1.25^3.
- `valid_pixels` and `images` count what was scored; metrics are `null` when no image has a
  valid pixel.
"""

DETECTION_DEFINITIONS = """\
## Detection definitions

- Only images whose manifest entry has `boxes` count (`boxes: null` is not annotated); on an
  image where a class is `?`, its predicted and true boxes are left out (`images` counts the
  images where the class is annotated). Ignore regions (crowds, DontCare) are COCO crowd
  boxes: a detection covering one is neither right nor wrong.
- **ap50**, **ap**: COCO average precision (101-point interpolated) at IoU 0.5 and averaged
  over IoU 0.50:0.05:0.95, from every listed box (torchmetrics `MeanAveragePrecision`,
  faster-coco-eval backend); **map50** and **map** average them over the classes with ground
  truth. `null` for a class without ground truth.
- **precision**, **recall**, **f1**: boxes scoring at least the score threshold (the producing
  run's operating point, `run.json`), matched one to one at IoU >= 0.5, best score first.
  Precision is `null` without such a box, recall and F1 without ground truth.
"""

DEPTH_COLUMNS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")


def detection_markdown_table(section: dict) -> str:
    """The per-class detection table in Markdown, with mAP@0.5 and mAP below."""
    head = ["class", *DETECTION_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * len(DETECTION_COLUMNS) + "|"]
    for name, metrics in section["per_class"].items():
        cells = [_cell(metrics.get(k)) for k in DETECTION_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    blanks = " |" * (len(DETECTION_COLUMNS) - 2)
    lines.append(
        f"| **mean** | **{_cell(section.get('map50'))}** | **{_cell(section.get('map'))}** |"
        + blanks
    )
    threshold = _cell(section.get("score_threshold"))
    return "\n".join(lines) + f"\n\nScore threshold for precision and recall: {threshold}."


def depth_markdown_table(section: dict) -> str:
    """The depth metrics as a one-row Markdown table, with the counts."""
    head = [*DEPTH_COLUMNS, "valid_pixels", "images"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    lines.append("| " + " | ".join(_cell(section.get(k)) for k in head) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown_table(section: dict) -> str:
    """The per-class presence table in Markdown."""
    head = ["class", *PRESENCE_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * len(PRESENCE_COLUMNS) + "|"]
    for name, metrics in section["per_class"].items():
        cells = [_cell(metrics.get(k)) for k in PRESENCE_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    blanks = " |" * (len(PRESENCE_COLUMNS) - 1)
    lines.append(f"| **macro mAP** | **{_cell(section.get('map'))}** |{blanks}")
    return "\n".join(lines)


def matching_lines(matching: dict) -> list[str]:
    """Short human-readable lines about matching, for the terminal and report.md."""
    by = ", ".join(f"{n} by {rule}" for rule, n in matching["matched_by"].items() if n)
    lines = [
        f"Matched {matching['matched']} of {matching['prediction_images']} prediction images "
        f"and {matching['manifest_images']} manifest images ({by or 'none'})."
    ]
    notes = {
        "manifest_images_without_prediction": "manifest image(s) without a prediction "
        "(not in the metrics)",
        "predictions_without_manifest_entry": "prediction(s) without a manifest entry",
        "ambiguous_predictions": "prediction(s) matching several manifest entries equally "
        "(left out; give --images_root)",
        "predictions_for_an_already_matched_entry": "prediction(s) for a manifest entry "
        "already matched (left out)",
        "duplicate_prediction_lines": "repeated prediction line(s) (the first counts)",
        "duplicate_manifest_entries": "repeated manifest entries (the first counts)",
    }
    for key, text in notes.items():
        count = matching[key]
        if not count:
            continue
        names = matching["lists"][key][:LISTED]
        more = f", ... ({count - len(names)} more)" if count > len(names) else ""
        unreadable = matching["of_which_unreadable_at_predict"]
        extra = ""
        if key == "manifest_images_without_prediction" and unreadable:
            extra = f"; {unreadable} of them were unreadable at predict time (errors.jsonl)"
        lines.append(f"WARNING: {count} {text}{extra}: {', '.join(names)}{more}")
    depth = matching.get("depth")
    if depth:
        lo, hi = depth["cap_metres"]
        lines.append(
            f"Depth: {depth['images_with_ground_truth']} matched image(s) have ground truth, "
            f"scored within ({lo:g}, {hi:g}) m."
        )
        count = depth["images_without_predicted_depth"]
        if count:
            names = matching["lists"]["images_without_predicted_depth"][:LISTED]
            more = f", ... ({count - len(names)} more)" if count > len(names) else ""
            lines.append(
                f"WARNING: {count} image(s) with depth ground truth have no predicted depth "
                f"(not in the depth metrics): {', '.join(names)}{more}"
            )
    detection = matching.get("detection")
    if detection:
        lines.append(
            f"Detection: {detection['images_with_box_annotation']} matched image(s) are "
            "annotated for boxes."
        )
        count = detection["images_without_predicted_boxes"]
        if count:
            names = matching["lists"]["images_without_predicted_boxes"][:LISTED]
            more = f", ... ({count - len(names)} more)" if count > len(names) else ""
            lines.append(
                f"WARNING: {count} box-annotated image(s) have no predicted boxes "
                f"(not in the detection metrics): {', '.join(names)}{more}"
            )
    if matching["manifest_classes_not_predicted"]:
        lines.append(
            "Manifest classes with no prediction (not evaluated): "
            + ", ".join(matching["manifest_classes_not_predicted"])
        )
    if matching["evaluated_classes_not_in_manifest"]:
        lines.append(
            "Classes the manifest never labels (all '?'): "
            + ", ".join(matching["evaluated_classes_not_in_manifest"])
        )
    return lines


def write_report(
    path: Path, report: dict, matching: dict, figures: dict[str, Path], out_dir: Path
) -> Path:
    """Write ``report.md``: inputs, matching, the per-class table, plots, definitions.

    Args:
        path: The file to write.
        report: The ``metrics.json`` content.
        matching: The ``matching.json`` content.
        figures: ``{caption: PNG path}`` in display order.
        out_dir: The folder links are made relative to.
    """

    def link(target: Path) -> str:
        return Path(os.path.relpath(target, out_dir)).as_posix()

    parts = [
        "# Evaluation",
        "",
        f"- Predictions: `{matching['predictions']}`",
        f"- Manifest(s): {', '.join(f'`{m}`' for m in matching['manifests'])}",
    ]
    if matching.get("images_root"):
        parts.append(f"- Predicted folder: `{matching['images_root']}`")
    parts += ["", "## Matching", ""]
    parts += [f"- {line}" for line in matching_lines(matching)]
    parts.append("")
    if "presence" in report:
        parts += ["## Presence per class", "", markdown_table(report["presence"]), ""]
    if "detection" in report:
        parts += ["## Detection", "", detection_markdown_table(report["detection"]), ""]
    if "depth" in report:
        parts += ["## Depth", "", depth_markdown_table(report["depth"]), ""]
    for task in shown_order(report):  # tasks without a table of their own
        section = report[task]
        if task not in SHOWN_FIRST:
            title = task.replace("_", " ").capitalize()
            text = format_report({task: section})
            parts += [f"## {title}", "", "```", text, "```", ""]
    if figures:
        parts += ["## Plots", ""]
        for caption, figure in figures.items():
            parts += [f"![{caption}]({link(figure)})", ""]
    parts.append(DEFINITIONS)
    if "presence" in report:
        parts.append(PRESENCE_DEFINITIONS)
    if "detection" in report:
        parts.append(DETECTION_DEFINITIONS)
    if "depth" in report:
        parts.append(DEPTH_DEFINITIONS)
    path.write_text("\n".join(parts))
    return path
