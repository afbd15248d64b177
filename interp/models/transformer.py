"""A small hooked decoder-only transformer with the paper's positional variants.

Classes in reading order: positional helpers, attention, MLP, block, config, model. The block can
use GPT-NeoX's layout (parallel attention + MLP, partial rotary) so Pythia weights load into it
unchanged (`interp.models.hf.gpt_neox.from_hf_gpt_neox`). Hook names follow TransformerLens.

Attention has two paths, chosen per call: PyTorch's fused `scaled_dot_product_attention` when
nobody is looking at the attention scores or pattern, and an explicit reference path that
materialises them (and runs their hooks) otherwise. Both are tested against each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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


def attention_bias(
    cfg: TransformerConfig, n_pos: int, device=None, key_mask: Tensor | None = None, n_past: int = 0
) -> Tensor | None:
    """What each query may attend to, for queries at positions n_past..n_pos-1 over keys 0..n_pos-1.

    rope / nope: a boolean mask (True = attend) [Pq, Pk], or None when causality is the only
    constraint and there is no cache (the fused kernel's `is_causal` handles it). alibi / hard_alibi: an
    additive bias [H, Pq, Pk] (0 or -inf, or ALiBi's linear penalty). Hard-ALiBi: head i <
    n_hard_alibi_heads sees only the last i + 1 tokens (keys q-i..q); the other heads see every earlier
    token with no positional signal at all.

    key_mask [B, n_pos] (True = real token) adds padding: real queries never attend to padding keys
    and the result gets a batch axis ([B, 1 or H, Pq, Pk]). A padding query may attend to earlier
    padding, so no row is empty (its output is never read). Distances are index differences, which
    left padding leaves unchanged between real tokens.
    """
    if cfg.positional in ("rope", "nope") and key_mask is None and n_past == 0:
        return None
    q = torch.arange(n_past, n_pos, device=device)[:, None]
    distance = q - torch.arange(n_pos, device=device)[None, :]  # [Pq, Pk], >= 0 on the past
    allowed = distance >= 0
    if cfg.positional == "hard_alibi":
        window = torch.full((cfg.n_heads,), n_pos, device=device)  # unlimited for NoPE heads
        window[: cfg.hard_alibi_heads] = torch.arange(cfg.hard_alibi_heads, device=device)
        allowed = allowed & (distance <= window[:, None, None])  # [H, Pq, Pk]
    if key_mask is not None:
        key_mask = key_mask.bool()
        query_is_pad = ~key_mask[:, n_past:, None]  # [B, Pq, 1]
        allowed = allowed & (key_mask[:, None, :] | query_is_pad)[:, None]  # [B, 1 or H, Pq, Pk]
    if cfg.positional in ("rope", "nope"):
        return allowed
    bias = torch.zeros(allowed.shape, device=device)
    if cfg.positional == "alibi":
        bias = bias - alibi_slopes(cfg.n_heads).to(device)[:, None, None] * distance.float()
    return bias.masked_fill(~allowed, float("-inf"))


def rotary_cos_sin(positions: Tensor, rotary_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """GPT-NeoX rotary tables [*positions.shape, rotary_dim] (frequencies repeated, for `rotate_half`)."""
    device = positions.device
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, device=device).float() / rotary_dim))
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first `rotary_dim` features of x [B, P, H, Dh]; the rest pass (partial rotary).

    cos, sin: [P, rotary_dim], or [B, P, rotary_dim] when positions differ per sequence (padding).
    GPT-NeoX's x * cos + rotate_half(x) * sin, half by half. Without autograd the halves are written
    into one output (no rotate_half tensor, no concatenation: 3x faster on CPU); `out=` is not
    differentiable, so training concatenates them.
    """
    r, h = cos.shape[-1], cos.shape[-1] // 2
    cos, sin = cos[..., None, :].to(x.dtype), sin[..., None, :].to(x.dtype)  # broadcast over heads
    x1, x2 = x[..., :h], x[..., h:r]
    if torch.is_grad_enabled() and (x.requires_grad or cos.requires_grad):
        rotated = [x1 * cos[..., :h] - x2 * sin[..., :h], x2 * cos[..., h:] + x1 * sin[..., h:]]
        return torch.cat(rotated + ([x[..., r:]] if r < x.shape[-1] else []), dim=-1)
    out = torch.empty_like(x)
    torch.mul(x1, cos[..., :h], out=out[..., :h]).sub_(x2 * sin[..., :h])  # bit for bit the same sums
    torch.mul(x2, cos[..., h:], out=out[..., h:r]).add_(x1 * sin[..., h:])
    if r < x.shape[-1]:
        out[..., r:] = x[..., r:]
    return out


class LayerNorm(nn.LayerNorm):
    """LayerNorm with a hook; `enabled=False` (normalization="none") makes it a hooked identity."""

    def __init__(self, d: int, eps: float, enabled: bool = True):
        super().__init__(d, eps=eps, elementwise_affine=enabled)
        self.enabled = enabled
        self.hook_normalized = Hook("batch pos d_model")  # [batch, pos, d_model]

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
        self.hook_q = Hook("batch pos head d_head")  # [batch, pos, head, d_head]
        self.hook_k = Hook("batch pos head d_head")  # [batch, pos, head, d_head]
        self.hook_v = Hook("batch pos head d_head")  # [batch, pos, head, d_head]
        self.hook_rot_q = Hook(
            "batch pos head d_head"
        )  # [batch, pos, head, d_head], after rotary (rope only)
        self.hook_rot_k = Hook(
            "batch pos head d_head"
        )  # [batch, pos, head, d_head], after rotary (rope only)
        self.hook_attn_scores = Hook(
            "batch head pos key_pos"
        )  # [batch, head, query_pos, key_pos], masked entries -inf
        self.hook_pattern = Hook("batch head pos key_pos")  # [batch, head, query_pos, key_pos]
        self.hook_z = Hook("batch pos head d_head")  # [batch, pos, head, d_head]

    # Per-head views of the fused weights in TransformerLens's layout (no copies, not in the state dict),
    # for TransformerLens's ActivationCache helpers (compute_head_results, stack_head_results, ...).
    def _qkv(self, which: int, bias: bool) -> Tensor:
        h, dh = self.cfg.n_heads, self.cfg.d_head
        if bias:
            return self.qkv.bias.view(h, 3, dh)[:, which]  # [head, d_head]
        return self.qkv.weight.view(h, 3, dh, -1)[:, which].transpose(1, 2)  # [head, d_model, d_head]

    W_Q = property(lambda self: self._qkv(0, False))
    W_K = property(lambda self: self._qkv(1, False))
    W_V = property(lambda self: self._qkv(2, False))
    b_Q = property(lambda self: self._qkv(0, True))
    b_K = property(lambda self: self._qkv(1, True))
    b_V = property(lambda self: self._qkv(2, True))
    W_O = property(
        lambda self: self.out.weight.T.reshape(self.cfg.n_heads, self.cfg.d_head, -1)
    )  # [h, dh, d]
    b_O = property(lambda self: self.out.bias)  # [d_model]

    def forward(
        self,
        x: Tensor,
        bias: Tensor | None,
        rotary: tuple[Tensor, Tensor] | None,
        past: list[Tensor] | KVSlots | None = None,
        known: Recorded | None = None,
        rows: Tensor | slice | None = None,
    ) -> Tensor:
        """x [B, P, d_model] -> [B, P, d_model]. `past` ([] or [keys, values], each [B, H, T, Dh]) is this
        layer's KV cache: earlier keys and values are prepended and the list is updated in place. A
        `KVSlots` (resumed passes) holds them in a buffer that the new ones are written into.

        known (with `KVSlots`): the recorded queries, keys and values of x's last T positions (`Recorded`);
        only the first P - T positions are projected (and their q/k/v hooks see only those).
        rows: the query positions (indices into P, or a slice of them) whose output is wanted
        -> [B, len(rows), d_model]."""
        b, p, _ = x.shape
        cfg = self.cfg
        if known is not None:
            m = p - known.q.shape[2]  # positions to compute
            x = x[:, :m]
            rotary = None if rotary is None else tuple(t[..., :m, :] for t in rotary)
        qkv = self.qkv(x).view(b, x.shape[1], cfg.n_heads, 3 * cfg.d_head)
        q, k, v = qkv.chunk(3, dim=-1)  # each [B, P, H, Dh]
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if rotary is not None:
            q = self.hook_rot_q(apply_rotary(q, *rotary))
            k = self.hook_rot_k(apply_rotary(k, *rotary))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, P, Dh]
        if isinstance(past, KVSlots):  # a resumed pass (`HookedTransformer.forward_from`)
            k, v = past.write(k, v, None if known is None else (known.k, known.v))
        elif past is not None:
            if past:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            past[:] = [k, v]
        eager = cfg.attn_impl == "eager" or self.hook_attn_scores.active or self.hook_pattern.active
        if known is not None and known.z is not None and m == 1 and not eager:
            z = one_key_changed(q, k, v, known, bias)  # [B, H, P, Dh]
            z = z if rows is None else z[:, :, rows]
        else:
            if known is not None:
                q = append_known(q, known.q)
            if rows is not None:
                q, bias = q[:, :, rows], query_rows(bias, rows, p, k.shape[2], x.device)
            z = self._attend(q, k, v, bias, eager)
        z = self.hook_z(z.transpose(1, 2))  # [B, P, H, Dh]
        return self.out(z.reshape(b, z.shape[1], cfg.n_heads * cfg.d_head))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, eager: bool) -> Tensor:
        """Queries [B, H, Pq, Dh] over keys/values [B, H, Pk, Dh] -> z [B, H, Pq, Dh]; bias None: causal."""
        if eager:  # reference path: materialise scores and pattern so hooks can read or edit them
            scores = self.hook_attn_scores(attention_scores(q, k, bias))
            pattern = self.hook_pattern(torch.softmax(scores.float(), dim=-1).to(v.dtype))
            return pattern @ v
        # fast path: fused kernel, same math
        return F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask(bias, q), is_causal=bias is None)


