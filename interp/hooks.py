"""The hook contract: what an analysis may assume of a model, and the axes of every hook.

An analysis (probes, saturation, patching, head detectors, circuits) may assume only this of a model:

    cfg.d_vocab, cfg.n_layers      (and cfg.n_heads where there is attention)
    hook_dict                      {name: HookPoint}
    run_with_hooks, run_with_cache TransformerLens's signatures
    model(tokens [B, P])           -> logits [B, P, d_vocab]

so interp's own models, a TransformerLens 4 `TransformerBridge` and a user's `HookedRootModule` all
qualify. What an analysis needs beyond that it asks for by hook name (`has_hooks`), never by
architecture name: attention heads are `blocks.{l}.attn.hook_pattern` and `hook_z`, a recurrent state is
a hook whose `HookInfo.state` is set.

Axes. Every hook's activation has named axes, e.g. `("batch", "pos", "head", "d_head")`. The names in
`ROLES` are the ones analyses index: a patch selects a position, a head or a channel range; a probe reads
positions. Other names (`d_model`, `d_head`, `d_mlp`, ...) are feature axes, flattened by probes and
never indexed. interp's models declare each hook's axes where the hook is made (`Hook("batch pos
d_model")`); for models that do not (the bridge, a user's module) `STANDARD_HOOKS`, keyed on
TransformerLens's standard hook names, supplies them, and any other hook needs `declare_axes`.

What a patch changes (`HookInfo.patch`, see `PATCH_SEMANTICS`) is part of the metadata because it
differs between implementations of one quantity: patching `mixer.hook_ssm_state` at position t in interp
replaces the state h_t inside the recurrence (h_{t+1} is built from it), in TransformerLens's bridge it
changes only the readout y_t. Patching results record which one they measured (`df.attrs`).
"""

from __future__ import annotations

import difflib
import re
import weakref
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# Axis names that analyses index. Everything else is a feature axis.
ROLES = {
    "batch": "examples; always axis 0",
    "pos": "token position (for attention patterns: the query position)",
    "key_pos": "key position of an attention pattern",
    "head": "attention head",
    "channel": "SSM channel (Mamba's D_inner): patched in groups, `channel_groups=`",
    "state": "SSM state coordinate (Mamba's d_state N)",
}
PATCH_SEMANTICS = {
    "forward": "the usual hook: everything computed from the activation downstream sees the patch",
    "recurrence": "the hook sits inside the recurrence: patching position t changes the state there and "
    "every later state built from it (interp's Mamba and LSTM states)",
    "readout": "only the readout at the patched position changes; later states keep their computed values "
    "(TransformerLens 4's bridge, mixer.hook_ssm_state)",
}


