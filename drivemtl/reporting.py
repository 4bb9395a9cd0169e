"""Human-readable tables and the metrics.json file, shared by fit, test and evaluate."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path


def cell(value) -> str:
    """A table cell: ``-`` for undefined (``None``, NaN), three decimals for a float."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def per_class_rows(per_class: dict, columns: Sequence[str]) -> list[tuple[str, ...]]:
    """A head row (``class``, columns) and one row of cells per class."""
    rows = [("class", *columns)]
    for name, metrics in per_class.items():
        rows.append((name, *(cell(metrics.get(k)) for k in columns)))
    return rows


def fixed_width(rows: list[tuple[str, ...]]) -> str:
    """Rows as aligned text: the first column left, the others right, a rule under the head."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def markdown_table(rows: list[tuple[str, ...]], footer: tuple[str, ...] = ()) -> str:
    """Rows (the first one the head) as a Markdown table, the first column left-aligned;
    a ``footer`` row (summary numbers) in bold, its empty cells left blank."""

    def line(cells: Sequence[str]) -> str:
        return "|" + "".join(f" {c} |" if c else " |" for c in cells)

    lines = [line(rows[0]), "|---" + "|---:" * (len(rows[0]) - 1) + "|"]
    lines += [line(r) for r in rows[1:]]
    if footer:
        lines.append(line([f"**{c}**" if c else "" for c in footer]))
    return "\n".join(lines)


def section_text(name: str, section: dict) -> str:
    """A report section as one line of its numbers, and its per-class table if it has one."""
    flat = {k: v for k, v in section.items() if not isinstance(v, dict)}
    text = f"{name}: " + ", ".join(f"{k}={cell(v)}" for k, v in flat.items())
    if isinstance(section.get("per_class"), dict) and section["per_class"]:
        columns = list(next(iter(section["per_class"].values())))
        text += "\n" + fixed_width(per_class_rows(section["per_class"], columns))
    return text


def format_report(report: dict) -> str:
    """All task sections of a report, each as its task shows it (:meth:`Task.text_table`)."""
    from drivemtl.tasks import TASKS

    parts = []
    for name, section in report.items():
        task = TASKS.get(name)
        parts.append(task.text_table(section) if task else section_text(name, section))
    return "\n\n".join(parts)


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
