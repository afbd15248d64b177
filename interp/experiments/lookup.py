"""n-gram lookup: the key before the string (prefix) or after it (suffix), transformer vs Mamba vs LSTM."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from interp.experiments.common import SCALES, run_spec, seed_lineplot
from interp.experiments.spec import EvalSpec, RunSpec, records_to_frame


def lookup_grid(scale_name: str) -> list[RunSpec]:
    scale = SCALES[scale_name]
    ngram = 2 if scale_name != "gpu" else 3
    lengths = sorted({max(ngram + 2, scale.max_len // 2), scale.max_len, 2 * scale.max_len})
    max_len = 2 * scale.max_len  # lookup strings are cheaper than copies: train on twice the length
    runs = []
    for task_name in ("prefix_lookup", "suffix_lookup"):
        task = dict(
            task=task_name, n_letters=scale.n_letters, min_len=ngram + 1, max_len=max_len, ngram=ngram
        )
        evals = [EvalSpec(lengths=[x for x in lengths if x <= max_len], examples=scale.eval_examples)]
        for label in ("transformer rope", "mamba", "lstm"):
            family, _, positional = label.partition(" ")
            extra = {"positional": positional} if positional else {}
            for seed in scale.seeds:
                runs.append(
                    run_spec(
                        "lookup", scale_name, label, family, task, seed, evals, {"lookup": task_name}, **extra
                    )
                )
    return runs


def lookup_figure(records: list[dict]) -> Figure:
    df = records_to_frame(records)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, name in zip(axes, ("prefix_lookup", "suffix_lookup")):
        part = df[df["lookup"] == name]
        seed_lineplot(part.assign(string_acc=part["string_acc"] * 100), "length", "string_acc", ax)
        key = "key before the string" if name == "prefix_lookup" else "key after the string"
        ax.set(title=f"{name} ({key})", xlabel="string length (characters)", ylabel="answer accuracy (%)")
        ax.set_ylim(-3, 103)
        ax.legend(fontsize=8)
    fig.suptitle("n-gram lookup accuracy (mean ± sd over seeds)")
    fig.tight_layout()
    return fig


def lookup_notes(summary: pd.DataFrame) -> str:
    longest = summary["length"].max()
    at = summary[summary["length"] == longest].pivot(
        index="model", columns="lookup", values="string_acc_mean"
    )
    gap = {task: at[task].max() - at[task].min() for task in at.columns}
    parts = [f"{task}: best - worst family = {100 * g:.1f} points" for task, g in gap.items()]
    return f"At length {longest}, the gap between families: " + "; ".join(parts) + "."