class UnknownHookError(KeyError):
    """A hook name that the model does not have; the message lists the closest existing names."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


class UnknownAxesError(ValueError):
    """A hook whose axes neither the model declares nor `STANDARD_HOOKS` knows."""


@dataclass(frozen=True)
class HookInfo:
    """What an analysis knows about one hook: its axes and how a patch there acts."""

    axes: tuple[str, ...]  # e.g. ("batch", "pos", "head", "d_head"); batch first
    state: bool = False  # holds (part of) the recurrent state carried from one position to the next
    patch: str = "forward"  # see PATCH_SEMANTICS
    grad_via: str | None = None  # sibling hook whose gradient is this one's total derivative (see below)
    note: str = ""  # one line for the docs table

    # grad_via: in interp's Mamba, h_t = decay_t * h_{t-1} + write_t, so dM/dh_t (through every later
    # position) equals dM/dwrite_t, which `hook_ssm_write` gives; attribution patching reads it there.

    def __post_init__(self):
        if not self.axes or self.axes[0] != "batch":
            raise ValueError(f"axes must start with 'batch', got {self.axes}")
        if len(set(self.axes)) != len(self.axes):
            raise ValueError(f"axes must not repeat a name, got {self.axes}")
        if self.patch not in PATCH_SEMANTICS:
            raise ValueError(f"patch={self.patch!r} is not allowed; use one of {', '.join(PATCH_SEMANTICS)}")

    def axis(self, role: str) -> int | None:
        """Index of the axis called `role`, or None when the activation has none."""
        return self.axes.index(role) if role in self.axes else None

    @property
    def pos(self) -> int | None:
        return self.axis("pos")

    @property
    def head(self) -> int | None:
        return self.axis("head")

    @property
    def channel(self) -> int | None:
        return self.axis("channel")

    def check(self, name: str, act: Tensor) -> None:
        if act.ndim != len(self.axes):
            raise ValueError(
                f"{name!r} is declared with axes {list(self.axes)} but its activation has shape "
                f"{tuple(act.shape)}; declare the right axes with interp.hooks.declare_axes"
            )


def axes_of(spec: str | Iterable[str] | HookInfo) -> HookInfo:
    """'batch pos d_model' or ("batch", "pos", "d_model") or a HookInfo -> HookInfo."""
    if isinstance(spec, HookInfo):
        return spec
    names = spec.replace(",", " ").split() if isinstance(spec, str) else list(spec)
    return HookInfo(tuple(names))


def _std(axes: str, **kw) -> HookInfo:
    return HookInfo(tuple(axes.split()), **kw)


# TransformerLens's standard hook names (per layer: without the `blocks.{l}.` prefix) -> axes. Used for
# models that do not declare their hooks' axes: a TransformerLens 4 `TransformerBridge`, a user's
# `HookedRootModule`. interp's own models declare the same names with the same axes (a test checks).
STANDARD_HOOKS: dict[str, HookInfo] = {
    # embeddings and output
    "hook_embed": _std("batch pos d_model"),
    "hook_pos_embed": _std("batch pos d_model"),
    "ln_final.hook_scale": _std("batch pos one"),
    "ln_final.hook_normalized": _std("batch pos d_model"),
    "hook_unembed": _std("batch pos d_vocab", note="logits (bridge)"),
    # residual stream (every family)
    "hook_resid_pre": _std("batch pos d_model"),
    "hook_resid_mid": _std("batch pos d_model"),
    "hook_resid_post": _std("batch pos d_model"),
    # attention
    "ln1.hook_scale": _std("batch pos one"),
    "ln1.hook_normalized": _std("batch pos d_model"),
    "ln2.hook_scale": _std("batch pos one"),
    "ln2.hook_normalized": _std("batch pos d_model"),
    "hook_attn_in": _std("batch pos head d_model"),
    "hook_q_input": _std("batch pos head d_model"),
    "hook_k_input": _std("batch pos head d_model"),
    "hook_v_input": _std("batch pos head d_model"),
    "attn.hook_q": _std("batch pos head d_head"),
    "attn.hook_k": _std("batch pos head d_head"),
    "attn.hook_v": _std("batch pos head d_head"),
    "attn.hook_rot_q": _std("batch pos head d_head", note="after rotary"),
    "attn.hook_rot_k": _std("batch pos head d_head", note="after rotary"),
    "attn.hook_attn_scores": _std("batch head pos key_pos", note="masked entries -inf"),
    "attn.hook_pattern": _std("batch head pos key_pos"),
    "attn.hook_z": _std("batch pos head d_head"),
    "attn.hook_result": _std("batch pos head d_model"),
    "hook_attn_out": _std("batch pos d_model"),
    # MLP
    "hook_mlp_in": _std("batch pos d_model"),
    "mlp.hook_pre": _std("batch pos d_mlp"),
    "mlp.hook_pre_linear": _std("batch pos d_mlp"),
    "mlp.hook_post": _std("batch pos d_mlp"),
    "hook_mlp_out": _std("batch pos d_model"),
    # Mamba-1 (TransformerLens 4's bridge names for Hugging Face Mamba; its SSM hooks fire only with
    # `block.mixer.eager_scan = True`)
    "norm.hook_scale": _std("batch pos one"),
    "norm.hook_normalized": _std("batch pos d_model", note="before the norm's weight"),
    "hook_mixer_in": _std("batch pos d_model"),
    "mixer.hook_in_proj": _std("batch pos d_in_proj", note="[x | z], 2 * D_inner"),
    "mixer.hook_conv": _std("batch channel pos", note="P + d_conv - 1 positions, only the first P are used"),
    "mixer.hook_x_proj": _std("batch pos d_x_proj", note="[dt_low | B | C]"),
    "mixer.hook_ssm_dt": _std("batch pos channel", note="before softplus"),
    "mixer.hook_ssm_write": _std("batch channel pos state", patch="recurrence", note="softplus(dt) * u * B"),
    "mixer.hook_ssm_state": _std("batch channel pos state", state=True, patch="readout", note="h_t"),
    "mixer.hook_ssm_out": _std("batch pos d_model", note="out_proj output"),
    "hook_mixer_out": _std("batch pos d_model"),
}

_LAYER = re.compile(r"^blocks\.(\d+)\.")


def layer_of(name: str) -> int | None:
    """2 for `blocks.2.attn.hook_z`; None for hooks outside the blocks."""
    match = _LAYER.match(name)
    return int(match.group(1)) if match else None


def per_layer_name(name: str) -> str:
    """`attn.hook_z` for `blocks.2.attn.hook_z`: the key of `STANDARD_HOOKS`."""
    return _LAYER.sub("", name)


# ---- the contract ----------------------------------------------------------------------------------
def check_model(model: Any, *fields: str) -> None:
    """Raise a TypeError naming what `model` lacks of the hook contract: cfg.d_vocab and the `fields` an
    analysis needs besides (`"n_layers"` for anything that iterates over layers, `"n_heads"`)."""
    missing = [a for a in ("cfg", "hook_dict", "run_with_hooks", "run_with_cache") if not hasattr(model, a)]
    if not callable(model):
        missing.append("a forward (tokens -> logits)")
    cfg = getattr(model, "cfg", None)
    missing += [f"cfg.{f}" for f in ("d_vocab", *fields) if cfg is not None and not hasattr(cfg, f)]
    if missing:
        raise TypeError(
            f"{type(model).__name__} does not meet interp's hook contract: it lacks {', '.join(missing)}. "
            "Analyses need a TransformerLens-style model (HookedRootModule or TransformerBridge) with "
            "cfg.d_vocab (and cfg.n_layers, cfg.n_heads where an analysis goes through layers or heads; see "
            "interp.hooks)"
        )


def model_label(model: Any) -> str:
    """A short name for tables: interp's architecture name, else the class name."""
    return getattr(model, "arch", None) or type(model).__name__


