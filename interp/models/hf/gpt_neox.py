"""GPT-NeoX / Pythia from Hugging Face (`GPTNeoXForCausalLM`): config and parameter-name mapping."""

from __future__ import annotations

from typing import Any

import torch

_NEOX_LAYER_KEYS = {
    "input_layernorm": "ln1",
    "post_attention_layernorm": "ln2",
    "attention.query_key_value": "attn.qkv",
    "attention.dense": "attn.out",
    "mlp.dense_h_to_4h": "mlp.fc_in",
    "mlp.dense_4h_to_h": "mlp.fc_out",
}


def transformer_config_from_gpt_neox(hf_config) -> Any:
    """Our `TransformerConfig` for a Hugging Face `GPTNeoXConfig` (old and new rotary fields)."""
    from interp.models.transformer import TransformerConfig

    rope = getattr(hf_config, "rope_parameters", None) or {}
    rotary_pct = rope.get("partial_rotary_factor", getattr(hf_config, "rotary_pct", 1.0))
    rotary_base = rope.get("rope_theta", getattr(hf_config, "rotary_emb_base", 10000.0))
    if not getattr(hf_config, "attention_bias", True):
        raise ValueError("GPT-NeoX checkpoints without attention biases are not supported")
    return TransformerConfig(
        d_vocab=hf_config.vocab_size,
        d_model=hf_config.hidden_size,
        n_layers=hf_config.num_hidden_layers,
        n_heads=hf_config.num_attention_heads,
        d_mlp=hf_config.intermediate_size,
        n_ctx=hf_config.max_position_embeddings,
        positional="rope",
        rotary_pct=rotary_pct,
        rotary_base=float(rotary_base),
        parallel_residual=hf_config.use_parallel_residual,
        act_fn=hf_config.hidden_act,
        layer_norm_eps=hf_config.layer_norm_eps,
        tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
    )


def gpt_neox_state_to_interp(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a `GPTNeoXForCausalLM` state dict to ours (buffers such as rotary inv_freq are dropped)."""
    out = {}
    for key, value in state.items():
        if key == "gpt_neox.embed_in.weight":
            out["embed.weight"] = value
        elif key in ("embed_out.weight", "lm_head.weight"):  # transformers 5 renamed embed_out
            out["unembed.weight"] = value
        elif key.startswith("gpt_neox.final_layer_norm."):
            out["ln_final." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("gpt_neox.layers."):
            _, _, layer, rest = key.split(".", 3)
            module, param = rest.rsplit(".", 1)
            if module in _NEOX_LAYER_KEYS:
                out[f"blocks.{layer}.{_NEOX_LAYER_KEYS[module]}.{param}"] = value
    return out


def from_hf_gpt_neox(hf_model):
    """A loaded Hugging Face `GPTNeoXForCausalLM` -> our `HookedTransformer` with the same weights."""
    from interp.models.loading import load_state  # loading imports this module: import at call time
    from interp.models.transformer import HookedTransformer

    model = HookedTransformer(transformer_config_from_gpt_neox(hf_model.config))
    load_state(model, gpt_neox_state_to_interp(hf_model.state_dict()), type(hf_model).__name__)
    return model.eval()
