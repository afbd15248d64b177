"""How much attention does a state-space model need to copy, and where does the copy happen?

At about equal parameter count: pure Mamba, pure Mamba-2, Mamba-2 hybrids with one and with two
attention layers, and a transformer, on copy and suffix-key n-gram lookup. Each run is evaluated for
accuracy at half, one and two times its longest training string; for where it copies, by noising each
layer's mixer and each attention head (`patching`) and by the lookup detector on every head
(`lookup_heads`, `interp.experiments.where`); and for how full its state is (`saturation`: bits of
the string a linear probe reads from the SSM states, or a transformer's last residual stream, at the
moment the answer starts).
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from interp.experiments.capacity import converged
from interp.experiments.common import PACK, SCALES, seed_lineplot
from interp.experiments.spec import EvalSpec, Preset, RunSpec, records_to_frame
from interp.experiments.where import WHERE_TASKS

MODELS = ("transformer", "mamba", "mamba2", "hybrid 1 attn", "hybrid 2 attn")


@dataclass(frozen=True)
class Sizes:
    """One preset's models (label -> (arch, options)) and string lengths."""

    models: dict
    copy_len: int  # longest copy string in training
    lookup_len: int  # longest suffix-lookup string in training
    ngram: int
    steps: int
    description: str
    where_examples: int = 64  # examples for patching and the lookup detector
    saturation_examples: int = 1024


def _models(d: dict, layers: tuple[list[str], list[str]], n_layers: int, **ssm) -> dict:
    """The five models: widths `d` per label; hybrids' layer patterns `layers` (one, two attention)."""
    t, m, m2, h1, h2 = (d[k] for k in MODELS)
    return {
        "transformer": ("transformer", {**t, "n_layers": n_layers}),
        "mamba": ("mamba", {**m, "n_layers": n_layers, "d_state": ssm["d_state"]}),
        "mamba2": ("mamba2", {**m2, "n_layers": n_layers, **ssm}),
        "hybrid 1 attn": ("hybrid", {**h1, "layers": layers[0], **ssm}),
        "hybrid 2 attn": ("hybrid", {**h2, "layers": layers[1], **ssm}),
    }