def model_device(model: Any) -> torch.device:
    """Where the model's weights live (parameters, else buffers, else cfg.device, else CPU)."""
    for tensors in (model.parameters(), model.buffers()):
        for t in tensors:
            return t.device
    return torch.device(getattr(getattr(model, "cfg", None), "device", None) or "cpu")


@contextmanager
def attached(model: Any, fwd_hooks: Iterable[tuple[str, Callable]], prepend: bool = False):
    """Forward hooks on a hooked model (any TransformerLens `HookedRootModule`) for the duration of the
    block, removed from those hook points only on exit. `model.hooks(...)` does the same but resets every
    hook point of the model on exit, which on a small model cost a fifth of a resumed patching pass.
    prepend: run them before any hook already attached (TransformerLens' `prepend=True`)."""
    level = -id(fwd_hooks) - 1  # a context level of our own: remove_hooks(level=) takes only these
    points = []
    try:
        for name, fn in fwd_hooks:
            check_hook_name(model, name)  # an unknown name gets the closest real ones, not a KeyError
            model.hook_dict[name].add_hook(fn, dir="fwd", level=level, prepend=prepend)
            points.append(model.hook_dict[name])
        yield model
    finally:
        for point in points:
            point.remove_hooks("fwd", level=level)


def version(t: Tensor) -> int | None:
    """t's in-place version counter; None for a tensor made under `torch.inference_mode`, which keeps none."""
    return None if t.is_inference() else t._version


