"""Activation patching: which activations carry the copy? Noising, denoising, attribution and paths.

Two runs of the same model on batches of the same shape: a *clean* one (the behaviour we want to
explain, e.g. copying string s) and a *corrupted* one (the same template with a different string s').
A patch replaces one activation (one hook, optionally one position, one head, or a group of channels)
in one run by its value in the other run, and a metric on the logits says how much that changed.

- denoising (`mode="denoise"`): run the corrupted input, patch in clean activations. A large effect
  means the component is *sufficient* to restore the clean behaviour.
- noising (`mode="noise"`): run the clean input, patch in corrupted activations. A large effect means
  the component is *necessary* for it.

Effects are reported as a fraction of the clean-corrupt gap of the metric, so 1 means "this one
component moves the metric all the way" in both modes:

    denoise: effect = (m_patched - m_corrupt) / (m_clean - m_corrupt)
    noise:   effect = (m_clean - m_patched) / (m_clean - m_corrupt)

A patch is described as data, `PatchSpec(hook, pos=None, head=None, channels=None)`; grids of specs
(layer x position, layer x head, layer x head x position, Mamba state channel groups) come from
`patch_specs`. `activation_patching` runs many patches per forward: it repeats the base batch K times
and patches a different component in each copy (`method="batched"`); `method="loop"` is the plain
reference with one forward per patch. Both give the same numbers (tested to 1e-5).

Hook layouts (which axis is the position, the head, the channel) follow interp's hook tables:
transformer `attn.hook_q|k|v|z` [B, P, H, Dh], `attn.hook_pattern` [B, H, Pq, Pk], residual-stream
hooks [B, P, D]; Mamba `mixer.hook_ssm_state|hook_ssm_write` [B, D_inner, P, N], mixer hooks
[B, P, D_inner]. In interp a patch of `hook_ssm_state` at position t is fed back into the recurrence:
h_t is replaced, h_{t+1} is built from the patched h_t, and so on, so the patch changes the outputs at
t and every later position (in TransformerLens's bridge it would change only the readout at t).

`attribution_patching` approximates every patch at once from one forward and one backward pass
(gradient of the metric times the activation difference, Nanda 2023); `path_patching` measures the
effect of sender heads on receiver heads' queries, keys or values, and on the logits directly
(Wang et al. 2022), for the circuit diagrams in `interp.analysis.circuits`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import pandas as pd
import torch
from torch import Tensor

from interp.models import HookedModel
from interp.tasks import Batch, TaskConfig, make_batch

MODES = ("denoise", "noise")
METRICS = ("logit_diff", "prob", "logprob", "accuracy")

# Short component names -> hook-name templates, per architecture.
COMPONENTS = {
    "transformer": {
        "resid_pre": "blocks.{layer}.hook_resid_pre",
        "resid_mid": "blocks.{layer}.hook_resid_mid",
        "resid_post": "blocks.{layer}.hook_resid_post",
        "attn_out": "blocks.{layer}.hook_attn_out",
        "mlp_out": "blocks.{layer}.hook_mlp_out",
        "q": "blocks.{layer}.attn.hook_q",
        "k": "blocks.{layer}.attn.hook_k",
        "v": "blocks.{layer}.attn.hook_v",
        "z": "blocks.{layer}.attn.hook_z",
        "pattern": "blocks.{layer}.attn.hook_pattern",
    },
    "mamba": {
        "resid_pre": "blocks.{layer}.hook_resid_pre",
        "resid_post": "blocks.{layer}.hook_resid_post",
        "mixer_out": "blocks.{layer}.hook_mixer_out",
        "ssm_in": "blocks.{layer}.mixer.hook_ssm_in",
        "ssm_state": "blocks.{layer}.mixer.hook_ssm_state",
        "scan_out": "blocks.{layer}.mixer.hook_scan_out",
    },
    "lstm": {
        "hidden": "blocks.{layer}.hook_hidden",
        "cell": "blocks.{layer}.hook_cell",
    },
}


# ---------------------------------------------------------------------------------------------
# What a patch is
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Axes of an activation (batch is always axis 0); None where the activation has no such axis."""

    pos: int | None = 1
    head: int | None = None
    channel: int | None = None


