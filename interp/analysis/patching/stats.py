"""Error bars for patching results: per-example effects, standard errors and bootstrap intervals.

A patching effect is a mean over examples. Every engine keeps the metric of each example, so each
result row also gets the standard error of its effect and a percentile bootstrap interval over
examples (resampling examples with replacement; `n_boot` resamples, seeded). A cell whose interval
contains 0 is indistinguishable from zero at that level (`distinct` is False); the patching heatmap
can mark such cells (`plot_patching_heatmap(..., mark_indistinct=True)`).

The per-example effect uses the batch's mean clean-corrupt gap as its unit, so the mean of the
per-example effects is exactly the reported effect:

    denoise: effect_b = (m_patched_b - m_corrupt_b) / gap      noise: (m_clean_b - m_patched_b) / gap
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

N_BOOT = 1000
CI = 0.95


def per_example_effects(values: Tensor, clean: Tensor, corrupt: Tensor, mode: str) -> Tensor:
    """values [S, B] patched metric per spec and example; clean, corrupt [B] -> effects [S, B]."""
    gap = float(clean.mean() - corrupt.mean())
    if not gap:
        return torch.full_like(values, float("nan"))
    return (values - corrupt) / gap if mode == "denoise" else (clean - values) / gap


def effect_intervals(
    effects: Tensor, n_boot: int = N_BOOT, ci: float = CI, seed: int = 0
) -> dict[str, np.ndarray]:
    """effects [S, B] -> {"se", "lo", "hi", "distinct"} each [S]: standard error of the mean over the
    B examples, the percentile bootstrap interval at level `ci`, and whether it excludes 0.

    The bootstrap is one matrix product: resample r draws example b `counts[r, b]` times, so its mean
    is effects @ counts.T / B. With one example the interval is [effect, effect] and se is nan."""
    if not 0 < ci < 1:
        raise ValueError(f"ci={ci} must lie strictly between 0 and 1")
    effects = effects.detach().double().cpu()
    s, b = effects.shape
    se = effects.std(1, unbiased=True) / b**0.5 if b > 1 else torch.full((s,), float("nan"))
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, b, (n_boot, b), generator=gen)
    counts = torch.zeros(n_boot, b, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(n_boot, b).double()
    )
    lo, hi = torch.empty(s, dtype=torch.float64), torch.empty(s, dtype=torch.float64)
    for start in range(0, s, 256):  # [256, n_boot] at a time
        boot = effects[start : start + 256] @ counts.T / b
        lo[start : start + 256] = percentile(boot, (1 - ci) / 2)
        hi[start : start + 256] = percentile(boot, (1 + ci) / 2)
    distinct = (lo > 0) | (hi < 0)
    return {"se": se.numpy(), "lo": lo.numpy(), "hi": hi.numpy(), "distinct": distinct.numpy()}


def percentile(x: Tensor, q: float) -> Tensor:
    """`torch.quantile(x, q, dim=1)` (linear interpolation) of x [S, n], from the few order statistics it
    needs (`topk` of the nearer tail: 3x faster on CPU than quantile's full sort of each row). Equal to it
    in float64; in float32 within about 1e-5 relative, as quantile computes the rank in float32."""
    if x.ndim != 2 or not x.shape[1] or not 0 <= q <= 1:
        raise ValueError(
            f"percentile takes x [S, n] with n >= 1 and q in [0, 1]; got {tuple(x.shape)} and {q}"
        )
    n = x.shape[1]
    at = q * (n - 1)
    below = int(at)
    above = min(below + 1, n - 1)
    if below < n / 2:
        tail = x.topk(above + 1, 1, largest=False).values  # ascending: tail[:, j] is order statistic j
        low, high = tail[:, below], tail[:, above]
    else:
        tail = x.topk(n - below, 1, largest=True).values  # descending: tail[:, j] is order statistic n-1-j
        low, high = tail[:, n - 1 - below], tail[:, n - 1 - above]
    # a row with a NaN has no percentile (as in quantile); topk would rank the NaN above every number
    return torch.lerp(low, high, at - below).masked_fill(x.isnan().any(1), float("nan"))
