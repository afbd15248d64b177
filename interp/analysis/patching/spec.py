"""What a patch is: `PatchSpec(hook, pos, head, channels)`, and grids of them (`patch_specs`).

Which axis of an activation is the position, the head or the channel comes from the hook's declared
axes (`interp.hooks.hook_info`), so a spec works on any model of the hook contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from interp.hooks import (
    HookInfo,
    check_hook_name,
    check_model,
    component_hook,
    hook_info,
    hook_layers,
    hook_owner_cfg,
    layer_of,
    per_layer_name,
)


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
        return layer_of(self.hook)

    @property
    def component(self) -> str:
        """The hook name without its layer, e.g. `attn.hook_z`."""
        return per_layer_name(self.hook)

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

    def index(self, info: HookInfo) -> tuple:
        """Index over all axes of the hook's activation (batch included) selecting what this spec
        patches; `info` is the hook's `interp.hooks.hook_info`."""
        idx: list = [slice(None)] * len(info.axes)
        for axis, value, what in (
            (info.pos, self.pos, "a position"),
            (info.head, self.head, "a head"),
            (info.channel, self.channels, "channels"),
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


def patch_specs(
    model,
    component: str,
    *,
    layers: Sequence[int] | None = None,
    heads: bool | Sequence[int] = False,
    positions: bool | Sequence[int] = False,
    n_pos: int | None = None,
    channel_groups: int | None = None,
    n_channels: int | None = None,
) -> list[PatchSpec]:
    """The grid of patches over layers (x heads) (x positions) (x channel groups) of one component.

    heads / positions: True for all of them, a list for some, False to patch all at once.
    n_pos: sequence length (needed when positions=True). channel_groups: split the channel axis
    (Mamba's D_inner) into this many equal groups, one patch each.
    >>> patch_specs(model, "z", heads=True, positions=True, n_pos=40)   # layer x head x position
    """
    check_model(model, "n_layers")
    template = component_hook(model, component)
    present = hook_layers(model, template)  # a hybrid has `z` in its attention layers only
    layers = (present or list(range(model.cfg.n_layers))) if layers is None else list(layers)
    bad = [layer for layer in layers if not 0 <= layer < model.cfg.n_layers]
    if bad:
        raise ValueError(f"layers {bad} do not exist; this model has layers 0..{model.cfg.n_layers - 1}")
    for layer in layers:
        check_hook_name(model, template.format(layer=layer))
    info = hook_info(model, template.format(layer=layers[0]))
    if heads is not False and info.head is None:
        raise ValueError(f"{template!r} has no head axis; use heads=False")
    # the size of the hook's head axis: attention heads, or a Mamba-2 layer's SSM heads (its cfg.n_heads)
    n_heads = {layer: head_count(model, template.format(layer=layer), heads is True) for layer in layers}
    if positions is True and n_pos is None:
        raise ValueError("positions=True needs n_pos, the sequence length of the batches")
    pos_list = _choose(positions, n_pos or 0, "positions")
    groups: list = [None]
    if channel_groups:
        if info.channel is None:
            raise ValueError(f"{template!r} has no channel axis; channel_groups needs a Mamba mixer hook")
        d_inner = n_channels or channel_count(model, template.format(layer=layers[0]))
        if d_inner % channel_groups:
            raise ValueError(f"channel_groups={channel_groups} does not divide d_inner={d_inner}")
        size = d_inner // channel_groups
        groups = [(g * size, (g + 1) * size) for g in range(channel_groups)]
    return [
        PatchSpec(template.format(layer=layer), pos=p, head=h, channels=c)
        for layer in layers
        for h in _choose(heads, n_heads.get(layer, 0), "heads")
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


def head_count(model: Any, name: str, required: bool = True) -> int:
    """Length of the head axis of hook `name`: `cfg.n_heads` of the module the hook lives in (a hybrid's
    Mamba-2 mixer has its own, d_inner / head_dim), else the model's (attention heads); 0 when unknown
    and not `required`."""
    n = getattr(hook_owner_cfg(model, name), "n_heads", None) or getattr(model.cfg, "n_heads", None)
    if not isinstance(n, int):
        if required:
            raise ValueError(
                f"heads=True needs the number of heads of {name!r}; give a list of heads instead"
            )
        return 0
    return n


def channel_count(model: Any, name: str) -> int:
    """Length of the channel axis of hook `name` (Mamba's D_inner) from the config: cfg.d_inner (of the
    module the hook lives in, else of the model)."""
    d_inner = getattr(hook_owner_cfg(model, name), "d_inner", None)
    if not isinstance(d_inner, int):
        d_inner = getattr(model.cfg, "d_inner", None)
    if isinstance(d_inner, int):
        return d_inner
    raise ValueError(
        f"channel_groups needs the length of {name!r}'s channel axis, but {type(model).__name__}.cfg has no "
        "d_inner; pass n_channels= (patch_grid measures it from one forward)"
    )
