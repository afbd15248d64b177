"""What an experiment is, as data: a grid of runs, each one training job plus the evaluations after it.

A `RunSpec` says everything one run needs (model, task, training settings, seed, evaluations), so a run
can execute in any process or on any Ray worker from its dict alone, and its folder name carries a hash
of that dict: change a setting and the run is new, rerun the same grid and finished runs are found.
An `Experiment` turns a preset name into a grid of `RunSpec`s and the finished runs' records into a
table and a figure (see `interp.experiments.paper` for the paper's four).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd
from matplotlib.figure import Figure

from interp.config import Config

EVAL_KINDS = ("accuracy", "saturation", "patching", "lookup_heads")


@dataclass
class EvalSpec(Config):
    """One evaluation of a trained run.

    kind: "accuracy" (`evaluate`: string/char accuracy per length) or "saturation" (`state_saturation`:
    decodable bits of the state at the separator per length; for models with a fixed state),
    "patching" (noising effect of each layer's mixer and each attention head) or "lookup_heads" (the
    lookup detector on every head), both per length, copy and suffix_lookup (`interp.experiments.where`).
    task: overrides of the run's task config (e.g. another n-gram size); lengths: string lengths.
    """

    kind: str = "accuracy"
    lengths: list[int] = field(default_factory=lambda: [10])
    mode: str = "teacher"  # teacher | greedy (accuracy only)
    examples: int = 256  # examples per length
    task: dict = field(default_factory=dict)
    max_features: int = 256  # saturation: probe the top principal components of larger states (a lower bound)

    def __post_init__(self):
        if self.kind not in EVAL_KINDS:
            raise ValueError(f"unknown evaluation kind {self.kind!r}; allowed: {', '.join(EVAL_KINDS)}")
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError(
                f"evaluation lengths must be a non-empty list of lengths >= 1, got {self.lengths}"
            )
        if self.mode not in ("teacher", "greedy"):
            raise ValueError(f"unknown evaluation mode {self.mode!r}; allowed: teacher, greedy")
        if self.examples < 1:
            raise ValueError(f"evaluation examples must be >= 1, got {self.examples}")
        super().__post_init__()


@dataclass
class RunSpec(Config):
    """One run of a grid: train `arch` with `model` options on `task` with `train` settings, then `evals`.

    `label` names the model in tables and figures ("transformer hard_alibi", "mamba d_state=16");
    `columns` are extra table columns that identify the grid cell (e.g. {"d_state": 16}).
    """

    experiment: str
    label: str
    arch: str
    model: dict
    task: dict
    train: dict
    seed: int = 0
    evals: list[dict] = field(default_factory=list)
    columns: dict = field(default_factory=dict)

    zero_ok: ClassVar[frozenset[str]] = frozenset({"seed"})

    def __post_init__(self):
        super().__post_init__()
        from interp.tasks import TaskConfig

        for e in self.evals:  # validate now, not after training
            ev = EvalSpec.from_dict(e)
            TaskConfig.from_dict({**self.task, **ev.task})

    @property
    def run_id(self) -> str:
        """Folder name: readable label and seed, plus a hash of the training settings (arch, model, task,
        train, seed): a changed setting is a new run, and experiments that train the same model share it."""
        training = {k: getattr(self, k) for k in ("arch", "model", "task", "train", "seed")}
        digest = hashlib.sha256(json.dumps(training, sort_keys=True).encode()).hexdigest()[:8]
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.label).strip("-").lower()
        return f"{slug}-seed{self.seed}-{digest}"


@dataclass
class Preset:
    """A scale of an experiment: the grid, and what it needs to run."""

    runs: Callable[[], list[RunSpec]]
    description: str  # one line: the scale in words ("2-layer models, 10 letters, 3 seeds")
    gpu: bool = False  # each run asks for one GPU (Ray: num_gpus=1)


@dataclass
class Experiment:
    """A paper experiment: presets (grids of runs), `table` and `figure` of the finished runs' records.

    table(records) -> DataFrame with one row per (run, measurement), columns including `model`, `seed`;
    group_by: the columns of a report's cell (mean and spread over seeds); figure(records) -> Figure.
    """

    name: str
    summary: str  # one line for `interp reproduce --list`
    paper: str  # the paper's result this reproduces, and its expected shape
    presets: dict[str, Preset]
    table: Callable[[list[dict]], pd.DataFrame]
    figure: Callable[[list[dict]], Figure]
    group_by: list[str]  # columns that identify a table cell (the seed is averaged out)
    values: list[str]  # measured columns summarized as mean, sd, n over seeds
    notes: Callable[[pd.DataFrame], str] = lambda summary: ""  # measured findings, computed from the table

    def preset(self, scale: str) -> Preset:
        if scale not in self.presets:
            raise ValueError(
                f"experiment {self.name!r} has no scale {scale!r}; allowed: {', '.join(self.presets)}"
            )
        return self.presets[scale]


def records_to_frame(records: list[dict], kind: str = "accuracy") -> pd.DataFrame:
    """Evaluation rows of every finished run, with the run's label, seed, columns and size attached."""
    frames = []
    for rec in records:
        spec = rec["spec"]
        for ev in rec["evals"]:
            if ev["spec"]["kind"] != kind:
                continue
            df = pd.DataFrame(ev["rows"])
            df["model"] = spec["label"]
            df["seed"] = spec["seed"]
            df["params"] = rec["params"]
            df["state_bits"] = rec["state_bits"]
            for key, value in spec["columns"].items():
                df[key] = value
            frames.append(df)
    if not frames:
        raise ValueError(f"no {kind!r} evaluations in the {len(records)} finished runs")
    return pd.concat(frames, ignore_index=True)


def metrics_frame(records: list[dict]) -> pd.DataFrame:
    """Training metrics (one row per periodic evaluation) of every finished run, labelled."""
    rows = []
    for rec in records:
        spec = rec["spec"]
        for m in rec["metrics"]:
            rows.append({**m, "model": spec["label"], "seed": spec["seed"], **spec["columns"]})
    return pd.DataFrame(rows)


def summarize(table: pd.DataFrame, group_by: list[str], values: list[str]) -> pd.DataFrame:
    """Mean, standard deviation and number of seeds of each value column per cell of `group_by`."""
    missing = [c for c in [*group_by, *values] if c not in table.columns]
    if missing:
        raise ValueError(f"columns {missing} are not in the table; it has {list(table.columns)}")
    stats = table.groupby(group_by, sort=False)[values].agg(["mean", "std", "count"])
    stats.columns = [f"{v}_{s.replace('count', 'n').replace('std', 'sd')}" for v, s in stats.columns]
    return stats.reset_index()


def describe(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