def attention_scores(q: Tensor, k: Tensor, bias: Tensor | None) -> Tensor:
    """Scores [B, H, Pq, Pk] of queries [B, H, Pq, Dh] over keys [B, H, Pk, Dh], masked entries -inf;
    bias: `attention_bias`'s (None: causal, the queries being the last Pq positions)."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if bias is None:
        return scores.masked_fill(~causal_mask(*scores.shape[-2:], q.device), float("-inf"))
    if bias.dtype == torch.bool:
        return scores.masked_fill(~bias, float("-inf"))
    return scores + bias.to(scores.dtype)


def query_rows(bias: Tensor | None, rows: Tensor | slice, pq: int, pk: int, device) -> Tensor:
    """`attention_bias`'s bias for the queries `rows` (indices into its Pq queries, the last Pq of Pk
    positions) only; None (causal) becomes the equivalent boolean mask."""
    return (causal_mask(pq, pk, device) if bias is None else bias)[..., rows, :]


def causal_mask(pq: int, pk: int, device) -> Tensor:
    """[Pq, Pk] True where query i (the last Pq of Pk positions) may attend to key j."""
    return torch.ones(pq, pk, dtype=torch.bool, device=device).tril(pk - pq)


def sdpa_mask(bias: Tensor | None, like: Tensor) -> Tensor | None:
    """`attention_bias`'s bias as `scaled_dot_product_attention`'s attn_mask (boolean, or like's dtype)."""
    return bias if bias is None or bias.dtype == torch.bool else bias.to(like.dtype)


def check_readout(readout: Tensor, n: int) -> None:
    """Raise unless readout is ascending distinct integer positions of 0..n-1 (`forward_from`)."""
    ok = (
        isinstance(readout, Tensor)
        and readout.ndim == 1
        and not readout.is_floating_point()
        and readout.dtype != torch.bool
        and bool((readout.diff() > 0).all())
        and (not readout.numel() or int(readout[0]) >= 0 and int(readout[-1]) < n)
    )
    if not ok:
        shown = readout.tolist() if isinstance(readout, Tensor) and readout.numel() <= 20 else readout
        raise ValueError(
            f"readout must be ascending distinct integer positions in 0..{n - 1} (1-D), got {shown}"
        )


def one_key_changed(q: Tensor, k: Tensor, v: Tensor, known: Recorded, bias: Tensor | None) -> Tensor:
    """Attention output z [K*B, H, 1 + T, Dh] of a block whose input changed at one position, pos, only.

    q [K*B, H, 1, Dh]: the new query at pos; k, v [K*B, H, pos + 1 + T, Dh]: every key and value, new at
    pos; known: the recorded queries, output z and log-normaliser of the T later positions, and the
    recorded key/value at pos. A later query is the recorded one and only its score on key pos changed, so
    its new output mixes the recorded output without key pos (weight 1 - a, a = its recorded attention on
    pos) with the new value at pos, with O(T) work per head instead of a [T, pos + T] attention:
        z_rest = (z - a v_pos) / (1 - a),   z' = z_rest + sigmoid(s' - log(Z (1 - a))) (v'_pos - z_rest)
    where Z = exp(lse). Queries with a > 1/2 in some example and head, where 1 - a would lose precision,
    are recomputed in full. Tested equal to full attention (tests/test_patching_reuse.py)."""
    kb, h, t, dh = q.shape[0], q.shape[1], known.q.shape[2], q.shape[3]
    b = known.q.shape[0]
    pos = k.shape[2] - 1 - t
    out = q.new_empty((kb, h, 1 + t, dh))
    row0 = None if bias is None else sdpa_mask(bias[..., :1, : pos + 1], q)  # the new query at pos
    out[:, :, :1] = F.scaled_dot_product_attention(q, k[:, :, : pos + 1], v[:, :, : pos + 1], attn_mask=row0)
    if not t:
        return out
    # in at least float32, so that 1 - a and the sigmoid keep their precision in a half-precision model
    calc = torch.promote_types(q.dtype, torch.float32)
    # key pos's bias for the later queries, additive, [1 or K*B, 1 or H, T]: broadcasts per copy below
    col = torch.zeros(1, 1, t, device=q.device, dtype=calc) if bias is None else bias[..., 1:, pos]
    if col.dtype == torch.bool:
        col = torch.zeros(col.shape, device=q.device, dtype=calc).masked_fill(~col, float("-inf"))
    col = col.to(calc).reshape((1,) * (3 - col.dim()) + tuple(col.shape))
    per_copy = col.unflatten(0, (-1, b)) if col.shape[0] == kb else col[None]  # [K or 1, B or 1, ., T]
    kq, zb, vb = known.q.to(calc), known.z.to(calc), known.v_pos.to(calc)
    scale = 1 / math.sqrt(dh)
    s_base = (kq @ known.k_pos.to(calc).transpose(-1, -2))[..., 0] * scale + per_copy[0]  # [B, H, T]
    a = torch.exp(s_base - known.lse)  # each later query's recorded attention on pos
    heavy = (a > 0.5).flatten(0, 1).any(0).nonzero()[:, 0]  # rows recomputed in full
    a = a.masked_fill(a > 0.5, 0.0)
    z_rest = (zb - a[..., None] * vb) / (1 - a)[..., None]  # [B, H, T, Dh]
    log_rest = known.lse + torch.log1p(-a)
    k_new, v_new = (t_[:, :, pos].unflatten(0, (-1, b)).to(calc) for t_ in (k, v))  # [K, B, H, Dh]
    s_new = torch.einsum("bhtd,kbhd->kbht", kq, k_new) * scale + per_copy  # [K, B, H, T]
    w = torch.sigmoid(s_new - log_rest)  # 0 where key pos is masked
    out[:, :, 1:] = (z_rest + w[..., None] * (v_new[:, :, :, None] - z_rest)).flatten(0, 1).to(out.dtype)
    if heavy.numel():
        qh = known.q[:, :, heavy].repeat(kb // b, 1, 1, 1)
        mask = query_rows(bias, heavy + 1, 1 + t, k.shape[2], q.device)
        out[:, :, 1 + heavy] = F.scaled_dot_product_attention(qh, k, v, attn_mask=sdpa_mask(mask, qh))
    return out


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.fc_out = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.act = ACTIVATIONS[cfg.act_fn]
        self.hook_pre = Hook("batch pos d_mlp")  # [batch, pos, d_mlp]
        self.hook_post = Hook("batch pos d_mlp")  # [batch, pos, d_mlp]

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
        self.hook_resid_pre = Hook("batch pos d_model")  # [batch, pos, d_model]
        self.hook_attn_out = Hook("batch pos d_model")  # [batch, pos, d_model]
        if not self.parallel:  # a parallel block has no residual stream between attention and MLP
            self.hook_resid_mid = Hook("batch pos d_model")  # [batch, pos, d_model]
        self.hook_mlp_out = Hook("batch pos d_model")  # [batch, pos, d_model]
        self.hook_resid_post = Hook("batch pos d_model")  # [batch, pos, d_model]

    def forward(self, resid: Tensor, bias: Tensor | None, rotary, past=None, known=None, rows=None) -> Tensor:
        """past, known, rows: see `Attention.forward` (with rows, the block returns those positions only).
        A parallel block given `known.mlp_out` runs its MLP on the first P - T positions only."""
        resid = self.hook_resid_pre(resid)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid), bias, rotary, past, known, rows))
        if self.parallel:  # GPT-NeoX: x + attn(ln1(x)) + mlp(ln2(x))
            recorded = None if known is None else known.mlp_out
            if recorded is None:
                resid = resid if rows is None else resid[:, rows]
                mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid)))
            else:  # the MLP's input after its first m positions is the recorded one, and so is its output
                m = resid.shape[1] - recorded.shape[1]
                mlp_out = append_known(self.mlp(self.ln2(resid[:, :m])), recorded, dim=1)
                resid, mlp_out = (resid, mlp_out) if rows is None else (resid[:, rows], mlp_out[:, rows])
            return self.hook_resid_post(resid + attn_out + mlp_out)
        if rows is not None:
            resid = resid[:, rows]
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

    zero_ok = frozenset({"hard_alibi_heads"})  # 0: no Hard-ALiBi heads

    def __post_init__(self):
        super().__post_init__()  # types and sizes first: n_heads=0 must not reach the division below
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

    @property
    def uses_rotary(self) -> bool:
        """Whether queries and keys are rotated (rope with rotary dims): hook_rot_q / hook_rot_k fire."""
        return self.positional == "rope" and self.rotary_dim > 0

    # Fields TransformerLens's utilities (`transformer_lens.patching`, `ActivationCache`) read from a
    # HookedTransformerConfig, as read-only properties so checkpoints do not store them. `device` is a plain
    # attribute that the model keeps up to date (HookedModel._sync_cfg_device).
    n_key_value_heads = None  # no grouped-query attention: k and v have n_heads heads
    attn_only = False
    use_attn_result = False  # no hook_result: a head's output is hook_z @ W_O
    use_split_qkv_input = False
    use_hook_mlp_in = False
    default_prepend_bos = False  # the paper's tasks start with their own BOS symbol

    @property
    def normalization_type(self) -> str | None:
        return "LN" if self.normalization == "layernorm" else None

    @property
    def positional_embedding_type(self) -> str:
        return {"rope": "rotary", "nope": "none", "alibi": "alibi", "hard_alibi": "hard_alibi"}[
            self.positional
        ]


