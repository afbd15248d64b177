"""How a fixed state fills up: how much of a string can be read back from the state as the string grows.

For each string length L, the state is read at one position of every example (by default the separator
`|` of the copy task, `batch.answer_start - 1`, the moment the model must start copying) and linear
probes (`interp.analysis.probing`) decode every letter of the string s_1..s_L (absolute positions 1..L;
lag = read position - letter position). Per length:

    decodable_tokens  sum over letters of (accuracy - chance) / (1 - chance), clipped at 0: a letter
                      read back perfectly counts 1, one at chance 0
    info_bits         sum over letters of max(0, log2|V| - cross-entropy in bits), |V| the letters seen
                      in training (a lower bound on the information the state keeps: a linear probe
                      reads part of it at most)
    string_bits       L * log2(n_letters), what a perfect copy needs
    state_bits        the model's `state_size()` in bits (NaN for transformers, whose memory grows)
    copy_string_acc   the model's measured teacher-forced copy accuracy at that length (`evaluate`)

A model with a fixed state should show info_bits growing with L while L is small, then a plateau;
the paper's bound says copying fails once string_bits clearly exceeds what the state can hold.

    result = state_saturation(model, TaskConfig(task="copy", n_letters=26), lengths=[5, 10, 20, 40])
    result.summary      # one row per length
    result.per_letter   # one row per (length, letter): accuracy, ce_bits, ... by lag
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from interp.analysis.evaluation import evaluate
from interp.analysis.probing import DEFAULT_MAX_BATCH_BYTES, above_chance, probe_tokens
from interp.hooks import check_model, model_label, state_hooks
from interp.tasks import TaskConfig, make_batch

STRING_FIRST_TASKS = ("copy", "suffix_lookup", "induction")  # the string sits at positions 1..L


def default_state_hooks(model) -> list[str]:
    """The hooks that hold a model's recurrent state at one position, all layers together: those whose
    axes declaration says `state` (`interp.hooks.state_hooks`: Mamba's `blocks.{l}.mixer.hook_ssm_state`,
    without the 3-input conv cache; the LSTM's `blocks.{l}.hook_hidden` and `hook_cell`; the shift
    register's `hook_state`). Models without one (transformers, whose memory is not a fixed state): the
    last layer's residual stream at that position.
    """
    found = state_hooks(model)
    if found:
        return found
    return [f"blocks.{getattr(model.cfg, 'n_layers', 1) - 1}.hook_resid_post"]


@dataclass
class SaturationResult:
    summary: pd.DataFrame  # one row per length (columns: see the module docstring)
    per_letter: pd.DataFrame  # one row per (length, letter): the probe's scores for that letter


def state_saturation(
    model,
    task: TaskConfig,
    lengths: Sequence[int],
    hooks: str | Sequence[str] | None = None,
    n_examples: int = 1024,
    read_offset: int = -1,
    copy_examples: int = 256,
    seed: int = 0,
    name: str | None = None,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    **fit_options,
) -> SaturationResult:
    """Decodable letters and bits of the state, per string length, next to state size and copy accuracy.

    model: any hooked model; task: a copy-like task (copy, suffix_lookup, induction) whose string sits
    at positions 1..L; lengths: string lengths L; hooks: the state (default `default_state_hooks`).
    read_offset: read position relative to `batch.answer_start` (-1: the separator for copy; -2: the
    last letter). n_examples: probe examples per length (split by example into train and test).
    fit_options: passed to `fit_probes` (solver, max_features, test_fraction, ...).
    """
    if task.task not in STRING_FIRST_TASKS:
        raise ValueError(
            f"state_saturation reads strings at positions 1..L; task {task.task!r} is not allowed, use one "
            f"of {', '.join(STRING_FIRST_TASKS)}"
        )
    if not lengths or min(lengths) < 1:
        raise ValueError(f"lengths must be a non-empty list of string lengths >= 1, got {list(lengths)}")
    if task.vocab.size > model.cfg.d_vocab:
        raise ValueError(
            f"vocabulary mismatch: the task's {task.vocab.size} tokens do not fit the model's d_vocab="
            f"{model.cfg.d_vocab}"
        )
    check_model(model)
    hooks = default_state_hooks(model) if hooks is None else hooks
    unpacked = TaskConfig.from_dict({**task.to_dict(), "pack_context": None})
    size = model.state_size() if hasattr(model, "state_size") else None
    label = name or model_label(model)
    summaries, per_letter = [], []
    for length in lengths:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + length)
        batch = make_batch(
            unpacked, n_examples, gen, length=length, max_tokens=getattr(model.cfg, "n_ctx", None)
        )
        read = batch.answer_start + read_offset  # [B]
        if int(read.min()) < length:
            raise ValueError(
                f"read_offset={read_offset} reads at position {int(read.min())}, before the string's last "
                f"letter (position {length}); use read_offset >= {length - int(batch.answer_start.min())}"
            )
        df = probe_tokens(
            model,
            batch.tokens,
            hooks,
            read[:, None],
            positions=range(1, length + 1),
            max_batch_bytes=max_batch_bytes,
            seed=seed,
            **fit_options,
        )
        df.insert(0, "model", label)
        df.insert(1, "length", length)
        df.insert(3, "lag", int(read[0]) - df["position"])
        per_letter.append(df)
        copy = evaluate(model, unpacked, [length], n_examples=copy_examples, seed=seed + 1234)
        decodable = above_chance(torch.tensor(df["accuracy"].values), torch.tensor(df["chance"].values))
        summaries.append(
            {
                "model": label,
                "length": length,
                "hooks": "+".join([hooks] if isinstance(hooks, str) else hooks),
                "n_features": int(df["n_features"].iloc[0]),
                "decodable_tokens": float(decodable.sum()),
                "info_bits": float(df["info_bits"].sum()),
                "string_bits": length * math.log2(task.n_letters),
                "state_bits": size.bits if size is not None else float("nan"),
                "state_numbers": size.numbers if size is not None else float("nan"),
                "copy_string_acc": float(copy["string_acc"].iloc[0]),
                "copy_char_acc": float(copy["char_acc"].iloc[0]),
                "n_examples": n_examples,
            }
        )
    return SaturationResult(pd.DataFrame(summaries), pd.concat(per_letter, ignore_index=True))
