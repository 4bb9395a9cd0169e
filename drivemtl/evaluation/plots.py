"""Evaluation plots: a precision-recall curve per class and AP / F1 bars per class.

Figures are built with ``matplotlib.figure.Figure`` (Agg canvas) rather than pyplot, so no
global backend is switched and nothing needs a display.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from torch import Tensor
from torchmetrics.functional.classification import binary_precision_recall_curve


def safe_name(name: str) -> str:
    """A file name for a class name (spaces and slashes replaced)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "class"


def plot_pr_curve(scores: Tensor, labels: Tensor, metrics: dict, name: str, out: Path) -> Path:
    """One class's precision-recall curve over its labelled images, with the decision point.

    Args:
        scores: (N,) probabilities.
        labels: (N,) 1 / 0 / -1 (excluded).
        metrics: The class's entry of ``per_class`` (AP, precision, recall, counts).
        name: Class name, for the title.
        out: PNG path.
    """
    fig = Figure(figsize=(5, 4.5), dpi=100)
    ax = fig.subplots()
    known = labels >= 0
    s, y = scores[known].float(), labels[known].long()
    positives = metrics.get("positives", 0)
    if positives > 0:
        precision, recall, _ = binary_precision_recall_curve(s, y)
        ax.plot(recall.numpy(), precision.numpy(), drawstyle="steps-post", label="PR curve")
        ax.axhline(positives / len(y), color="grey", linestyle=":", label="chance (prevalence)")
        if metrics.get("precision") is not None and metrics.get("recall") is not None:
            ax.plot(
                [metrics["recall"]],
                [metrics["precision"]],
                "o",
                color="tab:red",
                label=f"decisions (F1 {metrics['f1']:.3f})",
            )
        ax.legend(loc="lower left", fontsize=8)
        title = f"{name}: AP {metrics['ap']:.3f}"
    else:
        reason = "no labelled image" if metrics.get("labelled", 0) == 0 else "no positive"
        ax.text(0.5, 0.5, f"AP undefined: {reason}", ha="center", va="center")
        title = f"{name}: AP undefined"
    counts = f"{positives} positive / {metrics.get('labelled', 0)} labelled"
    ax.set_title(f"{title}\n{counts}, {metrics.get('unknown', 0)} unknown", fontsize=10)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def plot_ap_f1(per_class: dict, out: Path, classes: Sequence[str] | None = None) -> Path:
    """Grouped bars of AP and F1 per class (:func:`ap_f1_figure`) as a PNG."""
    out.parent.mkdir(parents=True, exist_ok=True)
    ap_f1_figure(per_class, classes).savefig(out)
    return out


def ap_f1_figure(per_class: dict, classes: Sequence[str] | None = None) -> Figure:
    """Grouped bars of AP and F1 per class; an undefined value shows as "n/a"."""
    classes = list(classes or per_class)
    fig = Figure(figsize=(max(5.0, 1.2 * len(classes) + 2), 4), dpi=100)
    ax = fig.subplots()
    width = 0.38
    for offset, key, colour in ((-width / 2, "ap", "tab:blue"), (width / 2, "f1", "tab:orange")):
        for i, name in enumerate(classes):
            value = per_class[name].get(key)
            x = i + offset
            if value is None:
                ax.text(x, 0.02, "n/a", ha="center", va="bottom", fontsize=8, rotation=90)
            else:
                ax.bar(x, value, width, color=colour)
                ax.text(x, value + 0.01, f"{value:.2f}", ha="center", va="bottom", fontsize=7)
    ax.bar([], [], color="tab:blue", label="AP")
    ax.bar([], [], color="tab:orange", label="F1")
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=20, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score")
    ax.set_title("Presence per class")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_presence(
    scores: Tensor, labels: Tensor, per_class: dict, classes: Sequence[str], out: Path
) -> dict[str, Path]:
    """The AP / F1 bars and a precision-recall curve per class into ``out``.

    Returns:
        ``{caption: PNG}`` in report order.
    """
    from drivemtl.console import progress

    figures = {"AP and F1 per class": plot_ap_f1(per_class, out / "ap_f1.png", classes)}
    for c, name in enumerate(progress(classes, desc="plotting", unit=" class")):
        figures[f"precision-recall curve of {name}"] = plot_pr_curve(
            scores[:, c],
            labels[:, c],
            per_class[name],
            name,
            out / "pr_curves" / f"{safe_name(name)}.png",
        )
    return figures
