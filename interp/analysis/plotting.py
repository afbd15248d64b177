"""Figures from result DataFrames. Plot functions compute nothing; they draw and return a Figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


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


def plot_probe_heatmap(
    df: pd.DataFrame,
    value: str = "accuracy",
    row: str = "hook",
    col: str = "lag",
    panel: str | None = "model",
    title: str | None = None,
) -> Figure:
    """Probe scores as a heatmap: `row` (e.g. hook or layer) x `col` (lag), one panel per `panel` value.

    df: rows of `interp.analysis.probing` results with columns row, col, value (and panel). Accuracies
    are drawn in %.
    """
    for name in (row, col, value):
        if name not in df.columns:
            raise ValueError(f"no column {name!r} in the probe results; columns: {list(df.columns)}")
    panels = list(df[panel].unique()) if panel in df.columns else [None]
    percent = value in ("accuracy", "control_accuracy", "chance", "selectivity")
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(len(panels) * (0.3 * df[col].nunique() + 3.5), 0.45 * df[row].nunique() + 2),
        squeeze=False,
    )
    for ax, name in zip(axes[0], panels):
        part = df if name is None else df[df[panel] == name]
        grid = part.pivot_table(index=row, columns=col, values=value, sort=False)
        sns.heatmap(
            grid * (100 if percent else 1),
            ax=ax,
            vmin=0,
            vmax=100 if percent else None,
            cmap="viridis",
            cbar_kws={"label": f"{value} (%)" if percent else value},
        )
        ax.set(title=str(name) if name is not None else "", xlabel=col, ylabel=row)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_state_saturation(
    summary: pd.DataFrame, y: str = "info_bits", title: str | None = None, train_max_len: int | None = None
) -> Figure:
    """Decodable bits of the state vs string length, one line per model, next to copy accuracy.

    summary: rows of `interp.analysis.saturation.state_saturation(...).summary` (several models
    concatenated). Left: `y` against length, the bits a perfect copy needs (L log2|V|) as a dotted
    diagonal, and each model's `state_bits` as a dashed horizontal line in the model's colour when it is
    within 4x of the plotted range, otherwise written in the legend. Right: copy string accuracy (%).
    A dotted vertical line marks the longest training length when given.
    """
    for name in ("model", "length", y, "string_bits", "state_bits", "copy_string_acc"):
        if name not in summary.columns:
            raise ValueError(
                f"no column {name!r} in the saturation summary; columns: {list(summary.columns)}"
            )
    models = list(summary["model"].unique())
    colors = dict(zip(models, sns.color_palette(n_colors=len(models))))
    fig, (ax, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    top = max(float(summary[y].max()), 1.0) * 1.15
    strings = summary.drop_duplicates("length").sort_values("length")
    ax.plot(strings["length"], strings["string_bits"], ":", color="grey", label="string: L log2|V|")
    for model in models:
        part = summary[summary["model"] == model].sort_values("length")
        bound = float(part["state_bits"].iloc[0])
        label = model
        if bound == bound and bound <= 4 * top:  # not NaN and within reach of the axis: draw it
            ax.axhline(bound, color=colors[model], linestyle="--", linewidth=1)
            top = max(top, bound * 1.1)
            label += f" (state bound {bound:,.0f} bits, dashed)"
        elif bound == bound:
            label += f" (state bound {bound:,.0f} bits, off the axis)"
        ax.plot(part["length"], part[y], "o-", color=colors[model], label=label)
        ax_acc.plot(part["length"], 100 * part["copy_string_acc"], "o-", color=colors[model], label=model)
    ylabel = {"info_bits": "decodable information (bits)", "decodable_tokens": "decodable letters"}.get(y, y)
    ax.set(xlabel="string length L (letters)", ylabel=ylabel, ylim=(0, top), title=title or "")
    ax.legend(loc="upper left", fontsize=7)
    ax_acc.set(xlabel="string length L (letters)", ylabel="copy string accuracy (%)", ylim=(-3, 103))
    if train_max_len is not None:
        for axis in (ax, ax_acc):
            axis.axvline(train_max_len, color="grey", linestyle=":", linewidth=1)
        ax_acc.text(train_max_len, 50, " longest training string", color="grey", fontsize=7, rotation=90)
    ax_acc.set_title("measured copy accuracy", fontsize=10)
    fig.tight_layout()
    return fig


def plot_patching_heatmap(
    df: pd.DataFrame,
    index: str = "layer",
    columns: str = "head",
    value: str = "effect",
    title: str | None = None,
    ax_labels: tuple[str, str] | None = None,
    mark_indistinct: bool = False,
) -> Figure:
    """Heatmap of activation-patching results (`interp.analysis.patching`): one cell per
    (index, columns) pair, e.g. layer x head or layer x position, coloured by `value` (the effect, as
    a fraction of the clean-corrupt gap, by default). Rows that share a cell are averaged.

    mark_indistinct: grey out and hatch the cells whose bootstrap interval over examples contains 0
    (the `distinct` column, `interp.analysis.patching.stats`): a cell is marked unless all its rows
    are distinct from zero."""
    needed = (index, columns, value) + (("distinct",) if mark_indistinct else ())
    for col in needed:
        if col not in df.columns:
            raise ValueError(f"no column {col!r} in the patching results; columns: {list(df.columns)}")
    grid = df.pivot_table(index=index, columns=columns, values=value, aggfunc="mean")
    limit = max(float(grid.abs().max().max()), 1e-9)
    width, height = max(4.0, 0.32 * grid.shape[1] + 2.5), max(2.8, 0.45 * grid.shape[0] + 1.4)
    fig, ax = plt.subplots(figsize=(width, height))
    annotate = grid.size <= 80
    sns.heatmap(
        grid,
        ax=ax,
        cmap="RdBu_r",
        vmin=-limit,
        vmax=limit,
        annot=annotate,
        fmt=".2f",
        cbar_kws={"label": _VALUE_LABELS.get(value, value)},
    )
    if mark_indistinct:
        marks = df.assign(distinct=df["distinct"].astype(float))
        distinct = marks.pivot_table(index=index, columns=columns, values="distinct", aggfunc="min")
        distinct = distinct.reindex(index=grid.index, columns=grid.columns).to_numpy()
        for i, j in zip(*np.nonzero(distinct < 1)):
            ax.add_patch(Rectangle((j, i), 1, 1, fill=True, facecolor="white", alpha=0.6, hatch="///", lw=0))
        title = (title or "") + ("\n" if title else "") + "hatched: 95% interval contains 0"
    x_label, y_label = ax_labels or (_AXIS_LABELS.get(columns, columns), _AXIS_LABELS.get(index, index))
    ax.set(xlabel=x_label, ylabel=y_label, title=title or "")
    fig.tight_layout()
    return fig


def plot_attention_pattern(
    pattern,
    labels: list[str] | None = None,
    title: str | None = None,
    vmax: float | None = 1.0,
) -> Figure:
    """One attention pattern [query_pos, key_pos] (a tensor or array) as a heatmap; `labels` are the
    tokens (as text) shown on both axes."""
    values = pattern.detach().cpu().float().numpy() if hasattr(pattern, "detach") else pattern
    if values.ndim != 2:
        raise ValueError(f"pattern must be [query_pos, key_pos], got shape {tuple(values.shape)}")
    size = max(3.5, 0.16 * values.shape[0] + 1.5)
    fig, ax = plt.subplots(figsize=(size + 0.8, size))
    ticks = labels if labels is not None else "auto"
    sns.heatmap(
        values,
        ax=ax,
        cmap="viridis",
        vmin=0,
        vmax=vmax,
        xticklabels=ticks,
        yticklabels=ticks,
        cbar_kws={"label": "attention weight"},
    )
    ax.set(xlabel="key position (token)", ylabel="query position (token)", title=title or "")
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def plot_head_scores(scores: pd.DataFrame, title: str | None = None) -> Figure:
    """Head-detector scores (`interp.analysis.heads.score_patterns`): one layer x head heatmap per score."""
    names = list(dict.fromkeys(scores["score"]))
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 0.6, 2.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        grid = scores[scores["score"] == name].pivot_table(index="layer", columns="head", values="value")
        sns.heatmap(grid, ax=ax, cmap="viridis", vmin=0, vmax=1, annot=grid.size <= 40, fmt=".2f", cbar=False)
        ax.set(title=name, xlabel="head", ylabel="layer")
    fig.colorbar(axes[0][-1].collections[0], ax=axes[0].tolist(), label="attention mass (fraction)")
    if title:
        fig.suptitle(title)
    return fig


_AXIS_LABELS = {
    "layer": "layer",
    "head": "head",
    "pos": "position (token index)",
    "channels": "channel group (d_inner slice)",
    "label": "component",
}
_VALUE_LABELS = {
    "effect": "effect (fraction of gap)",
    "metric": "metric after patching",
}