def hook_layout(name: str) -> Layout:
    """Where position, head and channel live in the activation of hook `name` (see the module doc)."""
    last = name.rsplit(".", 1)[-1]
    if last in ("hook_q", "hook_k", "hook_v", "hook_z", "hook_rot_q", "hook_rot_k"):
        return Layout(pos=1, head=2)  # [B, P, H, Dh]
    if last in ("hook_pattern", "hook_attn_scores"):
        return Layout(pos=2, head=1)  # [B, H, Pq, Pk]: position = query position
    if last in ("hook_ssm_state", "hook_ssm_write", "hook_conv"):
        return Layout(pos=2, channel=1)  # [B, D_inner, P(, N)]
    if ".mixer." in name and last in ("hook_ssm_in", "hook_gate", "hook_ssm_dt", "hook_scan_out"):
        return Layout(pos=1, channel=2)  # [B, P, D_inner]
    return Layout(pos=1)  # [B, P, d]


@dataclass(frozen=True)
class PatchSpec:
    """One intervention: replace `hook`'s activation (at `pos`, `head`, `channels`; None = all).

    channels: (start, stop) along the channel axis (Mamba's D_inner), e.g. (0, 32).
    >>> PatchSpec("blocks.1.attn.hook_z", pos=12, head=3)   # head 3 of layer 1 at position 12
    >>> PatchSpec("blocks.0.mixer.hook_ssm_state", pos=5, channels=(0, 64))
    """

    hook: str
    pos: int | None = None
    head: int | None = None
    channels: tuple[int, int] | None = None

    @property
    def layer(self) -> int | None:
        match = re.match(r"blocks\.(\d+)\.", self.hook)
        return int(match.group(1)) if match else None

    @property
    def component(self) -> str:
        """The hook name without its layer, e.g. `attn.hook_z`."""
        return re.sub(r"^blocks\.\d+\.", "", self.hook)

    @property
    def label(self) -> str:
        parts = [f"L{self.layer}" if self.layer is not None else self.hook, self.component]
        if self.head is not None:
            parts.append(f"H{self.head}")
        if self.pos is not None:
            parts.append(f"p{self.pos}")
        if self.channels is not None:
            parts.append(f"ch{self.channels[0]}:{self.channels[1]}")
        return " ".join(parts)

    def index(self, ndim: int) -> tuple:
        """Index over all `ndim` axes (batch included) selecting what this spec patches."""
        layout = hook_layout(self.hook)
        idx: list = [slice(None)] * ndim
        for axis, value, what in (
            (layout.pos, self.pos, "a position"),
            (layout.head, self.head, "a head"),
            (layout.channel, self.channels, "channels"),
        ):
            if value is None:
                continue
            if axis is None:
                raise ValueError(f"{self.hook!r} has no {what.split()[-1]} axis, so {what} cannot be patched")
            idx[axis] = slice(*value) if isinstance(value, tuple) else value
        return tuple(idx)

    def row(self) -> dict:
        d = asdict(self)
        d["channels"] = None if self.channels is None else f"{self.channels[0]}:{self.channels[1]}"
        return {"layer": self.layer, "component": self.component, **d, "label": self.label}


def component_hook(model: HookedModel, component: str) -> str:
    """Hook template (with `{layer}`) for a short component name or a template given as is."""
    if "{layer}" in component:
        return component
    table = COMPONENTS.get(model.arch, {})
    if component not in table:
        raise ValueError(
            f"unknown component {component!r} for a {model.arch}; allowed: {', '.join(table)} "
            f"or a hook template such as 'blocks.{{layer}}.hook_resid_pre'"
        )
    return table[component]


