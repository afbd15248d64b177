"""Path patching: the effect of sender heads on receiver heads' q, k, v and on the logits."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch import Tensor

from interp.analysis.patching.activation import batched, prepare, with_effects
from interp.analysis.patching.metrics import Metric
from interp.analysis.patching.spec import PatchSpec
from interp.hooks import check_model, hook_info, hook_layers, model_label, run_and_cache


def path_patching(
    model,
    clean_tokens: Tensor,
    corrupt_tokens: Tensor,
    metric: Metric | Callable[[Tensor], Tensor],
    senders: Sequence[tuple[int, int]] | None = None,
    receivers: Sequence[tuple[int, int]] | None = None,
    inputs: Sequence[str] = ("q", "k", "v"),
    mode: str = "noise",
    max_batch: int = 1024,
) -> pd.DataFrame:
    """Effect of each sender head on each later receiver head's q, k or v input, and on the logits.

    For each sender (layer, head): (1) run the base input with the sender's output (`hook_z`) taken
    from the source run and every other head frozen at its base value, and record the receivers'
    `hook_q|k|v`; the logits of this run give the sender's *direct* effect (receiver "logits").
    (2) Run the base input again with only one receiver head's q, k or v replaced by the recorded
    value. Everything that is not an attention head (MLPs, and the SSM mixers of a hybrid) is
    recomputed, not frozen, so paths through them count as part of the path.
    The heads are those of the layers that have the attention hooks (`interp.hooks.hook_layers`): every
    layer of a transformer, the attention layers of a hybrid. senders / receivers default to every
    head; a receiver only counts when its layer is later.
    Returns rows sender_layer, sender_head, sender, receiver_layer, receiver_head, receiver, input
    (q | k | v | direct), metric, effect (fraction of the clean-corrupt gap, as in the module doc).
    """
    check_model(model, "n_layers")
    bad = [i for i in inputs if i not in ("q", "k", "v")]
    if bad:
        raise ValueError(f"unknown receiver inputs {bad}; allowed: q, k, v")
    needed = ["blocks.{layer}.attn.hook_z", *(f"blocks.{{layer}}.attn.hook_{i}" for i in inputs)]
    attn_layers = hook_layers(model, *needed)
    if not attn_layers or not hasattr(model.cfg, "n_heads"):
        raise ValueError(
            f"path patching works on attention heads; a {model_label(model)} has none (it needs cfg.n_heads "
            f"and the hooks {', '.join(needed)} in at least one layer)"
        )
    z_hooks = {layer: f"blocks.{layer}.attn.hook_z" for layer in attn_layers}
    z_info = hook_info(model, z_hooks[attn_layers[0]])
    if z_info.axes[:3] != ("batch", "pos", "head"):
        raise ValueError(f"path patching needs hook_z as [batch, pos, head, d_head], got axes {z_info.axes}")
    n_heads = model.cfg.n_heads
    all_heads = [(layer, h) for layer in attn_layers for h in range(n_heads)]
    senders, receivers = list(senders or all_heads), list(receivers or all_heads)
    for layer, h in senders + receivers:
        if layer not in z_hooks or not 0 <= h < n_heads:
            raise ValueError(
                f"head ({layer}, {h}) does not exist: attention layers {attn_layers}, heads 0..{n_heads - 1}"
            )
    specs = [PatchSpec(z_hooks[layer], head=h) for layer, h in senders]
    run = prepare(model, clean_tokens, corrupt_tokens, metric, specs, mode)
    base, source_cache = run.base, run.source_cache
    b = base.shape[0]
    with torch.no_grad():
        _, base_cache = run_and_cache(model, base, list(z_hooks.values()))
    rec_layers = sorted({layer for layer, _ in receivers})
    rec_hooks = [f"blocks.{layer}.attn.hook_{i}" for layer in rec_layers for i in inputs]
    rec_infos = {name: hook_info(model, name) for name in rec_hooks}

    # (1) sender patched, other heads frozen: record receivers' inputs and the direct effect
    recorded: dict[tuple[int, int], dict[str, Tensor]] = {}
    direct = []
    per_forward = max(1, max_batch // b)
    for start in range(0, len(senders), per_forward):
        chunk = senders[start : start + per_forward]
        k = len(chunk)
        fwd_hooks = []
        for layer, name in z_hooks.items():
            sender_mask = torch.zeros(k, 1, 1, n_heads, 1, dtype=torch.bool, device=base_cache[name].device)
            for i, (sl, sh) in enumerate(chunk):
                sender_mask[i, 0, 0, sh, 0] = sl == layer
            frozen = _frozen_z_hook(sender_mask, source_cache.get(name), base_cache[name], k, b)
            fwd_hooks.append((name, frozen))
        store: dict[str, Tensor] = {}
        fwd_hooks += [(name, _store_hook(store, name)) for name in rec_hooks]
        with torch.no_grad():
            logits = model.run_with_hooks(base.repeat(k, 1), fwd_hooks=fwd_hooks)
        direct.append(metric(logits).view(k, b))
        for i, sender in enumerate(chunk):
            recorded[sender] = {name: store[name].unflatten(0, (k, b))[i] for name in rec_hooks}
    direct_values = torch.cat(direct)

    # (2) one receiver input patched with the value recorded for one sender
    rows, copies = [], []
    for sl, sh in senders:
        rows.append(_path_row((sl, sh), None, "direct"))
        for rl, rh in receivers:
            if rl <= sl:
                continue
            for inp in inputs:
                name = f"blocks.{rl}.attn.hook_{inp}"
                copies.append([(PatchSpec(name, head=rh), recorded[(sl, sh)][name])])
                rows.append(_path_row((sl, sh), (rl, rh), inp))
    path_values = batched(model, base, copies, metric, max_batch, rec_infos) if copies else torch.zeros(0, b)
    values, d, p = [], iter(direct_values), iter(path_values)
    for row in rows:
        values.append(next(d) if row["input"] == "direct" else next(p))
    return with_effects(pd.DataFrame(rows), torch.stack(values), run)


def _path_row(sender: tuple[int, int], receiver: tuple[int, int] | None, inp: str) -> dict:
    return {
        "sender_layer": sender[0],
        "sender_head": sender[1],
        "sender": head_name(*sender),
        "receiver_layer": receiver[0] if receiver else None,
        "receiver_head": receiver[1] if receiver else None,
        "receiver": head_name(*receiver) if receiver else "logits",
        "input": inp,
    }


def head_name(layer: int, head: int) -> str:
    """`L1H4`: the node name of a head in tables and circuit diagrams."""
    return f"L{layer}H{head}"


def _frozen_z_hook(sender_mask: Tensor, source: Tensor | None, base: Tensor, k: int, b: int) -> Callable:
    """hook_z of one layer: the senders of each copy from the source run, every other head at base."""

    def hook_fn(z: Tensor, hook) -> Tensor:
        src = source if source is not None else base
        out = torch.where(sender_mask, src[None], base[None])  # [K, B, P, H, Dh]
        return out.flatten(0, 1).to(z.dtype)

    return hook_fn


def _store_hook(store: dict[str, Tensor], name: str) -> Callable:
    """Record the activation under the name asked for (a bridge's alias hook has another `hook.name`)."""

    def hook_fn(act: Tensor, hook) -> None:
        store[name] = act.detach()

    return hook_fn
