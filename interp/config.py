"""The one config behaviour every dataclass config shares: plain-dict round trip with strict keys and
one validation, used alike by Python callers, the command line and config.json files read back.

Validation rules, so that a bad number fails where it is given and not steps later:
- every field holds the type its annotation names (`int` is not `bool`; a `float` field takes an int);
- every int field is a count or a size, so it must be >= 1, unless the class lists it in `zero_ok`
  (then >= 0: a seed, "0 = never"); no config here has a meaningful negative int;
- every float is finite.
Class-specific rules (an allowed set of names, `min_len <= max_len`) stay in each `__post_init__`, which
calls `super().__post_init__()` first so that the generic checks run before anything divides by a size.
"""

from __future__ import annotations

import functools
import math
import re
import types
import typing
from dataclasses import asdict, fields
from typing import Any, ClassVar


class Config:
    """Mixin for `@dataclass` configs: `to_dict()` for config.json, `from_dict()` that names unknown keys."""

    zero_ok: ClassVar[frozenset[str]] = frozenset()  # int fields that may be 0 (all others must be >= 1)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value has the wrong type or range."""
        _check_types(type(self), {f.name: getattr(self, f.name) for f in fields(self)})  # type: ignore[arg-type]
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            where = f"{type(self).__name__}.{f.name}"
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, int):
                check_int(where, value, minimum=0 if f.name in self.zero_ok else 1)
            elif isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{where} must be a finite number, got {value}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any], strict: bool = True):
        """Build from a dict; unknown keys raise (strict) or are dropped (e.g. options from newer versions)."""
        if not isinstance(d, dict):
            raise ValueError(f"{cls.__name__} options must be a JSON object of name: value, got {d!r}")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - known
        if unknown and strict:
            raise ValueError(f"unknown {cls.__name__} options {sorted(unknown)}; allowed: {sorted(known)}")
        d = {k: v for k, v in d.items() if k in known}
        # types first: a class whose own __post_init__ compares values would otherwise raise TypeError
        _check_types(cls, d)
        config = cls(**d)
        config.validate()  # also for classes whose __post_init__ does not call super()
        return config


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """`value` if it is an int >= `minimum`, else a ValueError naming `name` (shared with the CLI)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(device: str) -> str:
    """A device name torch understands (checked here so `--device tpu` is a clear error, not a traceback)."""
    if not isinstance(device, str) or not DEVICE.match(device):
        raise ValueError(f"device {device!r} is not allowed; use auto, cpu, cuda, cuda:N or mps")
    return device


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_types(cls: type, values: dict[str, Any]) -> None:
    hints = _hints(cls)
    for name, value in values.items():
        allowed = _allowed_types(hints.get(name))
        if allowed is not None and not _is_instance(value, allowed):
            names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
            raise ValueError(f"{cls.__name__}.{name} must be {names}, got {value!r} ({type(value).__name__})")


def _allowed_types(hint: Any) -> tuple[type, ...] | None:
    """The plain types a field annotation allows; None for annotations not checked here."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [_allowed_types(arg) for arg in typing.get_args(hint)]
        return None if any(p is None for p in parts) else sum(parts, ())
    if hint in (int, float, bool, str, type(None)):
        return (hint,)
    return None


def _is_instance(value: Any, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # bool is a subclass of int; True is not a width
        return bool in allowed
    if float in allowed and isinstance(value, int):
        return True
    return isinstance(value, allowed)
