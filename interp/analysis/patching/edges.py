"""Edge attribution patching (EAP, EAP-IG), edge-level patching, and the faithfulness of a circuit.

The graph. Senders write into the residual stream: the embedding (`blocks.0.hook_resid_pre`), every
attention head (`hook_z` through `hook_attn_out`), every MLP (`hook_mlp_out`) and Mamba mixer
(`hook_mixer_out`). Receivers read it: each head's q, k and v input, each MLP's and mixer's input, and
the logits (the last `hook_resid_post`). An edge u -> v exists when u writes before v reads. The graph
comes from hook names alone (`edge_graph`), so it is the same on a transformer, a Mamba, a hybrid's
mixed layers, or a TransformerLens-style model with these standard hooks.

EAP (Syed et al. 2023) scores every edge from one forward of each input and one backward:

    score(u -> v) = sum over positions of (a_u(source) - a_u(base)) . dM/d(input of v)    (per example)

which estimates M(v's input shifted by u's change) - M(base) to first order. a_u is u's write into the
residual stream; for a head it is hook_z's change mapped through the output projection, a
Jacobian-vector product from `hook_z` to `hook_attn_out` (exact: the map is linear; checked). The
gradient with respect to a head's q input alone is the vector-Jacobian product of hook_q's gradient
(restricted to that head) back to the layer's residual input: a short local backward through the
layer norm and the q projection, no further forward. EAP-IG (Hanna et al. 2024) averages that gradient
over `steps` points on the straight line between the two inputs' embeddings (midpoint rule,
alpha = (k + 1/2) / steps); EAP is the gradient at the base (alpha = 0).

Edge-level patching (`edge_patching`, the finite difference EAP approximates, and `circuit_faithfulness`)
changes only the receiver's input: v reads its residual stream minus the current minus the source write
of every patched sender. One forward does it for every receiver at once: the batch is repeated once per
receiver that reads a residual point (3 x heads at an attention layer), copy k feeds receiver k its own
input, each q / k / v / output hook assembles every receiver's value from its copy, and the next
residual hook adds back what the copies changed, so all copies agree again after each layer.

Rows and effects are as in `path_patching` (sender, receiver, input q | k | v | in | direct, metric,
effect = fraction of the clean-corrupt gap, per-example error bars from `patching.stats`). Left-padded
batches take an `attention_mask`, as `activation_patching` does.

    >>> eap = edge_attribution_patching(model, clean.tokens, corrupt.tokens, metric, method="eap-ig", steps=10)
    >>> graph = circuit_from_edges(eap, k=20)                      # interp.analysis.circuits
    >>> circuit_faithfulness(model, clean.tokens, corrupt.tokens, metric, graph)["faithfulness"]
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import pandas as pd
import torch
from torch import Tensor

from interp.analysis.patching.activation import Prepared, masked, prepare, with_effects
from interp.analysis.patching.metrics import Metric
from interp.analysis.patching.path import head_name
from interp.analysis.patching.spec import PatchSpec, head_count
from interp.analysis.patching.stats import effect_intervals, per_example_effects
from interp.hooks import check_model, hook_info, hook_layers, model_label, run_and_cache

QKV = ("q", "k", "v")
METHODS = ("eap", "eap-ig")


@dataclass(frozen=True)
class Node:
    name: str  # "embed", "L1H4", "L0.mlp", "L2.mixer", "logits"
    kind: str  # embed | head | mlp | mixer | logits
    layer: int  # -1 for the embedding, n_layers for the logits
    head: int | None = None


@dataclass(frozen=True)
class Sender:
    node: Node
    hook: str  # where its output is read: resid_pre of layer 0, hook_z, hook_mlp_out, hook_mixer_out
    write: int  # residual stage its write is visible from


@dataclass(frozen=True)
class Receiver:
    node: Node
    input: str  # q | k | v | in (MLP, mixer) | direct (logits)
    read_hook: str  # the residual hook it reads
    out_hook: str | None  # the hook its output passes (hook_q, hook_mlp_out, ...); None for the logits
    read: int  # residual stage it reads at


@dataclass
class EdgeGraph:
    """Senders, receivers and which (sender, receiver) pairs are edges, found from hook names."""

    senders: list[Sender]
    receivers: list[Receiver]
    attn: dict[int, tuple[str, str]]  # layer -> (hook_z, hook_attn_out)
    fix: dict[str, str]  # read hook -> the residual hook where its readers' outputs are summed back
    valid: Tensor  # [n_senders, n_receivers] bool

    def edges(self) -> list[tuple[int, int]]:
        return [tuple(ij) for ij in self.valid.nonzero().tolist()]

    def key(self, s: int, r: int) -> tuple[str, str, str]:
        return (self.senders[s].node.name, self.receivers[r].node.name, self.receivers[r].input)

    def readers(self, hook: str) -> list[int]:
        return [i for i, r in enumerate(self.receivers) if r.read_hook == hook]


def edge_graph(model) -> EdgeGraph:
    """The graph of `model` from its hooks; a clear error when it has no residual stream to split."""
    check_model(model, "n_layers")
    names, n_layers = model.hook_dict, model.cfg.n_layers
    need = [f"blocks.{layer}.hook_resid_{w}" for layer in range(n_layers) for w in ("pre", "post")]
    missing = [n for n in need if n not in names]
    if missing:
        raise ValueError(
            f"edge attribution needs a residual stream, the hooks blocks.{{layer}}.hook_resid_pre and "
            f"hook_resid_post in every layer; {model_label(model)} lacks {', '.join(missing[:4])}"
            + (" ..." if len(missing) > 4 else "")
        )
    head_hooks = ["attn.hook_z", "hook_attn_out", *(f"attn.hook_{i}" for i in QKV)]
    with_heads = hook_layers(model, *(f"blocks.{{layer}}.{h}" for h in head_hooks))
    partial = sorted(set(hook_layers(model, "blocks.{layer}.attn.hook_z")) - set(with_heads))
    if partial:
        raise ValueError(
            f"layer {partial[0]} has attention heads (attn.hook_z) but not all of the hooks EAP needs: "
            f"{', '.join(head_hooks)}"
        )
    senders = [Sender(Node("embed", "embed", -1), "blocks.0.hook_resid_pre", 0)]
    receivers: list[Receiver] = []
    attn, fix = {}, {}
    for layer in range(n_layers):
        p = f"blocks.{layer}."
        pre, mid, post = p + "hook_resid_pre", p + "hook_resid_mid", p + "hook_resid_post"
        after_pre = mid if mid in names else post  # where what reads resid_pre is added back
        found = False
        if layer in with_heads:
            z = p + "attn.hook_z"
            if hook_info(model, z).axes[:3] != ("batch", "pos", "head"):
                raise ValueError(f"EAP needs {z} as [batch, pos, head, d_head]")
            for h in range(head_count(model, z)):
                node = Node(head_name(layer, h), "head", layer, h)
                senders.append(Sender(node, z, 2 * layer + 1))
                receivers += [Receiver(node, i, pre, p + f"attn.hook_{i}", 2 * layer) for i in QKV]
            attn[layer], fix[pre], found = (z, p + "hook_attn_out"), after_pre, True
        if p + "hook_mixer_out" in names:
            node = Node(f"L{layer}.mixer", "mixer", layer)
            senders.append(Sender(node, p + "hook_mixer_out", 2 * layer + 1))
            receivers.append(Receiver(node, "in", pre, p + "hook_mixer_out", 2 * layer))
            fix[pre], found = after_pre, True
        if p + "hook_mlp_out" in names:
            # a serial block's MLP reads resid_mid, after the heads; a parallel (GPT-NeoX) one resid_pre
            read, stage = (mid, 2 * layer + 1) if mid in names else (pre, 2 * layer)
            node = Node(f"L{layer}.mlp", "mlp", layer)
            senders.append(Sender(node, p + "hook_mlp_out", 2 * layer + 2))
            receivers.append(Receiver(node, "in", read, p + "hook_mlp_out", stage))
            fix[read], found = post, True
        if not found:
            raise ValueError(
                f"layer {layer} of {model_label(model)} has no node EAP knows: attention heads (attn.hook_z, "
                "hook_attn_out), an MLP (hook_mlp_out) or a mixer (hook_mixer_out)"
            )
    last = f"blocks.{n_layers - 1}.hook_resid_post"
    receivers.append(Receiver(Node("logits", "logits", n_layers), "direct", last, None, 2 * n_layers))
    valid = torch.tensor([[s.write <= r.read for r in receivers] for s in senders])
    return EdgeGraph(senders, receivers, attn, fix, valid)


def node_names(graph: EdgeGraph) -> list[str]:
    names = [s.node.name for s in graph.senders] + [r.node.name for r in graph.receivers]
    return list(dict.fromkeys(names))


def _select(graph: EdgeGraph, senders: Iterable[str] | None, receivers: Iterable[str] | None) -> Tensor:
    """valid restricted to the named senders and receivers; unknown names raise."""
    allowed = node_names(graph)
    chosen = graph.valid.clone()
    for what, names, nodes, axis in (
        ("sender", senders, [s.node.name for s in graph.senders], 0),
        ("receiver", receivers, [r.node.name for r in graph.receivers], 1),
    ):
        if names is None:
            continue
        names = [names] if isinstance(names, str) else list(names)
        bad = [n for n in names if n not in nodes]
        if bad:
            close = difflib.get_close_matches(bad[0], allowed, n=4, cutoff=0.5)
            raise ValueError(
                f"unknown {what} nodes {bad}"
                + (f" (closest: {', '.join(close)})" if close else "")
                + f"; this model's {what}s are {', '.join(dict.fromkeys(nodes))}"
            )
        keep = torch.tensor([n in names for n in nodes])
        chosen &= keep[:, None] if axis == 0 else keep[None, :]
    return chosen


def _prepare(model, graph, clean_tokens, corrupt_tokens, metric, mode, attention_mask=None) -> Prepared:
    """`prepare` with the sender hooks as specs: baseline metrics and the source activations."""
    hooks = {s.hook for s in graph.senders} | {out for _, out in graph.attn.values()}
    specs = [PatchSpec(h) for h in sorted(hooks)]
    return prepare(model, clean_tokens, corrupt_tokens, metric, specs, mode, attention_mask)


def head_writes(
    attn_out: Tensor, z: Tensor, dz: Tensor, head_axis: int = 2, rows: int | None = None
) -> Tensor:
    """Each head's write into the residual stream for a change dz of hook_z (given for the first `rows`
    examples, default all): [H, rows, ...attn_out.shape[1:]].

    A Jacobian-vector product from z to attn_out, by the double-backward trick (the vector-Jacobian
    product u -> J^T u is linear in u, so its gradient with respect to u applied to dz is J dz);
    exact for attention's linear output projection."""
    u = torch.zeros_like(attn_out, requires_grad=True)
    (vjp,) = torch.autograd.grad(attn_out, z, u, create_graph=True)
    out = []
    rows = dz.shape[0] if rows is None else rows
    for h in range(dz.shape[head_axis]):
        one = torch.zeros_like(z)
        one[:rows].select(head_axis, h).copy_(dz[:rows].select(head_axis, h))
        out.append(torch.autograd.grad(vjp, u, one, retain_graph=True)[0][:rows])
    return torch.stack(out)


