"""Inspect manifests: parse them as training does, decode every file, summarise, write.

``inspect_manifests`` is what ``drivemtl inspect`` and ``drivemtl fit --data.inspect true``
run; ``write_inspection`` leaves ``inspect.json``, ``labels.png`` and, when something is wrong,
``problems.txt``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from inspect import signature
from pathlib import Path

import yaml

from drivemtl.data.manifest import Record, parse_manifest
from drivemtl.errors import DriveMTLError
from drivemtl.inspection.scan import FileCheck, check_records, map_tasks
from drivemtl.inspection.stats import InspectSettings, Summary, summarise

MAX_PRINTED_PROBLEMS = 20


def task_strides(tasks: Iterable | None = None) -> tuple[int, ...]:
    """Strides of the first task that detects on a location grid, else of a default one.

    Args:
        tasks: Built task objects (``MultiTaskModule.tasks.values()``); ``None`` or no
            detecting task: the default strides of the registered task that has them.
    """
    from drivemtl.tasks import TASKS

    found = next((t.strides for t in tasks or () if hasattr(t, "strides")), None)
    if found is None:  # the default of the first registered task that detects on a grid
        found = next((c.default_strides for c in TASKS.values() if c.default_strides), ())
    return tuple(found)


def load_settings(config: str | Path | None = None) -> InspectSettings:
    """Classes, input size, strides and depth scale of a training config (``fit --config``),
    with the package defaults for anything it does not set."""
    from drivemtl.data.datamodule import DriveDataModule
    from drivemtl.tasks import build_tasks

    section: dict = {}
    if config is not None:
        path = Path(config)
        try:
            section = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise DriveMTLError(f"Config not found: {path}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise DriveMTLError(f"Config {path} is not valid YAML: {e}") from None
        if not isinstance(section, dict):
            raise DriveMTLError(f"Config {path} must be a mapping with data / model sections")
    data = section.get("data") or {}
    tasks = (section.get("model") or {}).get("tasks")
    defaults = signature(DriveDataModule).parameters
    try:
        strides = task_strides(build_tasks(tasks).values() if tasks else None)
    except (ValueError, TypeError, KeyError) as e:
        raise DriveMTLError(f"Config {config}: model.tasks: {e}") from None
    size = data.get("image_size", defaults["image_size"].default)
    if not (isinstance(size, (list, tuple)) and len(size) == 2):
        raise DriveMTLError(f"Config {config}: data.image_size must be [height, width]: {size}")
    return InspectSettings(
        classes=tuple(data.get("classes", defaults["classes"].default)),
        image_size=(int(size[0]), int(size[1])),
        strides=strides,
        depth_scale=float(data.get("depth_scale", defaults["depth_scale"].default)),
    )


@dataclass
class Inspection:
    """The result of :func:`inspect_manifests`: a summary per manifest and for all of them."""

    settings: InspectSettings
    sources: dict[str, Summary]
    total: Summary
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        s = self.settings
        return {
            "settings": {
                "classes": list(s.classes),
                "image_size": list(s.image_size),
                "strides": list(s.strides),
                "depth_scale": s.depth_scale,
            },
            "sources": {name: summary.report for name, summary in self.sources.items()},
            "total": self.total.report,
            "problems": self.problems,
        }


def inspect_manifests(
    manifests: Sequence[str | Path], settings: InspectSettings, workers: int = 1
) -> Inspection:
    """Parse each manifest with training's parser and decode every file it lists.

    Problems never stop the inspection: each is listed with its manifest line, and the
    entries that parse are decoded and counted.
    """
    sources: dict[str, Summary] = {}
    all_records: list[Record] = []
    all_checks: list[FileCheck] = []
    all_problems: list[str] = []
    for manifest in manifests:
        path = Path(manifest)
        try:
            records, parse_problems = parse_manifest(path, settings.classes)
        except DriveMTLError as e:
            records, problems = [], [str(e)]
        else:
            problems = [f"{path}:{line}: {text}" for line, text in parse_problems]
            if not records and not problems:
                problems.append(f"Manifest {path} has no entries.")
        checks = list(
            check_records(records, settings.depth_scale, workers, desc=f"decoding {path.name}")
        )
        problems += [c.problem for c in checks if c.problem is not None]
        sources[str(path)] = summarise(records, checks, settings, problems)
        all_records += records
        all_checks += checks
        all_problems += problems
    total = summarise(all_records, all_checks, settings, all_problems)
    return Inspection(settings, sources, total, all_problems)


def write_inspection(inspection: Inspection, output_dir: str | Path) -> dict[str, Path]:
    """Write ``inspect.json``, ``labels.png`` (all sources) and ``problems.txt`` (if any)."""
    from drivemtl.inspection.plots import plot_labels

    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise DriveMTLError(f"--output_dir {out} is a file; give a folder for the inspection")
    out.mkdir(parents=True, exist_ok=True)
    written = {"json": out / "inspect.json"}
    written["json"].write_text(json.dumps(inspection.to_json(), indent=2) + "\n")
    names = ", ".join(Path(name).name for name in inspection.sources)
    written["labels"] = plot_labels(
        inspection.total, inspection.settings, out / "labels.png", title=names
    )
    problems = out / "problems.txt"
    if inspection.problems:
        problems.write_text("".join(f"{p}\n" for p in inspection.problems), encoding="utf-8")
        written["problems"] = problems
    elif problems.is_file():
        problems.unlink()  # a stale list would describe other files
    return written


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def source_table(name: str, summary: Summary, settings: InspectSettings) -> str:
    """One source as text: a row per class, then boxes, ignore regions, depth and files."""
    r = summary.report
    strides = [str(s) for s in settings.strides]
    header = ["class", "1", "0", "?", "boxes", "side px min/med/max"]
    header += [f"no centre @{s}" for s in strides]
    rows = [header]
    for cls, c in r["classes"].items():
        side = c["box_side_px"]
        sides = f"{side['min']:.1f} / {side['median']:.1f} / {side['max']:.1f}" if side else "-"
        measured = sum(c["size_histogram"])
        row = [cls, str(c["positive"]), str(c["negative"]), str(c["unknown"]), str(c["boxes"])]
        row.append(sides)
        row += [f"{c['no_centre'][s]} ({_percent(c['no_centre'][s], measured)})" for s in strides]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    h, w = settings.image_size
    boxes, ignore = r["boxes"], r["ignore_regions"]
    top = f"{name}: {r['images']} image(s), {r['decoded']} decoded, {r['problems']} problem(s)"
    lines.insert(0, top)
    lines.append(
        f"boxes: {boxes['total']} on {boxes['images_annotated']} image(s) annotated for boxes; "
        f"sides measured at the {w}x{h} input"
        + (
            f" ({boxes['unmeasured']} on undecodable images not measured)"
            if boxes["unmeasured"]
            else ""
        )
    )
    lines.append(f"ignore regions: {ignore['total']} on {ignore['images']} image(s)")
    for key, task in map_tasks().items():
        lines.append(task.map_line(r[key]) if r[key]["images"] else f"{key}: none")
    lines.append(f"image sizes: {_top(r['image_sizes'])}")
    lines.append(f"modes: {_top(r['modes'])}")
    return "\n".join(lines)


def _top(counts: dict[str, int], limit: int = 4) -> str:
    if not counts:
        return "-"
    items = list(counts.items())
    shown = ", ".join(f"{k} ({v})" for k, v in items[:limit])
    return shown + (f", ... {len(items) - limit} more" if len(items) > limit else "")


def format_inspection(inspection: Inspection) -> str:
    """Every source's table, the total when there are several, and the first problems."""
    parts = [source_table(n, s, inspection.settings) for n, s in inspection.sources.items()]
    if len(inspection.sources) > 1:
        parts.append(source_table("all sources", inspection.total, inspection.settings))
    problems = inspection.problems
    if problems:
        shown = [f"  {p}" for p in problems[:MAX_PRINTED_PROBLEMS]]
        if len(problems) > MAX_PRINTED_PROBLEMS:
            shown.append(f"  ... and {len(problems) - MAX_PRINTED_PROBLEMS} more")
        parts.append(f"{len(problems)} problem(s):\n" + "\n".join(shown))
    return "\n\n".join(parts)