def patch_specs(
    model: HookedModel,
    component: str,
    *,
    layers: Sequence[int] | None = None,
    heads: bool | Sequence[int] = False,
    positions: bool | Sequence[int] = False,
    n_pos: int | None = None,
    channel_groups: int | None = None,
) -> list[PatchSpec]:
    """The grid of patches over layers (x heads) (x positions) (x channel groups) of one component.

    heads / positions: True for all of them, a list for some, False to patch all at once.
    n_pos: sequence length (needed when positions=True). channel_groups: split the channel axis
    (Mamba's D_inner) into this many equal groups, one patch each.
    >>> patch_specs(model, "z", heads=True, positions=True, n_pos=40)   # layer x head x position
    """
    template = component_hook(model, component)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    bad = [layer for layer in layers if not 0 <= layer < model.cfg.n_layers]
    if bad:
        raise ValueError(f"layers {bad} do not exist; this model has layers 0..{model.cfg.n_layers - 1}")
    for layer in layers:
        model.check_hook_name(template.format(layer=layer))
    layout = hook_layout(template.format(layer=layers[0]))
    if heads is not False and layout.head is None:
        raise ValueError(f"{template!r} has no head axis; use heads=False")
    head_list = _choose(heads, getattr(model.cfg, "n_heads", 0), "heads")
    if positions is True and n_pos is None:
        raise ValueError("positions=True needs n_pos, the sequence length of the batches")
    pos_list = _choose(positions, n_pos or 0, "positions")
    groups: list = [None]
    if channel_groups:
        if layout.channel is None:
            raise ValueError(f"{template!r} has no channel axis; channel_groups needs a Mamba mixer hook")
        d_inner = model.cfg.d_inner
        if d_inner % channel_groups:
            raise ValueError(f"channel_groups={channel_groups} does not divide d_inner={d_inner}")
        size = d_inner // channel_groups
        groups = [(g * size, (g + 1) * size) for g in range(channel_groups)]
    return [
        PatchSpec(template.format(layer=layer), pos=p, head=h, channels=c)
        for layer in layers
        for h in head_list
        for p in pos_list
        for c in groups
    ]


def _choose(value: bool | Sequence[int], n: int, what: str) -> list:
    if value is False:
        return [None]
    if value is True:
        return list(range(n))
    chosen = list(value)
    bad = [v for v in chosen if not 0 <= v < n] if n else []
    if bad:
        raise ValueError(f"{what} {bad} are out of range 0..{n - 1}")
    return chosen


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------
@dataclass
class Metric:
    """A scalar per example from logits: mean over the example's scored positions.

    kind: logit_diff (logit of `answers` minus logit of `wrong`), prob or logprob (of `answers`),
    accuracy (argmax == answers). answers, wrong: [B, P] token ids; mask: [B, P] bool, the positions
    scored. Called on logits [K * B, P, V] (K patched copies of the batch) it returns [K * B].
    """

    kind: str
    answers: Tensor
    mask: Tensor
    wrong: Tensor | None = None

    def __post_init__(self):
        if self.kind not in METRICS:
            raise ValueError(f"unknown metric {self.kind!r}; allowed: {', '.join(METRICS)}")
        if self.answers.shape != self.mask.shape:
            raise ValueError(
                f"answers {tuple(self.answers.shape)} and mask {tuple(self.mask.shape)} must have one shape"
            )
        if self.kind == "logit_diff":
            if self.wrong is None:
                raise ValueError("the logit_diff metric needs `wrong` tokens to compare the answer with")
            if self.wrong.shape != self.answers.shape:
                raise ValueError(
                    f"wrong {tuple(self.wrong.shape)} must have the shape of answers {tuple(self.answers.shape)}"
                )
            self.mask = self.mask & (self.answers != self.wrong)  # equal tokens carry no signal
        if not self.mask.any():
            raise ValueError("the metric scores no position (mask is all False)")

    def check_vocab(self, d_vocab: int) -> None:
        """Raise if an answer (or wrong) token at a scored position is not a token id of the model."""
        for name, tokens in (("answer", self.answers), ("wrong", self.wrong)):
            if tokens is None:
                continue
            scored = tokens[self.mask]
            bad = scored[(scored < 0) | (scored >= d_vocab)]
            if bad.numel():
                raise ValueError(
                    f"{name} token {int(bad[0])} is outside the model's vocabulary: token ids must lie in "
                    f"[0, {d_vocab})"
                )

    def __call__(self, logits: Tensor) -> Tensor:
        b = self.answers.shape[0]
        if logits.shape[0] % b or logits.shape[1] != self.answers.shape[1]:
            raise ValueError(
                f"logits {tuple(logits.shape)} do not match the metric's batch {tuple(self.answers.shape)}"
            )
        self.check_vocab(logits.shape[-1])
        k = logits.shape[0] // b
        rep = lambda t: t.repeat(k, 1)
        answers, mask = rep(self.answers).clamp(0, logits.shape[-1] - 1), rep(self.mask)
        logits = logits.float()
        if self.kind == "logit_diff":
            wrong = rep(self.wrong).clamp(0, logits.shape[-1] - 1)
            value = logits.gather(-1, answers[..., None]) - logits.gather(-1, wrong[..., None])
        elif self.kind in ("prob", "logprob"):
            value = logits.log_softmax(-1).gather(-1, answers[..., None])
            value = value.exp() if self.kind == "prob" else value
        else:
            value = (logits.argmax(-1) == answers)[..., None].float()
        value = value[..., 0] * mask
        return value.sum(1) / mask.sum(1).clamp(min=1)  # [K * B]


