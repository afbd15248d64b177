"""The batch every analysis consumes, and the vectorized machinery that assembles ragged examples.

Each task describes one example as a list of segments (begin token, string, separator, answer, ...),
each segment a padded tensor `[B, W]` with a per-example length `[B]`. `assemble` scatters them into
one `[B, P]` token tensor in a handful of tensor ops, whatever the per-example lengths are, and marks
which positions are scored: position `p` is scored when `tokens[:, p + 1]` is an answer token.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from interp.tasks.vocab import Vocab

IGNORE_INDEX = -100  # targets at unscored positions; torch's cross_entropy skips it


@dataclass
class Batch:
    """A batch of task examples.

    tokens:       [B, P] int64, padded on the right with `*`.
    score_mask:   [B, P] bool, True where the model's prediction of `tokens[:, p + 1]` is scored.
    lengths:      [B] int64, each example's size (string length; entries for phone-book; pairs for
                  associative recall). Packed batches hold several examples a row: [B, K], 0 = none.
    answer_start: [B] int64, position of the first answer token (-1 in packed batches). Everything
                  before it is the prompt a model sees when it generates the answer greedily.
    """

    tokens: Tensor
    score_mask: Tensor
    lengths: Tensor
    answer_start: Tensor
    vocab: Vocab
    task: str = ""
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def targets(self) -> Tensor:
        """[B, P] next-token targets, IGNORE_INDEX where not scored (feeds `F.cross_entropy`)."""
        nxt = torch.full_like(self.tokens, IGNORE_INDEX)
        nxt[:, :-1] = self.tokens[:, 1:]
        return nxt.masked_fill(~self.score_mask, IGNORE_INDEX)

    def to(self, device: torch.device | str) -> Batch:
        return replace(
            self,
            tokens=self.tokens.to(device),
            score_mask=self.score_mask.to(device),
            lengths=self.lengths.to(device),
            answer_start=self.answer_start.to(device),
        )

    def __getitem__(self, index) -> Batch:
        """Select examples: `batch[:4]`, `batch[mask]`, `batch[tensor_of_indices]`."""
        return replace(
            self,
            tokens=self.tokens[index],
            score_mask=self.score_mask[index],
            lengths=self.lengths[index],
            answer_start=self.answer_start[index],
        )

    def score(self, predictions: Tensor) -> tuple[Tensor, Tensor]:
        """Per-example accuracy of next-token predictions on the scored positions.

        predictions: [B, P] predicted ids (argmax of logits) or [B, P, V] logits.
        Returns (string_correct [B] bool: every answer token right, char_accuracy [B] float).
        """
        if predictions.ndim == 3:
            predictions = predictions.argmax(-1)
        targets = self.targets
        hit = (predictions == targets) & self.score_mask
        n_scored = self.score_mask.sum(1).clamp(min=1)
        n_hit = hit.sum(1)
        return n_hit == self.score_mask.sum(1), n_hit.float() / n_scored

    def first_error(self, predictions: Tensor) -> Tensor:
        """[B] index (0-based, in scored tokens) of each example's first wrong prediction; the number of
        scored tokens where all are right. Tells a model that stops after k characters from one that
        never starts. predictions: [B, P] ids or [B, P, V] logits."""
        if predictions.ndim == 3:
            predictions = predictions.argmax(-1)
        wrong = (predictions != self.targets) & self.score_mask
        before = self.score_mask & (wrong.cumsum(1) == 0)  # scored positions before the first mistake
        return before.sum(1)

    def text(self, i: int = 0) -> str:
        """Example `i` as text, e.g. `$abc|abc.`."""
        return self.vocab.decode(self.tokens[i])

    def __repr__(self) -> str:
        shown = "\n".join(f"  {self.text(i)}" for i in range(min(3, len(self))))
        return f"Batch(task={self.task!r}, tokens={tuple(self.tokens.shape)}, examples:\n{shown}\n)"


Segment = tuple[Tensor, Tensor, "bool | Tensor"]  # values [B, W], lengths [B], answer flag or mask [B, W]


def constant(batch_size: int, token: int, device=None) -> tuple[Tensor, Tensor]:
    """A one-token segment (`$`, `|`, `.`) for every example."""
    return (
        torch.full((batch_size, 1), token, dtype=torch.long, device=device),
        torch.ones(batch_size, dtype=torch.long, device=device),
    )


def assemble(segments: list[Segment], pad: int) -> tuple[Tensor, Tensor, Tensor]:
    """Concatenate ragged segments per example.

    Returns tokens [B, P] (P = longest example), answer mask [B, P] (True on answer tokens) and
    each example's total length [B]. Each output position finds its segment by a batched
    `searchsorted` over the segment ends, then reads its token with one `gather`: no masks, no
    per-segment scatter, whatever the number of segments.
    """
    b = segments[0][0].shape[0]
    device = segments[0][0].device
    lens = torch.stack([seg[1] for seg in segments], dim=1)  # [B, S]
    ends = torch.cumsum(lens, dim=1)  # [B, S], exclusive end of each segment
    total = ends[:, -1]
    width = int(total.max())
    pos = torch.arange(width, device=device).expand(b, width).contiguous()  # [B, P]
    seg = torch.searchsorted(ends, pos, right=True).clamp_(max=len(segments) - 1)  # segment of each position
    within = pos - (ends - lens).gather(1, seg)  # offset inside that segment
    # All segments side by side in one [B, sum W] tensor; `base` is where each one starts there.
    widths = torch.tensor([seg_[0].shape[1] for seg_ in segments], device=device)
    base = torch.cumsum(widths, 0) - widths
    values = torch.cat([seg_[0] for seg_ in segments], dim=1)
    flags = torch.cat([_answer_flags(seg_, b) for seg_ in segments], dim=1)
    inside = pos < total[:, None]
    index = (base[seg] + within).masked_fill_(~inside, 0)  # padding reads slot 0, then is overwritten
    tokens = values.gather(1, index).masked_fill_(~inside, pad)
    answer = flags.gather(1, index) & inside
    return tokens, answer, total


def _answer_flags(segment: Segment, batch: int) -> Tensor:
    values, _, is_answer = segment
    if isinstance(is_answer, Tensor):
        return is_answer.expand(batch, -1)
    return torch.full(values.shape, bool(is_answer), dtype=torch.bool, device=values.device)


def score_mask_from_answer(answer: Tensor) -> Tensor:
    """Position p is scored when token p + 1 is an answer token."""
    mask = torch.zeros_like(answer)
    mask[:, :-1] = answer[:, 1:]
    return mask


def first_true(mask: Tensor) -> Tensor:
    """Index of the first True per row of [B, P]; -1 where a row has none."""
    idx = torch.where(mask.any(1), mask.int().argmax(1), torch.full_like(mask[:, 0], -1, dtype=torch.long))
    return idx.long()


def pack(tokens: Tensor, answer: Tensor, total: Tensor, lengths: Tensor, context: int, rows: int) -> tuple:
    """Concatenate examples end to end and cut the stream into `rows` rows of `context` tokens.

    This is standard language-model packing, as in the paper's training (context 220). An example
    that straddles a row boundary keeps its tokens but is not scored, since its prompt is cut off.
    Returns tokens [rows, context], score mask, lengths [rows, K] (0 = no example) and the number
    of examples used. The caller must supply at least rows * context tokens.
    """
    device = tokens.device
    starts = torch.cumsum(total, 0) - total
    if int(total.sum()) < rows * context:
        raise ValueError("pack() needs at least rows * context tokens of examples")
    j = torch.arange(tokens.shape[1], device=device)
    valid = j < total[:, None]
    flat_pos = (starts[:, None] + j)[valid]
    stream = torch.empty(int(total.sum()), dtype=torch.long, device=device)
    stream_answer = torch.zeros_like(stream, dtype=torch.bool)
    stream[flat_pos] = tokens[valid]
    # Examples that fit inside one row are scored; straddlers are not.
    whole = (starts // context) == ((starts + total - 1) // context)
    stream_answer[flat_pos] = (answer & whole[:, None])[valid]
    n = rows * context
    packed = stream[:n].view(rows, context)
    packed_answer = stream_answer[:n].view(rows, context)
    # lengths per row: examples wholly inside row r, in order.
    used = whole & (starts + total <= n)
    row_of = starts // context
    k_max = int(torch.bincount(row_of[used], minlength=rows).max()) if used.any() else 0
    row_lengths = torch.zeros(rows, max(k_max, 1), dtype=torch.long, device=device)
    if used.any():
        r = row_of[used]
        first_in_row = torch.searchsorted(r, r, right=False)
        rank = torch.arange(len(r), device=device) - first_in_row
        row_lengths[r, rank] = lengths[used]
    return packed, score_mask_from_answer(packed_answer), row_lengths
