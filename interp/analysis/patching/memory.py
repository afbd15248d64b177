"""How many patches fit in one forward: from the activation sizes and a memory budget (`max_memory=`).

One patched copy of the batch needs about the memory of every activation of one forward of the B
examples (each hook's activation, measured once by shape, plus the logits): an upper bound, since a
no-grad forward frees most of them layer by layer. A pass that computes only the positions >= p
(`method="reuse"`) needs that fraction of it. The budget defaults to `DEFAULT_FRACTION` of the free
memory of the device the tokens are on (GPU: `torch.cuda.mem_get_info`; CPU: MemAvailable).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

DEFAULT_FRACTION = 0.5
_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(value: int | float | str) -> int:
    """512 * 2**20, "512MiB", "2GB", "1.5 GiB" -> bytes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"max_memory={value} must be positive (bytes)")
        return int(value)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"max_memory={value!r} is not a size; use bytes or e.g. '512MiB', '2GB'")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def free_memory(device: torch.device) -> int:
    """Free bytes on `device`: GPU memory for CUDA, available RAM otherwise."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os  # noqa: PLC0415

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@torch.no_grad()
def bytes_per_copy(model, tokens: Tensor, forward_kwargs: dict | None = None) -> int:
    """Bytes of every hook's activation and the logits in one forward of tokens [B, P]."""
    sizes: list[int] = []

    def record(act: Tensor, hook) -> None:
        if isinstance(act, Tensor):
            sizes.append(act.numel() * act.element_size())

    logits = model.run_with_hooks(tokens, fwd_hooks=[(lambda name: True, record)], **(forward_kwargs or {}))
    return sum(sizes) + logits.numel() * logits.element_size()


def budget_bytes(max_memory: int | float | str | None, device: torch.device) -> int:
    """The budget in bytes: max_memory, or DEFAULT_FRACTION of the device's free memory now."""
    return parse_bytes(max_memory) if max_memory is not None else int(DEFAULT_FRACTION * free_memory(device))


def copies_per_forward(per_copy: int, budget: int, max_copies: int) -> int:
    """Patched copies per forward within `budget` bytes (at most max_copies); raises when not one fits."""
    if per_copy > budget:
        raise ValueError(
            f"max_memory={budget / 2**20:.1f} MiB is too small for one patch: one patched forward of this "
            f"batch needs about {per_copy / 2**20:.1f} MiB of activations; raise max_memory or patch fewer "
            "examples at a time"
        )
    return max(1, min(max_copies, budget // per_copy))