def make_metric(kind: str, clean: Batch, corrupt: Batch | None = None) -> Metric:
    """The metric for a clean/corrupted pair of task batches: on the clean batch's scored positions,
    the clean next token is the answer and (for logit_diff) the corrupted next token the wrong one."""
    answers = clean.tokens.roll(-1, dims=1)  # next token at each position (last one unused: not scored)
    wrong = corrupt.tokens.roll(-1, dims=1) if corrupt is not None else None
    if kind == "logit_diff" and corrupt is None:
        raise ValueError("the logit_diff metric needs the corrupted batch for its wrong answers")
    if corrupt is not None:
        check_pair(clean.tokens, corrupt.tokens)
    return Metric(kind, answers, clean.score_mask.clone(), wrong)


def check_pair(clean_tokens: Tensor, corrupt_tokens: Tensor) -> None:
    if clean_tokens.shape != corrupt_tokens.shape:
        raise ValueError(
            f"clean and corrupted batches must have the same shape [batch, pos] so that activations "
            f"line up position by position; got clean {tuple(clean_tokens.shape)} and corrupted "
            f"{tuple(corrupt_tokens.shape)} (build both with the same length, e.g. make_batch(..., length=L))"
        )


def paired_batches(task: TaskConfig, n: int, length: int, seed: int = 0) -> tuple[Batch, Batch]:
    """Clean and corrupted batches of `n` examples of one length: same template, independent strings."""
    clean = make_batch(task, n, torch.Generator().manual_seed(seed), length=length)
    corrupt = make_batch(task, n, torch.Generator().manual_seed(seed + 10_007), length=length)
    return clean, corrupt


# ---------------------------------------------------------------------------------------------
# Activation patching
# ---------------------------------------------------------------------------------------------
def activation_patching(
    model: HookedModel,
    clean_tokens: Tensor,
    corrupt_tokens: Tensor,
    metric: Metric | Callable[[Tensor], Tensor],
    specs: Sequence[PatchSpec],
    mode: str = "denoise",
    method: str = "batched",
    max_batch: int = 1024,
) -> pd.DataFrame:
    """Patch each spec in turn and measure the metric.

    clean_tokens, corrupt_tokens: [B, P] (same shape). metric: logits [K*B, P, V] -> [K*B].
    method: "batched" runs floor(max_batch / B) patches per forward on a repeated batch; "loop" runs
    one forward per patch (the reference).
    Returns one row per spec: layer, component, hook, pos, head, channels, label, metric, effect;
    `df.attrs` holds clean_metric, corrupt_metric and mode.
    """
    base, source, clean_m, corrupt_m, source_cache = _prepare(
        model, clean_tokens, corrupt_tokens, metric, specs, mode
    )
    if method == "batched":
        values = _batched(model, base, [[(s, source_cache[s.hook])] for s in specs], metric, max_batch)
    elif method == "loop":
        values = _loop(model, base, specs, source_cache, metric)
    else:
        raise ValueError(f"unknown method {method!r}; allowed: batched, loop")
    return _frame(specs, values, clean_m, corrupt_m, mode)


