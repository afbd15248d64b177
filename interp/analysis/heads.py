"""Head detectors: which attention heads (or Mamba channels) look at fixed offsets, copy, or look up?

Every detector reads an attention-like tensor `patterns [L, B, H, Pq, Pk]` (rows sum to 1 over
keys) and returns one number per (layer, head) in [0, 1]: the attention mass on the key positions
that the hypothesis predicts, averaged over the examples and the query positions where it applies.

- offset o (`offset_{o}`): mass on key q - o. o = 1 is the previous-token head; o = 0 attends to itself.
- window w (`window_{w}`): mass on the last w keys q - w + 1 .. q (the paper's n-gram / Hard-ALiBi heads).
- lookup (copy task `$ s | s .`): at answer position q, mass on the position right after the earlier
  occurrence of the current n-gram, i.e. the source of the token being copied: key q - L for a string
  of length L (the query `|` + k predicts s_{k+1}, which sits at position k + 1).
- induction (task `induction`, `$ s s`): at repeat position q, mass on key q - L + 1, the token that
  followed the current token the first time.
- lookup_next / induction_next: the same one key further on (the position *after* the source token).
  Small trained models often attend there and read the source token from what a layer-0
  previous-token head wrote at that position (V-composition), instead of attending to it directly.

A head whose values are zero writes nothing, whatever its pattern; `head_scores` adds each head's
`activity` (RMS of its `hook_z`, relative to the most active head of the model) so that rankings can
skip dead heads (`rank_heads(..., min_activity=0.01)`).

Mamba has no attention, but its selective scan is linear in its input u given dt, B and C. For channel
d of one layer (A = -exp(A_log), dt = softplus(hook_ssm_dt), cum_t = dt_1 + ... + dt_t):

    y_t[d] = sum_{s <= t} M[d, t, s] u_s[d] + D[d] u_t[d],
    M[d, t, s] = sum_n C_t[n] exp(A[d, n] (cum_t[d] - cum_s[d])) dt_s[d] B_s[n]

(`ssm_attention`, tested against the model's own scan output). `mamba_patterns` turns |M| into
row-normalised patterns so the same detectors score Mamba channels. Note that u_s already mixes the
last d_conv tokens through the short convolution, so "position s" means "the conv window ending at s".
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from interp.hooks import check_model, has_hooks, model_label, run_and_cache
from interp.tasks import Batch

ATTENTION_HOOKS = ("blocks.{layer}.attn.hook_pattern", "blocks.{layer}.attn.hook_z")
SCAN_HOOKS = ("blocks.{layer}.mixer.hook_ssm_dt",)  # + hook_B and hook_C, or hook_x_proj to split them from

# ---------------------------------------------------------------------------------------------
# Attention-like tensors
# ---------------------------------------------------------------------------------------------


def has_attention(model) -> bool:
    """Attention heads in every layer: `hook_pattern` and `hook_z` (and cfg.n_heads)."""
    return hasattr(model.cfg, "n_heads") and has_hooks(model, *ATTENTION_HOOKS)


def has_selective_scan(model) -> bool:
    """A Mamba-1 selective scan in every layer: dt, B and C hooks (B and C may come from `hook_x_proj`)
    and the mixer's `A_log` parameter."""
    if not has_hooks(model, *SCAN_HOOKS):
        return False
    bc = has_hooks(model, "blocks.{layer}.mixer.hook_B", "blocks.{layer}.mixer.hook_C")
    return (bc or has_hooks(model, "blocks.{layer}.mixer.hook_x_proj")) and _a_log(model, 0) is not None


@torch.no_grad()
def attention_patterns(model, tokens: Tensor) -> Tensor:
    """Attention patterns of every layer, stacked: [L, B, H, P, P]."""
    check_model(model, "n_layers")
    if not has_attention(model):
        raise ValueError(
            f"attention_patterns needs attention heads (hooks {', '.join(ATTENTION_HOOKS)}); "
            f"{model_label(model)} has none, use mamba_patterns for a selective scan"
        )
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    _, cache = run_and_cache(model, tokens, names)
    return torch.stack([cache[n] for n in names])


