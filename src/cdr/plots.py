"""The pictures written beside evaluation results (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_floor(lowest: float) -> float:
    """The bottom of a score axis: 0, or below it in steps of 0.1 to show a negative score and its interval."""
    import math

    return min(0.0, math.floor(round(lowest * 10, 6)) / 10)


def section_bars(
    figures: Mapping[str, Mapping],
    labels: Mapping[str, str],
    path: Path,
    title: str,
    *,
    groups: Sequence[str] = ("Chat", "Chat Hard", "Safety", "Reasoning"),
    key: str = "sections",
    chance: float = 0.5,
    ylabel: str = "accuracy (ties count as wrong)",
) -> None:
    """Grouped bars: one group per section (``figures[variant][key]``) and the overall score, one bar per
    variant, 95% intervals; a dotted line at chance."""
    import numpy as np

    plt = _pyplot()
    groups = [*groups, "score"]
    names = list(figures)
    colors = {
        "sum": "#08519c",
        "mean": "#3182bd",
        "mean_diff": "#6baed6",
        "strong_sum": "#238b45",
        "strong_mean": "#74c476",
        "weak_sum": "#d94801",
        "weak_mean": "#fd8d3c",
        "shorter": "#636363",
        "longer": "#bdbdbd",
    }
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(11, 4.5))
    x = np.arange(len(groups))
    lowest = 0.0
    for i, name in enumerate(names):
        f = figures[name]
        values = [f[key].get(g, np.nan) if g != "score" else (f["accuracy"] or np.nan) for g in groups]
        low, high = [], []
        for g, v in zip(groups, values):
            lo, hi = f["intervals"].get(g, (v, v))
            low.append(max(0.0, v - lo))
            high.append(max(0.0, hi - v))
            lowest = min([lowest, *(y for y in (v, lo) if not np.isnan(y))])  # a missing section is NaN
        ax.bar(
            x + (i - (len(names) - 1) / 2) * width,
            values,
            width,
            yerr=[low, high],
            capsize=2,
            label=labels.get(name, name),
            color=colors.get(name),
        )
    ax.axhline(chance, color="black", linewidth=0.8, linestyle=":")
    ax.set_xticks(x, groups)
    ax.set_ylim(bar_floor(lowest), 1)  # RewardBench 2's Ties score can be negative
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(ncol=3, fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pair_heatmap(models: Sequence[str], matrix: Sequence[Sequence[float | None]], path: Path, title: str) -> None:
    """Rows: strong model; columns: weak model; cells: the pair's RewardBench score."""
    import numpy as np

    plt = _pyplot()
    data = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(1.8 * len(models) + 2.5, 1.3 * len(models) + 1.8))
    im = ax.imshow(
        data,
        cmap="viridis",
        vmin=np.nanmin(data) if np.isfinite(data).any() else 0,
        vmax=np.nanmax(data) if np.isfinite(data).any() else 1,
    )
    ax.set_xticks(range(len(models)), models, rotation=20, ha="right")
    ax.set_yticks(range(len(models)), models)
    ax.set_xlabel("weak model")
    ax.set_ylabel("strong model")
    for i in range(len(models)):
        for j in range(len(models)):
            text = "-" if np.isnan(data[i, j]) else f"{data[i, j]:.3f}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                color="white" if np.isnan(data[i, j]) or data[i, j] < np.nanmean(data) else "black",
            )
    fig.colorbar(im, ax=ax, label="score")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gap_scatter(points: Sequence[tuple[str, float, float]], path: Path, xlabel: str, title: str) -> None:
    """One point per ordered pair: its quality gap against its score."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label, gap, score in points:
        ax.scatter(gap, score, color="tab:blue")
        ax.annotate(label, (gap, score), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0.5, color="black", linewidth=0.8, linestyle=":")
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("pair score")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def interval_color(low: float, high: float) -> str:
    """Green for an interval above 0, red for one below, grey for one that holds 0."""
    return "tab:green" if low > 0 else "tab:red" if high < 0 else "tab:gray"


def difference_bars(differences: Mapping[str, Sequence[float]], path: Path, title: str, xlabel: str) -> None:
    """One horizontal bar per section (and the score): A minus B with its paired 95% interval; 0 marked."""
    plt = _pyplot()
    names = list(differences)
    values = [differences[n][0] for n in names]
    errors = [
        [max(0.0, v - differences[n][1]) for n, v in zip(names, values)],
        [max(0.0, differences[n][2] - v) for n, v in zip(names, values)],
    ]
    colors = [interval_color(differences[n][1], differences[n][2]) for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 2))
    y = list(range(len(names)))[::-1]
    ax.barh(y, values, xerr=errors, capsize=3, color=colors)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(y, names)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def difference_panels(
    rows: Mapping[str, Mapping[str, Sequence[float]]], columns: Mapping[str, str], path: Path, title: str
) -> None:
    """A forest plot of several A-minus-B comparisons side by side: one panel per column (``columns`` maps a key
    of each row's differences to its panel title), one point per row with its interval, 0 marked."""
    plt = _pyplot()
    labels = list(rows)
    fig, axes = plt.subplots(
        1, len(columns), figsize=(3.0 * len(columns) + 3, 0.45 * len(labels) + 1.8), sharey=True, squeeze=False
    )
    y = list(range(len(labels)))[::-1]
    for ax, (column, heading) in zip(axes[0], columns.items()):
        for yi, label in zip(y, labels):
            d, low, high = rows[label][column]
            ax.errorbar(d, yi, xerr=[[d - low], [high - d]], fmt="o", color=interval_color(low, high), capsize=3)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_title(heading, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y, labels, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
