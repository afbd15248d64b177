"""Section 4 of Jelassi et al. (2024) on pretrained language models: phone-book lookup, copying natural
text, and question answering over paragraphs.

Each evaluation is a prompt builder (a pure function: the same arguments give the same prompts) plus a
scorer; `generate` runs greedy decoding on any loaded model and `run_eval` puts it together:

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
import random
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

TASKS = ("phonebook", "copy_text", "qa")


@dataclass
class EvalPrompt:
    """One evaluation item.

    prompt_ids: the prompt's token ids (what the model reads).
    answers: acceptable answers as text (phone-book and QA; for copy_text the passage's remainder).
    answer_ids: for copy_text, the exact tokens the copy must reproduce; None otherwise.
    max_new_tokens: how many tokens `generate` produces for it.
    x: the value plotted on the x axis (entries in the book, passage tokens, paragraph tokens).
    """

    task: str
    prompt_ids: list[int]
    answers: list[str]
    max_new_tokens: int
    x: int
    answer_ids: list[int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` with no special tokens added (GPT-NeoX tokenizers add none anyway)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def check_fits(n_prompt: int, n_new: int, n_ctx: int | None, what: str) -> None:
    """Raise ValueError when a prompt plus its generated tokens exceed the model's context."""
    if n_ctx is not None and n_prompt + n_new > n_ctx:
        raise ValueError(
            f"{what}: prompt of {n_prompt} tokens + {n_new} generated tokens = {n_prompt + n_new} exceeds the "
            f"model's context of {n_ctx} tokens; use fewer entries / shorter passages, or pass too_long='skip'"
        )


# ---- phone-book lookup -----------------------------------------------------------------------------

FIRST_NAMES = [
    "James",
    "Mary",
    "John",
    "Patricia",
    "Robert",
    "Jennifer",
    "Michael",
    "Linda",
    "William",
    "Elizabeth",
    "David",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Charles",
    "Karen",
    "Daniel",
    "Nancy",
    "Matthew",
    "Lisa",
    "Anthony",
    "Betty",
    "Mark",
    "Sandra",
    "Paul",
    "Ashley",
    "Steven",
    "Emily",
    "Andrew",
    "Donna",
    "Kevin",
    "Michelle",
    "Brian",
    "Carol",
    "George",
    "Amanda",
]
SURNAMES = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
]


