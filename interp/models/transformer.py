"""A small hooked decoder-only transformer with the paper's positional variants.

Classes in reading order: positional helpers, attention, MLP, block, config, model. The block can
use GPT-NeoX's layout (parallel attention + MLP, partial rotary) so Pythia weights load into it
unchanged (`interp.models.loading.from_hf_gpt_neox`). Hook names follow TransformerLens.

Attention has two paths, chosen per call: PyTorch's fused `scaled_dot_product_attention` when
nobody is looking at the attention scores or pattern, and an explicit reference path that
materialises them (and runs their hooks) otherwise. Both are tested against each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from interp.config import Config
from interp.models.base import Hook, HookedModel

POSITIONAL = ("rope", "nope", "alibi", "hard_alibi")
ACTIVATIONS = {"gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu}


def alibi_slopes(n_heads: int) -> Tensor:
    """Press et al.'s ALiBi head slopes: 2^(-8/n), 2^(-16/n), ... (interpolated for non powers of 2)."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return torch.tensor(power_of_2(n_heads))
    closest = 2 ** math.floor(math.log2(n_heads))
    extra = alibi_slopes(2 * closest)[0::2][: n_heads - closest]
    return torch.cat([torch.tensor(power_of_2(closest)), extra])


def attention_bias(cfg: TransformerConfig, n_pos: int, device=None) -> Tensor | None:
    """Additive bias [H, Pq, Pk] (0 or -inf, or ALiBi's linear penalty), causal mask included.

    None for `rope`/`nope`, whose only constraint is causality (the fused kernel handles it).
    Hard-ALiBi: head i < n_hard_alibi_heads sees only the last i + 1 tokens (keys q-i..q); the
    other heads see every earlier token with no positional signal at all.
    """
    if cfg.positional in ("rope", "nope"):
        return None
    q = torch.arange(n_pos, device=device)[:, None]
    distance = (q - torch.arange(n_pos, device=device)[None, :]).float()  # [Pq, Pk], >= 0 on the past
    causal = distance >= 0
    if cfg.positional == "alibi":
        bias = -alibi_slopes(cfg.n_heads).to(device)[:, None, None] * distance
        return bias.masked_fill(~causal, float("-inf"))
    window = torch.full((cfg.n_heads,), float(n_pos), device=device)  # unlimited for NoPE heads
    window[: cfg.hard_alibi_heads] = torch.arange(cfg.hard_alibi_heads, device=device).float()
    allowed = causal & (distance <= window[:, None, None])
    return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))