SIZES = {
    "smoke": Sizes(
        models=_models(
            {
                "transformer": dict(d_model=16, n_heads=2),
                "mamba": dict(d_model=16),
                "mamba2": dict(d_model=16, head_dim=8),
                "hybrid 1 attn": dict(d_model=16, head_dim=8, n_heads=2),
                "hybrid 2 attn": dict(d_model=16, head_dim=8, n_heads=2),
            },
            (["mamba2", "attn", "mamba2"], ["mamba2", "attn", "attn"]),
            3,
            d_state=4,
        ),
        copy_len=4,
        lookup_len=4,
        ngram=2,
        steps=6,
        description="3-layer models of width 16, 6 steps, 1 seed: checks the machinery, measures nothing",
        where_examples=8,
        saturation_examples=64,
    ),
}
# ~72k parameters each (67.8k-72.7k, within 7%): widths chosen so that 3 layers of each kind match
CPU_MODELS = _models(
    {
        "transformer": dict(d_model=44, n_heads=4),  # 72,732 (with MLPs)
        "mamba": dict(d_model=56),  # 70,560
        "mamba2": dict(d_model=60, head_dim=20),  # 72,294 (6 SSM heads per layer)
        "hybrid 1 attn": dict(d_model=64, head_dim=16, n_heads=4),  # 71,760
        "hybrid 2 attn": dict(d_model=68, head_dim=17, n_heads=4),  # 69,056
    },
    (["mamba2", "attn", "mamba2"], ["mamba2", "attn", "attn"]),
    3,
    d_state=8,
)
SIZES["cpu"] = Sizes(
    models=CPU_MODELS,
    copy_len=12,
    lookup_len=16,
    ngram=2,
    steps=1500,
    description="3-layer models of ~72k parameters (d_state 8), 10 letters, copy strings of 1-12, "
    "suffix-key lookup (2-gram keys) in strings of 3-16, batch 32, 1,500 steps, 3 seeds",
)
SIZES["demo"] = Sizes(
    models=CPU_MODELS,
    copy_len=12,
    lookup_len=16,
    ngram=2,
    steps=600,
    description="the cpu preset's models and tasks, 600 steps, 1 seed",
)
# the paper's scale: 12 mixer layers of width 720-1024 (71-77M parameters), attention at the middle
# layer (one) or at layers 4 and 8 (two), as in Jamba / Zamba-style hybrids
_GPU_HYBRID_1 = ["mamba2"] * 6 + ["attn"] + ["mamba2"] * 5
_GPU_HYBRID_2 = ["mamba2"] * 4 + ["attn"] + ["mamba2"] * 3 + ["attn"] + ["mamba2"] * 3
SIZES["gpu"] = Sizes(
    models=_models(
        {
            "transformer": dict(d_model=720, n_heads=12),  # 74.7M
            "mamba": dict(d_model=960),  # 71.4M
            "mamba2": dict(d_model=1024, head_dim=64),  # 76.9M
            "hybrid 1 attn": dict(d_model=1024, head_dim=64, n_heads=16),  # 74.7M
            "hybrid 2 attn": dict(d_model=1024, head_dim=64, n_heads=16),  # 72.5M
        },
        (_GPU_HYBRID_1, _GPU_HYBRID_2),
        12,
        d_state=32,
    ),
    copy_len=50,
    lookup_len=50,
    ngram=3,
    steps=2000,
    description="12-layer models of 71-77M parameters, d_state 32, 26 letters, strings up to 50, the paper's "
    "optimiser and packing (lr 1e-5, batch 8 rows of 220 tokens, 2,000 steps), 3 seeds",
    where_examples=128,
    saturation_examples=2048,
)


def layer_pattern(arch: str, options: dict) -> str:
    """The mixer of each layer, e.g. "mamba2,attn,mamba2" (a transformer's layers: attn + MLP)."""
    if arch == "hybrid":
        return ",".join(options["layers"])
    return ",".join([{"transformer": "attn+mlp"}.get(arch, arch)] * options["n_layers"])