def phonebook_entries(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` distinct (name, number) pairs, numbers like '609-323-7777', all distinct; seeded.

    >>> phonebook_entries(2, seed=0)[0][1].count("-")
    2
    """
    if n > len(FIRST_NAMES) * len(SURNAMES):
        raise ValueError(f"at most {len(FIRST_NAMES) * len(SURNAMES)} distinct names, asked for {n}")
    rng = random.Random(seed)
    pairs = rng.sample(range(len(FIRST_NAMES) * len(SURNAMES)), n)
    names = [f"{FIRST_NAMES[i // len(SURNAMES)]} {SURNAMES[i % len(SURNAMES)]}" for i in pairs]
    numbers: set[str] = set()
    while len(numbers) < n:
        numbers.add(f"{rng.randint(200, 999)}-{rng.randint(200, 999)}-{rng.randint(0, 9999):04d}")
    return list(zip(names, rng.sample(sorted(numbers), n)))


def phonebook_text(entries: list[tuple[str, str]], shots: list[int], query: int) -> tuple[str, str]:
    """(prompt, answer): the book, a blank line, the solved examples `shots`, then the query's name.

    >>> phonebook_text([("Ann Lee", "201-555-0101"), ("Bo Kim", "202-555-0202")], shots=[1], query=0)
    ('Ann Lee: 201-555-0101\\nBo Kim: 202-555-0202\\n\\nBo Kim: 202-555-0202\\nAnn Lee:', '201-555-0101')
    """
    if query in shots:
        raise ValueError("the query must not be one of the solved examples (its number would appear twice)")
    book = "\n".join(f"{name}: {number}" for name, number in entries)
    examples = "".join(f"{entries[i][0]}: {entries[i][1]}\n" for i in shots)
    return f"{book}\n\n{examples}{entries[query][0]}:", entries[query][1]


def phonebook_prompts(
    tokenizer,
    sizes: list[int],
    n_per_size: int = 20,
    n_shots: int = 2,
    seed: int = 0,
    n_ctx: int | None = None,
    too_long: str = "raise",
) -> list[EvalPrompt]:
    """Phone-book lookup prompts: `n_per_size` books of each size in `sizes`, each queried once.

    The query is a random entry that is not one of the `n_shots` solved examples, so its number is in
    the prompt exactly once. x = number of entries. Books are seeded by (seed, size, index).

    >>> prompts = phonebook_prompts(tokenizer, [10, 20], n_per_size=5)    # 10 prompts
    >>> tokenizer.decode(prompts[0].prompt_ids).endswith(":"), prompts[0].answers  # (True, ['609-...'])
    """
    if too_long not in ("raise", "skip"):
        raise ValueError(f"too_long must be 'raise' or 'skip', got {too_long!r}")
    out = []
    for size in sizes:
        if size < n_shots + 1:
            raise ValueError(f"a book of {size} entries cannot hold {n_shots} solved examples and a query")
        for i in range(n_per_size):
            rng = random.Random(f"{seed}-{size}-{i}")
            entries = phonebook_entries(size, seed=rng.randrange(2**31))
            picked = rng.sample(range(size), n_shots + 1)
            text, answer = phonebook_text(entries, shots=picked[1:], query=picked[0])
            ids = encode(tokenizer, text)
            n_new = len(encode(tokenizer, " " + answer)) + 2
            if n_ctx is not None and len(ids) + n_new > n_ctx and too_long == "skip":
                continue
            check_fits(len(ids), n_new, n_ctx, f"phone book of {size} entries")
            out.append(
                EvalPrompt("phonebook", ids, [answer], n_new, size, meta={"query": entries[picked[0]][0]})
            )
    return out


# ---- copying natural text ------------------------------------------------------------------------


def text_copy_prompts(
    tokenizer,
    text: str,
    lengths: list[int],
    n_per_length: int = 20,
    separator: str = "\n\n",
    n_given: int = 2,
    seed: int = 0,
    n_ctx: int | None = None,
    too_long: str = "raise",
) -> list[EvalPrompt]:
    """Copy prompts from natural `text`: a passage of L tokens, `separator`, then its first `n_given` tokens.

    The model must continue with the rest of the passage (answer_ids = passage[n_given:]); a copy is right
    only when all L - n_given tokens match. Passages are token windows at seeded random offsets of the
    tokenized text, so every prompt of one length has the same number of tokens. x = L.

    >>> prompts = text_copy_prompts(tokenizer, open("book.txt").read(), [50, 100], n_per_length=10)
    >>> p = prompts[0]; p.x, len(p.prompt_ids)          # (50, 50 + len(sep tokens) + 2)
    """
    if too_long not in ("raise", "skip"):
        raise ValueError(f"too_long must be 'raise' or 'skip', got {too_long!r}")
    ids = encode(tokenizer, text)
    sep = encode(tokenizer, separator)
    out = []
    for length in lengths:
        if length <= n_given:
            raise ValueError(f"passage length {length} must exceed n_given={n_given}")
        if length > len(ids):
            raise ValueError(f"the text has {len(ids)} tokens, fewer than a passage of {length}")
        if too_long == "skip" and n_ctx is not None and 2 * length + len(sep) > n_ctx:
            continue
        check_fits(length + len(sep) + n_given, length - n_given, n_ctx, f"passage of {length} tokens")
        rng = random.Random(f"{seed}-{length}")
        for _ in range(n_per_length):
            start = rng.randrange(len(ids) - length + 1)
            passage = ids[start : start + length]
            answer_ids = passage[n_given:]
            out.append(
                EvalPrompt(
                    "copy_text",
                    passage + sep + passage[:n_given],
                    [tokenizer.decode(answer_ids)],
                    len(answer_ids),
                    length,
                    answer_ids=answer_ids,
                    meta={"start": start},
                )
            )
    return out


# ---- question answering over paragraphs (SQuAD) ---------------------------------------------------


def read_squad(source: str | Path | dict) -> list[dict]:
    """SQuAD-style JSON (a path or the parsed dict) -> [{"context", "question", "answers": [str]}].

    Questions without answers (SQuAD 2.0 'is_impossible') are dropped.

    >>> read_squad({"data": [{"paragraphs": [{"context": "Paris is in France.",
    ...     "qas": [{"question": "Where is Paris?", "answers": [{"text": "France"}]}]}]}]})
    [{'context': 'Paris is in France.', 'question': 'Where is Paris?', 'answers': ['France']}]
    """
    import json

    data = json.loads(Path(source).read_text()) if not isinstance(source, dict) else source
    if not isinstance(data, dict) or "data" not in data:
        raise ValueError('SQuAD JSON must be {"data": [{"paragraphs": [{"context", "qas": [...]}]}]}')
    items = []
    for article in data["data"]:
        for para in article.get("paragraphs", []):
            for qa in para.get("qas", []):
                answers = [a["text"] for a in qa.get("answers", []) if a.get("text")]
                if answers:
                    items.append({"context": para["context"], "question": qa["question"], "answers": answers})
    return items


def qa_text(context: str, question: str) -> str:
    """The QA prompt: the paragraph, then the question, then 'Answer:'.

    >>> qa_text("Paris is in France.", "Where is Paris?")
    'Paris is in France.\\n\\nQuestion: Where is Paris?\\nAnswer:'
    """
    return f"{context}\n\nQuestion: {question}\nAnswer:"


def qa_prompts(
    tokenizer,
    source: str | Path | dict,
    max_new_tokens: int = 16,
    max_examples: int | None = None,
    n_ctx: int | None = None,
    too_long: str = "raise",
) -> list[EvalPrompt]:
    """QA prompts from SQuAD-style JSON; x = paragraph length in tokens. Score with `squad_f1`/`squad_em`.

    >>> prompts = qa_prompts(tokenizer, "dev-v2.0.json", max_examples=500, n_ctx=2048, too_long="skip")
    """
    if too_long not in ("raise", "skip"):
        raise ValueError(f"too_long must be 'raise' or 'skip', got {too_long!r}")
    out = []
    for item in read_squad(source)[:max_examples]:
        ids = encode(tokenizer, qa_text(item["context"], item["question"]))
        if n_ctx is not None and len(ids) + max_new_tokens > n_ctx and too_long == "skip":
            continue
        check_fits(len(ids), max_new_tokens, n_ctx, f"question {item['question']!r}")
        x = len(encode(tokenizer, item["context"]))
        out.append(
            EvalPrompt("qa", ids, item["answers"], max_new_tokens, x, meta={"question": item["question"]})
        )
    return out


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


def decodes_incrementally(model) -> bool:
    """True for models with `prefill`/`decode_step` (our transformer and Mamba): their `generate_greedy`
    reads the prompt once, and they take an attention mask, so prompts of unequal length can be padded."""
    return hasattr(model, "prefill")


@torch.no_grad()
def greedy_continue(
    model, tokens: Tensor, n_new: int, attention_mask: Tensor | None = None, kv_cache: bool = True
) -> Tensor:
    """tokens [B, P] (left-padded where attention_mask is 0) -> the n_new greedy tokens [B, n_new].

    Models that decode incrementally use `generate_greedy`: our transformer reads the prompt once and
    decodes with a key/value cache; Mamba reads it once and decodes in its O(1)-memory step mode.
    kv_cache=False, or any other model (the LSTM), re-runs the whole sequence per new token (the reference).
    """
    if n_new == 0:
        return tokens[:, :0]
    if kv_cache and decodes_incrementally(model):
        return model.generate_greedy(tokens, n_new, attention_mask=attention_mask)[:, tokens.shape[1] :]
    seq, mask = tokens, attention_mask
    for _ in range(n_new):
        logits = model(seq) if mask is None else model(seq, attention_mask=mask)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    return seq[:, tokens.shape[1] :]


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
    device = model.device
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
                "model": name or getattr(model, "arch", type(model).__name__),
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