def rotary_cos_sin(n_pos: int, rotary_dim: int, base: float, device=None) -> tuple[Tensor, Tensor]:
    """GPT-NeoX rotary tables [P, rotary_dim] (frequencies repeated, for `rotate_half`)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, device=device).float() / rotary_dim))
    freqs = torch.arange(n_pos, device=device).float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first `rotary_dim` features of x [B, P, H, Dh]; the rest pass (partial rotary)."""
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    x1, x2 = x_rot[..., : r // 2], x_rot[..., r // 2 :]
    rotated = torch.cat([-x2, x1], dim=-1)
    cos, sin = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
    return torch.cat([x_rot * cos + rotated * sin, x_pass], dim=-1)


class LayerNorm(nn.LayerNorm):
    """LayerNorm with a hook; `enabled=False` (normalization="none") makes it a hooked identity."""

    def __init__(self, d: int, eps: float, enabled: bool = True):
        super().__init__(d, eps=eps, elementwise_affine=enabled)
        self.enabled = enabled
        self.hook_normalized = Hook()  # [batch, pos, d_model]

    def forward(self, x: Tensor) -> Tensor:
        return self.hook_normalized(super().forward(x) if self.enabled else x)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        h, dh = cfg.n_heads, cfg.d_head
        # Fused projection laid out per head as [q | k | v], exactly as GPT-NeoX's query_key_value.
        self.qkv = nn.Linear(cfg.d_model, 3 * h * dh)
        self.out = nn.Linear(h * dh, cfg.d_model)
        self.hook_q = Hook()  # [batch, pos, head, d_head]
        self.hook_k = Hook()  # [batch, pos, head, d_head]
        self.hook_v = Hook()  # [batch, pos, head, d_head]
        self.hook_rot_q = Hook()  # [batch, pos, head, d_head], after rotary (rope only)
        self.hook_rot_k = Hook()  # [batch, pos, head, d_head], after rotary (rope only)
        self.hook_attn_scores = Hook()  # [batch, head, query_pos, key_pos], masked entries -inf
        self.hook_pattern = Hook()  # [batch, head, query_pos, key_pos]
        self.hook_z = Hook()  # [batch, pos, head, d_head]

    def forward(self, x: Tensor, bias: Tensor | None, rotary: tuple[Tensor, Tensor] | None) -> Tensor:
        b, p, _ = x.shape
        cfg = self.cfg
        qkv = self.qkv(x).view(b, p, cfg.n_heads, 3 * cfg.d_head)
        q, k, v = qkv.chunk(3, dim=-1)  # each [B, P, H, Dh]
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if rotary is not None:
            q = self.hook_rot_q(apply_rotary(q, *rotary))
            k = self.hook_rot_k(apply_rotary(k, *rotary))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, P, Dh]
        eager = cfg.attn_impl == "eager" or self.hook_attn_scores.active or self.hook_pattern.active
        if eager:  # reference path: materialise scores and pattern so hooks can read or edit them
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(cfg.d_head)
            if bias is None:
                causal = torch.ones(p, p, dtype=torch.bool, device=x.device).tril()
                scores = scores.masked_fill(~causal, float("-inf"))
            else:
                scores = scores + bias.to(scores.dtype)
            scores = self.hook_attn_scores(scores)
            pattern = self.hook_pattern(torch.softmax(scores.float(), dim=-1).to(v.dtype))
            z = pattern @ v
        else:  # fast path: fused kernel, same math
            mask = None if bias is None else bias.to(q.dtype)
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=bias is None)
        z = self.hook_z(z.transpose(1, 2))  # [B, P, H, Dh]
        return self.out(z.reshape(b, p, -1))


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.fc_out = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.act = ACTIVATIONS[cfg.act_fn]
        self.hook_pre = Hook()  # [batch, pos, d_mlp]
        self.hook_post = Hook()  # [batch, pos, d_mlp]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(self.hook_post(self.act(self.hook_pre(self.fc_in(x)))))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.parallel = cfg.parallel_residual
        self.ln1 = LayerNorm(cfg.d_model, cfg.layer_norm_eps, cfg.normalization == "layernorm")
        self.attn = Attention(cfg)
        self.ln2 = LayerNorm(cfg.d_model, cfg.layer_norm_eps, cfg.normalization == "layernorm")
        self.mlp = MLP(cfg)
        self.hook_resid_pre = Hook()  # [batch, pos, d_model]
        self.hook_attn_out = Hook()  # [batch, pos, d_model]
        if not self.parallel:  # a parallel block has no residual stream between attention and MLP
            self.hook_resid_mid = Hook()  # [batch, pos, d_model]
        self.hook_mlp_out = Hook()  # [batch, pos, d_model]
        self.hook_resid_post = Hook()  # [batch, pos, d_model]

    def forward(self, resid: Tensor, bias: Tensor | None, rotary) -> Tensor:
        resid = self.hook_resid_pre(resid)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid), bias, rotary))
        if self.parallel:  # GPT-NeoX: x + attn(ln1(x)) + mlp(ln2(x))
            mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid)))
            return self.hook_resid_post(resid + attn_out + mlp_out)
        resid = self.hook_resid_mid(resid + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid + mlp_out)


