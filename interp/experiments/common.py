"""What the experiments of one preset share: model sizes, the training recipe, the copy task, plot style.

Presets: `smoke` (seconds; tests and trying the machinery), `demo` (`interp demo`), `cpu` (minutes to half
an hour on a 2-core laptop, small models, 3 seeds) and `gpu` (the paper's scale: ~150M-parameter models
and its optimiser settings). One recipe serves every family of a preset, so that the models of one
experiment are those of the others (docs/notes/mamba_recipe.md measures why the CPU recipe is what it is).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import seaborn as sns

from interp.experiments.spec import RunSpec

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
        long_strings=(20, 3000),
        description="2-layer models of ~100k parameters, 10 letters, strings of length 1-10 (sample "
        "efficiency also 1-20, 3,000 steps), batch 32, 2,000 steps, 3 seeds",
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


def run_spec(
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


def seed_lineplot(data: pd.DataFrame, x: str, y: str, ax, hue: str = "model", **kwargs) -> None:
    """Mean over seeds with a band of one standard deviation."""
    sns.lineplot(data=data, x=x, y=y, hue=hue, marker="o", errorbar="sd", ax=ax, **kwargs)


LONG_STRING_MODELS = ("transformer rope", "mamba", "lstm")  # the longer-string setting (fewer, for CPU time)
