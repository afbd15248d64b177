"""Mamba-2 from Hugging Face (`Mamba2ForCausalLM`) into `HookedMamba2`.

`HF_FIELDS` maps interp's `Mamba2Config` fields to Hugging Face `Mamba2Config` keys; `mamba2_config_from_dict`
reads through it and `hf_mamba2_config` writes through the same table. Parameter names below
`layers.{l}.mixer` are the same in both (in_proj, conv1d, dt_bias, A_log, D, norm.weight, out_proj);
`HF_PREFIXES` renames the rest.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from interp.models.hf.mamba import read_source
from interp.models.mamba2 import HookedMamba2, Mamba2Config

RUNTIME_OPTIONS = ("scan", "chunk_size", "n_ctx")  # may be overridden when loading

# interp field -> (Hugging Face Mamba2Config key, default when the key is absent; None = required)
HF_FIELDS: dict[str, tuple[str, Any]] = {
    "d_vocab": ("vocab_size", None),
    "d_model": ("hidden_size", None),
    "n_layers": ("num_hidden_layers", None),
    "d_state": ("state_size", 128),
    "d_conv": ("conv_kernel", 4),
    "expand": ("expand", 2),
    "head_dim": ("head_dim", 64),
    "n_groups": ("n_groups", 8),
    "conv_bias": ("use_conv_bias", True),
    "bias": ("use_bias", False),
    "rms_norm_eps": ("layer_norm_epsilon", 1e-5),
    "tie_embeddings": ("tie_word_embeddings", False),
    "dt_min": ("time_step_min", 0.001),
    "dt_max": ("time_step_max", 0.1),
    "dt_init_floor": ("time_step_floor", 1e-4),
}
# Hugging Face prefix -> interp module-tree prefix
HF_PREFIXES = (
    ("backbone.embeddings.", "embed."),
    ("backbone.embedding.", "embed."),  # mamba-ssm's name, which Hugging Face's load hook also accepts
    ("backbone.layers.", "blocks."),
    ("backbone.norm_f.", "ln_final."),
    ("lm_head.", "lm_head."),
)


def dt_limit_from_hf(limit: Any) -> tuple[float, float | None]:
    """Hugging Face's time_step_limit (min, max) with max = inf -> interp's (min, None).

    config.json written by transformers 5 spells infinity {"__float__": "Infinity"} (JSON has no inf)."""

    def number(v: Any) -> float:
        return float(v["__float__"]) if isinstance(v, dict) and "__float__" in v else float(v)

    lo, hi = (number(v) for v in (limit if limit is not None else (0.0, math.inf)))
    return lo, (None if math.isinf(hi) else hi)


def mamba2_config_from_dict(d: dict, **overrides) -> Mamba2Config:
    """A Hugging Face `Mamba2Config` dict (config.json) -> Mamba2Config."""
    bad = set(overrides) - set(RUNTIME_OPTIONS)
    if bad:
        raise ValueError(f"cannot override {sorted(bad)} when loading; allowed: {', '.join(RUNTIME_OPTIONS)}")
    model_type = d.get("model_type", "mamba2")
    if model_type != "mamba2":
        raise ValueError(f"config is for model_type={model_type!r}; this reads Mamba-2 ('mamba2') configs")
    if d.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act={d['hidden_act']!r} is not supported; Mamba-2 uses 'silu'")
    options = {}
    for ours, (key, default) in HF_FIELDS.items():
        if key not in d and default is None:
            raise ValueError(f"Mamba-2 config has no {key!r} (needed for {ours}); got keys {sorted(d)}")
        options[ours] = d.get(key, default)
    options["dt_limit_min"], options["dt_limit_max"] = dt_limit_from_hf(d.get("time_step_limit"))
    cfg = Mamba2Config(**options, **overrides)
    if "num_heads" in d and d["num_heads"] != cfg.n_heads:
        raise ValueError(
            f"num_heads={d['num_heads']} but expand * hidden_size / head_dim = {cfg.n_heads}; such checkpoints "
            "(Hugging Face refuses them too) are not supported"
        )
    return cfg


def hf_mamba2_config(cfg: Mamba2Config):
    """Our `Mamba2Config` -> the equivalent `transformers.Mamba2Config`, through `HF_FIELDS`."""
    from transformers import Mamba2Config as HFMamba2Config

    values = {key: getattr(cfg, ours) for ours, (key, _) in HF_FIELDS.items()}
    limit = (cfg.dt_limit_min, math.inf if cfg.dt_limit_max is None else cfg.dt_limit_max)
    return HFMamba2Config(**values, num_heads=cfg.n_heads, time_step_limit=limit)


def state_from_hf(state: dict[str, Tensor], prefixes=HF_PREFIXES) -> dict[str, Tensor]:
    """Rename Hugging Face parameter names to interp's module tree (unknown names are kept, so that
    `interp.models.loading.load_state` reports them)."""
    out = {}
    for key, value in state.items():
        for hf, ours in prefixes:
            if key.startswith(hf):
                key = ours + key[len(hf) :]
                break
        out[key] = value
    return out


def load_hf_mamba2(source: Any, config: dict | None = None, **overrides) -> HookedMamba2:
    """A HookedMamba2 holding the weights of a Hugging Face `Mamba2ForCausalLM`.

    source: a `save_pretrained` folder, a `transformers.Mamba2ForCausalLM`, or a state dict (then `config`
    must be given). overrides: scan, chunk_size, n_ctx. The model comes back in eval mode.
    """
    from interp.models.loading import load_state  # loading imports interp.models.hf: import at call time

    config, state = read_source(source, config, "Mamba-2")
    model = HookedMamba2(mamba2_config_from_dict(config, **overrides))
    load_state(model, state_from_hf(state), "the Mamba-2 checkpoint")
    if model.cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    return model.eval()
