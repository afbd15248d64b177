"""The one config behaviour every dataclass config shares: plain-dict round trip with strict keys."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any


class Config:
    """Mixin for `@dataclass` configs: `to_dict()` for config.json, `from_dict()` that names unknown keys."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any], strict: bool = True):
        """Build from a dict; unknown keys raise (strict) or are dropped (e.g. options from newer versions)."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - known
        if unknown and strict:
            raise ValueError(f"unknown {cls.__name__} options {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**{k: v for k, v in d.items() if k in known})
