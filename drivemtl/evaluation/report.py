"""``report.md`` and the terminal summary of an evaluation."""

from __future__ import annotations

import os
from pathlib import Path

from drivemtl.reporting import format_report


def shown_order(report: dict) -> list[str]:
    """The report's sections in the order report.md and the terminal show them (each task's
    ``report_rank``, then the report's order)."""
    from drivemtl.tasks import TASKS

    def rank(name: str) -> int:
        task = TASKS.get(name)
        return task.report_rank if task else 100

    return sorted(report, key=rank)


LISTED = 10
"""How many names of each unmatched kind the terminal and report.md show (matching.json: all)."""


def shown_names(names: list[str], count: int) -> str:
    """The first :data:`LISTED` of ``names`` and how many more there are."""
    shown = names[:LISTED]
    more = f", ... ({count - len(shown)} more)" if count > len(shown) else ""
    return ", ".join(shown) + more


DEFINITIONS = """\
## Definitions

- Images are matched to manifest entries first as the same file (prediction path under the
  predicted folder), then by file name, choosing the manifest path that shares the longest
  trailing part with the prediction's (a tie is ambiguous); see `matching.json`. Unmatched
  images on either side are counted above, not scored.
- `null` in `metrics.json` (shown as `-`) means undefined, never 0.
"""


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
    from drivemtl.tasks import TASKS

    for name, task in TASKS.items():
        if name in matching:
            lines += task.evaluation_lines(matching[name], matching["lists"])
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
    from drivemtl.tasks import TASKS

    for name in shown_order(report):
        task = TASKS.get(name)
        title = (task.report_title if task else "") or name.replace("_", " ").capitalize()
        text = task.markdown(report[name]) if task else format_report({name: report[name]})
        parts += [f"## {title}", "", text, ""]
    if figures:
        parts += ["## Plots", ""]
        for caption, figure in figures.items():
            parts += [f"![{caption}]({link(figure)})", ""]
    parts.append(DEFINITIONS)
    for name in shown_order(report):
        definitions = getattr(TASKS.get(name), "definitions", "")
        if definitions:
            parts.append(definitions)
    path.write_text("\n".join(parts))
    return path
