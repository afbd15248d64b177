"""Edits of recurrent states inside a scan, held only at the positions they touch.

The scans' public `state_edit` argument is dense: a tensor as big as every per-position state, NaN where
a state keeps its computed value. A patch usually replaces the state at one position, and building,
masking and reading a dense [B, D, L, N] tensor then costs more than the scan itself (measured on the
Mamba patching benchmark: half the time of a state patch). `StateEdit` keeps the E edited positions
only; the mixers build one from what `hook_ssm_state` changed (`StateEdit.changes`), the scans accept
either form (`as_state_edit`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from interp.hooks import edited_positions


@dataclass(frozen=True)
class StateEdit:
    """Replacement values for recurrent states at positions `times` of the time axis `dim`.

    times: [E] ascending positions (int64). mask, values: the dense edit's shape with E positions on axis
    `dim` instead of L; where mask is True the state takes the value (values elsewhere are unused, and
    their gradient is zero)."""

    times: Tensor
    mask: Tensor
    values: Tensor
    dim: int

    @classmethod
    def _at(cls, edited: Tensor, values: Tensor, dim: int) -> StateEdit:
        times = edited.any(dim=tuple(i for i in range(edited.ndim) if i != dim)).nonzero()[:, 0]
        return cls(times, edited.index_select(dim, times), values.index_select(dim, times), dim)

    @classmethod
    def from_nan(cls, dense: Tensor, dim: int) -> StateEdit:
        """From the dense form (NaN = keep)."""
        edited = ~torch.isnan(dense)
        at = cls._at(edited, dense, dim)
        zero = torch.zeros((), dtype=dense.dtype, device=dense.device)
        return cls(at.times, at.mask, torch.where(at.mask, at.values, zero), dim)  # no NaN into gradients

    @classmethod
    def changes(cls, original: Tensor, new: Tensor, dim: int) -> StateEdit:
        """The entries where `new` differs from `original` (what a hook changed), at `new`'s values. Where
        the hook marked the positions it wrote (`interp.hooks.mark_edited`, as patching's hooks do), only
        those are compared: a full compare reads both [B, D, L, N] states, a sixth of a Mamba state patch."""
        at = edited_positions(new, original, dim)
        if at is None:
            return cls._at(new != original, new, dim)
        new_at = new.index_select(dim, at)
        sub = cls._at(new_at != original.index_select(dim, at), new_at, dim)
        return cls(at[sub.times], sub.mask, sub.values, dim)

    def __len__(self) -> int:
        return self.times.numel()

    def positions(self) -> list[int]:
        return self.times.tolist()

    def shifted(self, offset: int) -> StateEdit:
        """The same edit at positions times + offset (for a scan of a later part of the sequence)."""
        return StateEdit(self.times + offset, self.mask, self.values, self.dim)

    def to(self, dtype: torch.dtype) -> StateEdit:
        return StateEdit(self.times, self.mask, self.values.to(dtype), self.dim)

    def moved(self, *order: int) -> StateEdit:
        """The same edit with its axes permuted (`Tensor.permute(*order)`); the time axis follows."""
        return StateEdit(
            self.times, self.mask.permute(*order), self.values.permute(*order), list(order).index(self.dim)
        )

    def dense(self, length: int) -> Tensor:
        """The dense form [..., length on axis dim, ...], NaN = keep (for the reference scans)."""
        shape = list(self.values.shape)
        shape[self.dim] = length
        out = self.values.new_full(shape, float("nan"))
        put = torch.where(self.mask, self.values, out.index_select(self.dim, self.times))
        return out.index_copy(self.dim, self.times, put)

    def check(self, name: str, shape: tuple[int, ...]) -> None:
        """Raise unless this edits states of the dense shape `shape`."""
        length = shape[self.dim]
        want = tuple(len(self) if i == self.dim else s for i, s in enumerate(shape))
        if tuple(self.mask.shape) != want or tuple(self.values.shape) != want:
            raise ValueError(
                f"{name} must hold [{', '.join(map(str, want))}] masks and values for states of shape "
                f"{list(shape)}, got {list(self.mask.shape)} and {list(self.values.shape)}"
            )
        times = self.positions()
        if times != sorted(set(times)) or (times and not 0 <= times[0] <= times[-1] < length):
            raise ValueError(f"{name} must edit ascending positions in 0..{length - 1}, got {times}")


def as_state_edit(edit: Tensor | StateEdit | None, dim: int) -> StateEdit | None:
    """A scan's `state_edit` argument (dense with NaN = keep, or a `StateEdit`) as a `StateEdit`."""
    if edit is None or isinstance(edit, StateEdit):
        return edit
    return StateEdit.from_nan(edit, dim)
