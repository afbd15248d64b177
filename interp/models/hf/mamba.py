"""Mamba-1 from and to Hugging Face (`MambaForCausalLM`) and mamba-ssm (`MambaLMHeadModel`) formats.

One table per format maps interp's `MambaConfig` fields to the other format's keys; `mamba_config_from_dict`
reads through it and `hf_mamba_config` writes through the same table, so the two directions cannot drift.
Parameter names are the model's own business (`HookedMamba.state_dict()` already uses Hugging Face names,
see `interp.models.mamba.HF_PREFIXES`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from interp.models.mamba import HookedMamba, MambaConfig

RUNTIME_OPTIONS = ("scan", "chunk_size", "n_ctx")  # may be overridden when loading

# interp field -> (Hugging Face MambaConfig key, default when the key is absent)
HF_FIELDS: dict[str, tuple[str, Any]] = {
    "d_vocab": ("vocab_size", None),
    "d_model": ("hidden_size", None),
    "n_layers": ("num_hidden_layers", None),
    "d_state": ("state_size", 16),
    "d_conv": ("conv_kernel", 4),
    "expand": ("expand", 2),
    "dt_rank": ("time_step_rank", "auto"),
    "conv_bias": ("use_conv_bias", True),
    "bias": ("use_bias", False),
    "rms_norm_eps": ("layer_norm_epsilon", 1e-5),
    "tie_embeddings": ("tie_word_embeddings", True),
    "dt_min": ("time_step_min", 0.001),
    "dt_max": ("time_step_max", 0.1),
    "dt_init_floor": ("time_step_floor", 1e-4),
    "dt_scale": ("time_step_scale", 1.0),
}
# interp field -> (mamba-ssm key, default); keys under "ssm_cfg." are read from the nested ssm_cfg dict
MAMBA_SSM_FIELDS: dict[str, tuple[str, Any]] = {
    "d_vocab": ("vocab_size", None),
    "d_model": ("d_model", None),
    "n_layers": ("n_layer", None),
    "d_state": ("ssm_cfg.d_state", 16),
    "d_conv": ("ssm_cfg.d_conv", 4),
    "expand": ("ssm_cfg.expand", 2),
    "dt_rank": ("ssm_cfg.dt_rank", "auto"),
    "conv_bias": ("ssm_cfg.conv_bias", True),
    "bias": ("ssm_cfg.bias", False),
    "rms_norm_eps": ("norm_epsilon", 1e-5),
    "tie_embeddings": ("tie_embeddings", True),
    "dt_min": ("ssm_cfg.dt_min", 0.001),
    "dt_max": ("ssm_cfg.dt_max", 0.1),
    "dt_init_floor": ("ssm_cfg.dt_init_floor", 1e-4),
    "dt_scale": ("ssm_cfg.dt_scale", 1.0),
}


def _read(d: dict, table: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    out = {}
    for ours, (key, default) in table.items():
        where = d
        if key.startswith("ssm_cfg."):
            where, key = dict(d.get("ssm_cfg") or {}), key.removeprefix("ssm_cfg.")
        if key not in where and default is None:
            raise ValueError(f"Mamba config has no {key!r} (needed for {ours}); got keys {sorted(where)}")
        out[ours] = where.get(key, default)
    return out


def mamba_config_from_dict(d: dict, **overrides) -> MambaConfig:
    """A Hugging Face `MambaConfig` dict (config.json) or a mamba-ssm `MambaConfig` dict -> MambaConfig."""
    bad = set(overrides) - set(RUNTIME_OPTIONS)
    if bad:
        raise ValueError(f"cannot override {sorted(bad)} when loading; allowed: {', '.join(RUNTIME_OPTIONS)}")
    if "hidden_size" in d:  # Hugging Face
        model_type = d.get("model_type", "mamba")
        if model_type != "mamba":
            raise ValueError(f"config is for model_type={model_type!r}; only Mamba-1 ('mamba') is supported")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act={d['hidden_act']!r} is not supported; Mamba uses 'silu'")
        options = _read(d, HF_FIELDS)
        if d.get("intermediate_size") not in (None, options["expand"] * options["d_model"]):
            raise ValueError(
                f"intermediate_size={d['intermediate_size']} is not expand * hidden_size = "
                f"{options['expand'] * options['d_model']}; such checkpoints are not supported"
            )
    elif "d_model" in d and "n_layer" in d:  # mamba-ssm MambaLMHeadModel
        ssm = dict(d.get("ssm_cfg") or {})
        if ssm.get("layer", "Mamba1") != "Mamba1":
            raise ValueError(f"ssm_cfg.layer={ssm['layer']!r} is not supported; only Mamba1")
        if not d.get("rms_norm", True):
            raise ValueError(
                "rms_norm=False (LayerNorm blocks) is not supported; Mamba checkpoints use RMSNorm"
            )
        if d.get("d_intermediate", 0) or d.get("attn_layer_idx"):
            raise ValueError(
                "hybrid mamba-ssm models (d_intermediate MLPs or attention layers) are not supported"
            )
        options = _read(d, MAMBA_SSM_FIELDS)
        multiple = d.get("pad_vocab_size_multiple", 8)
        if options["d_vocab"] % multiple:
            options["d_vocab"] += multiple - options["d_vocab"] % multiple  # mamba-ssm pads the embedding
    else:
        raise ValueError(
            "not a Mamba config: expected Hugging Face keys (hidden_size, num_hidden_layers, vocab_size, ...) "
            f"or mamba-ssm keys (d_model, n_layer, vocab_size, ssm_cfg, ...); got keys {sorted(d)}"
        )
    return MambaConfig(**options, **overrides)


def hf_mamba_config(cfg: MambaConfig, tokenizer=None):
    """Our `MambaConfig` -> the equivalent `transformers.MambaConfig` (special tokens from `tokenizer`),
    through `HF_FIELDS`, the table `mamba_config_from_dict` reads with."""
    from transformers import MambaConfig as HFMambaConfig

    tokens = {}
    if tokenizer is not None:
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if getattr(tokenizer, name, None) is not None:
                tokens[name] = getattr(tokenizer, name)
    values = {key: getattr(cfg, ours) for ours, (key, _) in HF_FIELDS.items()}
    values["time_step_rank"] = cfg.rank  # "auto" resolved, as Hugging Face stores it
    return HFMambaConfig(**values, intermediate_size=cfg.d_inner, **tokens)


def _read_weights(folder: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.exists():
        return load_file(single)
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(folder / shard).items()}
    if (folder / "pytorch_model.bin").exists():  # mamba-ssm's save_pretrained
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(
        f"no weights in {folder}: expected model.safetensors, model.safetensors.index.json (+ shards) "
        "or pytorch_model.bin"
    )


def read_source(
    source: Any, config: dict | None, family: str, formats: str = "Hugging Face"
) -> tuple[dict, dict]:
    """(config dict, state dict) from a folder (config.json + weights), a model (its `.config` as a dict:
    Hugging Face's `to_dict()` or mamba-ssm's dataclass), or a state dict with `config`. `family` and
    `formats` name what was expected in the errors ("a saved Hugging Face Mamba-2 model")."""
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"{folder} has no config.json; expected a saved {formats} {family} model")
        config = json.loads((folder / "config.json").read_text()) if config is None else config
        return config, _read_weights(folder)
    if isinstance(source, nn.Module):
        if config is None:
            model_cfg = getattr(source, "config", None)
            if hasattr(model_cfg, "to_dict"):
                config = model_cfg.to_dict()
            elif model_cfg is not None and hasattr(model_cfg, "__dataclass_fields__"):
                config = asdict(model_cfg)
            else:
                raise ValueError(f"{type(source).__name__} has no usable .config; pass config=")
        return config, source.state_dict()
    if isinstance(source, dict):
        if config is None:
            raise ValueError(f"loading from a state dict needs config= (a {formats} {family} config dict)")
        return config, source
    raise TypeError(
        f"cannot load a {family} model from {type(source).__name__}; pass a folder, a model or a state dict"
    )


def load_hf_mamba(source: Any, config: dict | None = None, **overrides) -> HookedMamba:
    """A HookedMamba holding the weights of a Hugging Face or mamba-ssm Mamba-1 model.

    source: a folder with config.json and weights (Hugging Face `save_pretrained`, or mamba-ssm's
    `save_pretrained`: config.json + pytorch_model.bin), a `transformers.MambaForCausalLM`, a
    mamba-ssm `MambaLMHeadModel`, or a state dict (then `config` must be given, in either format).
    overrides: scan, chunk_size, n_ctx. The model comes back in eval mode.
    """
    config, state_dict = read_source(source, config, "Mamba", "Hugging Face or mamba-ssm")
    model = HookedMamba(mamba_config_from_dict(config, **overrides))
    model.load_state_dict(state_dict)
    return model.eval()


def hf_mamba_from_folder(folder: str | Path, tokenizer=None):
    """A mamba-ssm folder (config.json + pytorch_model.bin, which transformers cannot read) -> an equivalent
    `transformers.MambaForCausalLM`, through `load_hf_mamba` (our HookedMamba's state dict uses Hugging Face names).
    """
    from transformers import MambaForCausalLM

    ours = load_hf_mamba(Path(folder))
    config = hf_mamba_config(ours.cfg, tokenizer)
    with torch.device("meta"):  # no random initialisation: every weight comes from the checkpoint
        hf = MambaForCausalLM(config)
    hf.load_state_dict(ours.state_dict(), strict=True, assign=True)
    if config.tie_word_embeddings:
        hf.lm_head.weight = hf.backbone.embeddings.weight
    left = [name for name, t in [*hf.named_parameters(), *hf.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{folder}: no weights in the checkpoint for {left[:5]}")
    hf.name_or_path = hf.config.name_or_path = str(folder)
    return hf.eval()
