"""``labels.png``: what the labels look like, at a glance (after ultralytics' label plot).

Built on ``matplotlib.figure.Figure`` (Agg canvas): no global backend, no display needed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from drivemtl.inspection.stats import InspectSettings, Summary

LABEL_COLOURS = {"positive": "tab:green", "negative": "tab:grey", "unknown": "tab:orange"}
TITLE = {"positive": "1", "negative": "0", "unknown": "?"}


def plot_labels(summary: Summary, settings: InspectSettings, out: Path, title: str = "") -> Path:
    """Presence 1 / 0 / ? per class, boxes per class, box sides against the strides, box
    centres, box widths and heights, and a histogram per label map (depth coverage, ...)."""
    classes = list(settings.classes)
    per_class = summary.report["classes"]
    histograms = {k: h for k, h in summary.map_histograms.items() if len(h[0])}
    columns = math.ceil((5 + max(1, len(histograms))) / 2)
    fig = Figure(figsize=(5 * columns, 8.5), dpi=90)
    axes = fig.subplots(2, columns).ravel()
    x = np.arange(len(classes))

    ax = axes[0]
    bottom = np.zeros(len(classes))
    for key, colour in LABEL_COLOURS.items():
        values = np.array([per_class[c][key] for c in classes])
        ax.bar(x, values, bottom=bottom, color=colour, label=TITLE[key])
        bottom += values
    ax.set_xticks(x, classes, rotation=20, ha="right")
    ax.set_ylabel("images")
    ax.set_title("presence labels per class")
    ax.legend(fontsize=8)

    ax = axes[1]
    boxes = [per_class[c]["boxes"] for c in classes]
    ax.bar(x, boxes, color="tab:blue")
    for i, n in enumerate(boxes):
        ax.text(i, n, str(n), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, classes, rotation=20, ha="right")
    ax.set_ylabel("boxes")
    ax.set_title("boxes per class")

    ax = axes[2]
    sides = summary.box_side
    if len(sides):
        upper = max(float(sides.max()), max(settings.strides) * 2.0)
        bins = np.geomspace(max(float(sides.min()), 0.5), upper, 40)
        for c, name in enumerate(classes):
            mine = sides[summary.box_class == c]
            if len(mine):
                ax.hist(mine, bins=bins, histtype="step", linewidth=1.5, label=name)
        for s in settings.strides:
            ax.axvline(s, color="black", linestyle=":", linewidth=1)
            ax.text(s, 1.0, f" stride {s}", rotation=90, va="top", fontsize=7,
                    transform=ax.get_xaxis_transform())  # fmt: skip
        ax.set_xscale("log")
        ax.legend(fontsize=8, loc="center right")
    else:
        _empty(ax, "no boxes")
    h, w = settings.image_size
    ax.set_xlabel(f"shorter box side, px at the {w}x{h} input")
    ax.set_ylabel("boxes")
    ax.set_title("box sizes against the detection strides")

    geometry = summary.box_geometry
    ax = axes[3]
    if len(geometry):
        ax.hist2d(*geometry[:, :2].T, bins=30, range=[[0, 1], [0, 1]], cmap="Blues", norm=LogNorm())
        ax.invert_yaxis()
    else:
        _empty(ax, "no boxes")
    ax.set_xlabel("centre x / image width")
    ax.set_ylabel("centre y / image height")
    ax.set_title("box centres")

    ax = axes[4]
    if len(geometry):
        ax.hist2d(*geometry[:, 2:].T, bins=30, range=[[0, 1], [0, 1]], cmap="Blues", norm=LogNorm())
    else:
        _empty(ax, "no boxes")
    ax.set_xlabel("width / image width")
    ax.set_ylabel("height / image height")
    ax.set_title("box widths and heights")

    for ax, (values, xlabel, name) in zip(axes[5:], histograms.values()):
        ax.hist(values, bins=20, color="tab:purple")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("images")
        ax.set_title(name)
    if not histograms:
        _empty(axes[5], "no label maps")
        axes[5].set_title("label maps")
    for ax in axes[5 + max(1, len(histograms)) :]:
        ax.set_visible(False)

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