def patch_grid(
    model: HookedModel,
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
    method: str = "batched",
) -> pd.DataFrame:
    """`patch_specs` + `activation_patching`: e.g. layer x position on the residual stream
    (`component="resid_pre", positions=True`), layer x head (`"z", heads=True`), layer x head x
    position, Mamba state by position and channel group (`"ssm_state", positions=True, channel_groups=4`)."""
    specs = patch_specs(
        model,
        component,
        layers=layers,
        heads=heads,
        positions=positions,
        n_pos=clean_tokens.shape[1],
        channel_groups=channel_groups,
    )
    return activation_patching(model, clean_tokens, corrupt_tokens, metric, specs, mode=mode, method=method)


def _prepare(model, clean_tokens, corrupt_tokens, metric, specs, mode):
    """Check inputs; return base and source tokens, baseline metrics and the source activations."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; allowed: {', '.join(MODES)}")
    check_pair(clean_tokens, corrupt_tokens)
    model.check_tokens(clean_tokens)
    model.check_tokens(corrupt_tokens)
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
    for name in hooks:
        model.check_hook_name(name)
    base, source = (corrupt_tokens, clean_tokens) if mode == "denoise" else (clean_tokens, corrupt_tokens)
    with torch.no_grad():
        source_logits, cache = model.run_with_cache(source, names_filter=hooks)
        base_logits = model(base)
        for s in specs:  # a bad index fails here, with the spec named, not inside a forward
            try:
                cache[s.hook][s.index(cache[s.hook].ndim)]
            except IndexError as e:
                raise ValueError(f"{s} does not fit activation {tuple(cache[s.hook].shape)}: {e}") from None
        m_source, m_base = float(metric(source_logits).mean()), float(metric(base_logits).mean())
    clean_m, corrupt_m = (m_source, m_base) if mode == "denoise" else (m_base, m_source)
    return base, source, clean_m, corrupt_m, {name: cache[name] for name in hooks}


@torch.no_grad()
def _batched(
    model: HookedModel,
    base: Tensor,
    copies: list[list[tuple[PatchSpec, Tensor]]],
    metric: Callable[[Tensor], Tensor],
    max_batch: int,
) -> Tensor:
    """Metric [len(copies)] where copy k runs `base` with every (spec, source [B, ...]) of copies[k]
    patched in. Copies run floor(max_batch / B) per forward, as one repeated batch."""
    b = base.shape[0]
    per_forward = max(1, max_batch // b)
    out = []
    for start in range(0, len(copies), per_forward):
        chunk = copies[start : start + per_forward]
        k = len(chunk)
        fwd_hooks = [(name, hook_fn) for name, hook_fn in _patch_hooks(chunk, b).items()]
        logits = model.run_with_hooks(base.repeat(k, 1), fwd_hooks=fwd_hooks)
        out.append(metric(logits).view(k, b).mean(1))
    return torch.cat(out)


def _patch_hooks(chunk: list[list[tuple[PatchSpec, Tensor]]], b: int) -> dict[str, Callable]:
    """One hook function per hook name: copy k's rows take the source wherever its specs select."""
    by_hook: dict[str, list[tuple[int, PatchSpec, Tensor]]] = {}
    for k, patches in enumerate(chunk):
        for spec, src in patches:
            by_hook.setdefault(spec.hook, []).append((k, spec, src))
    k_total = len(chunk)
    hooks = {}
    for name, items in by_hook.items():
        src0 = items[0][2]
        layout = hook_layout(name)
        selectable = {layout.pos, layout.head, layout.channel} - {None}
        # mask [K, 1, ...]: full size on the axes a spec can select, broadcast (1) on the others
        mask_shape = [k_total, 1] + [s if axis in selectable else 1 for axis, s in enumerate(src0.shape)][1:]
        mask = torch.zeros(mask_shape, dtype=torch.bool, device=src0.device)
        shared = all(src is src0 for _, _, src in items)
        source = src0[None] if shared else src0.new_zeros((k_total, *src0.shape))
        for k, spec, src in items:
            mask[k][spec.index(src0.ndim)] = True
            if not shared:
                source[k] = src
        hooks[name] = _make_patch_hook(mask, source, k_total, b)
    return hooks


