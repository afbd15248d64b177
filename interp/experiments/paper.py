"""The paper's synthetic experiments (Jelassi et al. 2024, results 1-3 and the state-size bound) as grids.

Each experiment has presets: `cpu` (minutes to half an hour on a 2-core laptop, small models, 3 seeds),
`gpu` (the paper's scale: ~150M-parameter models, its optimiser settings) and `smoke` (seconds; for
tests and for trying the machinery). Recipes are shared by all experiments of a preset, so the models
and training of one experiment are those of the others. Why each CPU recipe is what it is (learning
rates, steps) is measured in docs/notes/mamba_recipe.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from interp.experiments.spec import EvalSpec, Experiment, Preset, RunSpec, metrics_frame, records_to_frame

POSITIONAL = ("rope", "nope", "alibi", "hard_alibi")


@dataclass(frozen=True)
class Scale:
    """Model sizes and training settings of one preset, shared by its experiments."""

    n_letters: int
    max_len: int  # longest training string
    seeds: tuple[int, ...]
    transformer: dict  # model options
    mamba: dict
    lstm: dict
    train: dict  # TrainConfig fields shared by every family
    lr: dict  # family -> peak learning rate
    steps: dict = field(default_factory=dict)  # family -> steps, where it differs from train["steps"]
    # sample efficiency also on longer strings (fewer models), where a state must hold more: (max_len, steps)
    long_strings: tuple[int, int] | None = None
    eval_examples: int = 256
    description: str = ""

    def model(self, family: str, **overrides) -> tuple[str, dict, dict]:
        """(arch, model options, train settings) of a family: transformer | mamba | lstm."""
        arch = "transformer" if family.startswith("transformer") else family
        train = {**self.train, "lr": self.lr[arch]}
        if arch in self.steps:
            train["steps"] = self.steps[arch]
        return arch, {**getattr(self, arch), **overrides}, train


SCALES = {
    "smoke": Scale(
        n_letters=4,
        max_len=4,
        seeds=(0,),
        transformer=dict(d_model=16, n_layers=1, n_heads=2),
        mamba=dict(d_model=16, n_layers=1, d_state=4),
        lstm=dict(d_model=16, n_layers=1),
        train=dict(steps=6, batch_size=8, warmup_steps=2, eval_every=3, eval_examples=16, checkpoint_every=3),
        lr=dict(transformer=3e-3, mamba=3e-3, lstm=3e-3),
        eval_examples=16,
        description="1-layer models of width 16, 6 steps, 1 seed: checks the machinery, measures nothing",
    ),
    "demo": Scale(
        n_letters=10,
        max_len=10,
        seeds=(0,),
        transformer=dict(d_model=64, n_layers=2, n_heads=4),
        mamba=dict(d_model=80, n_layers=2, d_state=16),
        lstm=dict(d_model=80, n_layers=2),
        train=dict(steps=1000, batch_size=32, warmup_steps=400, eval_every=50, eval_examples=256),
        lr=dict(transformer=3e-3, mamba=3e-3, lstm=3e-3),
        description="`interp demo`: the cpu preset's models, 1,000 steps, 1 seed",
    ),
    "cpu": Scale(
        n_letters=10,
        max_len=10,
        seeds=(0, 1, 2),
        transformer=dict(d_model=64, n_layers=2, n_heads=4),  # ~102k parameters
        mamba=dict(d_model=80, n_layers=2, d_state=16),  # ~99k
        lstm=dict(d_model=80, n_layers=2),  # ~106k
        # one recipe for every family; the 400-step warm-up is what lets Mamba leave the loss plateau of
        # "random letter, then end" (docs/notes/mamba_recipe.md: with 100 steps it stays there at any lr)
        train=dict(steps=2000, batch_size=32, warmup_steps=400, eval_every=100, eval_examples=256),
        lr=dict(transformer=3e-3, mamba=3e-3, lstm=3e-3),
        steps={},
        long_strings=(30, 3000),
        description="2-layer models of ~100k parameters, 10 letters, strings of length 1-10 (sample "
        "efficiency also 1-30, 3,000 steps), batch 32, 2,000 steps, 3 seeds",
    ),
    "gpu": Scale(
        n_letters=26,
        max_len=50,
        seeds=(0, 1, 2),
        transformer=dict(d_model=1024, n_layers=12, n_heads=16),  # ~150M parameters, as in the paper
        mamba=dict(d_model=1024, n_layers=24, d_state=32),  # similar size; mamba-ssm's default state 32
        lstm=dict(d_model=2048, n_layers=4),
        train=dict(steps=2000, batch_size=8, warmup_steps=100, eval_every=100, eval_examples=256),
        lr=dict(transformer=1e-5, mamba=1e-5, lstm=1e-5),  # the paper: AdamW, lr 1e-5, batch 8, 2,000 steps
        description="the paper's scale: ~150M-parameter models, 26 letters, strings up to 50, its optimiser",
    ),
}
# Packing as in the paper's code (rows of 220 tokens) only at its scale; small models train on single examples.
PACK = {"gpu": 220}


def copy_task(scale: Scale, **overrides) -> dict:
    return {"task": "copy", "n_letters": scale.n_letters, "min_len": 1, "max_len": scale.max_len, **overrides}


def _run(
    experiment: str,
    scale_name: str,
    label: str,
    family: str,
    task: dict,
    seed: int,
    evals,
    columns,
    train_overrides: dict | None = None,
    **model,
):
    scale = SCALES[scale_name]
    arch, options, train = scale.model(family, **model)
    train = {**train, **(train_overrides or {})}
    if PACK.get(scale_name):
        task = {**task, "pack_context": PACK[scale_name]}
    return RunSpec(
        experiment=experiment,
        label=label,
        arch=arch,
        model=options,
        task=task,
        train=train,
        seed=seed,
        evals=[e.to_dict() for e in evals],
        columns=columns,
    )


def _lineplot(data: pd.DataFrame, x: str, y: str, ax, hue: str = "model", **kwargs) -> None:
    """Mean over seeds with a band of one standard deviation."""
    sns.lineplot(data=data, x=x, y=y, hue=hue, marker="o", errorbar="sd", ax=ax, **kwargs)


# ---- 1. sample efficiency ------------------------------------------------------------------------


LONG_STRING_MODELS = ("transformer rope", "transformer hard_alibi", "mamba", "lstm")


def sample_efficiency_grid(scale_name: str, families=None) -> list[RunSpec]:
    """Every model on strings of 1..max_len, and (where the preset has it) four on longer strings."""
    scale = SCALES[scale_name]
    settings = [(scale.max_len, families or [*(f"transformer {p}" for p in POSITIONAL), "mamba", "lstm"], {})]
    if scale.long_strings and families is None:
        long_len, long_steps = scale.long_strings
        settings.append((long_len, LONG_STRING_MODELS, {"steps": long_steps}))
    runs = []
    for max_len, models, train in settings:
        final = EvalSpec(lengths=sorted({2, max_len // 2, max_len}), examples=scale.eval_examples)
        for label in models:
            family, _, positional = label.partition(" ")
            extra = {"positional": positional} if positional else {}
            for seed in scale.seeds:
                task = copy_task(scale, max_len=max_len)
                columns = {"max_len": max_len}
                runs.append(
                    _run(
                        "sample-efficiency",
                        scale_name,
                        label,
                        family,
                        task,
                        seed,
                        [final],
                        columns,
                        train,
                        **extra,
                    )
                )
    return runs


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
        row["examples_budget"] = float(run["examples_seen"].iloc[-1])
        rows.append(row)
    return pd.DataFrame(rows)


def sample_efficiency_figure(records: list[dict]) -> Figure:
    curves = metrics_frame(records)
    settings = sorted(curves["max_len"].unique())
    fig, axes = plt.subplots(1, len(settings), figsize=(6.5 * len(settings), 4.2), squeeze=False)
    for ax, max_len in zip(axes[0], settings):
        part = curves[curves["max_len"] == max_len]
        _lineplot(part.assign(string_acc=part["string_acc"] * 100), "examples_seen", "string_acc", ax)
        ax.set_xscale("log")
        ax.set(
            xlabel="training examples seen (log scale)",
            ylabel="held-out string accuracy (%)",
            ylim=(-3, 103),
            title=f"strings of 1-{max_len} letters",
        )
        ax.legend(fontsize=8)
    fig.suptitle("copy: accuracy vs examples seen (mean ± sd over seeds)")
    fig.tight_layout()
    return fig


def sample_efficiency_notes(summary: pd.DataFrame) -> str:
    lines = [
        "`examples_to_90`: training examples seen when the held-out string accuracy (teacher-forced, strings "
        "of the training distribution, evaluated every `eval_every` steps) first reached 90%; the mean is "
        "over the seeds that reached it, and n counts them (a model missing from a row never got there "
        "within `examples_budget`)."
    ]
    for max_len, part in summary.groupby("max_len", sort=False):
        lines.append(f"\nStrings of 1-{max_len} letters:")
        reached = part.dropna(subset=["examples_to_90_mean"])
        if len(reached):
            best = reached.loc[reached["examples_to_90_mean"].idxmin()]
            lines.append(f"- fastest to 90%: {best['model']} ({best['examples_to_90_mean']:,.0f} examples)")
            for _, row in reached.iterrows():
                if row["model"] != best["model"]:
                    ratio = row["examples_to_90_mean"] / best["examples_to_90_mean"]
                    lines.append(f"- {row['model']}: {ratio:.1f}x as many examples")
        never = part.loc[part["examples_to_90_mean"].isna(), "model"].tolist()
        if never:
            lines.append(f"- never reached 90% within the budget, in any seed: {', '.join(never)}")
    return "\n".join(lines)


# ---- 2. length generalisation ---------------------------------------------------------------------


def length_generalization_grid(scale_name: str) -> list[RunSpec]:
    """The sample-efficiency models (the same runs), evaluated greedily at 1x..8x their longest string."""
    scale = SCALES[scale_name]
    settings = [(scale.max_len, [*(f"transformer {p}" for p in POSITIONAL), "mamba"], {})]
    if scale.long_strings:
        long_len, long_steps = scale.long_strings
        settings.append((long_len, [m for m in LONG_STRING_MODELS if m != "lstm"], {"steps": long_steps}))
    runs = []
    for max_len, models, train in settings:
        factors = {"smoke": (1, 2), "gpu": (1, 2, 4, 8, 20)}.get(scale_name, (1, 2, 4, 8))
        evals = [
            EvalSpec(lengths=[max_len * f for f in factors], mode="greedy", examples=scale.eval_examples)
        ]
        for label in models:
            family, _, positional = label.partition(" ")
            extra = {"positional": positional} if positional else {}
            for seed in scale.seeds:
                task = copy_task(scale, max_len=max_len)
                columns = {"train_max_len": max_len}
                runs.append(
                    _run(
                        "length-generalization",
                        scale_name,
                        label,
                        family,
                        task,
                        seed,
                        evals,
                        columns,
                        train,
                        **extra,
                    )
                )
    return runs


def length_table(records: list[dict]) -> pd.DataFrame:
    df = records_to_frame(records)
    df["length_factor"] = df["length"] / df["train_max_len"]
    return df


def length_figure(records: list[dict]) -> Figure:
    df = length_table(records)
    settings = sorted(df["train_max_len"].unique())
    fig, axes = plt.subplots(1, len(settings), figsize=(6.5 * len(settings), 4.2), squeeze=False)
    for ax, max_len in zip(axes[0], settings):
        part = df[df["train_max_len"] == max_len]
        _lineplot(part.assign(string_acc=part["string_acc"] * 100), "length", "string_acc", ax)
        ax.set_xscale("log", base=2)
        ax.axvline(max_len, color="grey", linestyle=":", label="longest training string")
        ax.set(
            xlabel="string length (characters, log scale)",
            ylabel="greedy string accuracy (%)",
            ylim=(-3, 103),
            title=f"trained on strings of 1-{max_len} letters",
        )
        ax.legend(fontsize=8)
    fig.suptitle("copy: length generalisation (mean ± sd over seeds)")
    fig.tight_layout()
    return fig


def length_notes(summary: pd.DataFrame) -> str:
    lines = ["Greedy string accuracy at 2x and at the longest length, per training length:"]
    for max_len, part in summary.groupby("train_max_len", sort=False):
        cells = []
        for model, rows in part.groupby("model", sort=False):
            acc = rows.set_index("length")["string_acc_mean"]
            cells.append(
                f"{model} {100 * acc.get(2 * max_len, float('nan')):.1f}% / {100 * acc.iloc[-1]:.1f}%"
            )
        lines.append(
            f"- trained on 1-{max_len} (2x = {2 * max_len}, longest {part['length'].max()}): "
            + ", ".join(cells)
        )
    return "\n".join(lines)


# ---- 3. lookup ------------------------------------------------------------------------------------


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
                    _run(
                        "lookup", scale_name, label, family, task, seed, evals, {"lookup": task_name}, **extra
                    )
                )
    return runs


def lookup_figure(records: list[dict]) -> Figure:
    df = records_to_frame(records)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, name in zip(axes, ("prefix_lookup", "suffix_lookup")):
        part = df[df["lookup"] == name]
        _lineplot(part.assign(string_acc=part["string_acc"] * 100), "length", "string_acc", ax)
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


# ---- 4. capacity vs state size --------------------------------------------------------------------


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
                _run(
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
            _run(
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
    _lineplot(df.assign(string_acc=df["string_acc"] * 100), "length", "string_acc", axes[0])
    axes[0].set(xlabel="string length (characters)", ylabel="copy string accuracy (%)", ylim=(-3, 103))
    axes[0].set_title("copy accuracy (teacher-forced)")
    _lineplot(df, "length", "info_bits", axes[1])
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
        "lie within 2 points; a model that had not converged may still be learning, so its capacity is a "
        "lower bound.",
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
    return "\n".join(lines)


def _presets(grid, descriptions: dict[str, str]) -> dict[str, Preset]:
    return {
        name: Preset(
            runs=lambda name=name: grid(name),
            description=f"{SCALES[name].description}{descriptions.get(name, '')}",
            gpu=name == "gpu",
        )
        for name in SCALES
    }


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in [
        Experiment(
            name="sample-efficiency",
            summary="copy: held-out string accuracy vs training examples seen, 4 transformers vs Mamba vs LSTM",
            paper="Transformers learn to copy with orders of magnitude fewer training examples than Mamba "
            "(and LSTMs) of similar size (the paper's Figure 2).",
            presets=_presets(sample_efficiency_grid, {}),
            table=sample_efficiency_table,
            figure=sample_efficiency_figure,
            group_by=["max_len", "model"],
            values=["examples_to_50", "examples_to_90", "final_string_acc", "examples_budget"],
            notes=sample_efficiency_notes,
        ),
        Experiment(
            name="length-generalization",
            summary="copy: train on strings <= L, greedy accuracy at 1x..8x L, positional variants vs Mamba",
            paper="Trained on strings of length <= 50, the Hard-ALiBi transformer still copies strings of "
            "hundreds to ~1000 characters; RoPE, NoPE and ALiBi degrade beyond the training lengths; Mamba "
            "fails there (the paper's Figure 3).",
            presets=_presets(length_generalization_grid, {}),
            table=length_table,
            figure=length_figure,
            group_by=["train_max_len", "model", "length"],
            values=["string_acc", "char_acc"],
            notes=length_notes,
        ),
        Experiment(
            name="lookup",
            summary="prefix-key and suffix-key n-gram lookup accuracy vs string length, transformer vs Mamba vs LSTM",
            paper="Transformers solve both lookups; Mamba is much weaker, especially when the key comes after "
            "the string (suffix key: a fixed state cannot know what to keep) (the paper's Figure 5).",
            presets=_presets(lookup_grid, {}),
            table=records_to_frame,
            figure=lookup_figure,
            group_by=["lookup", "model", "length"],
            values=["string_acc"],
            notes=lookup_notes,
        ),
        Experiment(
            name="capacity-vs-state",
            summary="Mamba with several d_state values and an LSTM: copy accuracy and decodable state bits vs length",
            paper="A model whose state holds s bits cannot copy strings whose L log2|V| bits clearly exceed s; "
            "copy capacity grows with the state (the paper's Theorem 2.7).",
            presets=_presets(capacity_grid, {}),
            table=capacity_table,
            figure=capacity_figure,
            group_by=["model", "length"],
            values=["string_acc", "info_bits", "decodable_tokens", "string_bits", "state_bits", "converged"],
            notes=capacity_notes,
        ),
    ]
}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; allowed: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def with_seeds(specs: list[RunSpec], seeds: list[int]) -> list[RunSpec]:
    """The grid with other seeds (`--seeds`): every distinct run repeated for each seed."""
    base = {s.run_id.rsplit("-seed", 1)[0]: s for s in specs}
    return [replace(s, seed=seed) for s in base.values() for seed in seeds]
