"""Small helpers shared by training, evaluation and the command line."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto` (default) -> CUDA when available, else CPU; anything else is passed to torch.device."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device} was asked for but CUDA is not available here; use --device cpu or auto"
        )
    return device


def autocast(device: torch.device, enabled: bool = True):
    """bfloat16 mixed precision on CUDA; a no-op context on the CPU (where it would only slow things)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def parse_int_list(text: str) -> list[int]:
    """`"10,20,40"` -> [10, 20, 40]; a clear error for anything else."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated whole numbers like 10,20,40, got {text!r}") from None
    if not values:
        raise ValueError(f"expected at least one number, got {text!r}")
    return values
