"""The paper's synthetic experiments (Jelassi et al. 2024, results 1-3 and the state-size bound) and the
hybrids it recommends, by name.

Each is a grid per preset (interp.experiments.common.SCALES), a table and a figure of the finished runs,
and notes computed from the table; the grids, tables and figures live in copying.py, lookup.py,
capacity.py and hybrid.py.
"""

from __future__ import annotations

import json
from dataclasses import replace

from interp.experiments import capacity, copying, hybrid, lookup
from interp.experiments.common import SCALES
from interp.experiments.spec import Experiment, Preset, RunSpec, records_to_frame


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
            presets=_presets(copying.sample_efficiency_grid, {}),
            table=copying.sample_efficiency_table,
            figure=copying.sample_efficiency_figure,
            group_by=["max_len", "model"],
            values=["examples_to_50", "examples_to_90", "reached_90", "final_string_acc", "examples_budget"],
            notes=copying.sample_efficiency_notes,
        ),
        Experiment(
            name="length-generalization",
            summary="copy: train on strings <= L, greedy accuracy at 1x..8x L, positional variants vs Mamba",
            paper="Trained on strings of length <= 50, the Hard-ALiBi transformer still copies strings of "
            "hundreds to ~1000 characters; RoPE, NoPE and ALiBi degrade beyond the training lengths; Mamba "
            "fails there (the paper's Figure 3).",
            presets=_presets(copying.length_generalization_grid, {}),
            table=copying.length_table,
            figure=copying.length_figure,
            group_by=["max_len", "model", "length"],
            values=["string_acc", "char_acc", "first_error"],
            notes=copying.length_notes,
        ),
        Experiment(
            name="lookup",
            summary="prefix-key and suffix-key n-gram lookup accuracy vs string length, transformer vs Mamba vs LSTM",
            paper="Transformers solve both lookups; Mamba is much weaker, especially when the key comes after "
            "the string (suffix key: a fixed state cannot know what to keep) (the paper's Figure 5).",
            presets=_presets(lookup.lookup_grid, {}),
            table=records_to_frame,
            figure=lookup.lookup_figure,
            group_by=["lookup", "model", "length"],
            values=["string_acc"],
            notes=lookup.lookup_notes,
        ),
        Experiment(
            name="capacity-vs-state",
            summary="Mamba with several d_state values and an LSTM: copy accuracy and decodable state bits vs length",
            paper="A model whose state holds s bits cannot copy strings whose L log2|V| bits clearly exceed s; "
            "copy capacity grows with the state (the paper's Theorem 2.7).",
            presets=_presets(capacity.capacity_grid, {}),
            table=capacity.capacity_table,
            figure=capacity.capacity_figure,
            group_by=["model", "length"],
            values=["string_acc", "info_bits", "decodable_tokens", "string_bits", "state_bits", "converged"],
            notes=capacity.capacity_notes,
        ),
        Experiment(
            name="hybrid",
            summary="copy and suffix-key lookup at ~equal size: Mamba, Mamba-2, hybrids with 1 and 2 attention "
            "layers, transformer; in each, which layer copies (patching, lookup detector) and how full the state is",
            paper="The paper shows that a fixed-size state cannot copy long strings while attention can, and "
            "recommends giving state-space models an attention-like retrieval path. Its prediction for hybrids: "
            "with one attention layer a Mamba-2 model should copy and look up like the transformer (and beyond its "
            "training length, where pure SSMs fail); the copy should happen in the attention layer (a lookup head "
            "that noising and the lookup detector both find), leaving the SSM state free of the whole string.",
            presets=hybrid.PRESETS,
            table=hybrid.run_rows,
            figure=hybrid.hybrid_figure,
            group_by=["task", "model", "layers", "params"],
            values=hybrid.VALUES,
            notes=hybrid.hybrid_notes,
        ),
    ]
}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; allowed: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def with_seeds(specs: list[RunSpec], seeds: list[int]) -> list[RunSpec]:
    """The grid with other seeds (`--seeds`): every distinct run repeated for each seed."""
    distinct = {json.dumps({**s.to_dict(), "seed": None}, sort_keys=True): s for s in specs}
    return [replace(s, seed=seed) for s in distinct.values() for seed in seeds]