def hybrid_grid(scale_name: str) -> list[RunSpec]:
    scale, sizes = SCALES[scale_name], SIZES[scale_name]
    lr = scale.lr["transformer"]  # one learning rate for every family of a preset (common.SCALES)
    train = {**scale.train, "lr": lr, "steps": sizes.steps}
    runs = []
    for task_name in WHERE_TASKS:
        longest = sizes.copy_len if task_name == "copy" else sizes.lookup_len
        shortest = 1 if task_name == "copy" else sizes.ngram + 1
        task = {"task": task_name, "n_letters": scale.n_letters, "min_len": shortest, "max_len": longest}
        if task_name == "suffix_lookup":
            task["ngram"] = sizes.ngram
        if PACK.get(scale_name):  # training only: every evaluation builds single examples
            task["pack_context"] = PACK[scale_name]
        half = max(shortest, longest // 2)
        where = dict(lengths=[longest], examples=sizes.where_examples)
        evals = [
            EvalSpec(lengths=[half, longest, 2 * longest], examples=scale.eval_examples),
            EvalSpec(kind="patching", **where),
            EvalSpec(kind="lookup_heads", **where),
            EvalSpec(
                kind="saturation",
                lengths=[half, longest],
                examples=sizes.saturation_examples,
                max_features=32 if scale_name == "smoke" else 256,
            ),
        ]
        for label, (arch, options) in sizes.models.items():
            columns = {"task": task_name, "layers": layer_pattern(arch, options), "max_len": longest}
            for seed in scale.seeds:
                runs.append(
                    RunSpec(
                        "hybrid",
                        label,
                        arch,
                        options,
                        task,
                        train,
                        seed,
                        [e.to_dict() for e in evals],
                        columns,
                    )
                )
    return sorted(runs, key=lambda r: r.seed)  # seed by seed: a sweep cut short has whole seeds


PRESETS = {
    name: Preset(
        runs=lambda name=name: hybrid_grid(name), description=SIZES[name].description, gpu=name == "gpu"
    )
    for name in ("smoke", "demo", "cpu", "gpu")
}

# ---------------------------------------------------------------------------------------------
# Table, figure, notes
# ---------------------------------------------------------------------------------------------

ACCURACY = ("half_len_acc", "max_len_acc", "double_len_acc")
MIN_ACTIVITY = 0.1  # attention heads writing less than this (relative RMS of hook_z) do not count


def _eval_frame(records: list[dict], kind: str) -> pd.DataFrame:
    return records_to_frame(records, kind=kind)


def run_rows(records: list[dict]) -> pd.DataFrame:
    """One row per run: accuracies at 0.5x/1x/2x the longest training string, per-layer noising effect of
    the mixer at every position (`patch_L{l}`) and summed over the answer positions patched one at a
    time (`answer_L{l}`), per-layer lookup score (`lookup_L{l}`: the best active head's mass on the
    source token and the one after it), and bits of the string readable at the answer (`info_bits`,
    `string_fill` = info_bits / string bits) at the longest training length."""
    keys = ["task", "model", "layers", "seed"]
    acc = _eval_frame(records, "accuracy")
    # lengths are [max(shortest, max_len // 2), max_len, 2 max_len]: the first one is the half
    acc["which"] = acc.groupby(keys)["length"].rank(method="dense").astype(int).map(lambda r: ACCURACY[r - 1])
    table = acc.pivot_table(index=keys, columns="which", values="string_acc").reset_index()
    params = acc.groupby(keys)["params"].first().reset_index()
    table = table.merge(params, on=keys)
    patch = _eval_frame(records, "patching")
    whole = patch[patch["head"].isna() & (patch["region"] == "all")]
    layers = whole.pivot_table(index=keys, columns="layer", values="effect")
    layers.columns = [f"patch_L{c}" for c in layers.columns]
    table = table.merge(layers.reset_index(), on=keys)
    at_answer = patch[patch["region"] == "answer"]
    answer = at_answer.groupby([*keys, "layer"])["effect"].sum().unstack("layer")
    answer.columns = [f"answer_L{c}" for c in answer.columns]
    table = table.merge(answer.reset_index(), on=keys)
    # attention used: some attention layer carries >= half of the answer at the answer positions
    attn = at_answer[at_answer["layer_kind"] == "attention"].groupby([*keys, "layer"])["effect"].sum()
    used = (attn.groupby(level=list(range(len(keys)))).max() >= 0.5).astype(float).rename("attn_used")
    table = table.merge(used.reset_index(), on=keys, how="left")
    table["attn_used"] = table["attn_used"].fillna(0.0)  # no attention layer: none used
    heads = _eval_frame(records, "lookup_heads")
    heads = heads[heads["activity"] >= MIN_ACTIVITY]
    prev = heads[heads["score"] == "offset_1"].groupby(keys)["value"].max().rename("prev_token")
    table = table.merge(prev.reset_index(), on=keys)
    heads = heads[heads["score"].isin(["lookup", "lookup_next"])]
    mass = (
        heads.groupby([*keys, "layer", "head"])["value"]
        .sum()
        .groupby(level=[*range(len(keys)), len(keys)])
        .max()
    )
    mass = mass.unstack("layer")
    mass.columns = [f"lookup_L{c}" for c in mass.columns]
    table = table.merge(mass.reset_index(), on=keys)
    sat = _eval_frame(records, "saturation")
    sat = sat[sat["length"] == sat["max_len"]]
    sat = sat.assign(string_fill=sat["info_bits"] / sat["string_bits"])[[*keys, "info_bits", "string_fill"]]
    table = table.merge(sat, on=keys)
    flags = {
        (r["spec"]["label"], r["spec"]["columns"]["task"], r["spec"]["seed"]): converged(r["metrics"])
        for r in records
    }
    table["converged"] = [float(flags[k]) for k in zip(table["model"], table["task"], table["seed"])]
    order = {m: i for i, m in enumerate(MODELS)}
    table["_o"] = table["model"].map(order)
    return table.sort_values(["task", "_o", "seed"]).drop(columns="_o").reset_index(drop=True)


# the report's columns: per-layer ones for the 3 layers of the smoke/demo/cpu models (the gpu models'
# deeper layers are in the per-seed CSV and the figure)
VALUES = [
    *ACCURACY,
    *(f"patch_L{i}" for i in range(3)),
    *(f"answer_L{i}" for i in range(3)),
    *(f"lookup_L{i}" for i in range(3)),
    "prev_token",
    "attn_used",
    "info_bits",
    "string_fill",
    "converged",
]


def hybrid_figure(records: list[dict]) -> Figure:
    acc = _eval_frame(records, "accuracy")
    patch = _eval_frame(records, "patching")
    per_pos = patch[patch["pos"].notna()]
    answer = per_pos[per_pos["region"] == "answer"]
    answer = answer.groupby(["task", "model", "seed", "layer"], sort=False)["effect"].sum().reset_index()
    long = acc[acc["length"] >= acc["max_len"]]
    hyb = long[long["model"].str.startswith("hybrid")]
    best = hyb.groupby("model")["string_acc"].mean().idxmax() if len(hyb) else None
    heads = _eval_frame(records, "lookup_heads")
    heads = heads[(heads["activity"] >= MIN_ACTIVITY) & heads["score"].isin(["lookup", "lookup_next"])]
    heads = heads.groupby(["task", "model", "seed", "layer", "head"], sort=False)["value"].sum()
    heads = heads.groupby(["task", "model", "seed", "layer"], sort=False).max().reset_index()
    sat = _eval_frame(records, "saturation")
    models = [m for m in MODELS if m in set(acc["model"])]
    palette = dict(zip(models, sns.color_palette("tab10", len(models))))
    fig, axes = plt.subplots(2, 5, figsize=(25, 8.5))
    for row, task in zip(axes, WHERE_TASKS):
        name = "copy" if task == "copy" else "suffix-key lookup"
        part = acc[acc["task"] == task]
        seed_lineplot(
            part.assign(string_acc=part["string_acc"] * 100),
            "length",
            "string_acc",
            row[0],
            palette=palette,
            hue_order=models,
        )
        longest = int(part["max_len"].iloc[0])
        row[0].axvline(longest, color="grey", linestyle=":", label="longest training string")
        row[0].set(
            xlabel="string length (characters)", ylabel="string accuracy (%, teacher-forced)", ylim=(-3, 103)
        )
        row[0].set_title(f"{name}: accuracy")
        for ax, data, y, title, label in (
            (
                row[1],
                answer[answer["task"] == task],
                "effect",
                "noising each mixer at the answer",
                "noising effect, summed over answer positions",
            ),
            (
                row[2],
                heads[heads["task"] == task],
                "value",
                "lookup detector, best head per layer",
                "attention mass on the source token (+ next)",
            ),
        ):
            sns.barplot(
                data=data,
                x="layer",
                y=y,
                hue="model",
                hue_order=models,
                palette=palette,
                errorbar="sd",
                ax=ax,
            )
            ax.set(xlabel="layer", ylabel=label)
            ax.set_title(f"{name}: {title}\n(strings of length {longest})")
        sp = sat[sat["task"] == task]
        seed_lineplot(sp, "length", "info_bits", row[3], palette=palette, hue_order=models)
        lengths = np.array(sorted(sp["length"].unique()))
        per_letter = sp["string_bits"].max() / sp["length"].max()  # log2(letters)
        row[3].plot(lengths, per_letter * lengths, "k:", label="bits in the string")
        row[3].set(xlabel="string length (characters)", ylabel="bits of the string decodable at the answer")
        row[3].set_title(f"{name}: how full the state is")
        for ax in row[:4]:
            ax.legend(fontsize=7)
        _position_heatmap(row[4], per_pos[(per_pos["task"] == task) & (per_pos["model"] == best)], name, best)
    fig.suptitle("SSMs, hybrids and a transformer at ~equal parameter count (mean ± sd over seeds)")
    fig.tight_layout()
    return fig


def _position_heatmap(ax, rows: pd.DataFrame, name: str, model: str | None) -> None:
    """Layer x position noising effects of one model (mean over seeds), string and answer marked."""
    if rows.empty:
        ax.set_axis_off()
        return
    grid = rows.pivot_table(index="layer", columns="pos", values="effect", aggfunc="mean")
    image = ax.imshow(grid.values, aspect="auto", cmap="Reds", vmin=0, origin="lower")
    ax.figure.colorbar(image, ax=ax, label="noising effect (fraction of the logit gap)")
    first = rows.drop_duplicates("pos").set_index("pos")["region"]
    for region, color in (("string", "tab:blue"), ("answer", "tab:green")):
        where = [i for i, p in enumerate(grid.columns) if first.get(p) == region]
        if where:
            ax.axvspan(where[0] - 0.5, where[-1] + 0.5, ymin=0, ymax=0.03, color=color, label=region)
    ax.set_yticks(range(len(grid.index)), [f"L{int(layer)} {k}" for layer, k in
                  rows.drop_duplicates("layer").set_index("layer")["layer_kind"].reindex(grid.index).items()])  # fmt: skip
    ax.set(xlabel="position (token)", ylabel="layer")
    ax.set_title(f"{name}: {model}, noising one mixer\nat one position at a time (mean over seeds)")
    ax.legend(fontsize=7, loc="upper left")


def _attention_layers(pattern: str) -> list[int]:
    return [i for i, kind in enumerate(pattern.split(",")) if kind.startswith("attn")]


def _per_layer(row: pd.Series, prefix: str) -> dict[int, float]:
    """{layer: mean} of the summary columns `{prefix}{layer}_mean` of one row (layers it has)."""
    return {
        int(c[len(prefix) : -len("_mean")]): float(row[c])
        for c in row.index
        if c.startswith(prefix) and c.endswith("_mean") and not pd.isna(row[c])
    }


def _verdict(ok: bool) -> str:
    return "agrees" if ok else "**disagrees**"


def hybrid_notes(summary: pd.DataFrame) -> str:
    params = summary.groupby("model", sort=False)["params"].first()
    lines = [
        f"Parameters: {', '.join(f'{m} {int(p):,}' for m, p in params.items())} "
        f"(largest / smallest = {params.max() / params.min():.3f}).",
        "",
        "Columns. `half_len_acc`, `max_len_acc`, `double_len_acc`: teacher-forced string accuracy (256 held-out "
        "strings) at 0.5x, 1x and 2x the longest training string. `patch_L{l}`: noising effect of layer l's mixer "
        "output (SSM `hook_mixer_out`, attention `hook_attn_out`) at every position at once, as a fraction of the "
        "clean-corrupt logit difference of the answer (1: the answer cannot be produced without it). "
        "`answer_L{l}`: the same mixer noised at one answer position (the queries) at a time, effects summed over "
        "those positions: how much of the answer that layer writes where the answer is produced (the rest of "
        "`patch_L{l}` comes from the string positions). `lookup_L{l}`: the lookup detector, the largest "
        f"attention mass (over heads with activity >= {MIN_ACTIVITY}) that the queries of the answer put on "
        "the string position holding the token to produce plus the position after it; SSM layers are scored "
        "through their hidden attention (Mamba-2 per head, Mamba-1 averaged over channels). `info_bits`: bits of "
        "the string a linear probe decodes, at the moment the answer starts, from the SSM states (transformer: "
        "its last residual stream, which is not its memory), `string_fill` = info_bits / bits in the string. "
        "`prev_token`: the largest previous-token score (attention mass on the key just before the query, over "
        "every real query) of any active head, attention or SSM. `attn_used`: fraction of seeds in which some "
        "attention layer carries at least half of the answer at the answer positions (`answer_L{l}` >= 0.5). "
        "`converged`: fraction of seeds whose last three held-out accuracies in training lie within 2 points.",
    ]
    if "converged_mean" in summary:
        lines.append(
            "\nConverged: "
            + "; ".join(
                f"{t} {m} {r['converged_mean']:.2f}"
                for (t, m), r in summary.set_index(["task", "model"]).iterrows()
            )
            + "."
        )
    score = summary.assign(s=(summary["max_len_acc_mean"] + summary["double_len_acc_mean"]) / 2)
    hybrids = score[score["model"].str.startswith("hybrid")]
    if hybrids.empty:
        return "\n".join(lines)
    best = hybrids.groupby("model")["s"].mean().idxmax()
    lines += ["", f"Best hybrid (mean of 1x and 2x accuracy over both tasks): **{best}**.", ""]
    lines.append("**The paper's prediction against the measurements** (means over seeds):")
    detail = []
    for task, part in score.groupby("task", sort=False):
        part = part.set_index("model")
        ssm = part[[m in ("mamba", "mamba2") for m in part.index]]
        hyb = part.loc[[m for m in part.index if m.startswith("hybrid")]]
        for col, where in (("max_len_acc", "1x"), ("double_len_acc", "2x")):
            top_ssm, low_hyb = ssm[col + "_mean"].max(), hyb[col + "_mean"].min()
            lines.append(
                f"- {task}, {where} the training length: every hybrid is at least as accurate as every pure SSM (within 1 point): "
                f"{_verdict(low_hyb >= top_ssm - 0.01)} (worst hybrid {100 * low_hyb:.1f}%, best pure SSM "
                f"{100 * top_ssm:.1f}%, transformer {100 * part.loc['transformer', col + '_mean']:.1f}%)."
                if "transformer" in part.index
                else f"- {task}, {where}: worst hybrid {100 * low_hyb:.1f}%, best pure SSM {100 * top_ssm:.1f}%."
            )
        row = part.loc[best]
        attn = _attention_layers(row["layers"])
        kind = lambda layer, attn=attn: "attention" if layer in attn else "SSM"  # noqa: E731
        answer, look, patch = (_per_layer(row, p) for p in ("answer_L", "lookup_L", "patch_L"))
        top_a, top_l = max(answer, key=answer.get), max(look, key=look.get)
        lines.append(
            f"- {task}, in {best}: the copy happens in its attention layer: {_verdict(top_a in attn and top_l in attn)} "
            f"(largest answer-position noising effect: layer {top_a}, {kind(top_a)}; lookup detector: layer "
            f"{top_l}, {kind(top_l)})."
        )
        if "mamba2" in part.index:
            pure = part.loc["mamba2"]
            lines.append(
                f"- {task}: {best}'s SSM states hold less of the string than pure Mamba-2's: "
                f"{_verdict(row['info_bits_mean'] < pure['info_bits_mean'])} ({row['info_bits_mean']:.1f} vs "
                f"{pure['info_bits_mean']:.1f} bits, {100 * row['string_fill_mean']:.0f}% vs "
                f"{100 * pure['string_fill_mean']:.0f}% of the string)."
            )
        ranking = ", ".join(
            f"{m} {100 * r['max_len_acc_mean']:.1f}% / {100 * r['double_len_acc_mean']:.1f}%"
            for m, r in part.sort_values("s", ascending=False).iterrows()
        )
        detail.append(f"- {task}, accuracy at 1x / 2x the training length, best first: {ranking}.")
        detail.append(
            f"  - {best} ({row['layers']}), per layer: noising everywhere "
            + ", ".join(f"L{k} {v:.2f}" for k, v in sorted(patch.items()))
            + "; at the answer positions "
            + ", ".join(f"L{k} {v:.2f}" for k, v in sorted(answer.items()))
            + "; lookup detector "
            + ", ".join(f"L{k} {v:.2f}" for k, v in sorted(look.items()))
            + "."
        )
    return "\n".join([*lines, "", "Details:", *detail, "", *_disagreements(summary, best)])


def _disagreements(summary: pd.DataFrame, best: str) -> list[str]:
    """Where the measurements depart from the paper, with the evidence the table holds."""
    at = summary.set_index(["task", "model"])
    get = lambda task, model, col: float(at.loc[(task, model), col + "_mean"])  # noqa: E731
    out = ["**Where the results depart from the paper, and the evidence:**"]
    cell = ("suffix_lookup", "transformer")
    if cell in at.index and get(*cell, "max_len_acc") < 0.5:
        out.append(
            f"- The transformer does not learn suffix-key lookup here ({100 * get(*cell, 'max_len_acc'):.1f}% at "
            f"1x; the paper's transformers solve it). Its best previous-token score is {get(*cell, 'prev_token'):.2f} "
            f"on this task against {get('copy', 'transformer', 'prev_token'):.2f} on copy, which it learns: no "
            "previous-token head forms, so it cannot match a 2-gram key; its lookup detector stays at "
            f"{max(get(*cell, f'lookup_L{i}') for i in range(3)):.2f} or less in every layer, and it has not "
            f"converged. The same attention inside {best}, behind a Mamba-2 layer whose convolution and scan "
            "carry the previous tokens, learns the lookup in the same steps. docs/notes/lookup_transformer.md "
            "rules out training 4x longer, the learning rate and Hard-ALiBi for the CPU transformer: this is the "
            "n-gram match not being learned at this scale, not attention being unable to look up."
        )
    for model in ("hybrid 1 attn", "hybrid 2 attn"):
        key = ("suffix_lookup", model)
        if key in at.index and 0 < get(*key, "attn_used") < 1:
            out.append(
                f"- {model} on suffix lookup: {100 * get(*key, 'max_len_acc'):.1f}% ± "
                f"{100 * float(at.loc[key, 'max_len_acc_sd']):.1f} is a mix of two outcomes. In "
                f"{get(*key, 'attn_used'):.0%} of the seeds an attention layer carries the answer (`attn_used`); "
                "in the others its attention layers carry almost nothing and the Mamba-2 layers do the lookup, "
                "at the pure SSMs' accuracy (per-seed rows in the CSV: `attn_used`, `answer_L{l}`, "
                "`max_len_acc`). Whether training recruits the attention layer decides the result, not its presence."
            )
    for model in ("mamba", "mamba2"):
        key = ("copy", model)
        if key in at.index and get(*key, "max_len_acc") < 0.9:
            out.append(
                f"- {model} copies {100 * get(*key, 'max_len_acc'):.1f}% of strings at the training length while "
                f"its states hold {100 * get(*key, 'string_fill'):.0f}% of the string's bits at the separator "
                f"(linear probe) and {get(*key, 'converged'):.0%} of its seeds have converged: the information is in "
                "the state, so what fails is reading it out in order (training), not the paper's state-size bound, "
                f"which cannot bind for {get(*key, 'info_bits') / get(*key, 'string_fill'):.0f}-bit strings and states "
                "of thousands of numbers."
            )
    if len(out) == 1:
        out.append("- none of the checks above found a departure.")
    return out
