"""Patching metrics: a scalar per example from logits (logit difference, probability, accuracy)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import Tensor

from interp.tasks import Batch
from interp.tasks.pairs import check_pair

METRICS = ("logit_diff", "prob", "logprob", "accuracy")


@dataclass
class Metric:
    """A scalar per example from logits: mean over the example's scored positions.

    kind: logit_diff (logit of `answers` minus logit of `wrong`), prob or logprob (of `answers`),
    accuracy (argmax == answers). answers, wrong: [B, P] token ids; mask: [B, P] bool, the positions
    scored. Called on logits [K * B, P, V] (K patched copies of the batch) it returns [K * B].
    """

    kind: str
    answers: Tensor
    mask: Tensor
    wrong: Tensor | None = None

    def __post_init__(self):
        if self.kind not in METRICS:
            raise ValueError(f"unknown metric {self.kind!r}; allowed: {', '.join(METRICS)}")
        if self.answers.shape != self.mask.shape:
            raise ValueError(
                f"answers {tuple(self.answers.shape)} and mask {tuple(self.mask.shape)} must have one shape"
            )
        if self.kind == "logit_diff":
            if self.wrong is None:
                raise ValueError("the logit_diff metric needs `wrong` tokens to compare the answer with")
            if self.wrong.shape != self.answers.shape:
                raise ValueError(
                    f"wrong {tuple(self.wrong.shape)} must have the shape of answers {tuple(self.answers.shape)}"
                )
            self.mask = self.mask & (self.answers != self.wrong)  # equal tokens carry no signal
        if not self.mask.any():
            raise ValueError("the metric scores no position (mask is all False)")

    def check_vocab(self, d_vocab: int) -> None:
        """Raise if an answer (or wrong) token at a scored position is not a token id of the model."""
        for name, tokens in (("answer", self.answers), ("wrong", self.wrong)):
            if tokens is None:
                continue
            scored = tokens[self.mask]
            bad = scored[(scored < 0) | (scored >= d_vocab)]
            if bad.numel():
                raise ValueError(
                    f"{name} token {int(bad[0])} is outside the model's vocabulary: token ids must lie in "
                    f"[0, {d_vocab})"
                )

    def examples(self, rows: slice) -> Metric:
        """The metric of examples `rows` only (for forwards that hold part of the batch)."""
        part = copy.copy(self)
        part.answers, part.mask = self.answers[rows], self.mask[rows]
        part.wrong = None if self.wrong is None else self.wrong[rows]
        return part

    def __call__(self, logits: Tensor) -> Tensor:
        return self.per_position(logits).sum(1)  # [K * B]

    def per_position(self, logits: Tensor) -> Tensor:
        """Each position's share of the metric, [K * B, P]: the metric is its sum over positions."""
        b = self.answers.shape[0]
        if logits.shape[0] % b or logits.shape[1] != self.answers.shape[1]:
            raise ValueError(
                f"logits {tuple(logits.shape)} do not match the metric's batch {tuple(self.answers.shape)}"
            )
        self.check_vocab(logits.shape[-1])
        k = logits.shape[0] // b
        rep = lambda t: t.repeat(k, 1)
        answers, mask = rep(self.answers).clamp(0, logits.shape[-1] - 1), rep(self.mask)
        logits = logits.float()
        if self.kind == "logit_diff":
            wrong = rep(self.wrong).clamp(0, logits.shape[-1] - 1)
            value = logits.gather(-1, answers[..., None]) - logits.gather(-1, wrong[..., None])
        elif self.kind in ("prob", "logprob"):
            value = logits.log_softmax(-1).gather(-1, answers[..., None])
            value = value.exp() if self.kind == "prob" else value
        else:
            value = (logits.argmax(-1) == answers)[..., None].float()
        value = value[..., 0] * mask
        return value / mask.sum(1, keepdim=True).clamp(min=1)  # [K * B, P]


def make_metric(kind: str, clean: Batch, corrupt: Batch | None = None) -> Metric:
    """The metric for a clean/corrupted pair of task batches: on the clean batch's scored positions,
    the clean next token is the answer and (for logit_diff) the corrupted next token the wrong one."""
    answers = clean.tokens.roll(-1, dims=1)  # next token at each position (last one unused: not scored)
    wrong = corrupt.tokens.roll(-1, dims=1) if corrupt is not None else None
    if kind == "logit_diff" and corrupt is None:
        raise ValueError("the logit_diff metric needs the corrupted batch for its wrong answers")
    if corrupt is not None:
        check_pair(clean.tokens, corrupt.tokens)
    return Metric(kind, answers, clean.score_mask.clone(), wrong)
