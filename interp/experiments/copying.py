"""Copying experiments: sample efficiency (accuracy vs examples seen) and length generalisation.

Both train the same copy models (the same runs, shared), on strings of 1..max_len and, where the preset
has it, on longer strings; sample efficiency reads their learning curves, length generalisation
evaluates them greedily at 1x..8x the longest training string.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from interp.experiments.common import (
    LONG_STRING_MODELS,
    POSITIONAL,
    SCALES,
    copy_task,
    run_spec,
    seed_lineplot,
)
from interp.experiments.spec import EvalSpec, RunSpec, metrics_frame, records_to_frame


def copy_model_runs(experiment: str, scale_name: str, evals_for, families=None, skip=()) -> list[RunSpec]:
    """The copy models both copying experiments train (the same runs, so they are trained once).

    Every model on strings of 1..max_len, and (where the preset has it) LONG_STRING_MODELS on longer
    strings; `evals_for(max_len)` gives a setting's evaluations, `skip` labels to leave out.
    """
    scale = SCALES[scale_name]
    settings = [(scale.max_len, families or [*(f"transformer {p}" for p in POSITIONAL), "mamba", "lstm"], {})]
    if scale.long_strings and families is None:
        long_len, long_steps = scale.long_strings
        settings.append((long_len, LONG_STRING_MODELS, {"steps": long_steps}))
    runs = []
    for max_len, models, train in settings:
        for label in (m for m in models if m not in skip):
            family, _, positional = label.partition(" ")
            extra = {"positional": positional} if positional else {}
            task = copy_task(scale, max_len=max_len)
            columns = {"max_len": max_len}
            for seed in scale.seeds:
                runs.append(
                    run_spec(
                        experiment,
                        scale_name,
                        label,
                        family,
                        task,
                        seed,
                        evals_for(max_len),
                        columns,
                        train,
                        **extra,
                    )
                )
    return runs


def sample_efficiency_grid(scale_name: str, families=None) -> list[RunSpec]:
    """Learning curves come from training; the final evaluation (per length) is what `interp demo` prints."""
    examples = SCALES[scale_name].eval_examples
    evals = lambda max_len: [EvalSpec(lengths=sorted({2, max_len // 2, max_len}), examples=examples)]
    return copy_model_runs("sample-efficiency", scale_name, evals, families)


def sample_efficiency_table(records: list[dict]) -> pd.DataFrame:
    """Per run: examples seen until the held-out string accuracy first reached 50% and 90%, and the end."""
    curves = metrics_frame(records)
    rows = []
    for (max_len, model, seed), run in curves.groupby(["max_len", "model", "seed"], sort=False):
        run = run.sort_values("examples_seen")
        row = {"max_len": max_len, "model": model, "seed": seed}
        row["final_string_acc"] = float(run["string_acc"].iloc[-1])
        for level in (50, 90):
            hit = run.loc[run["string_acc"] >= level / 100, "examples_seen"]
            row[f"examples_to_{level}"] = float(hit.iloc[0]) if len(hit) else math.nan
        row["reached_90"] = float(not math.isnan(row["examples_to_90"]))
        row["examples_budget"] = float(run["examples_seen"].iloc[-1])
        rows.append(row)
    return pd.DataFrame(rows)


def _panels_per_training_length(df: pd.DataFrame, x: str, style, title: str) -> Figure:
    """One panel of accuracy (%) vs `x` per training length (`max_len`); `style(ax, max_len, part)` sets
    the panel's axes (scale, labels, title) from its rows `part`."""
    settings = sorted(df["max_len"].unique())
    fig, axes = plt.subplots(1, len(settings), figsize=(6.5 * len(settings), 4.2), squeeze=False)
    for ax, max_len in zip(axes[0], settings):
        part = df[df["max_len"] == max_len]
        seed_lineplot(part.assign(string_acc=part["string_acc"] * 100), x, "string_acc", ax)
        style(ax, max_len, part)
        ax.set_ylim(-3, 103)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title} (mean ± sd over seeds)")
    fig.tight_layout()
    return fig