def _make_patch_hook(mask: Tensor, source: Tensor, k: int, b: int) -> Callable:
    def hook_fn(act: Tensor, hook) -> Tensor:
        view = act.unflatten(0, (k, b))  # [K, B, ...]
        return torch.where(mask, source.to(act.dtype), view).flatten(0, 1)

    return hook_fn


@torch.no_grad()
def _loop(
    model: HookedModel,
    base: Tensor,
    specs: Sequence[PatchSpec],
    source_cache: dict[str, Tensor],
    metric: Callable[[Tensor], Tensor],
) -> Tensor:
    """The reference: one forward per patch, plain index assignment."""
    values = []
    for spec in specs:
        src = source_cache[spec.hook]
        idx = spec.index(src.ndim)

        def hook_fn(act: Tensor, hook, idx=idx, src=src) -> Tensor:
            act = act.clone()
            act[idx] = src[idx]
            return act

        logits = model.run_with_hooks(base, fwd_hooks=[(spec.hook, hook_fn)])
        values.append(metric(logits).mean())
    return torch.stack(values)


def _frame(specs: Sequence[PatchSpec], values: Tensor, clean_m: float, corrupt_m: float, mode: str):
    return _with_effects(pd.DataFrame([s.row() for s in specs]), values, clean_m, corrupt_m, mode)


def _with_effects(df: pd.DataFrame, values: Tensor, clean_m: float, corrupt_m: float, mode: str):
    """Add `metric` and `effect` (fraction of the clean-corrupt gap, see the module doc) to df."""
    df["metric"] = values.detach().cpu().double().numpy()
    gap = clean_m - corrupt_m
    if mode == "denoise":
        df["effect"] = (df["metric"] - corrupt_m) / gap if gap else float("nan")
    else:
        df["effect"] = (clean_m - df["metric"]) / gap if gap else float("nan")
    df.attrs.update(clean_metric=clean_m, corrupt_metric=corrupt_m, mode=mode)
    return df


# ---------------------------------------------------------------------------------------------
# Attribution patching
# ---------------------------------------------------------------------------------------------
def attribution_patching(
    model: HookedModel,
    clean_tokens: Tensor,
    corrupt_tokens: Tensor,
    metric: Metric | Callable[[Tensor], Tensor],
    specs: Sequence[PatchSpec],
    mode: str = "denoise",
) -> pd.DataFrame:
    """First-order estimate of every patch in `specs` from one forward and one backward pass.

    metric(patched) ~ metric(base) + sum over the patched entries of dM/da * (a_source - a_base),
    with the gradient taken on the base run. Returns the same columns as `activation_patching`
    (`metric` is the estimate). For `hook_ssm_state` the gradient with respect to h_t is read from
    `hook_ssm_write` (h_t = decay_t * h_{t-1} + write_t, so dM/dh_t = dM/dwrite_t, including every
    later position that h_t feeds through the recurrence).
    """
    base, source, clean_m, corrupt_m, source_cache = _prepare(
        model, clean_tokens, corrupt_tokens, metric, specs, mode
    )
    hooks = sorted({s.hook for s in specs})
    grad_hook = {name: name.replace("hook_ssm_state", "hook_ssm_write") for name in hooks}
    acts: dict[str, Tensor] = {}

    def keep(act: Tensor, hook) -> Tensor:
        if hook.name in grad_hook.values():
            if not act.requires_grad:  # frozen parameters: make the activation a leaf to differentiate
                act = act.detach().requires_grad_(True)
            act.retain_grad()
        acts[hook.name] = act
        return act

    names = sorted(set(hooks) | set(grad_hook.values()))
    with torch.enable_grad():
        logits = model.run_with_hooks(base, fwd_hooks=[(n, keep) for n in names])
        metric(logits).mean().backward()
    values = []
    for spec in specs:
        grad = acts[grad_hook[spec.hook]].grad
        if grad is None:
            raise RuntimeError(f"the metric does not depend on {spec.hook!r}; nothing to attribute")
        idx = spec.index(grad.ndim)
        diff = source_cache[spec.hook] - acts[spec.hook].detach()
        values.append((grad[idx] * diff[idx]).sum())
    model.zero_grad(set_to_none=True)
    base_m = corrupt_m if mode == "denoise" else clean_m
    return _frame(specs, torch.stack(values).detach() + base_m, clean_m, corrupt_m, mode)