# ---- EAP --------------------------------------------------------------------------------------------
def edge_attribution_patching(
    model,
    clean_tokens: Tensor,
    corrupt_tokens: Tensor,
    metric: Metric | Callable[[Tensor], Tensor],
    method: str = "eap",
    steps: int = 5,
    mode: str = "noise",
    senders: Sequence[str] | None = None,
    receivers: Sequence[str] | None = None,
    attention_mask: Tensor | None = None,
) -> pd.DataFrame:
    """EAP or EAP-IG score of every edge (see the module doc), per example.

    clean_tokens, corrupt_tokens [B, P]; metric: logits -> [B]. method: "eap" (gradient at the base
    run: one forward of each input and one backward) or "eap-ig" (gradients averaged over `steps`
    interpolations of the embedding: `steps` forwards and backwards more). mode: "noise" (base clean,
    corrupted senders) or "denoise". senders / receivers: node names to score (default all; see
    `edge_graph`). attention_mask [B, P] (1 = token, 0 = left padding), shared by both inputs, goes to
    every forward. Returns one row per edge: sender, sender_layer, receiver, receiver_layer, input,
    score (estimated patched metric minus the base, mean over examples), metric (base + score), effect
    and its error bars, sorted by |effect|; `df.attrs` as `activation_patching`'s plus method, steps.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1 (the EAP-IG integration points)")
    graph = edge_graph(model)
    chosen = _select(graph, senders, receivers)
    run = _prepare(model, graph, clean_tokens, corrupt_tokens, metric, mode, attention_mask)
    alphas = [0.0] if method == "eap" else [(k + 0.5) / steps for k in range(steps)]
    base = None
    if method == "eap-ig":  # the writes compare the two inputs' own runs, not the interpolated ones
        hooks = sorted({s.hook for s in graph.senders} | {h for pair in graph.attn.values() for h in pair})
        with torch.no_grad():
            base = run_and_cache(model, run.base, hooks, **masked(run.attention_mask))[1]
    grads, writes = None, None
    for alpha in alphas:
        g, w = _gradient_pass(model, graph, run, metric, alpha, writes is None, base)
        grads = g if grads is None else grads + g
        writes = w if writes is None else writes
    grads /= len(alphas)
    scores = torch.einsum("sbpd,rbpd->srb", writes, grads)  # [n_s, n_r, B]
    pairs = chosen.nonzero().tolist()
    base_v = run.base_values
    values = torch.stack([scores[s, r] for s, r in pairs]).detach().cpu() + base_v.cpu()
    df = _edge_frame(graph, pairs, values, run)
    df.insert(df.columns.get_loc("metric"), "score", df["metric"] - float(base_v.mean()))
    df.attrs.update(method=method, steps=steps if method == "eap-ig" else None)
    return df.sort_values("effect", key=abs, ascending=False, kind="stable").reset_index(drop=True)


def _gradient_pass(
    model, graph: EdgeGraph, run: Prepared, metric, alpha: float, want_writes: bool, base: dict | None
) -> tuple[Tensor, Tensor | None]:
    """dM/d(input of every receiver) [n_r, B, P, d] at the base run (its embedding moved `alpha` of
    the way to the source's), and, if asked, every sender's write change [n_s, B, P, d] from the base
    activations `base` (default: this run's, alpha = 0)."""
    first = graph.senders[0].hook
    outs = sorted({r.out_hook for r in graph.receivers if r.out_hook})
    names = set(outs) | {r.read_hook for r in graph.receivers} | {first}
    if want_writes:
        names |= {h for pair in graph.attn.values() for h in pair}
    kept: dict[str, Tensor] = {}

    def keep(name: str) -> Callable:
        def fn(act: Tensor, hook) -> Tensor:
            if name == first and alpha:
                act = torch.lerp(act.detach(), run.source_cache[first].to(act.dtype), alpha)
            if not act.requires_grad:  # frozen weights or a detached input: make it a leaf to differentiate
                act = act.detach().requires_grad_(True)
            kept[name] = act
            return act

        return fn

    final = graph.receivers[-1].read_hook
    with torch.enable_grad():
        hooks = [(n, keep(n)) for n in sorted(names)]
        logits = model.run_with_hooks(run.base, fwd_hooks=hooks, **masked(run.attention_mask))
        targets = [kept[n] for n in outs] + [kept[final]]
        # examples do not interact, so the gradient of the sum is each example's own gradient
        g_out = torch.autograd.grad(metric(logits).sum(), targets, retain_graph=True, allow_unused=True)
        g_out = {
            n: torch.zeros_like(t) if g is None else g for n, t, g in zip([*outs, final], targets, g_out)
        }
        grads = []
        for r in graph.receivers:
            if r.out_hook is None:
                grads.append(g_out[final])
                continue
            go = g_out[r.out_hook]
            if r.node.head is not None:  # this head's q, k or v only
                axis = hook_info(model, r.out_hook).head
                go = go * torch.nn.functional.one_hot(torch.tensor(r.node.head), go.shape[axis]).to(go).view(
                    [-1 if a == axis else 1 for a in range(go.ndim)]
                )
            (gi,) = torch.autograd.grad(
                kept[r.out_hook], kept[r.read_hook], go, retain_graph=True, allow_unused=True
            )
            grads.append(torch.zeros_like(kept[r.read_hook]) if gi is None else gi)
        grads = torch.stack(grads).detach()
        writes = _writes(model, graph, kept, run.source_cache, base) if want_writes else None
    return grads, writes


def _writes(
    model,
    graph: EdgeGraph,
    acts: dict[str, Tensor],
    source: dict[str, Tensor],
    current: dict | None = None,
    rows: int | None = None,
) -> Tensor:
    """Every sender's write change source - current [n_s, B', P, d] over the first B' = `rows`
    examples (default all; a multiple of the source's batch). `acts` hold hook_z and hook_attn_out with
    the graph between them, for `head_writes`; `current` the activations to compare with (default
    `acts`)."""
    current = acts if current is None else current
    cut = lambda t: t.detach()[:rows]  # noqa: E731
    rep = lambda t, like: t.repeat(like.shape[0] // t.shape[0], *[1] * (t.ndim - 1)).to(like.dtype)  # noqa: E731
    per_head: dict[str, Tensor] = {}
    for z_hook, o_hook in graph.attn.values():
        z = cut(current[z_hook])
        dz = rep(source[z_hook], z) - z
        head = hook_info(model, z_hook).head
        per_head[z_hook] = head_writes(acts[o_hook], acts[z_hook], dz, head, len(z)).detach()
        o = cut(current[o_hook])
        _check_additive(per_head[z_hook].sum(0), rep(source[o_hook], o) - o, z_hook)
    out = []
    for s in graph.senders:
        if s.node.kind == "head":
            out.append(per_head[s.hook][s.node.head])
        else:
            a = cut(current[s.hook])
            out.append(rep(source[s.hook], a) - a)
    return torch.stack(out)


def _check_additive(heads: Tensor, total: Tensor, hook: str) -> None:
    """The heads' writes must add up to the layer's change (attention's output is linear in hook_z)."""
    err = float((heads - total).abs().max())
    scale = float(total.abs().max()) or 1.0
    if err > 1e-3 * scale + 1e-5:
        raise ValueError(
            f"the heads' writes through {hook} do not add up to the attention output's change (max error "
            f"{err:.3g} of {scale:.3g}): EAP needs hook_attn_out to be linear in hook_z"
        )


def _edge_frame(graph: EdgeGraph, pairs: list[list[int]], values: Tensor, run: Prepared) -> pd.DataFrame:
    rows = []
    for s, r in pairs:
        snd, rec = graph.senders[s], graph.receivers[r]
        rows.append(
            {
                "sender": snd.node.name,
                "sender_layer": snd.node.layer,
                "receiver": rec.node.name,
                "receiver_layer": rec.node.layer,
                "input": rec.input,
            }
        )
    return with_effects(pd.DataFrame(rows), values, run)


# ---- edge-level patching ---------------------------------------------------------------------------
def edge_patching(
    model,
    clean_tokens: Tensor,
    corrupt_tokens: Tensor,
    metric: Metric | Callable[[Tensor], Tensor],
    mode: str = "noise",
    senders: Sequence[str] | None = None,
    receivers: Sequence[str] | None = None,
    max_batch: int = 1024,
    attention_mask: Tensor | None = None,
) -> pd.DataFrame:
    """Patch each edge alone (its receiver reads the source write of its sender, everything else
    recomputed): the finite difference that EAP estimates. Same rows as `edge_attribution_patching`,
    with the measured metric. One forward per edge, several per forward up to `max_batch` rows (a forward
    holds 3 x heads copies of the batch; with a `Metric`, a batch too large for one forward is split into
    groups of examples). attention_mask: as in `edge_attribution_patching`."""
    graph = edge_graph(model)
    chosen = _select(graph, senders, receivers)
    run = _prepare(model, graph, clean_tokens, corrupt_tokens, metric, mode, attention_mask)
    pairs = chosen.nonzero().tolist()
    keeps = graph.valid[None].repeat(len(pairs), 1, 1)
    for i, (s, r) in enumerate(pairs):
        keeps[i, s, r] = False
    values = run_circuits(model, graph, run, metric, keeps, max_batch)
    df = _edge_frame(graph, pairs, values, run)
    base_v = run.base_values
    df.insert(df.columns.get_loc("metric"), "score", df["metric"] - float(base_v.mean()))
    return df.sort_values("effect", key=abs, ascending=False, kind="stable").reset_index(drop=True)


def circuit_faithfulness(
    model,
    clean_tokens: Tensor,
    corrupt_tokens: Tensor,
    metric: Metric | Callable[[Tensor], Tensor],
    circuit,
    max_batch: int = 1024,
    attention_mask: Tensor | None = None,
) -> dict:
    """Run the clean input with every edge outside `circuit` patched to its corrupted value and report
    the fraction of the clean-corrupt metric difference it keeps:
    (m_circuit - m_corrupt) / (m_clean - m_corrupt), 1 = the circuit alone does it all, 0 = nothing.

    circuit: a `CircuitGraph` (`circuit_from_edges`), an EAP DataFrame's rows, or (sender, receiver,
    input) triples. attention_mask: as in `edge_attribution_patching`. Returns {faithfulness, se, lo, hi (bootstrap 95% interval over examples),
    circuit_metric, clean_metric, corrupt_metric, n_edges, n_edges_total}."""
    graph = edge_graph(model)
    keys = {graph.key(s, r): (s, r) for s, r in graph.edges()}
    wanted = _edge_keys(circuit)
    bad = sorted(wanted - set(keys))
    if bad:
        raise ValueError(
            f"the circuit has edges that are not edges of this model's graph: {bad[:3]}"
            + (" ..." if len(bad) > 3 else "")
            + f"; nodes are {', '.join(node_names(graph))} and inputs q, k, v, in (MLP, mixer), direct (logits)"
        )
    run = _prepare(model, graph, clean_tokens, corrupt_tokens, metric, "noise", attention_mask)
    keep = torch.zeros_like(graph.valid)
    for key in wanted:
        keep[keys[key]] = True
    values = run_circuits(model, graph, run, metric, keep[None], max_batch)[0]
    effects = per_example_effects(
        values[None].double(), run.clean_values.cpu().double(), run.corrupt_values.cpu().double(), "denoise"
    )
    bars = effect_intervals(effects)
    return {
        "faithfulness": float(effects.mean()),
        "se": float(bars["se"][0]),
        "lo": float(bars["lo"][0]),
        "hi": float(bars["hi"][0]),
        "circuit_metric": float(values.mean()),
        "clean_metric": run.clean_metric,
        "corrupt_metric": run.corrupt_metric,
        "n_edges": len(wanted),
        "n_edges_total": len(keys),
    }


def _edge_keys(circuit) -> set[tuple[str, str, str]]:
    if hasattr(circuit, "edge_set"):
        return circuit.edge_set()
    if isinstance(circuit, pd.DataFrame):
        return set(zip(circuit["sender"], circuit["receiver"], circuit["input"]))
    return {tuple(e) for e in circuit}


def run_circuits(
    model, graph: EdgeGraph, run: Prepared, metric, keep: Tensor, max_batch: int = 1024
) -> Tensor:
    """Metric [M, B] of the base run where, for each of the M masks keep [M, n_s, n_r], every edge
    not kept reads its sender's source write instead of the current one (see the module doc).

    A forward holds K copies of the batch per circuit (K = the most receivers reading one residual point,
    3 x heads at an attention layer); when K x B rows exceed max_batch and the metric is a `Metric` (one
    value per example), the examples are split so that each forward stays within max_batch rows."""
    b = run.base.shape[0]
    n_copies = max(len(graph.readers(h)) for h in {r.read_hook for r in graph.receivers})
    step = max(1, max_batch // n_copies) if n_copies * b > max_batch and isinstance(metric, Metric) else b
    parts = []
    for lo in range(0, b, step):
        rows = slice(lo, lo + step)
        part, part_metric = (run, metric) if step >= b else (examples_of(run, rows), metric.examples(rows))
        per_forward = max(1, max_batch // (n_copies * part.base.shape[0]))
        values = [
            _run_chunk(model, graph, part, part_metric, keep[start : start + per_forward], n_copies)
            for start in range(0, keep.shape[0], per_forward)
        ]
        parts.append(torch.cat(values))
    return torch.cat(parts, 1).detach().cpu()


def examples_of(run: Prepared, rows: slice) -> Prepared:
    """The same patching run on examples `rows` only."""
    pick = lambda t: None if t is None else t[rows]  # noqa: E731
    return replace(
        run,
        base=run.base[rows],
        source=run.source[rows],
        source_cache={h: v[rows] for h, v in run.source_cache.items()},
        clean_values=pick(run.clean_values),
        corrupt_values=pick(run.corrupt_values),
        attention_mask=pick(run.attention_mask),
    )


def _run_chunk(model, graph: EdgeGraph, run: Prepared, metric, keep: Tensor, k: int) -> Tensor:
    """One forward of K x M copies of the base batch, laid out [K, M, B]: copy c of a residual point
    feeds that point's c-th reader, for each of the M circuits."""
    m, b = keep.shape[0], run.base.shape[0]
    patched = (graph.valid[None] & ~keep).float()  # [M, n_s, n_r]
    source = run.source_cache
    diffs: dict[int, Tensor] = {}  # sender -> source - current write, [M, B, P, d] (copies agree)
    acts: dict[str, Tensor] = {}
    deltas: dict[str, Tensor] = {}  # read hook -> what the copies' inputs changed, to add back
    view = lambda t: t.unflatten(0, (k, m, b))  # noqa: E731
    steps: dict[str, list[Callable]] = {}

    def add(name: str, fn: Callable) -> None:
        steps.setdefault(name, []).append(fn)

    # 1. outputs of receivers: each takes its value from the copy that fed it its input
    for hook in sorted({r.out_hook for r in graph.receivers if r.out_hook}):
        axis = hook_info(model, hook).head
        picks = []  # (head or None, copy)
        for read in sorted({r.read_hook for r in graph.receivers if r.out_hook == hook}):
            for c, i in enumerate(graph.readers(read)):
                if graph.receivers[i].out_hook == hook:
                    picks.append((graph.receivers[i].node.head, c))

        def assemble(act: Tensor, picks=picks, axis=axis) -> Tensor:
            v = view(act.detach())
            out = v.clone()
            for head, c in picks:
                if head is None:
                    out[:] = v[c : c + 1]
                else:
                    out.select(axis + 2, head)[:] = v[c : c + 1].select(axis + 2, head)
            return out.flatten(0, 2)

        add(hook, assemble)
    # 2. senders' write changes (heads: from hook_z, at hook_attn_out), from copy 0
    for z_hook, o_hook in graph.attn.values():
        idx = [i for i, s in enumerate(graph.senders) if s.hook == z_hook]
        layer = EdgeGraph([graph.senders[i] for i in idx], [], {0: (z_hook, o_hook)}, {}, graph.valid)

        def leaf(act: Tensor, z_hook=z_hook) -> Tensor:
            acts[z_hook] = act.detach().requires_grad_(True)
            return acts[z_hook]

        def heads_done(act: Tensor, o_hook=o_hook, idx=idx, layer=layer) -> Tensor:
            acts[o_hook] = act
            for i, w in zip(idx, _writes(model, layer, acts, source, rows=m * b)):
                diffs[i] = w.unflatten(0, (m, b))
            return act.detach()

        add(z_hook, leaf)
        add(o_hook, heads_done)
    for i, s in enumerate(graph.senders):
        if s.node.kind != "head":

            def record(act: Tensor, i=i, s=s) -> Tensor:
                diffs[i] = (source[s.hook].repeat(m, 1, 1).to(act.dtype) - act.detach()[: m * b]).unflatten(
                    0, (m, b)
                )
                return act

            add(s.hook, record)
    # 3. add back, at the next residual hook, what the copies' inputs changed
    for read, fix in graph.fix.items():
        add(fix, lambda act, read=read: act + deltas.pop(read))
    # 4. receivers' inputs: patched edges read the source write instead of the current one
    for read in sorted({r.read_hook for r in graph.receivers}):
        readers = graph.readers(read)
        order = [readers[c] if c < len(readers) else readers[0] for c in range(k)]

        def feed(act: Tensor, order=order, read=read) -> Tensor:
            sent = sorted(diffs)
            weights = patched[:, sent][:, :, order].to(act)  # [M, n_sent, K]
            change = torch.einsum("msk,smbpd->kmbpd", weights, torch.stack([diffs[i] for i in sent]))
            deltas[read] = -change.flatten(0, 2)
            return act.detach() + change.flatten(0, 2)

        add(read, feed)

    def chain(fns: list[Callable]) -> Callable:
        def fn(act: Tensor, hook) -> Tensor:
            for f in fns:
                act = f(act)
            return act

        return fn

    with torch.enable_grad():  # for the heads' Jacobian-vector products only; every hook detaches
        mask = None if run.attention_mask is None else run.attention_mask.repeat(k * m, 1)
        logits = model.run_with_hooks(
            run.base.repeat(k * m, 1), fwd_hooks=[(n, chain(fns)) for n, fns in steps.items()], **masked(mask)
        )
    return metric(view(logits.detach())[0].flatten(0, 1)).view(m, b)
