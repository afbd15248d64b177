"""Clean/corrupted pairs for activation patching: one template, two strings, the same shape."""

from __future__ import annotations

import torch
from torch import Tensor

from interp.tasks.batch import Batch
from interp.tasks.synthetic import TaskConfig, make_batch


def paired_batches(task: TaskConfig, n: int, length: int, seed: int = 0) -> tuple[Batch, Batch]:
    """Clean and corrupted batches of `n` examples of one length: same template, independent strings."""
    clean = make_batch(task, n, torch.Generator().manual_seed(seed), length=length)
    corrupt = make_batch(task, n, torch.Generator().manual_seed(seed + 10_007), length=length)
    return clean, corrupt


def check_pair(clean_tokens: Tensor, corrupt_tokens: Tensor) -> None:
    """Raise unless the two token batches line up position by position."""
    if clean_tokens.shape != corrupt_tokens.shape:
        raise ValueError(
            f"clean and corrupted batches must have the same shape [batch, pos] so that activations "
            f"line up position by position; got clean {tuple(clean_tokens.shape)} and corrupted "
            f"{tuple(corrupt_tokens.shape)} (build both with the same length, e.g. make_batch(..., length=L))"
        )
