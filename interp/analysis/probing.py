"""Linear probes that decode past tokens from any hook: which tokens can a state or stream still give back?

A probe reads the activation of one or more hooks at chosen *read positions* and predicts the token at
each *target*: the token `k` positions back (lag k, k = 0..K, all lags at once) or the token at an
absolute position. One row of probe data is one (example, read position); its features are the
hook activations at that position, flattened (`hook_ssm_state` [B, D_inner, P, N] gives D_inner * N
features per position), concatenated over hooks.

    acts = gather_activations(model, tokens, "blocks.1.mixer.hook_ssm_state", read_positions)  # [B, R, F]
    df = probe_lags(model, tokens, "blocks.1.hook_resid_post", read_positions, max_lag=8)
    df[["lag", "accuracy", "control_accuracy", "selectivity", "ce_bits", "chance"]]

Memory. Activations are gathered with `model.run_with_cache(tokens, names_filter=hooks)` one batch of
examples at a time; only the read positions are kept, so memory is O(batch * activation + B * R * F)
instead of O(B * activation). The batch size is chosen so one batch's cached activations stay under
`max_batch_bytes` (the per-example size is measured on the first example).

Ridge, one solve for every target (the default). With centred features X [n, F] and one-hot targets
of every target column stacked side by side, Y [n, T * V], the ridge weights are
W = (X^T X + lambda I)^-1 X^T Y. One eigendecomposition X^T X = Q diag(s) Q^T serves every target and
every lambda: W(lambda) = Q diag(1 / (s + lambda)) Q^T X^T Y, so the whole lambda grid and all T * V
columns cost a few matrix products. The scores are turned into probabilities by a softmax with a
temperature (over the classes seen in training). lambda and the temperature are chosen per target on
a validation split of the training examples by *cross-entropy*, the quantity the information estimate
uses (GCV is the closed-form choice for squared error, but squared error on one-hot targets is not what
we report, and a held-out split is as cheap here because the eigendecomposition is shared). The chosen
lambda is then refitted on all training examples. The logistic option (`solver="logistic"`) fits a
multinomial logistic regression for every target at once with L-BFGS.

Control task (Hewitt & Liang, 2019). Each target column also gets a control label: a fixed random
relabelling of token identities, `control = g_t(token)` where `g_t` maps every token type to a class
drawn uniformly from the classes seen at that target. It is decoded by the same probe in the same
solve. A representation that keeps each token along its own direction gives equal accuracy on both
(any relabelling is as linear as the identity), so selectivity = accuracy - control_accuracy near zero
is expected there; a positive selectivity says the representation favours token identity over
arbitrary groupings of tokens, as superposed or compressed states do. A random relabelling is
many-to-one, so its classes are unbalanced and its chance level differs from the real task's; both
accuracies are therefore compared above their own chance, normalised:
selectivity = (accuracy - chance) / (1 - chance) - (control_accuracy - control_chance) / (1 - control_chance).

Splits are by example, never by position: all read positions of one example go to the same side, so
the test score never sees a string the probe was trained on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from interp.hooks import (
    check_hook_name,
    check_model,
    check_tokens,
    declare_axes,
    hook_info,
    model_device,
    run_and_cache,
)

SOLVERS = ("ridge", "logistic")
DEFAULT_LAMBDAS = tuple(10.0**e for e in range(-6, 3))  # relative to the mean eigenvalue of X^T X
COARSE_TEMPERATURES = tuple(10.0**e for e in range(-1, 5))  # softmax inverse temperatures 0.1 .. 1e4
FINE_FACTORS = (10**-0.5, 10**-0.25, 10**0.25, 10**0.5)  # refinement around the best coarse one
DEFAULT_MAX_BATCH_BYTES = 256 * 2**20


# ---------------------------------------------------------------------------------------------
# Gathering activations
# ---------------------------------------------------------------------------------------------
def position_axis(model, hook: str) -> int:
    """Axis of hook `hook`'s activation that indexes positions, from its declared axes (`interp.hooks`):
    1 for [B, P, ...]; 2 for `hook_ssm_state` [B, D_inner, P, N]; 2 (the query) for attention patterns."""
    pos = hook_info(model, hook).pos
    if pos is None:
        raise ValueError(f"{hook!r} has no position axis, so it cannot be read at positions")
    return pos


def _as_read_positions(read_positions: Tensor | Sequence[int] | int, n_examples: int, n_pos: int) -> Tensor:
    """int, [R] or [B, R] -> [B, R] int64, checked against the sequence length."""
    rp = torch.as_tensor(read_positions, dtype=torch.long)
    if rp.ndim == 0:
        rp = rp[None]
    if rp.ndim == 1:
        rp = rp.expand(n_examples, -1)
    if rp.ndim != 2 or rp.shape[0] != n_examples:
        raise ValueError(
            f"read_positions must be an int, [R] or [batch={n_examples}, R]; got shape {tuple(rp.shape)}"
        )
    if rp.numel() == 0:
        raise ValueError("read_positions is empty; give at least one position to read the hook at")
    if int(rp.min()) < 0 or int(rp.max()) >= n_pos:
        raise ValueError(
            f"read positions must lie in [0, {n_pos}) for sequences of {n_pos} tokens; "
            f"got min {int(rp.min())}, max {int(rp.max())}"
        )
    return rp


def _hook_list(model, hooks: str | Sequence[str]) -> list[str]:
    check_model(model)
    names = [hooks] if isinstance(hooks, str) else list(hooks)
    if not names:
        raise ValueError("give at least one hook name to probe")
    for name in names:
        check_hook_name(model, name)  # unknown names raise, listing the closest ones
        position_axis(model, name)  # and so do unknown axes, before any forward pass
    return names


@torch.no_grad()
def gather_activations(
    model,
    tokens: Tensor,
    hooks: str | Sequence[str],
    read_positions: Tensor | Sequence[int] | int,
    batch_size: int | None = None,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    axes: dict[str, str] | None = None,
) -> Tensor:
    """Activations of `hooks` at the read positions, streamed over batches of examples.

    tokens: [B, P]; read_positions: int, [R] (the same for every example) or [B, R].
    Returns [B, R, F] float32, F = the sum over hooks of the flattened per-position activation size.
    batch_size: examples per forward pass; default: as many as keep one batch's cached activations
    under `max_batch_bytes`. model: any model of the hook contract; axes: {hook or template: axes} for
    hooks whose axes it does not declare (`interp.hooks.declare_axes`).
    """
    declare_axes(model, axes)
    names = _hook_list(model, hooks)
    check_tokens(model, tokens)
    n, p = tokens.shape
    rp = _as_read_positions(read_positions, n, p)
    device = model_device(model)
    out: Tensor | None = None
    start = 0
    while start < n:
        size = 1 if out is None else batch_size  # the first example measures the activation size
        part = slice(start, min(n, start + size))
        _, cache = run_and_cache(model, tokens[part].to(device), names)
        feats, n_bytes = [], 0
        for name in names:
            act = cache[name]
            n_bytes += act.numel() * act.element_size()
            act = act.movedim(position_axis(model, name), 1).flatten(2)  # [b, P', F_hook]
            index = rp[part].to(act.device)[..., None].expand(-1, -1, act.shape[-1])
            feats.append(act.gather(1, index).float().cpu())  # [b, R, F_hook]
        del cache
        chunk = torch.cat(feats, dim=-1)
        if out is None:
            out = torch.empty(n, rp.shape[1], chunk.shape[-1])
            if batch_size is None:
                batch_size = max(1, max_batch_bytes // max(n_bytes, 1))
        out[part] = chunk
        start = part.stop
    return out


def lag_targets(tokens: Tensor, read_positions: Tensor, lags: Sequence[int]) -> Tensor:
    """Token at `read position - lag` for every lag. tokens [B, P], read_positions [B, R] -> [B, R, T]."""
    lags_t = torch.as_tensor(list(lags), dtype=torch.long)
    if lags_t.numel() == 0:
        raise ValueError("give at least one lag")
    if int(lags_t.min()) < 0:
        raise ValueError(f"lags must be >= 0 (0 = the token at the read position), got {lags_t.tolist()}")
    p = tokens.shape[1]
    longest, earliest = int(lags_t.max()), int(read_positions.min())
    if longest >= p:
        raise ValueError(f"lag {longest} is longer than the sequence of {p} tokens; use lags <= {p - 1}")
    if longest > earliest:
        raise ValueError(
            f"lag {longest} reaches before the first token from read position {earliest}; the largest lag "
            f"allowed for these read positions is {earliest} (read later or use smaller lags)"
        )
    where = read_positions[..., None] - lags_t  # [B, R, T]
    return tokens.gather(1, where.flatten(1)).view(where.shape)


def position_targets(tokens: Tensor, n_reads: int, positions: Sequence[int]) -> Tensor:
    """Token at each absolute position, for every read position. tokens [B, P] -> [B, R, T]."""
    pos = torch.as_tensor(list(positions), dtype=torch.long)
    p = tokens.shape[1]
    if pos.numel() == 0 or int(pos.min()) < 0 or int(pos.max()) >= p:
        raise ValueError(
            f"target positions must lie in [0, {p}) for sequences of {p} tokens, got {pos.tolist()}"
        )
    return tokens[:, pos][:, None, :].expand(-1, n_reads, -1)


# ---------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------
def split_examples(
    n_examples: int, test_fraction: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Random (train, test) example indices; every position of an example stays on its side."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = max(1, round(n_examples * test_fraction))
    if n_examples - n_test < 2:
        raise ValueError(f"need at least 3 examples to split into train and test, got {n_examples}")
    order = torch.randperm(n_examples, generator=generator)
    return order[n_test:], order[:n_test]


def control_labels(targets: Tensor, n_classes: int, generator: torch.Generator) -> Tensor:
    """Hewitt & Liang control task: per target column t, a fixed random map g_t from token types to
    classes drawn uniformly from those that occur in column t. targets [..., T] -> [..., T]."""
    flat = targets.reshape(-1, targets.shape[-1])
    maps = []
    for t in range(flat.shape[1]):
        seen = flat[:, t].unique()
        maps.append(seen[torch.randint(len(seen), (n_classes,), generator=generator)])
    table = torch.stack(maps)  # [T, n_classes]
    return table.gather(1, flat.T).T.reshape(targets.shape)


def fit_probes(
    acts: Tensor,
    targets: Tensor,
    n_classes: int,
    solver: str = "ridge",
    test_fraction: float = 0.25,
    val_fraction: float = 0.2,
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    control: bool = True,
    seed: int = 0,
    logistic_l2: float = 1e-4,
    logistic_steps: int = 100,
    max_features: int | None = None,
) -> pd.DataFrame:
    """Fit one linear probe per target column (all in one solve) and score it on held-out examples.

    acts: [B, R, F] activations at R read positions; targets: [B, R, T] token ids in [0, n_classes).
    Returns one row per target column t (in order): target (its index), accuracy, control_accuracy,
    selectivity, ce_bits (held-out cross-entropy), chance and control_chance (accuracy of always guessing
    the training majority class), n_classes (classes
    seen in training), info_bits = max(0, log2(n_classes) - ce_bits), lambda (ridge), n_train, n_test
    (examples), n_features (after any reduction). Accuracies are fractions in [0, 1].
    max_features: project the features onto their top principal components (fitted on the training
    examples only) when there are more; the probe then reads a subspace, so its scores are lower bounds.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; allowed: {', '.join(SOLVERS)}")
    if acts.ndim != 3 or targets.ndim != 3 or acts.shape[:2] != targets.shape[:2]:
        raise ValueError(
            f"acts must be [B, R, F] and targets [B, R, T] with the same B, R; got {tuple(acts.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if int(targets.min()) < 0 or int(targets.max()) >= n_classes:
        raise ValueError(
            f"targets must be ids in [0, {n_classes}), got [{int(targets.min())}, {int(targets.max())}]"
        )
    gen = torch.Generator().manual_seed(seed)
    n_ex, n_read, n_feat = acts.shape
    n_targets = targets.shape[-1]
    train, test = split_examples(n_ex, test_fraction, gen)
    if max_features is not None and n_feat > max_features:
        acts = principal_components(acts, acts[train].reshape(-1, n_feat), max_features, gen)
        n_feat = max_features
    if len(train) * n_read <= n_feat:
        raise ValueError(
            f"too few examples for the probe's dimension: {len(train)} training examples x {n_read} read "
            f"positions = {len(train) * n_read} rows for {n_feat} features; a linear probe can fit any "
            f"labelling of that many points. Use more than {math.ceil(n_feat / n_read / (1 - test_fraction))} "
            f"examples, more read positions, a smaller hook or max_features=<fewer principal components>"
        )
    labels = torch.cat([targets, control_labels(targets, n_classes, gen)], dim=-1) if control else targets

    def rows(idx: Tensor) -> tuple[Tensor, Tensor]:
        return acts[idx].reshape(-1, n_feat), labels[idx].reshape(-1, labels.shape[-1])

    x_train, y_train = rows(train)
    x_test, y_test = rows(test)
    seen = torch.zeros(labels.shape[-1], n_classes, dtype=torch.bool)  # classes seen in training
    seen.scatter_(1, y_train.T, True)
    if solver == "ridge":
        n_val = max(1, round(len(train) * val_fraction))
        fit_x, fit_y = rows(train[n_val:])
        val_x, val_y = rows(train[:n_val])
        lam, temp = _select_ridge(fit_x, fit_y, val_x, val_y, seen, n_classes, lambdas)
        weights, bias = _ridge_fit(x_train, y_train, n_classes, lam)
        logits = _ridge_scores(x_test, weights, bias, seen) * temp[:, None]
    else:
        lam = torch.full((labels.shape[-1],), float("nan"))
        logits = _logistic(x_train, y_train, x_test, seen, n_classes, logistic_l2, logistic_steps)

    accuracy = (logits.argmax(-1) == y_test).float().mean(0)  # [T or 2T]
    ce_bits = _cross_entropy_bits(logits, y_test)
    majority = torch.stack([torch.bincount(col, minlength=n_classes).argmax() for col in y_train.T])
    chance_all = (y_test == majority).float().mean(0)  # accuracy of always guessing the majority class
    chance = chance_all[:n_targets]
    n_seen = seen[:n_targets].sum(1)
    info = (torch.log2(n_seen.double()) - ce_bits[:n_targets]).clamp(min=0)
    nan = torch.full((n_targets,), float("nan"))
    control_acc = accuracy[n_targets:] if control else nan
    control_chance = chance_all[n_targets:] if control else nan
    return pd.DataFrame(
        {
            "target": range(n_targets),
            "accuracy": accuracy[:n_targets].numpy(),
            "control_accuracy": control_acc.numpy(),
            "selectivity": (
                above_chance(accuracy[:n_targets], chance) - above_chance(control_acc, control_chance)
            ).numpy(),
            "ce_bits": ce_bits[:n_targets].numpy(),
            "chance": chance.numpy(),
            "control_chance": control_chance.numpy(),
            "n_classes": n_seen.numpy(),
            "info_bits": info.numpy(),
            "lambda": lam[:n_targets].numpy(),
            "n_train": len(train),
            "n_test": len(test),
            "n_features": n_feat,
        }
    )


def principal_components(acts: Tensor, fit_rows: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """acts [..., F] -> [..., k]: coordinates on the top-k principal components of fit_rows [n, F]."""
    if k < 1:
        raise ValueError(f"max_features must be >= 1, got {k}")
    mean = fit_rows.mean(0)
    state = torch.random.get_rng_state()  # pca_lowrank draws from the global generator: keep it seeded
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
    try:
        _, _, v = torch.pca_lowrank(fit_rows - mean, q=min(k, *fit_rows.shape), center=False, niter=3)
    finally:
        torch.random.set_rng_state(state)
    out = (acts - mean) @ v  # [..., q]
    if out.shape[-1] < k:  # fewer rows than components: pad with zeros so the width is always k
        out = torch.cat([out, out.new_zeros(*out.shape[:-1], k - out.shape[-1])], dim=-1)
    return out


def above_chance(accuracy: Tensor, chance: Tensor) -> Tensor:
    """(accuracy - chance) / (1 - chance), clipped at 0: 1 for a perfect probe, 0 at or below chance."""
    return ((accuracy - chance) / (1 - chance).clamp(min=1e-9)).clamp(min=0)


def ridge_weights(x: Tensor, y: Tensor, n_classes: int, lam: float | Tensor) -> tuple[Tensor, Tensor]:
    """Closed-form ridge for every target column in one eigendecomposition.

    x: [n, F]; y: [n, T] class ids; lam: absolute ridge penalty, a float or one per column [T].
    Returns weights [F, T, V] and bias [T, V] (float64) such that scores = x @ W + b, fitting one-hot
    targets with the intercept unpenalised.
    """
    mean = x.double().mean(0)
    xc = x.double() - mean
    s, q = torch.linalg.eigh(xc.T @ xc)  # X^T X = Q diag(s) Q^T
    xty, y_mean = _xty(xc, y, n_classes)  # [F, T, V], [T, V]
    lam_t = torch.as_tensor(lam, dtype=torch.float64).reshape(-1)
    qtxty = torch.einsum("fg,ftv->gtv", q, xty)
    w = torch.einsum("fg,gtv->ftv", q, qtxty / (s[:, None, None] + lam_t[None, :, None]))
    bias = y_mean - torch.einsum("f,ftv->tv", mean, w)
    return w, bias


def _xty(xc: Tensor, y: Tensor, n_classes: int) -> tuple[Tensor, Tensor]:
    """X^T onehot(Y) without materialising the one-hot: [F, T, V], and the class frequencies [T, V]."""
    n, n_cols = y.shape
    xty = xc.new_zeros(n_cols, n_classes, xc.shape[1])
    for t in range(n_cols):
        xty[t].index_add_(0, y[:, t], xc)
    freq = torch.zeros(n_cols, n_classes, dtype=torch.float64)
    freq.scatter_add_(1, y.T, torch.ones(n_cols, n, dtype=torch.float64))
    return xty.permute(2, 0, 1), freq / n


def _ridge_fit(x: Tensor, y: Tensor, n_classes: int, lam_rel: Tensor) -> tuple[Tensor, Tensor]:
    scale = _mean_eigenvalue(x)
    return ridge_weights(x, y, n_classes, lam_rel * scale)


def _mean_eigenvalue(x: Tensor) -> float:
    """trace(Xc^T Xc) / F: makes the lambda grid independent of the features' scale."""
    xc = x.double() - x.double().mean(0)
    return max(float((xc * xc).sum()) / x.shape[1], 1e-12)


def _ridge_scores(x: Tensor, w: Tensor, bias: Tensor, seen: Tensor) -> Tensor:
    """x [n, F] -> scores [n, T, V], -inf for classes never seen in training at that column."""
    scores = torch.einsum("nf,ftv->ntv", x.double(), w) + bias
    return scores.masked_fill(~seen, float("-inf"))


def _select_ridge(
    fit_x: Tensor, fit_y: Tensor, val_x: Tensor, val_y: Tensor, seen: Tensor, n_classes: int, lambdas
) -> tuple[Tensor, Tensor]:
    """Per column, the (relative lambda, temperature) with the lowest validation cross-entropy."""
    scale = _mean_eigenvalue(fit_x)
    mean = fit_x.double().mean(0)
    xc = fit_x.double() - mean
    s, q = torch.linalg.eigh(xc.T @ xc)
    xty, y_mean = _xty(xc, fit_y, n_classes)
    qtxty = torch.einsum("fg,ftv->gtv", q, xty)  # [F, T, V]
    z_val = (val_x.double() - mean) @ q  # validation rows in the eigenbasis, [n_val, F]
    best_ce = torch.full((fit_y.shape[1],), float("inf"))
    best_lam = torch.zeros(fit_y.shape[1], dtype=torch.float64)
    best_temp = torch.ones(fit_y.shape[1])
    for lam in lambdas:
        scores = torch.einsum("nf,ftv->ntv", z_val, qtxty / (s + lam * scale)[:, None, None]) + y_mean
        ce, temp = _best_temperature(scores.float().masked_fill(~seen, float("-inf")), val_y)
        better = ce < best_ce
        best_ce = torch.where(better, ce, best_ce)
        best_lam = torch.where(better, torch.tensor(lam, dtype=torch.float64), best_lam)
        best_temp = torch.where(better, temp, best_temp)
    return best_lam, best_temp.double()


def _best_temperature(scores: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per column, the softmax inverse temperature with the lowest cross-entropy: a coarse grid (x10
    steps), then x10^(+-1/4, +-1/2) around each column's best. scores [n, T, V], y [n, T] -> ([T], [T])."""
    coarse = torch.tensor(COARSE_TEMPERATURES)
    ce = torch.stack([_cross_entropy_bits(scores * t, y) for t in coarse])  # [n_coarse, T]
    best_ce, idx = ce.min(0)
    best_temp = coarse[idx]
    for factor in FINE_FACTORS:
        temp = best_temp * factor
        ce_fine = _cross_entropy_bits(scores * temp[:, None], y)
        better = ce_fine < best_ce
        best_ce, best_temp = torch.where(better, ce_fine, best_ce), torch.where(better, temp, best_temp)
    return best_ce, best_temp


def _cross_entropy_bits(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy in bits per column. logits [n, T, V] (-inf = impossible class), y [n, T] -> [T]."""
    logp = torch.log_softmax(logits, dim=-1).gather(-1, y[..., None])[..., 0]
    return (-logp.mean(0) / math.log(2)).clamp(min=0) + 0.0  # exact fits: no -0.0 or rounding below 0


def _logistic(
    x_train: Tensor, y_train: Tensor, x_test: Tensor, seen: Tensor, n_classes: int, l2: float, steps: int
) -> Tensor:
    """Multinomial logistic regression for every column at once (L-BFGS); returns test logits [n, T, V]."""
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    xs, xt = (x_train - mean) / std, (x_test - mean) / std
    n_cols = y_train.shape[1]
    w = torch.zeros(xs.shape[1], n_cols, n_classes, requires_grad=True)
    b = torch.zeros(n_cols, n_classes, requires_grad=True)
    mask = torch.where(seen, 0.0, float("-inf"))
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe", history_size=20)

    def closure() -> Tensor:
        opt.zero_grad()
        logits = torch.einsum("nf,ftv->ntv", xs, w) + b + mask
        loss = F.cross_entropy(logits.flatten(0, 1), y_train.flatten()) * n_cols + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return torch.einsum("nf,ftv->ntv", xt, w) + b + mask


# ---------------------------------------------------------------------------------------------
# One call from a model
# ---------------------------------------------------------------------------------------------
def probe_tokens(
    model,
    tokens: Tensor,
    hooks: str | Sequence[str],
    read_positions: Tensor | Sequence[int] | int,
    lags: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    batch_size: int | None = None,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    axes: dict[str, str] | None = None,
    **fit_options,
) -> pd.DataFrame:
    """Decode past tokens from `hooks` read at `read_positions` (give `lags` or absolute `positions`).

    tokens: [B, P]; read_positions: int, [R] or [B, R]; lags: e.g. range(0, 9) for the token at the
    read position and the eight before it; positions: absolute token positions instead.
    Returns `fit_probes`'s DataFrame with a `lag` (or `position`) column and the hook names.
    fit_options: solver ("ridge" | "logistic"), test_fraction, lambdas, control, seed, ...
    axes: as in `gather_activations`.
    """
    if (lags is None) == (positions is None):
        raise ValueError("give exactly one of lags= (relative offsets) or positions= (absolute positions)")
    declare_axes(model, axes)
    names = _hook_list(model, hooks)
    check_tokens(model, tokens)
    rp = _as_read_positions(read_positions, tokens.shape[0], tokens.shape[1])
    if lags is not None:
        lags = list(lags)
        targets = lag_targets(tokens, rp, lags)  # checked before the (costly) forward passes
    else:
        positions = list(positions)
        targets = position_targets(tokens, rp.shape[1], positions)
    acts = gather_activations(model, tokens, names, rp, batch_size, max_batch_bytes)
    df = fit_probes(acts, targets.cpu(), model.cfg.d_vocab, **fit_options)
    df.insert(0, "hook", "+".join(names))
    if lags is not None:
        df.insert(1, "lag", lags)
    else:
        df.insert(1, "position", positions)
    return df.drop(columns="target")


def probe_lags(
    model,
    tokens: Tensor,
    hooks: str | Sequence[str],
    read_positions: Tensor | Sequence[int] | int,
    max_lag: int,
    **options,
) -> pd.DataFrame:
    """`probe_tokens` for lags 0..max_lag: one row per lag."""
    if max_lag < 0:
        raise ValueError(f"max_lag must be >= 0, got {max_lag}")
    return probe_tokens(model, tokens, hooks, read_positions, lags=range(max_lag + 1), **options)
