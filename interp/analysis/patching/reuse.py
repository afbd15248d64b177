"""Patching that never recomputes what a patch cannot change (`activation_patching(method="reuse")`).

A patch at layer l cannot change anything below l, and in a causal model a patch at position p cannot
change positions < p. So the patched forward starts at layer l, position p, from one recorded forward of
the base run: for attention, its residual stream at layer l and the keys/values of positions < p; for
Mamba-1 and Mamba-2, the conv inputs of positions p-K+1..p-1 and the SSM state after p - 1 (a state
patch at t still feeds the recurrence, as in the loop); for the LSTM, (h, c) after p - 1.
Patches that share a start (layer, position) share one pass, on copies of the batch as in
`method="batched"`; the copies per pass come from the measured memory of a resumed pass
(`patching.memory.resumed_bytes`). Only the model knows how to restart its own forward, so this is a
capability a model offers, not part of the hook contract:

    state = model.resume_state(tokens [B, P], attention_mask=None)   # .logits [B, P, V] and whatever
                                                                       # the model needs to restart
    model.forward_from(state, layer, pos, copies=K) -> logits [K*B, P - pos, V]
        (runs blocks >= layer on positions >= pos; their hooks fire with P - pos positions, except
        Mamba's hook_conv: P - pos + K - 1, the slice [pos:] of the full forward's)
    model.position_local(hook) -> bool      (optional) a patch there at p changes only position p of
    model.forward_from(..., single=True)    its block, which then runs on position p alone
    model.forward_from(..., readout=rows)   (optional) only the logits at positions `rows` are read: the
                                            rest may be the recorded ones (a `Metric` reads its mask's)
    model.forward_from(..., patched_hooks=names)   (optional) the hooks the pass patches: what only they
                                            replace need not be computed (Mamba: the patched layer's
                                            states come from the recording, not from a scan)

interp's transformer, Mamba, Mamba-2, hybrid and LSTM offer it (`forward_from`); for a model without it
(a TransformerLens bridge, a user's module) `method="auto"` falls back to `"batched"`.
Tested equal to the one-forward-per-patch loop (atol 1e-5), padding included
(tests/test_patching_reuse.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import Tensor

from interp.analysis.patching.memory import copies_per_forward, resumed_bytes
from interp.analysis.patching.metrics import Metric
from interp.analysis.patching.spec import PatchSpec
from interp.hooks import HookInfo, attached, find_hook_info


def can_resume(model) -> bool:
    """Whether the model can restart a forward at a layer and position (see the module doc)."""
    return callable(getattr(model, "forward_from", None)) and callable(getattr(model, "resume_state", None))


def recurrent_hooks_in_use(model) -> list[str]:
    """Recurrent-state hook points (`HookInfo.state` with `patch == "recurrence"`: interp's Mamba
    `hook_ssm_state`, the LSTM's `hook_hidden` / `hook_cell`) that have a hook attached, a user's kept on
    while patching. An edit there is replayed through the recurrence from position 0, so what the hook
    sees after position p depends on unedited states before p that a resumed pass does not recompute. (A
    hook on `hook_ssm_write` feeds the scan directly, with nothing replayed, and reuse reproduces it.)"""
    return [
        name
        for name, point in model.hook_dict.items()
        if getattr(point, "_forward_hooks", None)
        and (info := find_hook_info(model, name)) is not None
        and info.state
        and info.patch == "recurrence"
    ]


def start_of(model, spec: PatchSpec, info: HookInfo) -> tuple[int, int, bool] | None:
    """(layer, position, single) the patched forward can start from; None when the hook has no layer.
    single: the patch changes only its own position within its block (`model.position_local`)."""
    if spec.layer is None:
        return None
    if spec.pos is None or info.pos is None:
        return spec.layer, 0, False
    local = getattr(model, "position_local", None)
    return spec.layer, spec.pos, bool(local and local(spec.hook))


@torch.no_grad()
def resumed(
    model,
    base: Tensor,
    specs: Sequence[PatchSpec],
    source_cache: dict[str, Tensor],
    metric: Callable[[Tensor], Tensor],
    infos: dict[str, HookInfo],
    memory: tuple[int, int],
    attention_mask: Tensor | None = None,
) -> Tensor:
    """Metric [len(specs), B] per example, each spec patched alone into `base` with its source value;
    every spec must have a start (`start_of`). memory: (budget in bytes, most copies per pass); the
    copies per pass come from the measured memory of a resumed pass (`patching.memory.resumed_bytes`)."""
    from interp.analysis.patching.activation import patch_hooks  # noqa: PLC0415 (activation imports us)

    state = model.resume_state(base, attention_mask)
    b, n = base.shape
    need = resumed_bytes(model, state, n, sorted({s.hook for s in specs}), base.device)
    per_forward = lambda w: copies_per_forward(need(w), *memory)  # noqa: E731  copies of a w-position pass
    groups: dict[tuple[int, int, bool], list[int]] = {}
    packed: dict[tuple, list[int]] = {}  # (hook, head, channels) -> specs at its positions, one copy
    last = len(getattr(model, "blocks", [])) - 1
    for i, spec in enumerate(specs):
        start = start_of(model, spec, infos[spec.hook])
        if isinstance(metric, Metric) and start[2] and start[0] == last:
            packed.setdefault((spec.hook, spec.head, spec.channels), []).append(i)
        else:
            groups.setdefault(start, []).append(i)
    out = torch.empty(len(specs), b)
    if packed:
        _packed(model, state, specs, list(packed.values()), source_cache, metric, infos, per_forward, out)
    sliced: dict[tuple, Tensor] = {}  # one view per (hook, start, single): the patch hooks share it
    options = {}
    accepts = inspect.signature(model.forward_from).parameters
    if isinstance(metric, Metric) and "readout" in accepts:
        options["readout"] = metric.mask.any(0).nonzero()[:, 0].to(base.device)  # the positions it scores
    for (layer, start, single), members in sorted(groups.items()):
        k_max = per_forward(n - start)
        for c in range(0, len(members), k_max):
            chunk = members[c : c + k_max]
            copies = []
            for i in chunk:
                spec, info = specs[i], infos[specs[i].hook]
                key = (spec.hook, start, single)
                if key not in sliced:
                    src = source_cache[spec.hook]
                    if info.pos is not None:  # the positions the patched hook sees (Mamba's conv: P + K - 1)
                        width = 1 if single else src.shape[info.pos] - start
                        src = src.narrow(info.pos, start, width)
                    key_pos = info.axis("key_pos")
                    if single and key_pos is not None:  # a block run on one query sees keys 0..start
                        src = src.narrow(key_pos, 0, start + 1)
                    sliced[key] = src
                shifted = replace(spec, pos=None if spec.pos is None else spec.pos - start)
                copies.append([(shifted, sliced[key])])
            k = len(chunk)
            if "patched_hooks" in accepts:
                options["patched_hooks"] = frozenset(specs[i].hook for i in chunk)
            with attached(model, list(patch_hooks(copies, b, infos).items())):
                tail = model.forward_from(
                    state, layer, start, copies=k, **options, **({"single": True} if single else {})
                )
            logits = tail if not start else torch.cat([state.logits[:, :start].repeat(k, 1, 1), tail], 1)
            out[chunk] = metric(logits).view(k, b).float().cpu()
    return out


def _packed(model, state, specs, packs, source_cache, metric, infos, per_forward, out) -> None:
    """Position-local patches in the last block change only their own position's logits, so one copy
    can hold a component's patches at every position, and a metric that is a sum over positions
    (`Metric.per_position`) gives each patch's value: base total - base share at p + patched share at p.
    Fills out[i] [B] for every spec of `packs` (lists of spec indices, one copy each)."""
    from interp.analysis.patching.activation import patch_hooks  # noqa: PLC0415

    b, n = state.logits.shape[:2]
    base_pp = metric.per_position(state.logits).float().cpu()  # [B, P]
    base_total = base_pp.sum(1)
    layer = len(model.blocks) - 1
    k_max = per_forward(n)
    for c in range(0, len(packs), k_max):
        chunk = packs[c : c + k_max]
        copies = [[(specs[i], source_cache[specs[i].hook]) for i in pack] for pack in chunk]
        k = len(chunk)
        with attached(model, list(patch_hooks(copies, b, infos).items())):
            logits = model.forward_from(state, layer, 0, copies=k)
        patched_pp = metric.per_position(logits).float().cpu().view(k, b, n)
        for j, pack in enumerate(chunk):
            for i in pack:
                p = specs[i].pos
                out[i] = base_total - base_pp[:, p] + patched_pp[j, :, p]
