"""Hooked models. Each architecture registers its class here by name (the `arch` of a checkpoint)."""

from __future__ import annotations

import importlib

from interp.models.base import Hook, HookedModel, StateSize, UnknownHookError

# arch name -> "module:Class"; imported lazily so optional architectures cost nothing until used.
ARCHITECTURES = {
    "transformer": "interp.models.transformer:HookedTransformer",
    "lstm": "interp.models.lstm:HookedLSTM",
    "mamba": "interp.models.mamba:HookedMamba",
    "mamba2": "interp.models.mamba2:HookedMamba2",
    "hybrid": "interp.models.hybrid:HookedHybrid",  # a layer pattern of mamba, mamba2, attn and mlp layers
    "shift_register": "interp.models.shift_register:ShiftRegister",  # planted ground truth for probes
}


def model_class(arch: str) -> type[HookedModel]:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; allowed: {', '.join(ARCHITECTURES)}")
    module, name = ARCHITECTURES[arch].split(":")
    return getattr(importlib.import_module(module), name)


def build_model(arch: str, **options) -> HookedModel:
    """`build_model("transformer", positional="hard_alibi", n_layers=2)`: a fresh model."""
    cls = model_class(arch)
    return cls(cls.config_class.from_dict(options))


__all__ = [
    "ARCHITECTURES",
    "Hook",
    "HookedModel",
    "StateSize",
    "UnknownHookError",
    "build_model",
    "model_class",
]