def call_keeping_input(hook: Callable[[Tensor], Tensor], act: Tensor, unedited: Callable[[], Tensor]):
    """(hook(act), act as the hook received it), for a model that must find what a hook changed. When the
    hook edited act in place, what it received is `unedited()` (recomputed without autograd); under
    `torch.inference_mode`, whose tensors keep no version counter, act is copied before the hook instead."""
    if act.is_inference():
        kept = act.clone()
        out = hook(act)
        return out, (act if torch.equal(act, kept) else kept)
    before = act._version
    out = hook(act)
    if act._version == before:
        return out, act
    with torch.no_grad():
        return out, unedited()


def mark_edited(out: Tensor, act: Tensor, positions: Tensor, axis: int) -> Tensor:
    """Note on a hook's output `out` that it equals its input `act` except at `positions` [E] of axis
    `axis`, so that a model that must find what a hook changed (Mamba's `hook_ssm_state`) compares
    those positions only (`edited_positions`). The patch hooks of `interp.analysis.patching` mark theirs."""
    out._interp_edited = (weakref.ref(act), version(act), version(out), positions, axis)
    return out


def edited_positions(new: Tensor, original: Tensor, axis: int) -> Tensor | None:
    """The positions of `axis` outside which a hook's output `new` equals its input `original`, when a
    hook marked it (`mark_edited`) and neither tensor has changed in place since; None otherwise (then
    anything may differ)."""
    mark = getattr(new, "_interp_edited", None)
    if mark is None:
        return None
    act, act_version, new_version, positions, marked_axis = mark
    known = act_version is not None and new_version is not None  # inference tensors: unknown, not trusted
    valid = known and act() is original and version(original) == act_version and version(new) == new_version
    return positions if valid and marked_axis == axis else None


def check_hook_name(model: Any, name: str) -> None:
    """Raise UnknownHookError for a name not in `model.hook_dict`, listing the closest ones."""
    if name not in model.hook_dict:
        close = difflib.get_close_matches(name, model.hook_dict, n=5, cutoff=0.5)
        hint = (
            f"closest: {', '.join(close)}" if close else f"it has: {', '.join(list(model.hook_dict)[:12])}..."
        )
        raise UnknownHookError(f"{type(model).__name__} has no hook named {name!r}; {hint}")


def check_tokens(model: Any, tokens: Tensor) -> None:
    """Raise a clear error for tokens the model cannot take (wrong rank, dtype, ids, or too long)."""
    if not isinstance(tokens, Tensor) or tokens.ndim != 2:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be an integer tensor of shape [batch, pos], got {shape}")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"tokens must be int64 or int32 token ids, got {tokens.dtype}")
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx is not None and tokens.shape[1] > n_ctx:
        raise ValueError(
            f"sequence of {tokens.shape[1]} tokens is longer than the model's context n_ctx={n_ctx}; "
            f"use shorter strings or build the model with a larger n_ctx"
        )
    d_vocab = model.cfg.d_vocab
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab):
        raise ValueError(
            f"token ids must lie in [0, {d_vocab}) for this model's vocabulary, got "
            f"min {int(tokens.min())}, max {int(tokens.max())}"
        )


def has_hooks(model: Any, *names: str) -> bool:
    """True when every name (templates with `{layer}` are checked for every layer) is a hook of `model`."""
    n_layers = getattr(model.cfg, "n_layers", 0)
    for name in names:
        expanded = [name.format(layer=layer) for layer in range(n_layers)] if "{layer}" in name else [name]
        if not expanded or any(n not in model.hook_dict for n in expanded):
            return False
    return True


