"""Section 4 of Jelassi et al. (2024) on pretrained language models: phone-book lookup, copying natural
text, and question answering over paragraphs.

Each evaluation is a prompt builder (`interp.tasks.prompts`, a pure function: the same arguments give
the same prompts; re-exported here) plus a scorer; `generate` runs greedy decoding on any loaded model and
`run_eval` puts it together:

>>> import interp
>>> from interp.analysis.pretrained_evals import phonebook_prompts, run_eval, summarize
>>> model = interp.load("EleutherAI/pythia-410m")                 # or a local folder
>>> prompts = phonebook_prompts(model.tokenizer, [20, 40, 80], n_per_size=50, n_ctx=2048)
>>> table = run_eval(model, prompts)                              # one row per prompt
>>> summarize(table)                                              # accuracy per number of entries

Batching. `generate` sorts prompts by token length and left-pads each batch with an attention mask
(1 = token, 0 = padding), as Hugging Face does: the transformer never attends to padding and counts
rotary positions from the first real token; Mamba feeds padding into its convolution and scan as zeros,
so its state stays exactly zero until the prompt starts. Results equal decoding each prompt on its own
(tests check both families). The transformer decodes with a key/value cache
(`HookedTransformer.generate_greedy`); Mamba reads the prompt in one pass and then decodes in its
O(1)-memory step mode (`HookedMamba.generate_greedy`). Hooks fire only on forward passes, so attach
them with `run_with_hooks`/`run_with_cache` on the prompts, not while decoding.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from interp.generation import decodes_incrementally, greedy_steps
from interp.hooks import model_device, model_label
from interp.tasks.prompts import (  # the prompt builders live with the tasks; importing them here keeps working
    FIRST_NAMES,
    SURNAMES,
    TASKS,
    EvalPrompt,
    check_fits,
    encode,
    phonebook_entries,
    phonebook_prompts,
    phonebook_text,
    qa_prompts,
    qa_text,
    read_squad,
    text_copy_prompts,
)

__all__ = [
    "FIRST_NAMES",
    "SURNAMES",
    "TASKS",
    "EvalPrompt",
    "check_fits",
    "encode",
    "first_line",
    "generate",
    "greedy_continue",
    "left_pad",
    "normalize_answer",
    "phonebook_entries",
    "phonebook_prompts",
    "phonebook_text",
    "qa_prompts",
    "qa_text",
    "read_squad",
    "run_eval",
    "score",
    "squad_em",
    "squad_f1",
    "summarize",
    "text_copy_prompts",
]


def normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lower case, drop punctuation and articles (a, an, the), squeeze spaces.

    >>> normalize_answer("The  Eiffel-Tower!")
    'eiffeltower'
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_em(prediction: str, answers: list[str]) -> float:
    """1.0 if the normalised prediction equals any normalised answer, else 0.0."""
    return float(any(normalize_answer(prediction) == normalize_answer(a) for a in answers))


def squad_f1(prediction: str, answers: list[str]) -> float:
    """SQuAD token F1: max over answers of the harmonic mean of token precision and recall.

    >>> squad_f1("in the city of Paris", ["Paris"])          # 1 of 4 predicted tokens, all of 1 gold
    0.4
    """

    def f1(pred: str, gold: str) -> float:
        p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
        if not p or not g:
            return float(p == g)
        common = sum((collections.Counter(p) & collections.Counter(g)).values())
        if common == 0:
            return 0.0
        precision, recall = common / len(p), common / len(g)
        return 2 * precision * recall / (precision + recall)

    return max(f1(prediction, a) for a in answers)


def first_line(text: str) -> str:
    """The generated answer: text up to the first newline, stripped.

    >>> first_line(" 201-555-0101\\nBo Kim: ...")
    '201-555-0101'
    """
    return text.lstrip(" \t").split("\n", 1)[0].strip()


# ---- generation and scoring ------------------------------------------------------------------------


@torch.no_grad()
def greedy_continue(
    model, tokens: Tensor, n_new: int, attention_mask: Tensor | None = None, kv_cache: bool = True
) -> Tensor:
    """tokens [B, P] (left-padded where attention_mask is 0) -> the n_new greedy tokens [B, n_new].

    Models that decode incrementally use `generate_greedy` (checked, then `interp.generation.greedy_steps`):
    our transformer reads the prompt once and decodes with a key/value cache, Mamba in its O(1)-memory
    step mode, the LSTM from its (h, c). kv_cache=False, or a model without prefill/decode_step, runs
    `greedy_steps`' reference: the whole sequence re-read per new token.
    """
    if n_new == 0:
        return tokens[:, :0]
    if kv_cache and decodes_incrementally(model):
        return model.generate_greedy(tokens, n_new, attention_mask=attention_mask)[:, tokens.shape[1] :]
    return greedy_steps(model, tokens, n_new, attention_mask=attention_mask, incremental=False)


def left_pad(rows: list[list[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Token lists of any lengths -> (tokens [B, P], attention_mask [B, P]), padded on the left.

    >>> left_pad([[5, 6, 7], [8]])
    (tensor([[5, 6, 7],
            [0, 0, 8]]), tensor([[1, 1, 1],
            [0, 0, 1]]))
    """
    width = max(len(r) for r in rows)
    tokens = torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return tokens, mask