def sample_efficiency_figure(records: list[dict]) -> Figure:
    def style(ax, max_len, part):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap on a short range
        ax.set(xlabel="training examples seen (log scale)", ylabel="held-out string accuracy (%)")
        ax.set_title(f"strings of 1-{max_len} letters")

    return _panels_per_training_length(
        metrics_frame(records), "examples_seen", style, "copy: accuracy vs examples seen"
    )


def sample_efficiency_notes(summary: pd.DataFrame) -> str:
    lines = [
        "`examples_to_90`: training examples seen when the held-out string accuracy (teacher-forced, strings "
        "of the training distribution, evaluated every `eval_every` steps) first reached 90%; the mean is "
        "over the seeds that reached it and n counts them (`reached_90`: the fraction of seeds that did; "
        '"never": no seed within `examples_budget`). Ratios compare only models that reached 90% in every seed.'
    ]
    for max_len, part in summary.groupby("max_len", sort=False):
        lines.append(f"\nStrings of 1-{max_len} letters:")
        every = part[part["reached_90_mean"] == 1]
        if len(every):
            best = every.loc[every["examples_to_90_mean"].idxmin()]
            lines.append(f"- fastest to 90%: {best['model']} ({best['examples_to_90_mean']:,.0f} examples)")
            for _, row in every.iterrows():
                if row["model"] != best["model"]:
                    ratio = row["examples_to_90_mean"] / best["examples_to_90_mean"]
                    lines.append(f"- {row['model']}: {ratio:.1f}x as many examples")
        for _, row in part[part["reached_90_mean"] < 1].iterrows():
            lines.append(f"- {row['model']}: reached 90% in {row['reached_90_mean']:.0%} of the seeds")
    return "\n".join(lines)


def length_generalization_grid(scale_name: str) -> list[RunSpec]:
    """The sample-efficiency models (the same runs), evaluated greedily at 1x..8x their longest string."""
    scale = SCALES[scale_name]
    factors = {"smoke": (1, 2), "gpu": (1, 2, 4, 8, 20)}.get(scale_name, (1, 2, 4, 8))
    evals = lambda max_len: [
        EvalSpec(lengths=[max_len * f for f in factors], mode="greedy", examples=scale.eval_examples)
    ]
    return copy_model_runs("length-generalization", scale_name, evals, skip=("lstm",))


def length_table(records: list[dict]) -> pd.DataFrame:
    df = records_to_frame(records)
    df["length_factor"] = df["length"] / df["max_len"]
    return df


def length_figure(records: list[dict]) -> Figure:
    def style(ax, max_len, part):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(part["length"].unique()))  # the evaluated lengths, not powers of 2
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.axvline(max_len, color="grey", linestyle=":", label="longest training string")
        ax.set(xlabel="string length (characters, log scale)", ylabel="greedy string accuracy (%)")
        ax.set_title(f"trained on strings of 1-{max_len} letters")

    return _panels_per_training_length(length_table(records), "length", style, "copy: length generalisation")


def length_notes(summary: pd.DataFrame) -> str:
    lines = [
        "`first_error`: answer characters copied right before the first mistake (mean over strings). "
        "A model that copies the first L_train characters and then loses its place has first_error near "
        "L_train; one that cannot find the start of a longer string has it near 0.",
        "",
        "Greedy string accuracy at 2x and at the longest length, and first_error at 2x, per training length:",
    ]
    for max_len, part in summary.groupby("max_len", sort=False):
        cells = []
        for model, rows in part.groupby("model", sort=False):
            rows = rows.set_index("length")
            at2 = rows.loc[2 * max_len] if 2 * max_len in rows.index else None
            acc2 = f"{100 * at2['string_acc_mean']:.1f}%" if at2 is not None else "-"
            first2 = f"{at2['first_error_mean']:.1f}" if at2 is not None else "-"
            cells.append(
                f"{model} {acc2} / {100 * rows['string_acc_mean'].iloc[-1]:.1f}% (first_error {first2})"
            )
        longest = part["length"].max()
        lines.append(f"- trained on 1-{max_len} (2x = {2 * max_len}, longest {longest}): " + "; ".join(cells))
    return "\n".join(lines)
