"""Hybrid models: a stack of Mamba-1, Mamba-2, attention and MLP layers in any order (the design of
Jamba, Zamba2, Nemotron-H, Bamba; the paper's suggested fix for copying).

    cfg = HybridConfig(layers=["mamba", "mamba", "attn", "mamba"], positional="hard_alibi")

Every layer is pre-norm with a residual, x + Layer(RMSNorm(x)), and is built from the existing blocks:

    "mamba"   Mamba-1 (`interp.models.mamba.MambaBlock`): blocks.{l}.norm, blocks.{l}.mixer.* (hook_ssm_state ...)
    "mamba2"  Mamba-2 (`interp.models.mamba2.Mamba2Block`): blocks.{l}.norm, blocks.{l}.mixer.*
    "attn"    attention only (`interp.models.transformer.Attention`, positional = rope | nope | alibi |
              hard_alibi): blocks.{l}.norm, blocks.{l}.attn.hook_q|k|v|attn_scores|pattern|z, hook_attn_out
    "mlp"     an MLP: blocks.{l}.norm, blocks.{l}.mlp.hook_pre|hook_post, hook_mlp_out

plus blocks.{l}.hook_resid_pre / hook_resid_post in every layer, hook_embed and ln_final.* (RMSNorm).
This is Nemotron-H's layout exactly (one mixer or MLP per layer, RMSNorm everywhere, attention without
positional encoding), so `interp.models.hf.nemotron_h` loads its checkpoints unchanged. Each hook
declares its axes, so analyses find the attention heads in the "attn" layers and the recurrent states in
the SSM layers by asking for hooks, layer by layer (`interp.hooks`).

Memory: the SSM layers keep a fixed state, the attention layers a key/value cache that grows with the
input, so `state_size()` is None. Decoding (`prefill`/`decode_step`, used by `interp.generation`) keeps
both: per layer (conv window, SSM state) or (keys, values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from interp.config import Config
from interp.models.base import Hook, HookedModel
from interp.models.mamba import POSITION_LOCAL as SSM_POSITION_LOCAL
from interp.models.mamba import (
    MambaBlock,
    MambaConfig,
    RMSNorm,
    init_mamba_mixer,
    resume_block,
    resume_ssm,
    seen_recorder,
    seen_states,
    ssm_recorders,
)
from interp.models.mamba2 import Mamba2Block, Mamba2Config, init_mamba2_mixer
from interp.models.ssd import layer_attention
from interp.models.transformer import POSITION_LOCAL as TRANSFORMER_POSITION_LOCAL
from interp.models.transformer import (
    Attention,
    KVCache,
    TransformerConfig,
    bias_and_rotary,
    kv_slots,
)

LAYER_KINDS = ("mamba", "mamba2", "attn", "mlp")
SSM_KINDS = ("mamba", "mamba2")
SCANS = ("auto", "reference", "chunked")  # the scan implementations both Mamba generations have
MLP_ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "relu2": lambda x: F.relu(x).square(),  # Nemotron-H's squared ReLU
    "silu": F.silu,
}


def parse_layers(spec: str | list[str]) -> list[str]:
    """ "mamba,attn" or ["mamba", "attn"] -> ["mamba", "attn"]; unknown names raise, listing the allowed ones."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    if not names:
        raise ValueError(f"layers must name at least one layer; allowed kinds: {', '.join(LAYER_KINDS)}")
    for i, name in enumerate(names):
        if name not in LAYER_KINDS:
            raise ValueError(
                f"unknown layer kind {name!r} at position {i} of layers {names}; allowed: {', '.join(LAYER_KINDS)}"
            )
    return names