@torch.no_grad()
def head_activity(model, tokens: Tensor) -> Tensor:
    """RMS of each head's output `hook_z` over batch, positions and d_head: [L, H], max scaled to 1."""
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    _, cache = run_and_cache(model, tokens, names)
    rms = torch.stack([cache[n].float().pow(2).mean((0, 1, 3)).sqrt() for n in names])  # [L, H]
    return rms / rms.max().clamp(min=1e-12)


def ssm_attention(dt_raw: Tensor, B: Tensor, C: Tensor, A_log: Tensor) -> Tensor:
    """The selective scan's input-to-output matrix M [batch, D_inner, P(t), P(s)] (module docstring).

    dt_raw: [B, P, D_inner], `hook_ssm_dt` (dt_proj output before softplus). B, C: [B, P, N]
    (`hook_B`, `hook_C`). A_log: [D_inner, N]. Entries with s > t are 0. Memory: B*D*P*P numbers.
    """
    dt = F.softplus(dt_raw.float()).transpose(1, 2)  # [B, D, P]
    cum = dt.cumsum(-1)
    gap = (cum[..., :, None] - cum[..., None, :]).clamp(min=0)  # [B, D, t, s] = sum_{r=s+1..t} dt_r
    causal = torch.ones(gap.shape[-2:], dtype=torch.bool, device=gap.device).tril()
    A = -torch.exp(A_log.float())  # [D, N]
    M = torch.zeros_like(gap)
    for n in range(A.shape[1]):  # one state coordinate at a time keeps memory at [B, D, P, P]
        cb = C.float()[:, :, n, None] * B.float()[:, None, :, n]  # [B, t, s]
        M += cb[:, None] * torch.exp(A[None, :, n, None, None] * gap)
    return (M * dt[:, :, None, :]).masked_fill(~causal, 0.0)


@torch.no_grad()
def mamba_patterns(model, tokens: Tensor, reduce: str = "mean") -> Tensor:
    """Row-normalised |M| of every Mamba layer as attention-like patterns.

    Returns [L, B, D_inner, P, P] (`reduce="none"`: each channel is a "head") or [L, B, 1, P, P]
    (`reduce="mean"`: the channels' normalised patterns averaged). Works on any model with a Mamba-1
    scan's hooks (`has_selective_scan`): interp's, or TransformerLens's bridge (with
    `block.mixer.eager_scan = True`, where B and C are split from `hook_x_proj`).
    """
    check_model(model, "n_layers")
    if not has_selective_scan(model):
        raise ValueError(
            f"mamba_patterns needs a Mamba-1 selective scan (hooks mixer.hook_ssm_dt and hook_B/hook_C or "
            f"hook_x_proj, and the mixer's A_log); {model_label(model)} has none"
        )
    if reduce not in ("mean", "none"):
        raise ValueError(f"reduce={reduce!r} is not allowed; use 'mean' or 'none'")
    layers = range(model.cfg.n_layers)
    split = not has_hooks(model, "blocks.{layer}.mixer.hook_B")
    parts = ("ssm_dt", "x_proj") if split else ("ssm_dt", "B", "C")
    names = [f"blocks.{layer}.mixer.hook_{h}" for layer in layers for h in parts]
    _, cache = run_and_cache(model, tokens, names)
    out = []
    for layer in layers:
        pre = f"blocks.{layer}.mixer.hook_"
        A_log = _a_log(model, layer)
        if split:  # x_proj output = [dt_low | B | C], B and C of width N = A_log.shape[1]
            n = A_log.shape[1]
            B, C = cache[pre + "x_proj"][..., -2 * n : -n], cache[pre + "x_proj"][..., -n:]
        else:
            B, C = cache[pre + "B"], cache[pre + "C"]
        M = ssm_attention(cache[pre + "ssm_dt"], B, C, A_log).abs()
        pattern = M / M.sum(-1, keepdim=True).clamp(min=1e-12)
        out.append(pattern.mean(1, keepdim=True) if reduce == "mean" else pattern)
    return torch.stack(out)


