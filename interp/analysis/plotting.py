"""Figures from result DataFrames. Plot functions compute nothing; they draw and return a Figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure


def plot_accuracy_vs_length(
    df: pd.DataFrame,
    metric: str = "string_acc",
    hue: str = "model",
    style: str | None = "mode",
    title: str | None = None,
    train_max_len: int | None = None,
) -> Figure:
    """Accuracy (%) against string length (characters) for each model; a dotted line marks the
    longest training length when given, so length generalisation reads at a glance."""
    if metric not in df.columns:
        raise ValueError(f"no column {metric!r} in the results; columns: {list(df.columns)}")
    data = df.assign(**{metric: df[metric] * 100})
    style = style if style in df.columns and df[style].nunique() > 1 else None
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.lineplot(data=data, x="length", y=metric, hue=hue, style=style, marker="o", ax=ax)
    if train_max_len is not None:
        ax.axvline(train_max_len, color="grey", linestyle=":", label="longest training length")
    label = {"string_acc": "string accuracy (%)", "char_acc": "character accuracy (%)"}.get(metric, metric)
    ax.set(xlabel="string length (characters)", ylabel=label, ylim=(-3, 103), title=title or "")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig
