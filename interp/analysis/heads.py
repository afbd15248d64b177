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

Mamba-2 (SSD) has one scalar decay per head, so each SSM head has one exact hidden attention matrix
(`model.ssm_attention(tokens)`, `interp.models.ssd.ssd_attention`); its row-normalised |M| is scored
per head like an attention head, with `activity` the RMS of the head's `hook_scan_out`.

Hybrids: every detector goes layer by layer. Attention heads are scored in the layers that have
`attn.hook_pattern` and `hook_z` (`attention_layers`), Mamba-1 channel means and Mamba-2 heads in the
SSM layers (`scan_layers`); `head_scores` returns them together, the `kind` column says which
(`attention`, `mamba` (channel mean, head 0), `mamba2`) and `layer` is the model's layer index.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from interp.hooks import check_model, hook_layers, model_label, run_and_cache
from interp.tasks import Batch

ATTENTION_HOOKS = ("blocks.{layer}.attn.hook_pattern", "blocks.{layer}.attn.hook_z")
SCAN_HOOKS = ("blocks.{layer}.mixer.hook_ssm_dt",)  # + hook_B and hook_C, or hook_x_proj to split them from

# ---------------------------------------------------------------------------------------------
# Attention-like tensors
# ---------------------------------------------------------------------------------------------


def attention_layers(model) -> list[int]:
    """The layers with attention heads: `hook_pattern` and `hook_z` there (and cfg.n_heads). Every layer
    of a transformer, the attention layers of a hybrid."""
    return hook_layers(model, *ATTENTION_HOOKS) if hasattr(model.cfg, "n_heads") else []


def has_attention(model) -> bool:
    """Attention heads in at least one layer (`attention_layers`)."""
    return bool(attention_layers(model))


def scan_layers(model) -> dict[int, str]:
    """{layer: "mamba" | "mamba2"} for the layers whose selective scan the detectors can read.

    "mamba": a Mamba-1 scan, dt, B and C hooks (B and C may come from `hook_x_proj`) and a 2-D `A_log`
    [D_inner, N] on the mixer (interp's, or TransformerLens's bridge). "mamba2": a Mamba-2 mixer (1-D
    `A_log`, one decay per head) of a model with `ssm_attention(tokens)` (interp's HookedMamba2 and
    HookedHybrid)."""
    out = {}
    for layer in hook_layers(model, *SCAN_HOOKS):
        a_log = _a_log(model, layer)
        if a_log is None:
            continue
        pre = f"blocks.{layer}.mixer.hook_"
        if a_log.ndim == 2:
            if {pre + "B", pre + "C"} <= set(model.hook_dict) or pre + "x_proj" in model.hook_dict:
                out[layer] = "mamba"
        elif a_log.ndim == 1 and callable(getattr(model, "ssm_attention", None)):
            out[layer] = "mamba2"
    return out


def has_selective_scan(model) -> bool:
    """A selective scan the detectors can read (Mamba-1 or Mamba-2) in at least one layer (`scan_layers`)."""
    return bool(scan_layers(model))


@torch.no_grad()
def attention_patterns(model, tokens: Tensor) -> Tensor:
    """Attention patterns of the attention layers (`attention_layers`: every layer of a transformer),
    stacked: [L_attn, B, H, P, P]; row i is layer `attention_layers(model)[i]`."""
    check_model(model, "n_layers")
    if not has_attention(model):
        raise ValueError(
            f"attention_patterns needs attention heads (hooks {', '.join(ATTENTION_HOOKS)}); "
            f"{model_label(model)} has none, use mamba_patterns for a selective scan"
        )
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in attention_layers(model)]
    _, cache = run_and_cache(model, tokens, names)
    return torch.stack([cache[n] for n in names])


@torch.no_grad()
def head_activity(model, tokens: Tensor) -> Tensor:
    """RMS of each head's output `hook_z` over batch, positions and d_head: [L_attn, H] (the attention
    layers), max scaled to 1."""
    names = [f"blocks.{layer}.attn.hook_z" for layer in attention_layers(model)]
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
    """Row-normalised |M| of every scan layer (`scan_layers`) as attention-like patterns, stacked.

    Returns [L_ssm, B, H, P, P]: H = D_inner (Mamba-1 channels) or the Mamba-2 heads with `reduce="none"`,
    H = 1 with `reduce="mean"` (the normalised patterns averaged). Row i is layer
    `list(scan_layers(model))[i]` (every layer of a pure Mamba). Works on any model with a Mamba-1 scan's
    hooks, interp's or TransformerLens's bridge (with `block.mixer.eager_scan = True`, where B and C are
    split from `hook_x_proj`), and on interp's Mamba-2 and hybrids (`model.ssm_attention`).
    """
    layers = ssm_patterns(model, tokens, reduce)
    shapes = {tuple(p.shape) for p in layers.values()}
    if len(shapes) > 1:
        raise ValueError(
            f"the scan layers have different head counts {sorted(shapes)}; use reduce='mean' or "
            "ssm_patterns (one tensor per layer)"
        )
    return torch.stack(list(layers.values()))


@torch.no_grad()
def ssm_patterns(model, tokens: Tensor, reduce: str = "mean") -> dict[int, Tensor]:
    """`mamba_patterns` per layer: {layer: [B, H, P, P]} for every scan layer (`scan_layers`)."""
    check_model(model, "n_layers")
    kinds = scan_layers(model)
    if not kinds:
        raise ValueError(
            f"mamba_patterns needs a selective scan (Mamba-1: hooks mixer.hook_ssm_dt and hook_B/hook_C or "
            f"hook_x_proj, and the mixer's A_log; Mamba-2: the model's ssm_attention); {model_label(model)} "
            "has none"
        )
    if reduce not in ("mean", "none"):
        raise ValueError(f"reduce={reduce!r} is not allowed; use 'mean' or 'none'")
    out: dict[int, Tensor] = {}
    mamba1 = [layer for layer, kind in kinds.items() if kind == "mamba"]
    if mamba1:
        split = not all(f"blocks.{layer}.mixer.hook_B" in model.hook_dict for layer in mamba1)
        parts = ("ssm_dt", "x_proj") if split else ("ssm_dt", "B", "C")
        names = [f"blocks.{layer}.mixer.hook_{h}" for layer in mamba1 for h in parts]
        _, cache = run_and_cache(model, tokens, names)
        for layer in mamba1:
            pre = f"blocks.{layer}.mixer.hook_"
            A_log = _a_log(model, layer)
            if split:  # x_proj output = [dt_low | B | C], B and C of width N = A_log.shape[1]
                n = A_log.shape[1]
                B, C = cache[pre + "x_proj"][..., -2 * n : -n], cache[pre + "x_proj"][..., -n:]
            else:
                B, C = cache[pre + "B"], cache[pre + "C"]
            out[layer] = ssm_attention(cache[pre + "ssm_dt"], B, C, A_log)
    if any(kind == "mamba2" for kind in kinds.values()):
        M2 = model.ssm_attention(tokens)  # {layer: [B, H, P, P]}
        out |= {layer: M2[layer] for layer, kind in kinds.items() if kind == "mamba2"}
    patterns = {}
    for layer in sorted(out):
        M = out[layer].abs().float()
        pattern = M / M.sum(-1, keepdim=True).clamp(min=1e-12)
        patterns[layer] = pattern.mean(1, keepdim=True) if reduce == "mean" else pattern
    return patterns


def _a_log(model, layer: int) -> Tensor | None:
    """The scan's A_log of one layer, [D_inner, N] (Mamba-1) or [H] (Mamba-2): a parameter of the module
    the mixer hooks live in (`blocks.{l}.mixer`, interp's and the bridge's module path alike); None where
    there is none."""
    try:
        a_log = getattr(model.get_submodule(f"blocks.{layer}.mixer"), "A_log", None)
    except AttributeError:
        return None
    return a_log if isinstance(a_log, Tensor) and a_log.ndim in (1, 2) else None


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
    layers: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Detector scores of patterns [L, B, H, P, P] computed on `batch` (copy or induction task).

    Returns a long DataFrame: layer, head, score (offset_{o}, window_{w}, lookup and lookup_next or
    induction and induction_next), value. layers: the model's layer index of each row of `patterns`
    (default 0..L-1; a hybrid's attention layers are e.g. [1, 3]).
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
    layers = list(range(n_layers)) if layers is None else list(layers)
    if len(layers) != n_layers:
        raise ValueError(f"layers names {len(layers)} layers, the patterns have {n_layers}")
    rows = [
        {"layer": layers[i], "head": head, "score": name, "value": float(values[i, head])}
        for name, values in scores.items()
        for i in range(n_layers)
        for head in range(n_heads)
    ]
    return pd.DataFrame(rows)


def head_scores(
    model,
    batch: Batch,
    offsets: Sequence[int] = (1,),
    windows: Sequence[int] = (),
) -> pd.DataFrame:
    """`score_patterns` on the model's own patterns, layer by layer: the attention heads of the attention
    layers (with each head's `activity`, see the module docstring), the channel mean of each Mamba-1
    layer (head 0, activity 1) and every head of each Mamba-2 layer (activity: RMS of its `hook_scan_out`,
    max over the model's Mamba-2 heads scaled to 1). A `kind` column says which (attention, mamba,
    mamba2); `layer` is the model's layer. Any model of the hook contract with attention hooks or a
    selective scan (`has_attention`, `has_selective_scan`), hybrids included."""
    check_model(model, "n_layers")
    parts = []
    attn = attention_layers(model)
    if attn:
        df = score_patterns(attention_patterns(model, batch.tokens), batch, offsets, windows, layers=attn)
        activity = head_activity(model, batch.tokens)
        row = {layer: i for i, layer in enumerate(attn)}
        df["activity"] = [float(activity[row[r.layer], r.head]) for r in df.itertuples()]
        df["kind"] = "attention"
        parts.append(df)
    kinds = scan_layers(model)
    for kind, reduce in (("mamba", "mean"), ("mamba2", "none")):
        layers = [layer for layer, k in kinds.items() if k == kind]
        if not layers:
            continue
        patterns = ssm_patterns(model, batch.tokens, reduce)
        for layer in layers:
            df = score_patterns(patterns[layer][None], batch, offsets, windows, layers=[layer])
            df["activity"] = 1.0
            df["kind"] = kind
            parts.append(df)
        if kind == "mamba2":
            names = [f"blocks.{layer}.mixer.hook_scan_out" for layer in layers]
            if all(n in model.hook_dict for n in names):
                with torch.no_grad():
                    _, cache = run_and_cache(model, batch.tokens, names)
                rms = {
                    layer: cache[n].float().pow(2).mean((0, 1, 3)).sqrt() for layer, n in zip(layers, names)
                }
                top = max(float(r.max()) for r in rms.values()) or 1.0
                for df in parts[-len(layers) :]:
                    df["activity"] = [float(rms[r.layer][r.head]) / top for r in df.itertuples()]
    if not parts:
        raise ValueError(
            f"head scores need attention heads (hooks {', '.join(ATTENTION_HOOKS)}) or a selective scan "
            f"(Mamba-1: mixer.hook_ssm_dt, hook_B/hook_C or hook_x_proj, A_log; Mamba-2: ssm_attention); "
            f"{model_label(model)} has neither"
        )
    df = pd.concat(parts, ignore_index=True)
    order = {name: i for i, name in enumerate(dict.fromkeys(df["score"]))}
    df["_order"] = df["score"].map(order)
    return (
        df.sort_values(["_order", "layer", "head"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def rank_heads(scores: pd.DataFrame, score: str, min_activity: float = 0.0) -> pd.DataFrame:
    """The rows of one score, best first, leaving out heads with activity below `min_activity`."""
    if score not in set(scores["score"]):
        raise ValueError(f"no score {score!r}; available: {sorted(set(scores['score']))}")
    rows = scores[scores["score"] == score]
    if "activity" in rows:
        rows = rows[rows["activity"] >= min_activity]
    return rows.sort_values("value", ascending=False).reset_index(drop=True)