@dataclass
class HybridConfig(Config):
    zero_ok: ClassVar[frozenset[str]] = frozenset(
        {"hard_alibi_heads"}
    )  # 0: no Hard-ALiBi heads, as in TransformerConfig

    d_vocab: int = 30  # tokens; 26 letters + 4 symbols for the paper's tasks
    d_model: int = 128
    layers: list[str] = field(default_factory=lambda: ["mamba", "attn"])  # one kind per layer (LAYER_KINDS)
    # attention layers
    n_heads: int = 4
    d_head: int | None = None  # default d_model // n_heads
    positional: str = "nope"  # rope | nope | alibi | hard_alibi; the SSM layers already carry position
    hard_alibi_heads: int | None = None  # Hard-ALiBi heads with windows 1..m; default n_heads // 2
    rotary_pct: float = 1.0
    rotary_base: float = 10000.0
    n_ctx: int = 2048  # longest input accepted (a guard, no learned positions)
    # MLP layers
    d_mlp: int | None = None  # default 4 * d_model
    mlp_act: str = "gelu"  # gelu | relu | relu2 | silu
    mlp_bias: bool = True
    # SSM layers (Mamba-1 and Mamba-2 alike)
    d_state: int = 16  # N per channel (Mamba-1) or per head channel (Mamba-2)
    d_conv: int = 4
    expand: int = 2
    head_dim: int = 32  # Mamba-2 only: channels per SSM head
    n_groups: int = 1  # Mamba-2 only: B/C groups
    dt_limit_min: float = 0.0  # Mamba-2 only: dt clamp after softplus
    dt_limit_max: float | None = None
    scan: str = "auto"  # auto | reference | chunked, for every SSM layer
    chunk_size: int | None = None
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.layers, str):  # "mamba,attn", as the command line gives it
            self.layers = parse_layers(self.layers)
        if not isinstance(self.layers, (list, tuple)) or not all(isinstance(s, str) for s in self.layers):
            raise ValueError(
                f"layers must be a list of layer kinds ({', '.join(LAYER_KINDS)}), got {self.layers!r}"
            )
        self.layers = parse_layers(self.layers)
        if self.scan not in SCANS:
            raise ValueError(f"unknown scan {self.scan!r}; allowed: {', '.join(SCANS)}")
        if self.mlp_act not in MLP_ACTIVATIONS:
            raise ValueError(f"mlp_act={self.mlp_act!r} is not allowed; use {', '.join(MLP_ACTIVATIONS)}")
        # build the sub-configs now, so that their errors (d_model not divisible by n_heads, ...) surface here
        for kind in set(self.layers) - {"mlp"}:
            self.sub_config(kind)
        self.d_mlp = self.d_mlp or 4 * self.d_model

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_inner(self) -> int:
        """The SSM layers' channel count, expand * d_model (Mamba-1 and Mamba-2 alike)."""
        return self.expand * self.d_model

    def layers_of(self, kind: str) -> list[int]:
        """Indices of the layers of one kind: `cfg.layers_of("attn")`."""
        return [i for i, k in enumerate(self.layers) if k == kind]

    def sub_config(self, kind: str) -> MambaConfig | Mamba2Config | TransformerConfig:
        """The config the existing block of `kind` is built from ("mamba", "mamba2" or "attn")."""
        common = dict(d_vocab=self.d_vocab, d_model=self.d_model, n_layers=self.n_layers)
        if kind == "mamba":
            return MambaConfig(
                **common, d_state=self.d_state, d_conv=self.d_conv, expand=self.expand, scan=self.scan,
                chunk_size=self.chunk_size, rms_norm_eps=self.rms_norm_eps,
            )  # fmt: skip
        if kind == "mamba2":
            return Mamba2Config(
                **common, d_state=self.d_state, d_conv=self.d_conv, expand=self.expand, head_dim=self.head_dim,
                n_groups=self.n_groups, dt_limit_min=self.dt_limit_min, dt_limit_max=self.dt_limit_max,
                scan=self.scan, chunk_size=self.chunk_size, rms_norm_eps=self.rms_norm_eps,
            )  # fmt: skip
        if kind == "attn":
            return TransformerConfig(
                **common, n_heads=self.n_heads, d_head=self.d_head, positional=self.positional,
                hard_alibi_heads=self.hard_alibi_heads, rotary_pct=self.rotary_pct, rotary_base=self.rotary_base,
                n_ctx=self.n_ctx,
            )  # fmt: skip
        raise ValueError(f"no sub-config for layer kind {kind!r}; allowed: mamba, mamba2, attn")

    # what TransformerLens's utilities and the hook contract read
    normalization_type = "RMS"
    n_key_value_heads = None
    attn_only = False
    use_attn_result = False
    use_split_qkv_input = False
    use_hook_mlp_in = False
    default_prepend_bos = False