def generate(
    model,
    prompts: list[EvalPrompt],
    batch_size: int = 16,
    progress: bool = False,
    kv_cache: bool = True,
    padding: bool = True,
) -> list[list[int]]:
    """Greedy continuations (token ids) of every prompt, in the order given.

    padding=True (models that take an attention mask, i.e. ours): prompts are sorted by length and
    batched `batch_size` at a time, left-padded with a mask, so unequal lengths share a batch and little
    is wasted. padding=False, or a model without a mask: only prompts of equal length share a batch.
    Either way each result equals decoding that prompt alone (tests check both). Each batch generates
    the most tokens any of its prompts asks for; every continuation is cut to its max_new_tokens.
    kv_cache=False re-reads the whole sequence per token (the reference path).
    """
    n_ctx = getattr(model.cfg, "n_ctx", None)
    for i, p in enumerate(prompts):
        check_fits(len(p.prompt_ids), p.max_new_tokens, n_ctx, f"prompt {i} ({p.task}, x={p.x})")
    pad = padding and decodes_incrementally(model)
    if pad:  # in order of length; a batch closes when full or when its padded width would not fit n_ctx
        batches, n_new = [], 0  # n_new: the most new tokens the open batch asks for
        for i in sorted(range(len(prompts)), key=lambda i: len(prompts[i].prompt_ids)):
            width, wanted = len(prompts[i].prompt_ids), prompts[i].max_new_tokens  # the longest so far
            too_wide = n_ctx is not None and width + max(n_new, wanted) > n_ctx
            if not batches or len(batches[-1]) == batch_size or too_wide:
                batches.append([])
                n_new = 0
            batches[-1].append(i)
            n_new = max(n_new, wanted)
    else:
        by_length: dict[int, list[int]] = collections.defaultdict(list)
        for i, p in enumerate(prompts):
            by_length[len(p.prompt_ids)].append(i)
        batches = [
            idx[s : s + batch_size] for idx in by_length.values() for s in range(0, len(idx), batch_size)
        ]
    out: list[list[int]] = [[] for _ in prompts]
    device = model_device(model)
    iterator = batches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc="generate", unit="batch")
    for batch in iterator:
        tokens, mask = left_pad([prompts[i].prompt_ids for i in batch])
        tokens, mask = tokens.to(device), mask.to(device)
        if bool(mask.all()):
            mask = None  # equal lengths: the unmasked (fused, causal-only) path
        n_new = max(prompts[i].max_new_tokens for i in batch)
        new = greedy_continue(model, tokens, n_new, attention_mask=mask, kv_cache=kv_cache).tolist()
        for row, i in zip(new, batch):
            out[i] = row[: prompts[i].max_new_tokens]
    return out


def score(prompt: EvalPrompt, continuation: list[int], tokenizer) -> dict[str, Any]:
    """One result row: prediction (text), exact (0/1), f1 (token F1 for QA, else = exact).

    copy_text: exact means every generated token equals the passage's; phonebook: the first generated
    line equals the number; qa: SQuAD EM and F1 of the first generated line.
    """
    text = tokenizer.decode(continuation, skip_special_tokens=True)
    if prompt.task == "copy_text":
        exact = float(continuation == prompt.answer_ids)
        return {"prediction": text, "exact": exact, "f1": exact}
    pred = first_line(text)
    if prompt.task == "phonebook":
        exact = float(pred == prompt.answers[0])
        return {"prediction": pred, "exact": exact, "f1": exact}
    if prompt.task == "qa":
        return {
            "prediction": pred,
            "exact": squad_em(pred, prompt.answers),
            "f1": squad_f1(pred, prompt.answers),
        }
    raise ValueError(f"unknown task {prompt.task!r}; known: {', '.join(TASKS)}")


def run_eval(
    model,
    prompts: list[EvalPrompt],
    tokenizer=None,
    batch_size: int = 16,
    name: str | None = None,
    progress=False,
) -> pd.DataFrame:
    """Generate and score: one row per prompt (model, task, x, answer, prediction, exact, f1)."""
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("the model has no tokenizer attached; pass tokenizer= (a Hugging Face tokenizer)")
    continuations = generate(model, prompts, batch_size=batch_size, progress=progress)
    rows = []
    for p, cont in zip(prompts, continuations):
        rows.append(
            {
                "model": name or model_label(model),
                "task": p.task,
                "x": p.x,
                "answer": p.answers[0],
                **score(p, cont, tokenizer),
            }
        )
    return pd.DataFrame(rows)


def summarize(table: pd.DataFrame, bins: list[int] | None = None) -> pd.DataFrame:
    """Mean exact/F1 per (model, task, x); `bins` (edges) groups x into ranges first (QA lengths vary).

    Returns columns model, task, x, exact, f1, n (x is the bin's lower edge when binned).
    """
    table = table.copy()
    if bins is not None:
        edges = sorted(bins)
        table["x"] = pd.cut(table["x"], edges, right=False, labels=edges[:-1]).astype("Int64")
        table = table.dropna(subset=["x"])
    return (
        table.groupby(["model", "task", "x"], as_index=False)
        .agg(exact=("exact", "mean"), f1=("f1", "mean"), n=("exact", "size"))
        .sort_values(["model", "x"])
        .reset_index(drop=True)
    )
