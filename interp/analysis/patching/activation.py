"""Activation patching engines: many patches per forward (`method="batched"`) and the plain reference
with one forward per patch (`method="loop"`); see `interp.analysis.patching` for modes and effects."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from interp.analysis.patching.memory import budget_bytes, bytes_per_copy, copies_per_forward
from interp.analysis.patching.metrics import Metric
from interp.analysis.patching.reuse import can_resume, recurrent_hooks_in_use, resumed, start_of
from interp.analysis.patching.spec import PatchSpec, patch_specs
from interp.analysis.patching.stats import effect_intervals, per_example_effects
from interp.hooks import (
    HookInfo,
    check_model,
    check_tokens,
    component_hook,
    declare_axes,
    hook_info,
    mark_edited,
    run_and_cache,
)
from interp.tasks.pairs import check_pair

MODES = ("denoise", "noise")
METHODS = ("auto", "reuse", "batched", "loop")


def activation_patching(
    model,
    clean_tokens: Tensor,
    corrupt_tokens: Tensor,
    metric: Metric | Callable[[Tensor], Tensor],
    specs: Sequence[PatchSpec],
    mode: str = "denoise",
    method: str = "auto",
    max_batch: int = 1024,
    axes: dict[str, str] | None = None,
    attention_mask: Tensor | None = None,
    max_memory: int | str | None = None,
) -> pd.DataFrame:
    """Patch each spec in turn and measure the metric.

    model: any model of the hook contract (`interp.hooks`). clean_tokens, corrupt_tokens: [B, P] (same
    shape). metric: logits [K*B, P, V] -> [K*B].
    method: "reuse" starts each patched forward at the patch's layer and position from one recorded
    base forward (`interp.analysis.patching.reuse`; models offering `forward_from`), "batched" runs
    floor(max_batch / B) patches per full forward on a repeated batch, "loop" runs one forward per patch
    (the reference); "auto" = reuse where the model can, batched otherwise (and for hooks with no layer, and
    while a hook of yours sits on a recurrent state, `reuse.recurrent_hooks_in_use`).
    axes: {hook or template: axes} for hooks whose axes the model does not declare
    (`interp.hooks.declare_axes`). Except with "loop", a patch that would write the base run's own value
    into every example (every position before a minimal pair's first difference) is not run: it gets the
    base's metric, and so do the examples for which a patch that runs is a no-op (`no_op_hooks`); hooks
    of yours that only watch see no pass for it. attention_mask [B, P] (1 = token, 0 = padding), shared by the clean
    and corrupted tokens, is passed to every forward (models whose forward takes one).
    max_memory: bytes (or "512MiB", "2GB") the patched copies of one forward may use; the copies per
    forward are the fewest of max_batch // B and what fits (`patching.memory`: from the peak memory of
    one patched forward, measured once; default half the free RAM / GPU memory). Too small for one
    patch: an error saying how much one patch needs.
    Returns one row per spec: layer, component, hook, pos, head, channels, label, metric, effect, and
    error bars over examples (effect_se, effect_lo, effect_hi, distinct; `patching.stats`);
    `df.attrs` holds clean_metric, corrupt_metric, mode, per_example_effect [S, B] and patch_semantics
    ({hook: "forward" | "recurrence" | "readout"}, see `interp.hooks.PATCH_SEMANTICS`).
    """
    declare_axes(model, axes)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    # the loop stays the plain reference: it runs every patch, no-ops included
    run = prepare(model, clean_tokens, corrupt_tokens, metric, specs, mode, attention_mask, method != "loop")
    b = run.base.shape[0]
    budget = budget_bytes(max_memory, run.base.device)
    max_copies = max(1, max_batch // b)

    def per_forward(idx: list[int]) -> int:  # copies of a full patched forward that fit the budget
        hooks = sorted({specs[i].hook for i in idx})
        per_copy = bytes_per_copy(model, run.base, masked(attention_mask), hooks)
        return copies_per_forward(per_copy, budget, max_copies)

    held = recurrent_hooks_in_use(model) if method in ("auto", "reuse") else []
    if method == "auto":
        method = "reuse" if can_resume(model) and not held else "batched"
    if method == "reuse" and not can_resume(model):
        raise ValueError(
            f"{type(model).__name__} cannot resume a forward (no forward_from / resume_state); "
            "use method='batched' or 'auto'"
        )
    if method == "reuse" and held:
        raise ValueError(
            f"method='reuse' cannot reproduce hooks kept on recurrent states ({', '.join(held)}): an edit there "
            "is replayed through the recurrence from position 0, which a resumed pass does not run (and reuse "
            "cannot tell a hook that edits from one that watches); remove them, or use method='auto' (which "
            "then runs 'batched'), 'batched' or 'loop'"
        )
    if method == "loop":
        per_forward(list(range(len(specs))))  # one patch per forward must fit too
        values = _loop(model, run.base, specs, run.source_cache, metric, run.infos, attention_mask)
        return frame(specs, values, run)
    values = torch.empty(len(specs), b)  # no-ops: the base's value, set at the end
    rest = run.unchanged.all(1).logical_not().nonzero()[:, 0].tolist()  # the patches worth a forward
    if method == "reuse":
        idx = [i for i in rest if start_of(model, specs[i], run.infos[specs[i].hook]) is not None]
        if idx:
            sub = [specs[i] for i in idx]
            values[idx] = resumed(
                model,
                run.base,
                sub,
                run.source_cache,
                metric,
                run.infos,
                (budget, max_copies),
                attention_mask,
            )
        done = set(idx)
        rest = [i for i in rest if i not in done]
    if rest:
        copies = [[(specs[i], run.source_cache[specs[i].hook])] for i in rest]
        values[rest] = (
            batched(model, run.base, copies, metric, per_forward(rest) * b, run.infos, attention_mask)
            .float()
            .cpu()
        )
    values = torch.where(run.unchanged, run.base_values.cpu(), values)  # no-ops exactly, not up to rounding
    return frame(specs, values, run)


def patch_grid(
    model,
    clean_tokens: Tensor,
    corrupt_tokens: Tensor,
    metric: Metric | Callable[[Tensor], Tensor],
    component: str,
    *,
    heads: bool | Sequence[int] = False,
    positions: bool | Sequence[int] = False,
    layers: Sequence[int] | None = None,
    channel_groups: int | None = None,
    mode: str = "denoise",
    method: str = "auto",
    axes: dict[str, str] | None = None,
    attention_mask: Tensor | None = None,
    max_memory: int | str | None = None,
) -> pd.DataFrame:
    """`patch_specs` + `activation_patching`: e.g. layer x position on the residual stream
    (`component="resid_pre", positions=True`), layer x head (`"z", heads=True`), layer x head x
    position, Mamba state by position and channel group (`"ssm_state", positions=True, channel_groups=4`).
    component: a short name (`interp.hooks.components(model)`) or a template with `{layer}`."""
    declare_axes(model, axes)
    n_channels = None
    if channel_groups and not isinstance(getattr(model.cfg, "d_inner", None), int):  # e.g. a bridge's cfg
        name = component_hook(model, component).format(layer=(list(layers) if layers else [0])[0])
        info = hook_info(model, name)
        if info.channel is not None:
            with torch.no_grad():
                n_channels = run_and_cache(model, clean_tokens[:1], [name])[1][name].shape[info.channel]
    specs = patch_specs(
        model,
        component,
        layers=layers,
        heads=heads,
        positions=positions,
        n_pos=clean_tokens.shape[1],
        channel_groups=channel_groups,
        n_channels=n_channels,
    )
    return activation_patching(
        model,
        clean_tokens,
        corrupt_tokens,
        metric,
        specs,
        mode=mode,
        method=method,
        attention_mask=attention_mask,
        max_memory=max_memory,
    )


@dataclass
class Prepared:
    """What every patching engine starts from: the run to patch and the activations to patch in."""

    base: Tensor  # [B, P] tokens of the run that is patched
    source: Tensor  # [B, P] tokens whose activations are patched in
    clean_metric: float
    corrupt_metric: float
    mode: str
    source_cache: dict[str, Tensor]  # hook -> source activation
    infos: dict[str, HookInfo]  # hook -> axes and patch semantics
    clean_values: Tensor | None = None  # [B] the metric of each clean example
    corrupt_values: Tensor | None = None  # [B] the metric of each corrupted example
    attention_mask: Tensor | None = None  # [B, P] 1 = token, 0 = padding; None: no padding
    unchanged: Tensor | None = None  # [S, B] bool: spec s is a no-op for example b (`no_op_hooks`)

    @property
    def base_values(self) -> Tensor | None:
        """[B] the metric of each example of the run that is patched."""
        return self.corrupt_values if self.mode == "denoise" else self.clean_values


def prepare(
    model, clean_tokens, corrupt_tokens, metric, specs, mode, attention_mask=None, compare=False
) -> Prepared:
    """Check inputs; run the source and base once for the baseline metrics and the source activations.
    compare: also find the no-op patches during the base run (`Prepared.unchanged`, `no_op_hooks`)."""
    check_model(model)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; allowed: {', '.join(MODES)}")
    check_pair(clean_tokens, corrupt_tokens)
    check_tokens(model, clean_tokens)
    check_tokens(model, corrupt_tokens)
    if isinstance(metric, Metric):
        metric.check_vocab(model.cfg.d_vocab)
        if metric.answers.shape != clean_tokens.shape:
            raise ValueError(
                f"the metric was built for batches of shape {tuple(metric.answers.shape)}, "
                f"the tokens have shape {tuple(clean_tokens.shape)}"
            )
    if not specs:
        raise ValueError("no patches given (specs is empty)")
    hooks = sorted({s.hook for s in specs})
    infos = {name: hook_info(model, name) for name in hooks}  # unknown names and axes raise here
    base, source = (corrupt_tokens, clean_tokens) if mode == "denoise" else (clean_tokens, corrupt_tokens)
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(clean_tokens.shape):
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} must have the tokens' shape {tuple(clean_tokens.shape)}"
        )
    kw = masked(attention_mask)
    unchanged = torch.zeros(len(specs), base.shape[0], dtype=torch.bool) if compare else None
    with torch.no_grad():
        source_logits, cache = run_and_cache(model, source, hooks, **kw)
        for s in specs:  # a bad index fails here, with the spec named, not inside a forward
            try:
                cache[s.hook][s.index(infos[s.hook])]
            except IndexError as e:
                raise ValueError(f"{s} does not fit activation {tuple(cache[s.hook].shape)}: {e}") from None
        fwd = no_op_hooks(specs, cache, infos, unchanged) if compare else []
        base_logits = model.run_with_hooks(base, fwd_hooks=fwd, **kw) if fwd else model(base, **kw)
        v_source, v_base = metric(source_logits).float(), metric(base_logits).float()
    clean_v, corrupt_v = (v_source, v_base) if mode == "denoise" else (v_base, v_source)
    return Prepared(
        base,
        source,
        float(clean_v.mean()),
        float(corrupt_v.mean()),
        mode,
        cache,
        infos,
        clean_v,
        corrupt_v,
        attention_mask,
        unchanged,
    )


def no_op_hooks(
    specs: Sequence[PatchSpec], source: dict[str, Tensor], infos: dict[str, HookInfo], out: Tensor
) -> list[tuple[str, Callable]]:
    """Forward hooks for the base run that set out[s, b] (bool [S, B]) where spec s would write into
    example b the value the base run already has there (`==`; NaN is never equal), so that its patched
    run is the base run. In a causal model every patch before the first position where the clean and
    corrupted inputs differ is one. Each hook compares as the activation passes and keeps only the
    [B] answers: the base's activations are not stored."""
    by_hook: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        by_hook.setdefault(spec.hook, []).append(i)

    def compare(name: str, members: list[int]) -> Callable:
        def hook_fn(act: Tensor, hook) -> None:
            if act.shape != source[name].shape:  # a data-dependent shape: run those patches
                return
            same = act == source[name]
            for i in members:
                picked = same[specs[i].index(infos[name])]
                out[i] = picked.reshape(picked.shape[0], -1).all(1).cpu()  # hooks may sit on several devices

        return hook_fn

    return [(name, compare(name, members)) for name, members in by_hook.items()]