class AttentionLayer(nn.Module):
    """x + Attention(RMSNorm(x)), the transformer's attention without its MLP."""

    def __init__(self, cfg: TransformerConfig, eps: float):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, eps)
        self.attn = Attention(cfg)
        self.hook_resid_pre = Hook("batch pos d_model")  # [batch, pos, d_model]
        self.hook_attn_out = Hook("batch pos d_model")  # [batch, pos, d_model]
        self.hook_resid_post = Hook("batch pos d_model")  # [batch, pos, d_model]

    def forward(self, x: Tensor, bias: Tensor | None, rotary, past: list[Tensor] | None = None) -> Tensor:
        x = self.hook_resid_pre(x)
        return self.hook_resid_post(x + self.hook_attn_out(self.attn(self.norm(x), bias, rotary, past)))


class MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int, act: str, bias: bool):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_mlp, bias=bias)
        self.fc_out = nn.Linear(d_mlp, d_model, bias=bias)
        self.act = MLP_ACTIVATIONS[act]
        self.hook_pre = Hook("batch pos d_mlp")  # [batch, pos, d_mlp]
        self.hook_post = Hook("batch pos d_mlp")  # [batch, pos, d_mlp]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(self.hook_post(self.act(self.hook_pre(self.fc_in(x)))))


class MLPLayer(nn.Module):
    """x + MLP(RMSNorm(x))."""

    def __init__(self, cfg: HybridConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.mlp = MLP(cfg.d_model, cfg.d_mlp, cfg.mlp_act, cfg.mlp_bias)
        self.hook_resid_pre = Hook("batch pos d_model")  # [batch, pos, d_model]
        self.hook_mlp_out = Hook("batch pos d_model")  # [batch, pos, d_model]
        self.hook_resid_post = Hook("batch pos d_model")  # [batch, pos, d_model]

    def forward(self, x: Tensor) -> Tensor:
        x = self.hook_resid_pre(x)
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.norm(x))))


@dataclass
class HybridCache:
    """What a hybrid remembers while decoding: `ssm[l]` = (conv window, SSM state) of SSM layer l (None for
    other layers), `kv` the attention layers' keys and values (`kv.layers[l]`) and padding mask."""

    ssm: list[tuple[Tensor, Tensor] | None]
    kv: KVCache
    n_tokens: int = 0


@dataclass
class HybridResume:
    """What `HookedHybrid.forward_from` restarts from: one recorded forward of B sequences; per layer
    (None where the layer has none) its input, SSM conv inputs and states as `MambaResume`'s, and the
    attention layers' keys and values (`[keys, values]`, each `[B, H, P, Dh]`, after rotary)."""

    logits: Tensor  # [B, P, d_vocab]
    resid: list[Tensor]  # blocks.{l}.hook_resid_pre [B, P, d_model]
    conv_in: list[Tensor | None]
    ssm: list[Tensor | None]
    kv: list[list[Tensor] | None]
    mask: Tensor | None  # [B, P] 1 = token, 0 = padding (the model's dtype); None: no padding
    key_mask: Tensor | None  # [B, P] True = token
    seen: list[Tensor | None]  # the SSM layers' hook_ssm_state inputs, as `MambaResume.seen`
    # the attention layers' key/value buffers, kept across passes (`transformer.kv_slots`); not an init
    # field, so dataclasses.replace(state) starts without them
    slots: dict = field(default_factory=dict, init=False, repr=False)


class HookedHybrid(HookedModel):
    """A hybrid of SSM, attention and MLP layers; see the module docstring.

    >>> model = HookedHybrid(HybridConfig(layers=["mamba", "attn"], positional="hard_alibi"))
    >>> logits, cache = model.run_with_cache(tokens)
    >>> cache["blocks.1.attn.hook_pattern"].shape  # [batch, head, query_pos, key_pos]
    >>> cache["blocks.0.mixer.hook_ssm_state"].shape  # [batch, d_inner, pos, d_state]
    """

    arch: ClassVar[str] = "hybrid"
    config_class: ClassVar[type] = HybridConfig

    def __init__(self, cfg: HybridConfig):
        super().__init__()
        self.cfg = cfg
        self.attn_cfg = cfg.sub_config("attn") if "attn" in cfg.layers else None
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.hook_embed = Hook("batch pos d_model")  # [batch, pos, d_model]
        self.blocks = nn.ModuleList([self._make_layer(kind) for kind in cfg.layers])
        self.ln_final = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False)
        nn.init.normal_(self.embed.weight, std=cfg.init_std)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.setup()

    def _make_layer(self, kind: str) -> nn.Module:
        cfg = self.cfg
        if kind == "mamba":
            sub = cfg.sub_config("mamba")
            block = MambaBlock(sub)
            init_mamba_mixer(block.mixer, sub)
        elif kind == "mamba2":
            sub = cfg.sub_config("mamba2")
            block = Mamba2Block(sub)
            init_mamba2_mixer(block.mixer, sub)
        elif kind == "attn":
            block = AttentionLayer(self.attn_cfg, cfg.rms_norm_eps)
        else:
            block = MLPLayer(cfg)
        if kind in ("attn", "mlp"):  # the transformer's initialisation
            for module in block.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=cfg.init_std)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
        return block

    def _attention_inputs(self, b: int, p: int, key_mask: Tensor | None, kv: KVCache | None, device):
        """(bias, rotary) for the attention layers: the transformer's `bias_and_rotary` with the attention
        layers' config, after extending the key mask by the cache."""
        if self.attn_cfg is None:
            return None, None
        n_past = kv.n_tokens if kv is not None else 0
        if kv is not None:
            key_mask = kv.extend_mask(key_mask, b, p, device)
        return bias_and_rotary(self.attn_cfg, n_past, n_past + p, key_mask, device)

    def forward(
        self,
        tokens: Tensor,
        attention_mask: Tensor | None = None,
        return_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> Tensor | tuple[Tensor, HybridCache]:
        """tokens [B, P] -> logits [B, P, d_vocab] (and, with return_cache, the decoding state).

        attention_mask [B, P] (1 = token, 0 = left padding), as in Hugging Face: padding never enters an
        SSM state and is never attended to. logits_to_keep > 0: the last positions' logits only.
        """
        self.check_tokens(tokens)
        self.check_logits_to_keep(logits_to_keep)
        if return_cache:
            self.check_left_padding(attention_mask)
        b, p = tokens.shape
        if p > self.cfg.n_ctx:
            raise ValueError(f"{p} tokens exceed the model's context n_ctx={self.cfg.n_ctx}")
        mask = key_mask = None
        self.check_attention_mask(tokens, attention_mask)
        if attention_mask is not None:
            mask, key_mask = attention_mask.to(self.embed.weight.dtype), attention_mask.bool()
        kv = KVCache(layers=[[] for _ in self.cfg.layers]) if return_cache else None
        bias, rotary = self._attention_inputs(b, p, key_mask, kv, tokens.device)
        ssm: list = [None] * self.cfg.n_layers
        x = self.hook_embed(self.embed(tokens))
        for layer, (kind, block) in enumerate(zip(self.cfg.layers, self.blocks, strict=True)):
            if kind in SSM_KINDS:
                states: list | None = [] if return_cache else None
                x = block(x, states, mask)
                if states:
                    ssm[layer] = states[0]
            elif kind == "attn":
                x = block(x, bias, rotary, kv.layers[layer] if kv is not None else None)
            else:
                x = block(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(self.ln_final(x)).float()
        if not return_cache:
            return logits
        kv.n_tokens = p
        return logits, HybridCache(ssm=ssm, kv=kv, n_tokens=p)

    # ---- decoding -------------------------------------------------------------------------------
    def prefill(self, prompt: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, HybridCache]:
        """For `generate_greedy`: the prompt in one pass -> (last logits [B, d_vocab], decoding state)."""
        logits, cache = self(prompt, attention_mask, return_cache=True, logits_to_keep=1)
        return logits[:, -1], cache

    @torch.no_grad()
    def decode_step(self, token: Tensor, cache: HybridCache) -> tuple[Tensor, HybridCache]:
        """For `generate_greedy`: token [B] -> (logits [B, d_vocab], the state after it). SSM layers run in
        step mode (no hooks), attention layers extend their key/value cache (their hooks fire, P = 1)."""
        if not isinstance(token, Tensor) or token.ndim != 1:
            raise ValueError(
                f"decode_step takes one token per sequence [batch]; got {getattr(token, 'shape', token)}"
            )
        if cache.n_tokens >= self.cfg.n_ctx:
            raise ValueError(
                f"the cache already holds n_ctx={self.cfg.n_ctx} tokens; the model's context is full"
            )
        self.check_tokens(token[:, None])
        bias, rotary = self._attention_inputs(token.shape[0], 1, None, cache.kv, token.device)
        x = self.embed(token)  # [B, d_model]
        ssm = list(cache.ssm)
        for layer, (kind, block) in enumerate(zip(self.cfg.layers, self.blocks, strict=True)):
            if kind in SSM_KINDS:  # MambaBlock.step / Mamba2Block.step
                x, conv, h = block.step(x, *ssm[layer])
                ssm[layer] = (conv, h)
            elif kind == "attn":
                x = block(x[:, None], bias, rotary, cache.kv.layers[layer])[:, 0]
            else:
                x = block(x[:, None])[:, 0]
        cache.kv.n_tokens += 1
        logits = self.lm_head(self.ln_final(x)).float()
        return logits, HybridCache(ssm=ssm, kv=cache.kv, n_tokens=cache.n_tokens + 1)

    # ---- resuming a forward (`interp.analysis.patching.reuse`) -------------------------------------
    def resume_state(self, tokens: Tensor, attention_mask: Tensor | None = None) -> HybridResume:
        """One forward of tokens [B, P] recording what `forward_from` restarts from: each layer's input,
        the SSM layers' conv inputs and states, the attention layers' keys and values (after rotary)."""
        mask = None if attention_mask is None else attention_mask.to(self.embed.weight.dtype)
        resid, conv_in, ssm, keys, values, seen = {}, {}, {}, {}, {}, {}
        rope = self.attn_cfg is not None and self.attn_cfg.uses_rotary
        inputs, hooks = [], []  # each layer's input before any user hook edits it (see `record_resume`)
        for i, (kind, block) in enumerate(zip(self.cfg.layers, self.blocks, strict=True)):
            inputs.append(
                (f"blocks.{i}.hook_resid_pre", lambda act, hook, i=i: resid.__setitem__(i, act.clone()))
            )
            if kind in SSM_KINDS:
                inputs.append(seen_recorder(f"blocks.{i}.mixer", seen, i))
                hooks += ssm_recorders(block.mixer, f"blocks.{i}.mixer", mask, conv_in, ssm, i)
            elif kind == "attn":
                for name, into in (("rot_k" if rope else "k", keys), ("v", values)):
                    record = lambda act, hook, i=i, into=into: into.__setitem__(i, act.transpose(1, 2))  # noqa: E731
                    hooks.append((f"blocks.{i}.attn.hook_{name}", record))
        with torch.no_grad(), self.hooks_first(inputs):
            logits = self.run_with_hooks(tokens, attention_mask, fwd_hooks=hooks)
        layers = range(self.cfg.n_layers)
        return HybridResume(
            logits,
            [resid[i] for i in layers],
            [conv_in.get(i) for i in layers],
            [ssm.get(i) for i in layers],
            [[keys[i], values[i]] if i in keys else None for i in layers],
            mask,
            None if attention_mask is None else attention_mask.bool(),
            [seen_states(seen, i) for i in layers],
        )

    # per kind of layer, the hooks where a patch at position p changes only position p of that layer
    POSITION_LOCAL: ClassVar[dict[str, frozenset[str]]] = {
        "mamba": SSM_POSITION_LOCAL,
        "mamba2": SSM_POSITION_LOCAL,
        # the transformer's, less its MLP and resid_mid hooks (an attention layer has none)
        "attn": frozenset(
            h
            for h in TRANSFORMER_POSITION_LOCAL
            if h.startswith("attn.") or h in ("hook_attn_out", "hook_resid_post")
        ),
    }

    def position_local(self, hook: str) -> bool:
        """Whether a patch of `hook` at position p changes only position p of its own layer (so
        `forward_from(..., single=True)` may run that layer on position p alone); every hook of an MLP
        layer is."""
        parts = hook.split(".", 2)
        if (
            parts[0] != "blocks"
            or len(parts) < 3
            or not parts[1].isdigit()
            or int(parts[1]) >= self.cfg.n_layers
        ):
            return False
        kind = self.cfg.layers[int(parts[1])]
        return kind == "mlp" or parts[2] in self.POSITION_LOCAL[kind]

    def forward_from(
        self,
        state: HybridResume,
        layer: int,
        pos: int,
        copies: int = 1,
        single: bool = False,
        patched_hooks: frozenset[str] = frozenset(),
    ) -> Tensor:
        """Logits [copies * B, P - pos, d_vocab] of the recorded forward resumed at layer `layer`, position
        `pos` (`interp.models.mamba.resume_ssm`): SSM layers continue from their recorded conv window
        and state, attention layers from their recorded keys and values; single: layer `layer` runs on
        position `pos` alone; patched_hooks: the hooks the caller patches (see `resume_ssm`)."""
        device = state.resid[0].device
        key_mask = None if state.key_mask is None else state.key_mask.repeat(copies, 1)

        def run(i: int, x: Tensor, end: int, seen: Tensor | None) -> Tensor:  # layer i, positions pos..end-1
            kind, block = self.cfg.layers[i], self.blocks[i]
            if kind in SSM_KINDS:
                return resume_block(
                    block, state.conv_in[i], state.ssm[i], state.mask, x, pos, end, copies, seen
                )
            if kind == "attn":
                mask = None if key_mask is None else key_mask[:, :end]
                bias, rotary = bias_and_rotary(self.attn_cfg, pos, end, mask, device)
                return block(x, bias, rotary, kv_slots(state.slots, state.kv[i], i, copies).begin(pos))
            return block(x)

        return resume_ssm(self, state, layer, pos, copies, single, run, patched_hooks)

    def ssm_attention(self, tokens: Tensor) -> dict[int, Tensor]:
        """The exact hidden attention matrices of the Mamba-2 layers: {layer: [B, H, P, P]}, as
        `HookedMamba2.ssm_attention` (`interp.models.ssd.layer_attention`)."""
        return layer_attention(self, tokens, self.cfg.layers_of("mamba2"))
