"""The paper's character vocabulary: letters `a`.. plus `$` begin, `|` separator, `.` end, `*` padding.

Letters come first so a letter's token id is its index in the alphabet (`a`=0), which keeps probe
targets and plots readable; the four symbols follow.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import torch
from torch import Tensor

MAX_LETTERS = 26
SYMBOLS = "$|.*"  # begin, separator, end, padding


@dataclass(frozen=True)
class Vocab:
    """`n_letters` letters (2..26) and the four symbols; `size = n_letters + 4`."""

    n_letters: int = 26

    def __post_init__(self):
        if not isinstance(self.n_letters, int) or not 2 <= self.n_letters <= MAX_LETTERS:
            raise ValueError(
                f"vocabulary size n_letters={self.n_letters!r} is not allowed: use 2..{MAX_LETTERS} letters"
            )

    @property
    def size(self) -> int:
        return self.n_letters + len(SYMBOLS)

    @property
    def chars(self) -> str:
        return string.ascii_lowercase[: self.n_letters] + SYMBOLS

    @property
    def bos(self) -> int:
        return self.n_letters

    @property
    def sep(self) -> int:
        return self.n_letters + 1

    @property
    def eos(self) -> int:
        return self.n_letters + 2

    @property
    def pad(self) -> int:
        return self.n_letters + 3

    def encode(self, text: str) -> Tensor:
        """`"$ab|"` -> tensor([26, 0, 1, 27]) for 26 letters. Unknown characters raise."""
        bad = sorted({c for c in text if c not in self.chars})
        if bad:
            raise ValueError(f"characters {bad} are not in this vocabulary; allowed: {self.chars!r}")
        index = {c: i for i, c in enumerate(self.chars)}
        return torch.tensor([index[c] for c in text], dtype=torch.long)

    def decode(self, tokens: Tensor | list[int], strip_pad: bool = True) -> str:
        """Token ids [P] back to text; padding `*` is dropped unless `strip_pad=False`."""
        ids = tokens.tolist() if isinstance(tokens, Tensor) else list(tokens)
        text = "".join(self.chars[i] if 0 <= i < self.size else "?" for i in ids)
        return text.replace("*", "") if strip_pad else text

    def decode_batch(self, tokens: Tensor, strip_pad: bool = True) -> list[str]:
        """Token ids [B, P] to one string per row."""
        return [self.decode(row, strip_pad) for row in tokens]
