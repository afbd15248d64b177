"""Prompts for pretrained language models (Section 4 of Jelassi et al., 2024): phone-book lookup, copying
natural text, and question answering over paragraphs. Each builder is a pure function of its arguments
(seeded): the same arguments give the same prompts. Scoring and generation are in
`interp.analysis.pretrained_evals`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
