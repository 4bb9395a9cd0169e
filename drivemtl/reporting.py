"""Human-readable tables and the metrics.json file, shared by fit, test and evaluate."""

from __future__ import annotations

import json
import math
from pathlib import Path

PRESENCE_COLUMNS = (
    "ap",
    "f1",
    "precision",
    "recall",
    "threshold",
    "positives",
    "labelled",
    "unknown",
)

DETECTION_COLUMNS = (
    "ap50",
    "ap",
    "precision",
    "recall",
    "f1",
    "ground_truth",
    "detections",
    "images",
)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown_cell(value) -> str:
    """A report.md table cell: ``-`` for undefined, three decimals for a float."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def fixed_width(rows: list[tuple[str, ...]]) -> str:
    """Rows as aligned text: the first column left, the others right, a rule under the head."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def presence_table(section: dict) -> str:
    """The per-class presence table as fixed-width text (``-`` marks an undefined value)."""
    rows = [("class", *PRESENCE_COLUMNS)]
    for name, metrics in section["per_class"].items():
        rows.append((name, *(_cell(metrics.get(k)) for k in PRESENCE_COLUMNS)))
    rows.append(("macro mAP", _cell(section.get("map")), *[""] * (len(PRESENCE_COLUMNS) - 1)))
    return fixed_width(rows)


def detection_table(section: dict) -> str:
    """The per-class detection table as fixed-width text, with mAP@0.5 and mAP below."""
    rows = [("class", *DETECTION_COLUMNS)]
    for name, metrics in section["per_class"].items():
        rows.append((name, *(_cell(metrics.get(k)) for k in DETECTION_COLUMNS)))
    blanks = [""] * (len(DETECTION_COLUMNS) - 2)
    rows.append(("mean", _cell(section.get("map50")), _cell(section.get("map")), *blanks))
    lines = fixed_width(rows).split("\n")
    threshold = _cell(section.get("score_threshold"))
    return "\n".join(lines) + f"\n(precision, recall, f1 at score >= {threshold}, IoU 0.5)"


def format_report(report: dict) -> str:
    """All task sections of a report, one table or line each."""
    parts = []
    for task, section in report.items():
        if task == "presence":
            parts.append("presence\n" + presence_table(section))
        elif task == "detection":
            parts.append("detection\n" + detection_table(section))
        else:
            flat = {k: v for k, v in section.items() if not isinstance(v, dict)}
            text = f"{task}: " + ", ".join(f"{k}={_cell(v)}" for k, v in flat.items())
            if isinstance(section.get("per_class"), dict) and section["per_class"]:
                text += "\n" + per_class_table(section["per_class"])
            parts.append(text)
    return "\n\n".join(parts)


def per_class_table(per_class: dict) -> str:
    """A per-class table of any task's numbers (columns: the first class's keys)."""
    columns = list(next(iter(per_class.values())))
    rows = [("class", *columns)]
    for name, metrics in per_class.items():
        rows.append((name, *(_cell(metrics.get(k)) for k in columns)))
    return fixed_width(rows)


def write_metrics(report: dict, path: str | Path) -> Path:
    """Write ``metrics.json``; undefined values are ``null``, never 0 or NaN."""

    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(report), indent=2) + "\n")
    return path