def hook_layers(model: Any, *templates: str) -> list[int]:
    """The layers in which every one of `templates` (with `{layer}`) is a hook: all layers for a
    transformer's `blocks.{layer}.attn.hook_pattern`, only the attention layers of a hybrid."""
    return [
        layer
        for layer in range(getattr(model.cfg, "n_layers", 0))
        if all(t.format(layer=layer) in model.hook_dict for t in templates)
    ]


def hook_owner_cfg(model: Any, name: str) -> Any:
    """The `cfg` of the module a hook lives in, or of its closest ancestor that has one (a hybrid's
    `blocks.2.mixer` has its layer's Mamba-2 config), else the model's."""
    parts = name.split(".")[:-1]
    while parts:
        try:
            cfg = getattr(model.get_submodule(".".join(parts)), "cfg", None)
        except AttributeError:
            cfg = None
        if cfg is not None:
            return cfg
        parts.pop()
    return model.cfg


# ---- axes ------------------------------------------------------------------------------------------
def hook_info(model: Any, name: str) -> HookInfo:
    """The axes and patch semantics of hook `name`: declared on the hook point, else `STANDARD_HOOKS`."""
    check_hook_name(model, name)
    info = getattr(model.hook_dict[name], "info", None)
    if info is not None:
        return info
    std = STANDARD_HOOKS.get(per_layer_name(name))
    if std is not None:
        return std
    raise UnknownAxesError(
        f"the axes of {name!r} are unknown: {type(model).__name__} does not declare them and it is not one of "
        f"TransformerLens's standard hook names; declare them with interp.hooks.declare_axes(model, "
        f"{{{name!r}: 'batch pos d_model'}}) or pass axes={{...}} to the analysis (axis names: "
        f"{', '.join(ROLES)}, others are features)"
    )


def find_hook_info(model: Any, name: str) -> HookInfo | None:
    """`hook_info`, or None when the axes are unknown."""
    try:
        return hook_info(model, name)
    except UnknownAxesError:
        return None


def declare_axes(model: Any, axes: Mapping[str, str | Iterable[str] | HookInfo] | None) -> None:
    """Declare the axes of hooks a model does not declare itself, e.g. `{"blocks.{layer}.hook_h":
    "batch pos d_model"}` (a `{layer}` template declares every layer). Stored on the hook points, so
    every analysis of this model sees them."""
    for name, spec in (axes or {}).items():
        info = axes_of(spec)
        names = [name.format(layer=i) for i in range(model.cfg.n_layers)] if "{layer}" in name else [name]
        for n in names:
            check_hook_name(model, n)
            model.hook_dict[n].info = info


def state_hooks(model: Any) -> list[str]:
    """Hooks that hold the recurrent state at one position (`HookInfo.state`), in the model's order."""
    return [n for n in model.hook_dict if (info := find_hook_info(model, n)) is not None and info.state]


# ---- component names ---------------------------------------------------------------------------------
def component_name(template: str) -> str:
    """Short name of a per-layer hook: `blocks.{layer}.attn.hook_z` -> `z`, `...mixer.hook_ssm_state` ->
    `ssm_state`, `blocks.{layer}.hook_resid_pre` -> `resid_pre`."""
    return per_layer_name(template).rsplit(".", 1)[-1].removeprefix("hook_")