def _a_log(model, layer: int) -> Tensor | None:
    """The scan's A_log [D_inner, N] of one layer: a parameter of the module the mixer hooks live in
    (`blocks.{l}.mixer`, interp's and the bridge's module path alike); None where there is none."""
    try:
        a_log = getattr(model.get_submodule(f"blocks.{layer}.mixer"), "A_log", None)
    except AttributeError:
        return None
    return a_log if isinstance(a_log, Tensor) and a_log.ndim == 2 else None


# ---------------------------------------------------------------------------------------------
# Detectors: patterns [L, B, H, P, P] -> scores [L, H]
# ---------------------------------------------------------------------------------------------


def target_score(patterns: Tensor, targets: Tensor) -> Tensor:
    """Mean attention mass on a target key per query: [L, H].

    targets: [B, P] key position for each query, -1 where the query does not count.
    """
    _check_patterns(patterns, targets.shape)
    valid = targets >= 0  # [B, P]
    if not valid.any():
        raise ValueError("no query position has a target (targets are all -1)")
    index = targets.clamp(min=0)[None, :, None, :, None].expand(*patterns.shape[:-1], 1)
    mass = patterns.float().gather(-1, index)[..., 0]  # [L, B, H, P]
    weight = valid[None, :, None, :].float()
    return (mass * weight).sum((1, 3)) / weight.sum((1, 3))