# ---------------------------------------------------------------------------------------------
# Path patching
# ---------------------------------------------------------------------------------------------
def path_patching(
    model: HookedModel,
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
    value. MLPs are recomputed, not frozen, so paths through MLPs count as part of the path.
    senders / receivers default to every head; a receiver only counts when its layer is later.
    Returns rows sender_layer, sender_head, sender, receiver_layer, receiver_head, receiver, input
    (q | k | v | direct), metric, effect (fraction of the clean-corrupt gap, as in the module doc).
    """
    if model.arch != "transformer":
        raise ValueError(f"path patching works on attention heads; a {model.arch} has none")
    bad = [i for i in inputs if i not in ("q", "k", "v")]
    if bad:
        raise ValueError(f"unknown receiver inputs {bad}; allowed: q, k, v")
    cfg = model.cfg
    all_heads = [(layer, h) for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]
    senders, receivers = list(senders or all_heads), list(receivers or all_heads)
    for layer, h in senders + receivers:
        if not (0 <= layer < cfg.n_layers and 0 <= h < cfg.n_heads):
            raise ValueError(
                f"head ({layer}, {h}) does not exist: layers 0..{cfg.n_layers - 1}, heads 0..{cfg.n_heads - 1}"
            )
    z_hooks = [f"blocks.{layer}.attn.hook_z" for layer in range(cfg.n_layers)]
    specs = [PatchSpec(z_hooks[layer], head=h) for layer, h in senders]
    base, source, clean_m, corrupt_m, source_cache = _prepare(
        model, clean_tokens, corrupt_tokens, metric, specs, mode
    )
    b = base.shape[0]
    with torch.no_grad():
        _, base_cache = model.run_with_cache(base, names_filter=z_hooks)
    rec_layers = sorted({layer for layer, _ in receivers})
    rec_hooks = [f"blocks.{layer}.attn.hook_{i}" for layer in rec_layers for i in inputs]

    # (1) sender patched, other heads frozen: record receivers' inputs and the direct effect
    recorded: dict[tuple[int, int], dict[str, Tensor]] = {}
    direct = []
    per_forward = max(1, max_batch // b)
    for start in range(0, len(senders), per_forward):
        chunk = senders[start : start + per_forward]
        k = len(chunk)
        fwd_hooks = []
        for layer, name in enumerate(z_hooks):
            sender_mask = torch.zeros(k, 1, 1, cfg.n_heads, 1, dtype=torch.bool)
            for i, (sl, sh) in enumerate(chunk):
                sender_mask[i, 0, 0, sh, 0] = sl == layer
            frozen = _frozen_z_hook(sender_mask, source_cache.get(name), base_cache[name], k, b)
            fwd_hooks.append((name, frozen))
        store: dict[str, Tensor] = {}
        fwd_hooks += [(name, _store_hook(store)) for name in rec_hooks]
        with torch.no_grad():
            logits = model.run_with_hooks(base.repeat(k, 1), fwd_hooks=fwd_hooks)
        direct.append(metric(logits).view(k, b).mean(1))
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
    path_values = _batched(model, base, copies, metric, max_batch) if copies else torch.zeros(0)
    values, d, p = [], iter(direct_values), iter(path_values)
    for row in rows:
        values.append(next(d) if row["input"] == "direct" else next(p))
    return _with_effects(pd.DataFrame(rows), torch.stack(values), clean_m, corrupt_m, mode)


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


def _store_hook(store: dict[str, Tensor]) -> Callable:
    def hook_fn(act: Tensor, hook) -> None:
        store[hook.name] = act.detach()

    return hook_fn
