"""How many patches fit in one forward: from what one patched forward stores and a memory budget
(`max_memory=`).

One patched copy of the batch needs what one forward of the B examples with the patch in place holds
at its peak: `bytes_per_copy` runs that forward once and counts it (`peak_tensor_bytes`: every tensor
the forward's operations create, while it is alive; on CUDA the allocator's own peak). The patched
hooks are replaced by a fresh tensor, as a patch does, so what a model computes only when a hook asks
for it (Mamba's full SSM states, the attention pattern) counts exactly when a patch asks for it, and
nothing else does. A resumed pass (`method="reuse"`) is measured the same way on the model's own
`forward_from` (`resumed_bytes`). The budget defaults to `DEFAULT_FRACTION` of the free memory of the
device the tokens are on (GPU: `torch.cuda.mem_get_info`; CPU: MemAvailable).
"""

from __future__ import annotations

import dataclasses
import re
import weakref
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

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


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of the storages that operations create while they are alive, and the peak.

    A storage counts once, from the first tensor an operation returns on it until the last such tensor
    dies (views and in-place results share it); views of tensors made before counting began (weights,
    caches) are not new memory."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage address -> [bytes, tensors on it]
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)
        }
        for t in tree_leaves(out):
            if not isinstance(t, Tensor):
                continue
            key = t.untyped_storage().data_ptr()
            if key in self.live:
                self.live[key][1] += 1
            elif key in inputs or key == 0:
                continue  # a view of (or an edit to) a tensor made before counting began
            else:
                self.live[key] = [t.untyped_storage().nbytes(), 1]
                self.now += self.live[key][0]
                self.peak = max(self.peak, self.now)
            weakref.finalize(t, self._release, key)
        return out

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is not None:
            entry[1] -= 1
            if not entry[1]:
                self.now -= self.live.pop(key)[0]


def peak_tensor_bytes(fn: Callable[[], object], device: torch.device | None = None) -> int:
    """Peak bytes of the tensors `fn()` creates and holds at once (CPU: counted per operation, see
    `_LiveBytes`; CUDA: the caching allocator's peak above what was allocated before)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        return int(torch.cuda.max_memory_allocated(device) - before)
    with _LiveBytes() as counter:
        fn()
    return counter.peak


def _as_patched(act: Tensor, hook) -> Tensor:
    return act.clone()  # what a patch hook returns: a new tensor of the activation's shape


@torch.no_grad()
def bytes_per_copy(
    model, tokens: Tensor, forward_kwargs: dict | None = None, hooks: Sequence[str] = ()
) -> int:
    """Peak bytes of one forward of tokens [B, P] with each of `hooks` patched (replaced by a copy)."""
    fwd = [(name, _as_patched) for name in hooks]
    return peak_tensor_bytes(
        lambda: model.run_with_hooks(tokens, fwd_hooks=fwd, **(forward_kwargs or {})), tokens.device
    )


@torch.no_grad()
def resumed_bytes(
    model, state, n_pos: int, hooks: Sequence[str], device: torch.device
) -> Callable[[int], int]:
    """Bytes of one copy of a resumed pass (`model.forward_from`, `patching.reuse`) as a function of the
    positions w it computes: measured on the longest resumed pass (from position 1, so a recurrent model
    continues from a recorded state) and on the shortest (the last position), straight line between.
    Each runs on a fresh copy of a dataclass state (`dataclasses.replace`), so that buffers a model keeps
    from pass to pass (the transformer's `KVSlots`) count in both."""

    def measure(pos: int) -> int:
        fresh = dataclasses.replace(state) if dataclasses.is_dataclass(state) else state
        with model.hooks(fwd_hooks=[(name, _as_patched) for name in hooks]):
            return peak_tensor_bytes(lambda: model.forward_from(fresh, 0, pos), device)

    if n_pos <= 2:
        full = measure(n_pos - 1)
        return lambda w: full
    longest, shortest = measure(1), measure(n_pos - 1)
    return lambda w: int(shortest + (longest - shortest) * (w - 1) / (n_pos - 2))


def budget_bytes(max_memory: int | float | str | None, device: torch.device) -> int:
    """The budget in bytes: max_memory, or DEFAULT_FRACTION of the device's free memory now."""
    return parse_bytes(max_memory) if max_memory is not None else int(DEFAULT_FRACTION * free_memory(device))


def copies_per_forward(per_copy: int, budget: int, max_copies: int) -> int:
    """Patched copies per forward within `budget` bytes (at most max_copies); raises when not one fits."""
    if per_copy > budget:
        raise ValueError(
            f"max_memory={budget / 2**20:.1f} MiB is too small for one patch: one patched forward of this "
            f"batch needs about {per_copy / 2**20:.1f} MiB; raise max_memory or patch fewer examples at a time"
        )
    return max(1, min(max_copies, budget // per_copy))
