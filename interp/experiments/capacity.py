"""Capacity vs state size: Mamba with several d_state values and an LSTM, copy accuracy next to the
bits a linear probe decodes from the state at the separator (`state_saturation`) and `state_size()`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from interp.experiments.common import SCALES, copy_task, run_spec, seed_lineplot
from interp.experiments.spec import EvalSpec, RunSpec, records_to_frame


def capacity_grid(scale_name: str) -> list[RunSpec]:
    scale = SCALES[scale_name]
    d_states = {"smoke": (2, 4), "demo": (2, 8), "cpu": (2, 8, 32), "gpu": (4, 16, 64, 256)}[scale_name]
    # strings longer than the other experiments' (the smaller states should run out), narrower models
    # (d_model 64) so that 3 state sizes x 3 seeds fit the CPU budget; `converged` checks the training length
    max_len = {"smoke": 4, "demo": 12, "cpu": 16, "gpu": 100}[scale_name]
    width = {"cpu": {"d_model": 64}}.get(scale_name, {})
    lengths = sorted({2, max_len // 4, max_len // 2, 3 * max_len // 4, max_len} - {0, 1})
    task = copy_task(scale, max_len=max_len)
    features = 32 if scale_name == "smoke" else 256
    evals = [
        EvalSpec(kind="saturation", lengths=lengths, examples=8 * scale.eval_examples, max_features=features)
    ]
    runs = []
    for d_state in d_states:
        for seed in scale.seeds:
            label = f"mamba d_state={d_state}"
            columns = {"d_state": d_state}
            runs.append(
                run_spec(
                    "capacity-vs-state",
                    scale_name,
                    label,
                    "mamba",
                    task,
                    seed,
                    evals,
                    columns,
                    None,
                    **width,
                    d_state=d_state,
                )
            )
    for seed in scale.seeds:
        runs.append(
            run_spec(
                "capacity-vs-state",
                scale_name,
                "lstm",
                "lstm",
                task,
                seed,
                evals,
                {"d_state": 0},
                None,
                **width,
            )
        )
    return runs


def converged(metrics: list[dict], window: int = 3, tolerance: float = 0.02) -> bool:
    """Training has converged when the last `window` held-out string accuracies lie within `tolerance`."""
    acc = [m["string_acc"] for m in metrics][-window:]
    return len(acc) == window and max(acc) - min(acc) <= tolerance


def capacity_table(records: list[dict]) -> pd.DataFrame:
    df = records_to_frame(records, kind="saturation")
    flags = {(r["spec"]["label"], r["spec"]["seed"]): converged(r["metrics"]) for r in records}
    df["converged"] = [float(flags[(m, s)]) for m, s in zip(df["model"], df["seed"])]
    return df.rename(columns={"copy_string_acc": "string_acc"})


def capacity_figure(records: list[dict]) -> Figure:
    df = capacity_table(records)
    bits = df.groupby("model")["state_bits"].first()
    df["model"] = [f"{m} ({bits[m]:,} state bits)" for m in df["model"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    seed_lineplot(df.assign(string_acc=df["string_acc"] * 100), "length", "string_acc", axes[0])
    axes[0].set(xlabel="string length (characters)", ylabel="copy string accuracy (%)", ylim=(-3, 103))
    axes[0].set_title("copy accuracy (teacher-forced)")
    seed_lineplot(df, "length", "info_bits", axes[1])
    lengths = np.array(sorted(df["length"].unique()))
    axes[1].plot(
        lengths, df["string_bits"].max() / df["length"].max() * lengths, "k:", label="bits in the string"
    )
    axes[1].set(xlabel="string length (characters)", ylabel="bits decodable at the separator")
    axes[1].set_title("linear-probe information in the state")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle("capacity vs state size (mean ± sd over seeds)")
    fig.tight_layout()
    return fig


def capacity_notes(summary: pd.DataFrame) -> str:
    conv = summary.groupby("model")["converged_mean"].first()
    lines = [
        "`converged`: fraction of seeds whose last three held-out accuracies (the last 10-20% of training) "
        "lie within 2 points (a run stuck at 0% also counts; read it with the accuracy). A model that had "
        "not converged may still be learning, so its measured capacity is a lower bound.",
        "Converged: " + ", ".join(f"{m} {v:.2f}" for m, v in conv.items()) + ".",
    ]
    longest = summary["length"].max()
    at = summary[summary["length"] == longest]
    lines.append(
        f"At length {longest}: "
        + ", ".join(
            f"{r['model']} {100 * r['string_acc_mean']:.1f}% / {r['info_bits_mean']:.1f} bits"
            for _, r in at.iterrows()
        )
        + "."
    )
    string_bits, state_bits = summary["string_bits_mean"].max(), summary["state_bits_mean"].min()
    if string_bits < state_bits:
        lines.append(
            f"The paper's bound cannot bind here: the longest string carries {string_bits:.0f} bits and the "
            f"smallest state holds {state_bits:,.0f} (float32) bits. What limits these models is how much of "
            "the state training learns to use (the decodable bits), not its size in bits."
        )
    return "\n".join(lines)