def window_score(patterns: Tensor, window: int, query_mask: Tensor | None = None) -> Tensor:
    """Mean attention mass on the last `window` keys (q - window + 1 .. q): [L, H].

    query_mask: [B, P] bool, the queries that count (default: all with a full window, q >= window - 1).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    p = patterns.shape[-1]
    q = torch.arange(p)[:, None]
    band = ((q - torch.arange(p)[None, :]) >= 0) & ((q - torch.arange(p)[None, :]) < window)  # [Pq, Pk]
    mass = (patterns.float() * band.to(patterns.device)).sum(-1)  # [L, B, H, P]
    mask = _query_mask(patterns, query_mask, first=window - 1)
    return (mass * mask).sum((1, 3)) / mask.sum((1, 3)).clamp(min=1)


def offset_score(patterns: Tensor, offset: int, query_mask: Tensor | None = None) -> Tensor:
    """Mean attention mass on key q - offset (offset 1: previous-token heads): [L, H]."""
    if offset < 0:
        raise ValueError(f"offset must be >= 0 (keys lie in the past), got {offset}")
    b, p = patterns.shape[1], patterns.shape[-1]
    q = torch.arange(p)
    targets = (q - offset).expand(b, p).clone()
    mask = _query_mask(patterns, query_mask, first=offset)[0, :, 0]  # [B, P]
    targets[~mask.bool()] = -1
    return target_score(patterns, targets.to(patterns.device))


def _query_mask(patterns: Tensor, query_mask: Tensor | None, first: int) -> Tensor:
    """[1, B, 1, P] float: queries that count, from `query_mask` and q >= first."""
    b, p = patterns.shape[1], patterns.shape[-1]
    mask = torch.arange(p, device=patterns.device)[None, :].expand(b, p) >= first
    if query_mask is not None:
        _check_patterns(patterns, query_mask.shape)
        mask = mask & query_mask.to(patterns.device)
    return mask[None, :, None, :].float()


def _check_patterns(patterns: Tensor, bp: torch.Size) -> None:
    if patterns.ndim != 5 or patterns.shape[-1] != patterns.shape[-2]:
        raise ValueError(
            f"patterns must be [layer, batch, head, query_pos, key_pos], got {tuple(patterns.shape)}"
        )
    if tuple(bp) != (patterns.shape[1], patterns.shape[-1]):
        raise ValueError(
            f"targets/mask must be [batch, pos] = {(patterns.shape[1], patterns.shape[-1])}, got {tuple(bp)}"
        )


def lookup_targets(batch: Batch, shift: int = 0) -> Tensor:
    """[B, P] key position each scored query should attend to if it copies (copy) or does induction
    (induction), plus `shift`; -1 elsewhere and where that key would lie after the query. See the
    module docstring for the positions."""
    if batch.lengths.ndim != 1:
        raise ValueError("lookup targets need one example per row; packed batches are not supported")
    if batch.task not in ("copy", "induction"):
        raise ValueError(f"lookup targets are defined for the copy and induction tasks, not {batch.task!r}")
    q = torch.arange(batch.tokens.shape[1], device=batch.tokens.device)[None, :]
    targets = q - batch.lengths[:, None] + {"copy": 0, "induction": 1}[batch.task] + shift
    valid = batch.score_mask & (targets >= 1) & (targets <= q)
    return torch.where(valid, targets, torch.full_like(targets, -1))


# ---------------------------------------------------------------------------------------------
# All detectors at once
# ---------------------------------------------------------------------------------------------


def score_patterns(
    patterns: Tensor,
    batch: Batch,
    offsets: Sequence[int] = (1,),
    windows: Sequence[int] = (),
) -> pd.DataFrame:
    """Detector scores of patterns [L, B, H, P, P] computed on `batch` (copy or induction task).

    Returns a long DataFrame: layer, head, score (offset_{o}, window_{w}, lookup and lookup_next or
    induction and induction_next), value.
    Padding queries never count.
    """
    real = batch.tokens != batch.vocab.pad
    scores = {f"offset_{o}": offset_score(patterns, o, real) for o in offsets}
    scores |= {f"window_{w}": window_score(patterns, w, real) for w in windows}
    if batch.task in ("copy", "induction"):
        name = "lookup" if batch.task == "copy" else "induction"
        scores[name] = target_score(patterns, lookup_targets(batch))
        scores[f"{name}_next"] = target_score(patterns, lookup_targets(batch, shift=1))
    n_layers, n_heads = patterns.shape[0], patterns.shape[2]
    rows = [
        {"layer": layer, "head": head, "score": name, "value": float(values[layer, head])}
        for name, values in scores.items()
        for layer in range(n_layers)
        for head in range(n_heads)
    ]
    return pd.DataFrame(rows)


def head_scores(
    model,
    batch: Batch,
    offsets: Sequence[int] = (1,),
    windows: Sequence[int] = (),
) -> pd.DataFrame:
    """`score_patterns` on the model's own patterns (attention heads, or a selective scan's channel
    means), plus each head's `activity` (attention heads; see the module docstring). Any model of the
    hook contract with attention hooks or Mamba-1 scan hooks (`has_attention`, `has_selective_scan`)."""
    check_model(model, "n_layers")
    if has_attention(model):
        df = score_patterns(attention_patterns(model, batch.tokens), batch, offsets, windows)
        activity = head_activity(model, batch.tokens)
        df["activity"] = [float(activity[r.layer, r.head]) for r in df.itertuples()]
        return df
    if has_selective_scan(model):
        df = score_patterns(mamba_patterns(model, batch.tokens, reduce="mean"), batch, offsets, windows)
        df["activity"] = 1.0
        return df
    raise ValueError(
        f"head scores need attention heads (hooks {', '.join(ATTENTION_HOOKS)}) or a Mamba-1 selective scan "
        f"(mixer.hook_ssm_dt, hook_B/hook_C or hook_x_proj, A_log); {model_label(model)} has neither"
    )


def rank_heads(scores: pd.DataFrame, score: str, min_activity: float = 0.0) -> pd.DataFrame:
    """The rows of one score, best first, leaving out heads with activity below `min_activity`."""
    if score not in set(scores["score"]):
        raise ValueError(f"no score {score!r}; available: {sorted(set(scores['score']))}")
    rows = scores[scores["score"] == score]
    if "activity" in rows:
        rows = rows[rows["activity"] >= min_activity]
    return rows.sort_values("value", ascending=False).reset_index(drop=True)