def bias_and_rotary(cfg: TransformerConfig, n_past: int, n_pos: int, key_mask: Tensor | None, device):
    """Attention bias and rotary tables for queries n_past..n_pos-1 over keys 0..n_pos-1 (shared with the
    hybrid's attention layers)."""
    bias = attention_bias(cfg, n_pos, device, key_mask, n_past)
    rotary = None
    if cfg.uses_rotary:
        if key_mask is None:
            positions = torch.arange(n_past, n_pos, device=device)  # [P]
        else:  # a token's position = real tokens before it (Hugging Face's position_ids for padding)
            positions = (key_mask.long().cumsum(-1) - 1).clamp(min=0)[:, n_past:]  # [B, P]
        rotary = rotary_cos_sin(positions, cfg.rotary_dim, cfg.rotary_base)
    return bias, rotary


# Hooks after attention has mixed positions (or on the query side): within their block, a patch at
# position p changes position p only (keys/values, hence every later query, are computed before them).
POSITION_LOCAL = frozenset(
    {"attn.hook_q", "attn.hook_rot_q", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z"}
    | {"hook_attn_out", "hook_resid_mid", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post"}
    | {"hook_mlp_out", "hook_resid_post"}
)


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
        self.hook_embed = Hook("batch pos d_model")  # [batch, pos, d_model]
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

    def forward(
        self,
        tokens: Tensor,
        attention_mask: Tensor | None = None,
        past_kv_cache: KVCache | None = None,
        logits_to_keep: int = 0,
    ) -> Tensor:
        """tokens [B, P] -> logits [B, P, d_vocab] (the last `logits_to_keep` positions only when > 0).

        attention_mask [B, P] (1 = token, 0 = padding), as in Hugging Face: padding keys are never
        attended to and rotary positions count real tokens only, so a left-padded sequence gives the
        same logits at its real positions as the sequence alone. past_kv_cache (`init_kv_cache()`):
        tokens continue the cached sequences; the cache is extended in place (TransformerLens'
        `past_kv_cache`). Hooks fire on every call, with P = the new tokens only.
        """
        self.check_tokens(tokens)
        self.check_logits_to_keep(logits_to_keep)
        b, p = tokens.shape
        device = tokens.device
        n_past = past_kv_cache.n_tokens if past_kv_cache is not None else 0
        n_pos = n_past + p
        if n_pos > self.cfg.n_ctx:
            raise ValueError(
                f"{n_past} cached + {p} new tokens exceed the model's context n_ctx={self.cfg.n_ctx}"
            )
        self.check_attention_mask(tokens, attention_mask)
        key_mask = attention_mask.bool() if attention_mask is not None else None
        if past_kv_cache is not None:
            key_mask = past_kv_cache.extend_mask(key_mask, b, p, device)
        bias, rotary = self._bias_and_rotary(n_past, n_pos, key_mask, device)
        resid = self.hook_embed(self.embed(tokens))
        for layer, block in enumerate(self.blocks):
            past = past_kv_cache.layers[layer] if past_kv_cache is not None else None
            resid = block(resid, bias, rotary, past)
        if past_kv_cache is not None:
            past_kv_cache.n_tokens = n_pos
        if logits_to_keep:  # as Hugging Face's: generation needs the last position, not [P, d_vocab]
            resid = resid[:, -logits_to_keep:]
        return self.unembed(self.ln_final(resid))

    def _bias_and_rotary(self, n_past: int, n_pos: int, key_mask: Tensor | None, device):
        return bias_and_rotary(self.cfg, n_past, n_pos, key_mask, device)

    # Resuming a forward (the capability `interp.analysis.patching` asks for to reuse computation): a
    # patch at layer l, position p cannot change layers < l or positions < p, so the patched forward
    # starts at block l from the cached residual stream, with the cached keys/values of positions < p.
    def resume_state(self, tokens: Tensor, attention_mask: Tensor | None = None) -> ResumeState:
        """One forward of tokens [B, P] recording what `forward_from` restarts from. What a resumed pass
        sends through a hook again (each block's input, attention output z) is recorded before any user
        hook edits it, as a copy (a user's hook may edit in place); what it reads as it is (keys/values
        before the start, queries), after."""
        cache = self.init_kv_cache()
        resids: list[Tensor] = []
        queries: list[Tensor] = []  # after rotary, as the keys in the cache
        zs: list[Tensor] = []
        mlp_outs: list[Tensor | None] = [None] * len(self.blocks)  # parallel blocks from 1 (`forward_from`)
        q_hook = "attn.hook_rot_q" if self.cfg.uses_rotary else "attn.hook_q"
        before, after = [], []
        for i in range(len(self.blocks)):
            before += [
                (f"blocks.{i}.hook_resid_pre", lambda act, hook: resids.append(act.clone())),
                (f"blocks.{i}.attn.hook_z", lambda act, hook: zs.append(act.transpose(1, 2).clone())),
            ]
            after.append((f"blocks.{i}.{q_hook}", lambda act, hook: queries.append(act.transpose(1, 2))))
            if self.cfg.parallel_residual and i:
                after.append(
                    (f"blocks.{i}.hook_mlp_out", lambda act, hook, i=i: mlp_outs.__setitem__(i, act))
                )
        with torch.no_grad(), self.hooks_first(before):
            logits = self.run_with_hooks(tokens, attention_mask, past_kv_cache=cache, fwd_hooks=after)
            bias, _ = self._bias_and_rotary(0, tokens.shape[1], cache.key_mask, tokens.device)
            # block 0 never resumes after a patch below it: its normaliser is not needed
            lse = [None] + [log_normaliser(q, kv[0], bias) for q, kv in zip(queries[1:], cache.layers[1:])]
        return ResumeState(
            logits, resids, [layer for layer in cache.layers], cache.key_mask, queries, zs, lse, mlp_outs
        )

    POSITION_LOCAL: ClassVar[frozenset[str]] = POSITION_LOCAL

    def forward_from(
        self,
        state: ResumeState,
        layer: int,
        pos: int,
        copies: int = 1,
        single: bool = False,
        readout: Tensor | None = None,
    ) -> Tensor:
        """Logits [copies * B, P - pos, d_vocab] of the recorded forward resumed at block `layer`,
        position `pos`: blocks < layer do not run, positions < pos come from the recorded keys and
        values. Hooks of blocks >= layer fire with P - pos positions (like a KV-cached forward), on
        `copies` repeats of the batch (copy-major, as `tokens.repeat(copies, 1)`).

        single: block `layer` runs on position `pos` alone (its hooks fire with 1 position) and the
        later positions of its output are the recorded ones; right for a patch of a `position_local`
        hook, which changes nothing else in that block.
        readout: the positions (ascending, of 0..P-1) whose logits are read. When no hook of the last block
        or `ln_final` is active (and `layer` is not the last), the last block computes only those (past
        its keys and values) and the logits elsewhere are the recorded ones; with `single`, when none of
        them is >= pos and no later block is hooked, the later blocks do not run."""
        b, n, _ = state.resid[0].shape
        if not (0 <= layer < len(self.blocks) and 0 <= pos < n):
            raise ValueError(
                f"cannot resume at layer {layer}, position {pos}: layers 0..{len(self.blocks) - 1}, "
                f"positions 0..{n - 1}"
            )
        if readout is not None:
            check_readout(readout, n)
        device = state.resid[0].device
        key_mask = None if state.key_mask is None else state.key_mask.repeat(copies, 1)
        past = lambda i, p: state.slots(i, copies).begin(p)  # noqa: E731
        first, known = layer, None
        resid = state.resid[layer][:, pos : pos + 1 if single else n].repeat(copies, 1, 1)
        last = len(self.blocks) - 1
        if single:
            mask = None if key_mask is None else key_mask[:, : pos + 1]
            bias, rotary = self._bias_and_rotary(pos, pos + 1, mask, device)
            resid = self.blocks[layer](resid, bias, rotary, past(layer, pos))  # [K*B, 1, d_model]
            rest = slice(pos + 1, n)
            if layer == last:  # only position pos of the output changed
                return torch.cat(
                    [self.unembed(self.ln_final(resid)), state.logits[:, rest].repeat(copies, 1, 1)], 1
                )
            resid = torch.cat([resid, state.resid[layer + 1][:, rest].repeat(copies, 1, 1)], 1)
            first = layer + 1
            # The next block's input changed at pos only: its queries, keys and values after pos are the
            # recorded ones, and so are their attention outputs but for key pos, and a parallel block's MLP
            # output (unless a hook there wants to see them computed).
            block = self.blocks[first]
            attn = block.attn
            inputs = (attn.hook_q, attn.hook_k, attn.hook_v, attn.hook_rot_q, attn.hook_rot_k)
            if not any(h.active for h in inputs):
                mlp_out = state.mlp_out[first]
                known = Recorded(
                    *(t[:, :, rest] for t in (state.q[first], *state.kv[first], state.z[first])),
                    state.lse[first][:, :, rest],
                    *(t[:, :, pos : pos + 1] for t in state.kv[first]),
                    None
                    if mlp_out is None or hooked(block.ln2, block.mlp, block.hook_mlp_out)
                    else mlp_out[:, rest],
                )
        rows = None
        if readout is not None and layer < last and not hooked(self.blocks[last], self.ln_final):
            rows = readout[readout >= pos] - pos
            if not rows.numel():  # nothing read after pos: after a position-local patch, nothing can change
                if single and not hooked(*self.blocks[first:]):
                    return state.logits[:, pos:].repeat(copies, 1, 1)
                rows = None
            # a run of positions: index by views, not copies
            elif int(rows[-1] - rows[0]) + 1 == rows.numel():
                rows = slice(int(rows[0]), int(rows[-1]) + 1)
        bias, rotary = self._bias_and_rotary(pos, n, key_mask, device)
        for i in range(first, len(self.blocks)):
            resid = self.blocks[i](
                resid, bias, rotary, past(i, pos), known if i == first else None, rows if i == last else None
            )
        logits = self.unembed(self.ln_final(resid))
        if rows is None:
            return logits
        out = state.logits[:, pos:].repeat(copies, 1, 1)
        out[:, rows] = logits
        return out

    def init_kv_cache(self) -> KVCache:
        """An empty key/value cache for `forward(..., past_kv_cache=)` and `generate_greedy`."""
        return KVCache(layers=[[] for _ in range(self.cfg.n_layers)])

    def prefill(self, prompt: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, KVCache]:
        """For `generate_greedy`: the prompt in one pass -> (last logits [B, d_vocab], key/value cache)."""
        cache = self.init_kv_cache()
        return self(prompt, attention_mask, past_kv_cache=cache, logits_to_keep=1)[:, -1], cache

    def decode_step(self, token: Tensor, cache: KVCache) -> tuple[Tensor, KVCache]:
        """For `generate_greedy`: token [B] -> (logits [B, d_vocab], the cache, extended in place)."""
        return self(token[:, None], past_kv_cache=cache)[:, -1], cache


@dataclass
class ResumeState:
    """What `HookedTransformer.forward_from` restarts from: one recorded forward of B sequences."""

    logits: Tensor  # [B, P, d_vocab]
    resid: list[Tensor]  # per layer: blocks.{l}.hook_resid_pre [B, P, d_model]
    kv: list[list[Tensor]]  # per layer: [keys, values], each [B, H, P, Dh] (after rotary)
    key_mask: Tensor | None  # [B, P] True = real token; None: no padding
    q: list[Tensor]  # per layer: queries [B, H, P, Dh] (after rotary)
    z: list[Tensor]  # per layer: attention output [B, H, P, Dh]
    lse: list[Tensor | None]  # per layer from 1: logsumexp of each query's scores [B, H, P]
    mlp_out: list[Tensor | None]  # per parallel layer from 1: blocks.{l}.hook_mlp_out [B, P, d_model]
    # buffers kept across passes; not an init field, so dataclasses.replace(state) starts without them
    _slots: dict[int, KVSlots] = field(default_factory=dict, init=False, repr=False)

    def slots(self, layer: int, copies: int) -> KVSlots:
        """Layer `layer`'s keys/values for passes on `copies` repeats of the batch: one buffer per layer,
        kept from pass to pass, reallocated when a pass needs more copies (or far fewer) than it holds."""
        return kv_slots(self._slots, self.kv[layer], layer, copies)


def kv_slots(held: dict[int, KVSlots], recorded: list[Tensor], layer: int, copies: int) -> KVSlots:
    """`held[layer]`, the `KVSlots` of a layer's recorded [keys, values] for passes on `copies` repeats of
    the batch, made anew when a pass needs more copies than it holds (or far fewer)."""
    slots = held.get(layer)
    if slots is None or not copies <= slots.capacity < 2 * copies:
        slots = held[layer] = KVSlots(recorded, copies)
    slots.copies = copies
    return slots


class KVSlots:
    """K copies of one layer's recorded keys and values, each in one buffer [K*B, H, P, Dh], for the
    passes of `forward_from`: a pass from position p reads the recorded ones before p and writes its
    own from p on, in place of repeating the recorded ones and concatenating the new ones every pass.
    Positions [0, clean) of the buffer hold the recorded values; `begin(p)` restores what a pass from
    p reads that an earlier pass overwrote."""

    def __init__(self, recorded: list[Tensor], copies: int):
        self.recorded = recorded  # [keys, values], each [B, H, P, Dh]
        self.capacity = self.copies = copies
        self.buffers = [t.new_empty((copies * t.shape[0], *t.shape[1:])) for t in recorded]
        self.clean = self.start = 0

    def begin(self, start: int) -> KVSlots:
        if self.clean < start:
            for buf, rec in zip(self.buffers, self.recorded):
                copies = buf.unflatten(0, (self.capacity, rec.shape[0]))  # [K, B, H, P, Dh] view
                copies[:, :, :, self.clean : start] = rec[None, :, :, self.clean : start]
        self.clean = self.start = start  # the pass overwrites positions >= start
        return self

    def write(
        self, k: Tensor, v: Tensor, known: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """New keys/values [copies * B, H, p, Dh] at positions start.., then `known` ones [B, H, T, Dh]
        (the same in every copy) -> all of them up to there, [copies * B, H, start + p + T, Dh]."""
        mid = self.start + k.shape[2]
        end = mid + (0 if known is None else known[0].shape[2])
        rows = k.shape[0]  # copies * B: a prefix of the buffer (copy-major)
        out = []
        for j, (buf, new) in enumerate(zip(self.buffers, (k, v))):
            buf[:rows, :, self.start : mid] = new
            if known is not None:
                buf[:rows].unflatten(0, (-1, known[j].shape[0]))[:, :, :, mid:end] = known[j][None]
            out.append(buf[:rows, :, :end])
        return out[0], out[1]


def hooked(*modules: nn.Module) -> bool:
    """Whether a hook inside any of `modules` is active."""
    return any(isinstance(m, Hook) and m.active for module in modules for m in module.modules())


def log_normaliser(q: Tensor, k: Tensor, bias: Tensor | None, rows_per_chunk: int = 2**22) -> Tensor:
    """logsumexp of each query's scores, [B, H, P], for queries and keys [B, H, P, Dh], in at least float32
    (as `one_key_changed` uses it); a few examples at a time, so the scores of the whole batch never exist
    at once (one example's [H, P, P] does)."""
    b, h, p, _ = q.shape
    calc = torch.promote_types(q.dtype, torch.float32)
    step = max(1, rows_per_chunk // (h * p * p))
    out = []
    for i in range(0, b, step):
        chunk_bias = bias if bias is None or bias.dim() < 4 else bias[i : i + step]
        scores = attention_scores(q[i : i + step].to(calc), k[i : i + step].to(calc), chunk_bias)
        out.append(scores.logsumexp(-1))
    return torch.cat(out)


@dataclass
class Recorded:
    """A block's recorded queries, keys and values [B, H, T, Dh] (after rotary) of its last T positions,
    the same in each copy of the batch, which `Attention.forward` then does not project. For a block whose
    input changed at the one position before them (after a position-local patch in the block below) also
    their recorded attention output z [B, H, T, Dh] and log-normaliser lse [B, H, T], the recorded key
    and value at that position [B, H, 1, Dh] (`one_key_changed`), and in a parallel block the recorded
    MLP output of the T positions (`Block.forward`)."""

    q: Tensor
    k: Tensor
    v: Tensor
    z: Tensor | None = None
    lse: Tensor | None = None
    k_pos: Tensor | None = None
    v_pos: Tensor | None = None
    mlp_out: Tensor | None = None  # [B, T, d_model]: a parallel block's MLP output, whose input is recorded


def append_known(new: Tensor, known: Tensor, dim: int = 2) -> Tensor:
    """new [K*B, ..., m, ...] followed by known [B, ..., T, ...] (the same in each of the K copies) along
    positions, dimension `dim` -> [K*B, ..., m + T, ...], written once (no repeat, no concatenation)."""
    m = new.shape[dim]
    out = new.new_empty(new.shape[:dim] + (m + known.shape[dim],) + new.shape[dim + 1 :])
    out.narrow(dim, 0, m).copy_(new)
    out.unflatten(0, (-1, known.shape[0])).narrow(dim + 1, m, known.shape[dim]).copy_(known[None])
    return out


@dataclass
class KVCache:
    """Keys and values of every layer for the tokens read so far: `layers[l]` is [] or [keys, values],
    each [B, H, T, Dh] (after rotary). `key_mask` [B, T] marks padding (None: there is none)."""

    layers: list[list[Tensor]]
    key_mask: Tensor | None = None
    n_tokens: int = 0

    def extend_mask(self, new: Tensor | None, b: int, p: int, device) -> Tensor | None:
        """Append the new tokens' mask (None = all real) and return the mask over every key."""
        if new is None and self.key_mask is None:
            return None
        old = self.key_mask
        if old is None:
            old = torch.ones(b, self.n_tokens, dtype=torch.bool, device=device)
        if new is None:
            new = torch.ones(b, p, dtype=torch.bool, device=device)
        self.key_mask = torch.cat([old, new], dim=1)
        return self.key_mask