@torch.no_grad()
def batched(
    model,
    base: Tensor,
    copies: list[list[tuple[PatchSpec, Tensor]]],
    metric: Callable[[Tensor], Tensor],
    max_batch: int,
    infos: dict[str, HookInfo],
    attention_mask: Tensor | None = None,
) -> Tensor:
    """Metric [len(copies), B] (per example) where copy k runs `base` with every (spec, source [B, ...])
    of copies[k] patched in. Copies run floor(max_batch / B) per forward, as one repeated batch."""
    b = base.shape[0]
    per_forward = max(1, max_batch // b)
    out = []
    for start in range(0, len(copies), per_forward):
        chunk = copies[start : start + per_forward]
        k = len(chunk)
        fwd_hooks = list(patch_hooks(chunk, b, infos).items())
        kw = masked(None if attention_mask is None else attention_mask.repeat(k, 1))
        logits = model.run_with_hooks(base.repeat(k, 1), fwd_hooks=fwd_hooks, **kw)
        out.append(metric(logits).view(k, b))
    return torch.cat(out)


def patch_hooks(
    chunk: list[list[tuple[PatchSpec, Tensor]]], b: int, infos: dict[str, HookInfo]
) -> dict[str, Callable]:
    """One hook function per hook name: copy k's rows take the source wherever its specs select."""
    by_hook: dict[str, list[tuple[int, PatchSpec, Tensor]]] = {}
    for k, patches in enumerate(chunk):
        for spec, src in patches:
            by_hook.setdefault(spec.hook, []).append((k, spec, src))
    k_total = len(chunk)
    hooks = {}
    for name, items in by_hook.items():
        src0 = items[0][2]
        info = infos[name]
        selectable = {info.pos, info.head, info.channel} - {None}
        # mask [K, 1, ...]: full size on the axes a spec can select, broadcast (1) on the others
        mask_shape = [k_total, 1] + [s if axis in selectable else 1 for axis, s in enumerate(src0.shape)][1:]
        mask = torch.zeros(mask_shape, dtype=torch.bool, device=src0.device)
        shared = all(src is src0 for _, _, src in items)
        source = src0[None] if shared else src0.new_zeros((k_total, *src0.shape))
        for k, spec, src in items:
            mask[k][spec.index(info)] = True
            if not shared:
                source[k] = src
        hooks[name] = _make_patch_hook(mask, source, k_total, b, info.pos)
    return hooks


def _make_patch_hook(mask: Tensor, source: Tensor, k: int, b: int, pos: int | None) -> Callable:
    """act [K*B, ...] -> copy k's rows take source where mask [K, 1, ...] is True. When the specs patch a
    few of the positions (axis `pos` of act), only those are merged and the rest copied: a `where` over
    every position of a Mamba state [K*B, D, P, N] took a third of a state patch's time."""
    ax = None if pos is None else pos + 1  # the axis in the [K, B, ...] view
    marked = touched = None  # the positions written, when not all of them; when few, merged one by one
    if ax is not None:
        written = mask.any(dim=tuple(i for i in range(mask.ndim) if i != ax)).nonzero()[:, 0]
        marked = written if len(written) < mask.shape[ax] else None
        touched = written if mask.shape[ax] > 1 and 2 * len(written) <= mask.shape[ax] else None
    if touched is not None:
        mask, source = mask.index_select(ax, touched), source.index_select(ax, touched)

    def hook_fn(act: Tensor, hook) -> Tensor:
        view = act.unflatten(0, (k, b))  # [K, B, ...]
        if touched is None:
            out = torch.where(mask, source.to(act.dtype), view).flatten(0, 1)
        else:
            merged = torch.where(mask, source.to(act.dtype), view.index_select(ax, touched))
            out = act.clone()  # in act's memory layout: a copy in another one costs several times more
            out.unflatten(0, (k, b)).index_copy_(ax, touched, merged)
        # a Mamba state hook then compares only where the specs wrote
        return out if marked is None else mark_edited(out, act, marked, pos)

    return hook_fn


@torch.no_grad()
def _loop(
    model,
    base: Tensor,
    specs: Sequence[PatchSpec],
    source_cache: dict[str, Tensor],
    metric: Callable[[Tensor], Tensor],
    infos: dict[str, HookInfo],
    attention_mask: Tensor | None = None,
) -> Tensor:
    """The reference: one forward per patch, plain index assignment. -> metric [S, B] per example."""
    values = []
    for spec in specs:
        src = source_cache[spec.hook]
        idx = spec.index(infos[spec.hook])

        def hook_fn(act: Tensor, hook, idx=idx, src=src) -> Tensor:
            act = act.clone()
            act[idx] = src[idx]
            return act

        logits = model.run_with_hooks(base, fwd_hooks=[(spec.hook, hook_fn)], **masked(attention_mask))
        values.append(metric(logits))
    return torch.stack(values)


def masked(attention_mask: Tensor | None) -> dict:
    """Forward keyword arguments: the mask only when there is one (not every model takes it)."""
    return {} if attention_mask is None else {"attention_mask": attention_mask}


def frame(specs: Sequence[PatchSpec], values: Tensor, run: Prepared) -> pd.DataFrame:
    """One row per spec with `metric` and `effect`; attrs as `activation_patching` documents."""
    return with_effects(pd.DataFrame([s.row() for s in specs]), values, run)


def with_effects(df: pd.DataFrame, values: Tensor, run: Prepared) -> pd.DataFrame:
    """Add `metric` and `effect` (fraction of the clean-corrupt gap, see the package doc) to df.

    values: [S] or, per example, [S, B]; per-example values also give `effect_se`, `effect_lo`,
    `effect_hi` (bootstrap interval over examples) and `distinct` (the interval excludes 0), see
    `interp.analysis.patching.stats`, and `df.attrs["per_example_effect"]` [S, B]."""
    clean_m, corrupt_m = run.clean_metric, run.corrupt_metric
    values = values.detach().cpu().double()
    per_example = values.ndim == 2
    df["metric"] = (values.mean(1) if per_example else values).numpy()
    gap = clean_m - corrupt_m
    if run.mode == "denoise":
        df["effect"] = (df["metric"] - corrupt_m) / gap if gap else float("nan")
    else:
        df["effect"] = (clean_m - df["metric"]) / gap if gap else float("nan")
    df.attrs.update(
        clean_metric=clean_m,
        corrupt_metric=corrupt_m,
        mode=run.mode,
        patch_semantics={name: info.patch for name, info in run.infos.items()},
    )
    if per_example and run.clean_values is not None:
        clean_v, corrupt_v = (v.detach().cpu().double() for v in (run.clean_values, run.corrupt_values))
        effects = per_example_effects(values, clean_v, corrupt_v, run.mode)
        bars = effect_intervals(effects)
        df["effect_se"], df["effect_lo"], df["effect_hi"] = bars["se"], bars["lo"], bars["hi"]
        df["distinct"] = bars["distinct"]
        df.attrs["per_example_effect"] = effects.numpy()
    return df
