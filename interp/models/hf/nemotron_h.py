"""Nemotron-H from Hugging Face (`NemotronHForCausalLM`) into `HookedHybrid`.

Why this family: each Nemotron-H layer is one pre-norm residual block holding exactly one of a Mamba-2
mixer, an attention layer without positional encoding, or an MLP, with RMSNorm everywhere, which is
`HookedHybrid`'s layout one to one ("mamba2", "attn" with positional="nope", "mlp" with relu2). The
other hybrids need blocks interp does not have: Bamba, Falcon-H1 and Jamba put an MLP (or MoE) inside
every mixer layer and use RoPE or ALiBi-free variants with extra multipliers (Falcon-H1's muP scales),
Zamba2 shares one attention block across depths and adds LoRA adapters per use.

Conversions: mixer weights keep their names; attention's q/k/v projections are fused into interp's
per-head [q | k | v] `qkv` (grouped-query heads repeated, which is exact) with zero biases; the MLP's
up/down projections become fc_in/fc_out. Mixture-of-experts layers ("moe") are refused, naming them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from interp.models.hf.mamba import read_source
from interp.models.hf.mamba2 import dt_limit_from_hf
from interp.models.hybrid import HookedHybrid, HybridConfig

RUNTIME_OPTIONS = ("scan", "chunk_size", "n_ctx")
# Nemotron-H layer type (config.json's layers_block_type, old names, or hybrid_override_pattern's
# characters) -> HookedHybrid layer kind
LAYER_TYPES = {
    "linear_attention": "mamba2",
    "mamba": "mamba2",
    "M": "mamba2",
    "full_attention": "attn",
    "attention": "attn",
    "*": "attn",
    "mlp": "mlp",
    "-": "mlp",
}


def nemotron_h_layers(d: dict) -> list[str]:
    """The HookedHybrid layer pattern of a Nemotron-H config dict."""
    types = d.get("layers_block_type") or d.get("layer_types") or list(d.get("hybrid_override_pattern") or "")
    if not types:
        raise ValueError("Nemotron-H config has no layers_block_type (or hybrid_override_pattern)")
    bad = sorted({t for t in types if t not in LAYER_TYPES})
    if bad:
        raise ValueError(
            f"Nemotron-H layer types {bad} are not supported (mixture-of-experts layers have no interp block); "
            f"supported: {', '.join(sorted(LAYER_TYPES))}"
        )
    return [LAYER_TYPES[t] for t in types]


def nemotron_h_config_from_dict(d: dict, **overrides) -> HybridConfig:
    """A Hugging Face `NemotronHConfig` dict (config.json) -> HybridConfig."""
    bad = set(overrides) - set(RUNTIME_OPTIONS)
    if bad:
        raise ValueError(f"cannot override {sorted(bad)} when loading; allowed: {', '.join(RUNTIME_OPTIONS)}")
    if d.get("model_type", "nemotron_h") != "nemotron_h":
        raise ValueError(
            f"config is for model_type={d['model_type']!r}; this reads Nemotron-H ('nemotron_h')"
        )
    for key, allowed in (("mamba_hidden_act", "silu"), ("use_bias", False), ("attention_bias", False)):
        if d.get(key, allowed) != allowed:
            raise ValueError(
                f"Nemotron-H checkpoints with {key}={d[key]!r} are not supported (only {allowed!r})"
            )
    layers = nemotron_h_layers(d)
    d_model = d["hidden_size"]
    mamba_inner = d.get("mamba_num_heads", 128) * d.get("mamba_head_dim", 64)
    expand = mamba_inner // d_model
    if "mamba2" in layers and expand * d_model != mamba_inner:
        raise ValueError(
            f"mamba_num_heads * mamba_head_dim = {mamba_inner} is not a multiple of hidden_size={d_model}; "
            "interp's Mamba-2 has d_inner = expand * d_model"
        )
    # Nemotron-H's mixer clamps dt to (time_step_min, inf), whatever time_step_limit says
    lo, _ = dt_limit_from_hf((d.get("time_step_min", 0.001), math.inf))
    options = dict(
        d_vocab=d["vocab_size"],
        d_model=d_model,
        layers=layers,
        n_heads=d.get("num_attention_heads", 32),
        d_head=d.get("head_dim") or d_model // d.get("num_attention_heads", 32),
        positional="nope",  # Nemotron-H's attention has no positional encoding
        n_ctx=d.get("max_position_embeddings", 4096),
        d_mlp=d.get("intermediate_size", 21504),
        mlp_act=d.get("mlp_hidden_act", "relu2"),
        mlp_bias=d.get("mlp_bias", False),
        d_state=d.get("ssm_state_size", 128),
        d_conv=d.get("conv_kernel", 4),
        expand=max(expand, 1),
        head_dim=d.get("mamba_head_dim", 64),
        n_groups=d.get("n_groups", 8),
        dt_limit_min=lo,
        rms_norm_eps=d.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=d.get("tie_word_embeddings", False),
    )
    return HybridConfig(**{**options, **overrides})


def state_from_nemotron_h(state: dict[str, Tensor], cfg: HybridConfig) -> dict[str, Tensor]:
    """Rename and convert a Nemotron-H state dict (module names `model.layers.{l}.mixer...` or the checkpoint
    names `backbone.layers.{l}.mixer...`) to HookedHybrid's."""
    out: dict[str, Tensor] = {}
    n_kv = None
    for key, value in state.items():
        if key.startswith("mtp."):  # multi-token-prediction heads: not part of the language model
            continue
        if key.startswith(
            "backbone."
        ):  # the checkpoint format (what save_pretrained writes, and the hub has)
            key = "model." + key.removeprefix("backbone.")
        key = key.replace("model.embeddings.", "embed.").replace("model.norm_f.", "ln_final.")
        if not key.startswith("model.layers."):
            out[key] = value
            continue
        layer, rest = key.removeprefix("model.layers.").split(".", 1)
        kind = cfg.layers[int(layer)] if int(layer) < cfg.n_layers else "?"
        if kind == "attn" and rest.startswith("mixer."):
            out[f"blocks.{layer}.attn.{rest.removeprefix('mixer.')}"] = value  # fused below
        elif kind == "mlp" and rest.startswith("mixer."):
            name = rest.removeprefix("mixer.").replace("up_proj", "fc_in").replace("down_proj", "fc_out")
            out[f"blocks.{layer}.mlp.{name}"] = value
        else:
            out[f"blocks.{layer}.{rest}"] = value
    h, dh = cfg.n_heads, cfg.d_head
    for layer in cfg.layers_of("attn"):
        pre = f"blocks.{layer}.attn."
        names = [pre + f"{p}_proj.weight" for p in "qkvo"]
        if not all(n in out for n in names):
            continue  # reported as missing keys by load_state
        q, k, v, o = (out.pop(n) for n in names)
        n_kv = k.shape[0] // dh
        if h % max(n_kv, 1) or k.shape[0] % dh:
            raise ValueError(
                f"layer {layer}: {h} attention heads cannot share {k.shape[0] / dh} key/value heads"
            )
        rep = h // n_kv
        k, v = (t.view(n_kv, dh, -1).repeat_interleave(rep, dim=0) for t in (k, v))  # [H, Dh, d_model]
        qkv = torch.cat([q.view(h, dh, -1), k, v], dim=1)  # per head [q | k | v], [H, 3 Dh, d_model]
        out[pre + "qkv.weight"] = qkv.reshape(3 * h * dh, -1)
        out[pre + "qkv.bias"] = q.new_zeros(3 * h * dh)
        out[pre + "out.weight"] = o
        out[pre + "out.bias"] = o.new_zeros(o.shape[0])
    return out


def load_hf_nemotron_h(source: Any, config: dict | None = None, **overrides) -> HookedHybrid:
    """A HookedHybrid holding the weights of a Hugging Face `NemotronHForCausalLM` (no MoE layers).

    source: a `save_pretrained` folder, a `transformers.NemotronHForCausalLM`, or a state dict (then
    `config` must be given). overrides: scan, chunk_size, n_ctx. The model comes back in eval mode.
    """
    from interp.models.loading import load_state  # loading imports interp.models.hf: import at call time

    config, state = read_source(source, config, "Nemotron-H")
    model = HookedHybrid(nemotron_h_config_from_dict(config, **overrides))
    load_state(model, state_from_nemotron_h(state, model.cfg), "the Nemotron-H checkpoint")
    if model.cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    return model.eval()