@dataclass
class TransformerConfig(Config):
    d_vocab: int = 30  # tokens; 26 letters + 4 symbols for the paper's tasks
    d_model: int = 128  # residual stream width
    n_layers: int = 2  # the paper's copy construction needs 2
    n_heads: int = 4
    d_head: int | None = None  # default d_model // n_heads
    d_mlp: int | None = None  # default 4 * d_model
    n_ctx: int = 2048  # longest input accepted; no learned positions, so only a guard
    positional: str = "rope"  # rope | nope | alibi | hard_alibi (paper, Section 5)
    hard_alibi_heads: int | None = None  # Hard-ALiBi heads with windows 1..m; default n_heads // 2
    rotary_pct: float = 1.0  # fraction of each head's dims rotated (Pythia: 0.25)
    rotary_base: float = 10000.0
    parallel_residual: bool = False  # GPT-NeoX/Pythia block layout
    act_fn: str = "gelu"  # gelu | gelu_new | relu
    layer_norm_eps: float = 1e-5
    normalization: str = "layernorm"  # layernorm | none (hand-built circuits such as the hash-copy model)
    tie_embeddings: bool = False  # Pythia unties them
    attn_impl: str = "auto"  # auto: fused unless scores/pattern are hooked; eager: always materialise
    init_std: float = 0.02

    def __post_init__(self):
        if self.positional not in POSITIONAL:
            raise ValueError(
                f"unknown positional variant {self.positional!r}; allowed: {', '.join(POSITIONAL)}"
            )
        if self.attn_impl not in ("auto", "eager"):
            raise ValueError(f"attn_impl={self.attn_impl!r} is not allowed; use 'auto' or 'eager'")
        if self.normalization not in ("layernorm", "none"):
            raise ValueError(
                f"normalization={self.normalization!r} is not allowed; use 'layernorm' or 'none'"
            )
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"act_fn={self.act_fn!r} is not allowed; use {', '.join(ACTIVATIONS)}")
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
            self.d_head = self.d_model // self.n_heads
        self.d_mlp = self.d_mlp or 4 * self.d_model
        if self.hard_alibi_heads is None:
            self.hard_alibi_heads = self.n_heads // 2 if self.positional == "hard_alibi" else 0
        if not 0 <= self.hard_alibi_heads <= self.n_heads:
            raise ValueError(f"hard_alibi_heads={self.hard_alibi_heads} must be in 0..n_heads={self.n_heads}")

    @property
    def rotary_dim(self) -> int:
        return int(self.d_head * self.rotary_pct) // 2 * 2


class HookedTransformer(HookedModel):
    """Decoder-only transformer: `forward(tokens [B, P]) -> logits [B, P, d_vocab]`.

    >>> model = HookedTransformer(TransformerConfig(positional="hard_alibi"))
    >>> logits, cache = model.run_with_cache(tokens)
    >>> cache["blocks.1.attn.hook_pattern"].shape  # [batch, head, query_pos, key_pos]
    """

    arch: ClassVar[str] = "transformer"
    config_class: ClassVar[type] = TransformerConfig

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.hook_embed = Hook()  # [batch, pos, d_model]
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_final = LayerNorm(cfg.d_model, cfg.layer_norm_eps, cfg.normalization == "layernorm")
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False)
        if cfg.tie_embeddings:
            self.unembed.weight = self.embed.weight
        self.apply(self._init_weights)
        self.setup()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.cfg.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        self.check_tokens(tokens)
        p, device = tokens.shape[1], tokens.device
        bias = attention_bias(self.cfg, p, device)
        rotary = None
        if self.cfg.positional == "rope" and self.cfg.rotary_dim > 0:
            rotary = rotary_cos_sin(p, self.cfg.rotary_dim, self.cfg.rotary_base, device)
        resid = self.hook_embed(self.embed(tokens))
        for block in self.blocks:
            resid = block(resid, bias, rotary)
        return self.unembed(self.ln_final(resid))
