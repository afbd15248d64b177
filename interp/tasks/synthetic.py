"""Synthetic copy and retrieval tasks in the paper's token format, generated a whole batch at a time.

Every task is a `TaskConfig` (data, not code) plus a pure builder `f(cfg, lengths, gen) -> Batch`.
Worked examples with 26 letters (scored answer tokens in brackets):

    copy            $abc|[abc.]                 copy the string after the separator
    prefix_lookup   $bc|abcd|[d.]               the key n-gram comes first, then the string
    suffix_lookup   $abcd|bc|[d.]               the string comes first: a state model can't know what to keep
    phonebook       $abxy|cdzw|cd|[zw.]         name -> number entries, then one queried name
    mqar            $axbyc z|b[y]a[x]           multi-query associative recall: keys then queries
    induction       $abcdab[cd]                 a random string repeated; the repeat is scored

`length` means the string length for copy, lookups and induction, the number of entries for the
phone-book and the number of key-value pairs for associative recall.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from interp.config import Config
from interp.tasks.batch import Batch, assemble, constant, first_true, pack, score_mask_from_answer
from interp.tasks.vocab import Vocab

TASKS = ("copy", "prefix_lookup", "suffix_lookup", "phonebook", "mqar", "induction")


@dataclass(frozen=True)
class TaskConfig(Config):
    task: str = "copy"  # one of TASKS
    n_letters: int = 26  # alphabet size |V| (2..26); the paper uses 26
    min_len: int = 1  # shortest string (entries, pairs) sampled in training
    max_len: int = 20  # longest; evaluation asks for exact lengths instead
    ngram: int = 3  # key n-gram size for lookups; n for unique_ngrams
    unique_ngrams: bool = False  # copy/induction strings whose n-grams never repeat (paper's hashing regime)
    answer_len: int = 1  # tokens to retrieve after the key in lookups
    name_len: int = 3  # phone-book name length (letters)
    number_len: int = 3  # phone-book number length (letters)
    n_queries: int = 4  # associative-recall queries per example
    pack_context: int | None = None  # pack examples into rows of this many tokens (paper: 220)

    def __post_init__(self):
        Vocab(self.n_letters)  # validates the alphabet size (first: its message names the range 2..26)
        super().__post_init__()  # types, and every count >= 1
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; allowed: {', '.join(TASKS)}")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(
                f"need 1 <= min_len <= max_len, got min_len={self.min_len}, max_len={self.max_len}"
            )
        if not 1 <= self.ngram <= 12:
            raise ValueError(f"ngram={self.ngram} is not allowed: use 1..12")
        if self.task == "mqar" and self.max_len > self.n_letters // 2:
            raise ValueError(
                f"mqar draws distinct keys from the first half of the alphabet: max_len={self.max_len} pairs "
                f"needs n_letters >= {2 * self.max_len}, got {self.n_letters}"
            )
        if self.task in ("prefix_lookup", "suffix_lookup") and self.min_len < self.ngram + self.answer_len:
            raise ValueError(
                f"{self.task} needs strings of at least ngram + answer_len = {self.ngram + self.answer_len} "
                f"letters, got min_len={self.min_len}"
            )

    @property
    def vocab(self) -> Vocab:
        return Vocab(self.n_letters)

    def sequence_length(self, length: int) -> int:
        """Tokens in one example of the given length (what must fit in the model's context)."""
        n, a = self.ngram, self.answer_len
        return {
            "copy": 2 * length + 3,
            "prefix_lookup": length + n + a + 4,
            "suffix_lookup": length + n + a + 4,
            "phonebook": length * (self.name_len + self.number_len + 1) + self.name_len + self.number_len + 3,
            "mqar": 2 * length + 2 + 2 * self.n_queries,
            "induction": 2 * length + 1,
        }[self.task]


def make_batch(
    cfg: TaskConfig,
    batch_size: int,
    generator: torch.Generator | None = None,
    length: int | None = None,
    max_tokens: int | None = None,
) -> Batch:
    """A seeded batch of `batch_size` examples (rows of `cfg.pack_context` tokens when packing).

    length: every example has exactly this length (evaluation); default: uniform in [min_len, max_len].
    max_tokens: the model's context; raises if an example would not fit instead of truncating it.
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    longest = length if length is not None else cfg.max_len
    if length is not None and length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    need = cfg.pack_context or cfg.sequence_length(longest)
    if max_tokens is not None and need > max_tokens:
        raise ValueError(
            f"{cfg.task} examples of length {longest} take {cfg.sequence_length(longest)} tokens"
            f"{' (rows of ' + str(cfg.pack_context) + ')' if cfg.pack_context else ''}, more than the "
            f"model's context of {max_tokens} tokens; use shorter strings or a model with a longer context"
        )
    if cfg.pack_context:
        if cfg.sequence_length(longest) > cfg.pack_context:
            raise ValueError(
                f"an example of length {longest} ({cfg.sequence_length(longest)} tokens) does not fit in "
                f"pack_context={cfg.pack_context}"
            )
        per_row = math.ceil(cfg.pack_context / cfg.sequence_length(cfg.min_len)) + 1
        n = batch_size * per_row
        lengths = _sample_lengths(cfg, n, gen, length)
        tokens, answer, total = _BUILDERS[cfg.task](cfg, lengths, gen)
        toks, mask, row_lengths = pack(tokens, answer, total, lengths, cfg.pack_context, batch_size)
        return Batch(toks, mask, row_lengths, torch.full((batch_size,), -1), cfg.vocab, cfg.task)
    lengths = _sample_lengths(cfg, batch_size, gen, length)
    tokens, answer, _ = _BUILDERS[cfg.task](cfg, lengths, gen)
    return Batch(tokens, score_mask_from_answer(answer), lengths, first_true(answer), cfg.vocab, cfg.task)


def _sample_lengths(cfg: TaskConfig, n: int, gen: torch.Generator, length: int | None) -> Tensor:
    if length is not None:
        return torch.full((n,), length, dtype=torch.long)
    return torch.randint(cfg.min_len, cfg.max_len + 1, (n,), generator=gen)


def random_strings(n: int, width: int, n_letters: int, gen: torch.Generator, low: int = 0) -> Tensor:
    """[n, width] letters drawn uniformly from [low, n_letters)."""
    return torch.randint(low, n_letters, (n, width), generator=gen)


def make_windows_unique(
    s: Tensor,
    size: int,
    step: int,
    n_valid: Tensor,
    n_letters: int,
    gen: torch.Generator,
    max_iter: int = 5000,
) -> Tensor:
    """Resample letters of `s` [B, W] until, per row, its first `n_valid` windows are all distinct.

    Windows are `s.unfold(1, size, step)`: overlapping n-grams (step 1) or consecutive names
    (step = size). A duplicate window gets its last letter redrawn; a few rounds suffice while the
    number of windows is well below n_letters ** size.
    """
    s = s.clone()
    if s.shape[1] < size:  # no complete window anywhere: nothing can repeat
        return s
    pos = torch.arange(0, s.shape[1] - size + 1, step)
    if int(n_valid.max()) > n_letters**size:
        raise ValueError(
            f"cannot make {int(n_valid.max())} distinct {size}-grams from {n_letters} letters "
            f"(only {n_letters**size} exist); use shorter strings, a larger ngram or more letters"
        )
    weights = n_letters ** torch.arange(size)
    rows = torch.arange(s.shape[0])  # rows still to check: after the first round, only those just changed
    for _ in range(max_iter):
        sub = s[rows]
        codes = (sub.unfold(1, size, step) * weights).sum(-1)  # [rows, n_windows]
        invalid = torch.arange(codes.shape[1])[None, :] >= n_valid[rows, None]
        codes = torch.where(invalid, -1 - torch.arange(codes.shape[1])[None, :], codes)  # never collide
        sorted_codes, order = codes.sort(dim=1, stable=True)
        later_copy = torch.zeros_like(invalid)
        later_copy.scatter_(1, order[:, 1:], sorted_codes[:, 1:] == sorted_codes[:, :-1])
        hit_rows, win = later_copy.nonzero(as_tuple=True)
        if len(hit_rows) == 0:
            return s
        s[rows[hit_rows], pos[win] + size - 1] = torch.randint(0, n_letters, (len(hit_rows),), generator=gen)
        rows = rows[later_copy.any(1)]
    raise RuntimeError(
        f"could not sample strings with unique {size}-grams in {max_iter} rounds; the strings are too "
        f"long for {n_letters} letters: use shorter strings or a larger ngram"
    )


def _strings(cfg: TaskConfig, lengths: Tensor, gen: torch.Generator, unique: bool) -> Tensor:
    s = random_strings(len(lengths), int(lengths.max()), cfg.n_letters, gen)
    if unique:
        n_windows = (lengths - cfg.ngram + 1).clamp(min=0)
        s = make_windows_unique(s, cfg.ngram, 1, n_windows, cfg.n_letters, gen)
    return s


def _copy(cfg: TaskConfig, lengths: Tensor, gen: torch.Generator):
    v, b = cfg.vocab, len(lengths)
    s = _strings(cfg, lengths, gen, cfg.unique_ngrams)
    return assemble(
        [
            (*constant(b, v.bos), False),
            (s, lengths, False),
            (*constant(b, v.sep), False),
            (s, lengths, True),
            (*constant(b, v.eos), True),
        ],
        v.pad,
    )


def _lookup(cfg: TaskConfig, lengths: Tensor, gen: torch.Generator, key_first: bool):
    """n-gram lookup; strings always have unique n-grams so the key occurs exactly once."""
    v, b, n, a = cfg.vocab, len(lengths), cfg.ngram, cfg.answer_len
    s = _strings(cfg, lengths, gen, unique=True)
    start = (torch.rand(b, generator=gen) * (lengths - n - a + 1)).long()  # key at s[start:start+n]
    key = s.gather(1, start[:, None] + torch.arange(n))
    ans = s.gather(1, start[:, None] + n + torch.arange(a))
    key_seg = (key, torch.full((b,), n), False)
    str_seg = (s, lengths, False)
    first, second = (key_seg, str_seg) if key_first else (str_seg, key_seg)
    sep = (*constant(b, v.sep), False)
    return assemble(
        [
            (*constant(b, v.bos), False),
            first,
            sep,
            second,
            sep,
            (ans, torch.full((b,), a), True),
            (*constant(b, v.eos), True),
        ],
        v.pad,
    )


def _phonebook(cfg: TaskConfig, lengths: Tensor, gen: torch.Generator):
    v, b, k = cfg.vocab, len(lengths), int(lengths.max())
    nl, pl = cfg.name_len, cfg.number_len
    names = make_windows_unique(
        random_strings(b, k * nl, cfg.n_letters, gen), nl, nl, lengths, cfg.n_letters, gen
    )
    names = names.view(b, k, nl)
    numbers = random_strings(b * k, pl, cfg.n_letters, gen).view(b, k, pl)
    seps = torch.full((b, k, 1), v.sep)
    entries = torch.cat([names, numbers, seps], dim=2).view(b, k * (nl + pl + 1))
    q = (torch.rand(b, generator=gen) * lengths).long()
    rows = torch.arange(b)
    return assemble(
        [
            (*constant(b, v.bos), False),
            (entries, lengths * (nl + pl + 1), False),
            (names[rows, q], torch.full((b,), nl), False),
            (*constant(b, v.sep), False),
            (numbers[rows, q], torch.full((b,), pl), True),
            (*constant(b, v.eos), True),
        ],
        v.pad,
    )


def _mqar(cfg: TaskConfig, lengths: Tensor, gen: torch.Generator):
    """Keys are distinct letters from the first half of the alphabet, values from the second half."""
    v, b, k = cfg.vocab, len(lengths), int(lengths.max())
    half = cfg.n_letters // 2
    keys = torch.rand(b, half, generator=gen).argsort(dim=1)[:, :k]
    values = random_strings(b, k, cfg.n_letters, gen, low=half)
    pairs = torch.stack([keys, values], dim=2).view(b, 2 * k)
    q = (torch.rand(b, cfg.n_queries, generator=gen) * lengths[:, None]).long()
    queries = torch.stack([keys.gather(1, q), values.gather(1, q)], dim=2).view(b, -1)
    is_value = (torch.arange(queries.shape[1]) % 2 == 1).expand(b, -1)
    return assemble(
        [
            (*constant(b, v.bos), False),
            (pairs, 2 * lengths, False),
            (*constant(b, v.sep), False),
            (queries, torch.full((b,), queries.shape[1]), is_value),
        ],
        v.pad,
    )


def _induction(cfg: TaskConfig, lengths: Tensor, gen: torch.Generator):
    v, b = cfg.vocab, len(lengths)
    s = _strings(cfg, lengths, gen, cfg.unique_ngrams)
    after_first = (torch.arange(s.shape[1]) >= 1).expand(b, -1)
    return assemble(
        [(*constant(b, v.bos), False), (s, lengths, False), (s, lengths, after_first)],
        v.pad,
    )


_BUILDERS = {
    "copy": _copy,
    "prefix_lookup": lambda c, n, g: _lookup(c, n, g, key_first=True),
    "suffix_lookup": lambda c, n, g: _lookup(c, n, g, key_first=False),
    "phonebook": _phonebook,
    "mqar": _mqar,
    "induction": _induction,
}