def components(model: Any) -> dict[str, str]:
    """{short name: hook template} for every per-layer hook of `model` whose axes are known and whose short
    name is unambiguous (e.g. `z` -> `blocks.{layer}.attn.hook_z`). A template may exist in some layers
    only (a hybrid's `z` in its attention layers, `ssm_state` in its SSM layers): `hook_layers(model,
    template)` says which, and analyses go over those."""
    by_short: dict[str, set[str]] = {}
    for name in model.hook_dict:
        if layer_of(name) is None:
            continue
        template = "blocks.{layer}." + per_layer_name(name)
        by_short.setdefault(component_name(template), set()).add(template)
    out = {}
    # block-level hooks (the residual stream) first, then those of sub-modules, each in the model's order
    order = sorted(
        by_short, key=lambda short: "." in next(iter(by_short[short])).removeprefix("blocks.{layer}.")
    )
    for short in order:
        templates = by_short[short]
        if len(templates) != 1:
            continue
        (template,) = templates
        layers = hook_layers(model, template)
        if layers and find_hook_info(model, template.format(layer=layers[0])) is not None:
            out[short] = template
    return out


def component_hook(model: Any, component: str) -> str:
    """Hook template (with `{layer}`) for a short component name, or a template given as is."""
    if "{layer}" in component:
        return component
    table = components(model)
    if component not in table:
        raise ValueError(
            f"unknown component {component!r} for {model_label(model)}; allowed: {', '.join(table)} "
            f"or a hook template such as 'blocks.{{layer}}.hook_resid_pre'"
        )
    return table[component]


# ---- docs -----------------------------------------------------------------------------------------
def axes_table(model: Any | None = None, group: bool = False) -> str:
    """Markdown table of hooks and their axes: a model's (one row per per-layer template and per other
    hook) or, without a model, `STANDARD_HOOKS`. group=True: one row per (axes, patch semantics), the
    hooks listed together (the README's table is this output). The docs' tables come from here."""
    rows: dict[str, HookInfo] = {}
    if model is None:
        top = ("hook_embed", "hook_pos_embed", "ln_final.", "hook_unembed")
        rows = {(k if k.startswith(top) else "blocks.{l}." + k): v for k, v in STANDARD_HOOKS.items()}
    else:
        for name in model.hook_dict:
            info = find_hook_info(model, name)
            if info is not None:
                key = name if layer_of(name) is None else "blocks.{l}." + per_layer_name(name)
                rows.setdefault(key, info)
    flags = lambda info: info.patch + (", state" if info.state else "")  # noqa: E731
    if group:
        groups: dict[tuple, list[str]] = {}
        for name, info in rows.items():
            groups.setdefault((info.axes, flags(info)), []).append(f"`{name}`")
        lines = ["| axes | hooks | patch |", "|---|---|---|"]
        lines += [
            f"| [{', '.join(axes)}] | {', '.join(names)} | {fl} |" for (axes, fl), names in groups.items()
        ]
        return "\n".join(lines)
    lines = ["| hook | axes | patch | note |", "|---|---|---|---|"]
    for name, info in rows.items():
        note = info.note.replace("|", "\\|")  # a bare | would end the table cell
        lines.append(f"| `{name}` | [{', '.join(info.axes)}] | {flags(info)} | {note} |")
    return "\n".join(lines)


def run_and_cache(
    model: Any, tokens: Tensor, names: list[str], **forward_kwargs: Any
) -> tuple[Tensor, dict[str, Tensor]]:
    """`model.run_with_cache(tokens, names_filter=names, **forward_kwargs)` (e.g. attention_mask) that
    raises when a hook did not fire (the bridge's Mamba fires its SSM hooks only with
    `block.mixer.eager_scan = True`)."""
    logits, cache = model.run_with_cache(tokens, names_filter=names, **forward_kwargs)
    silent = [n for n in names if n not in cache]
    if silent:
        raise ValueError(
            f"hooks {silent} did not fire in a forward pass of {type(model).__name__}, so there is nothing to "
            "read or patch (a TransformerBridge Mamba fires its SSM hooks only after "
            "`for b in bridge.blocks: b.mixer.eager_scan = True`)"
        )
    for n in names:
        info = find_hook_info(model, n)
        if info is not None:
            info.check(n, cache[n])
    return logits, {n: cache[n] for n in names}
