"""Task-generation throughput: `interp.tasks.make_batch` vs a plain per-example Python generator.

    python -m benchmarks.task_generation            # full run (about a minute)
    python -m benchmarks.task_generation --quick    # smoke test

The baseline (`python_batch`) is the obvious way to write the generator: per example, draw the
length, draw each letter with `random.choice`, build Python lists, pad them and call
`torch.tensor` once at the end. It returns the same batch (tokens, score mask, lengths, answer
start) in the same format; `check_same_format` asserts that on fixed-length batches.

Throughput counts example tokens (padding excluded) per second of wall time. Both generators
draw lengths uniformly from the same range, so they make the same number of tokens on average.
Peak memory: see `benchmarks/common.py` (a fresh interpreter per measurement, RSS high-water
mark above the RSS before the call), for one call at the batch size of the row.
Targets: make_batch >= 50x the baseline and >= 1M tokens/s.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch

from benchmarks import common
from interp.tasks import Batch, TaskConfig, make_batch

MODULE = "benchmarks.task_generation"  # where the memory probes import `memory_probe` from
TARGET_RATIO = 50.0
TARGET_RATE = 1e6


# ---- the baseline ------------------------------------------------------------------------------


def _unique_ngrams(s: list[int], n: int, letters: list[int], rng: random.Random) -> None:
    """Redraw the last letter of each n-gram that already occurred, left to right (in place)."""
    seen = set()
    for i in range(len(s) - n + 1):
        while (gram := tuple(s[i : i + n])) in seen:
            s[i + n - 1] = rng.choice(letters)
        seen.add(gram)


def python_example(cfg: TaskConfig, length: int, rng: random.Random) -> tuple[list[int], list[bool]]:
    """One example as (tokens, is_answer) lists: copy `$s|s.` or prefix lookup `$key|s|ans.`."""
    v = cfg.vocab
    letters = list(range(cfg.n_letters))
    s = [rng.choice(letters) for _ in range(length)]
    if cfg.unique_ngrams or cfg.task == "prefix_lookup":
        _unique_ngrams(s, cfg.ngram, letters, rng)
    if cfg.task == "copy":
        tokens = [v.bos, *s, v.sep, *s, v.eos]
        return tokens, [False] * (length + 2) + [True] * (length + 1)
    if cfg.task == "prefix_lookup":
        n, a = cfg.ngram, cfg.answer_len
        start = rng.randrange(length - n - a + 1)
        key, ans = s[start : start + n], s[start + n : start + n + a]
        tokens = [v.bos, *key, v.sep, *s, v.sep, *ans, v.eos]
        return tokens, [False] * (len(tokens) - a - 1) + [True] * (a + 1)
    raise ValueError(f"the baseline implements copy and prefix_lookup, not {cfg.task}")


def python_batch(cfg: TaskConfig, batch_size: int, rng: random.Random, length: int | None = None) -> Batch:
    """The per-example baseline: lists of lists, padded, then `torch.tensor`."""
    lengths = [length or rng.randint(cfg.min_len, cfg.max_len) for _ in range(batch_size)]
    examples = [python_example(cfg, n, rng) for n in lengths]
    width = max(len(t) for t, _ in examples)
    pad = cfg.vocab.pad
    tokens, score, answer_start = [], [], []
    for toks, ans in examples:
        extra = width - len(toks)
        tokens.append(toks + [pad] * extra)
        score.append(ans[1:] + [False] * (extra + 1))  # position p is scored when p + 1 is an answer
        answer_start.append(ans.index(True))
    return Batch(
        torch.tensor(tokens),
        torch.tensor(score),
        torch.tensor(lengths),
        torch.tensor(answer_start),
        cfg.vocab,
        cfg.task,
    )


def check_same_format(cfg: TaskConfig) -> None:
    """At a fixed length both generators must agree on everything but the random letters."""
    length = max(cfg.min_len, min(cfg.max_len, 12))
    ours = make_batch(cfg, 8, torch.Generator().manual_seed(0), length=length)
    base = python_batch(cfg, 8, random.Random(0), length=length)
    for field in ("score_mask", "lengths", "answer_start"):
        a, b = getattr(ours, field), getattr(base, field)
        assert a.dtype == b.dtype and torch.equal(a, b), f"{cfg.task}: {field} differs from make_batch"
    assert ours.tokens.shape == base.tokens.shape and ours.tokens.dtype == base.tokens.dtype
    if cfg.task == "copy":  # the answer repeats the string in both
        s = base.tokens[:, 1 : length + 1]
        assert torch.equal(base.tokens[:, length + 2 : 2 * length + 2], s)


# ---- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    label: str
    cfg: TaskConfig
    batch_size: int


def settings(quick: bool) -> list[Setting]:
    if quick:
        return [
            Setting("copy", TaskConfig("copy", min_len=1, max_len=20), 256),
            Setting(
                "copy unique 3-grams", TaskConfig("copy", min_len=1, max_len=20, unique_ngrams=True), 256
            ),
        ]
    variants = [
        ("copy", TaskConfig("copy")),
        ("copy unique 3-grams", TaskConfig("copy", unique_ngrams=True)),
        ("prefix_lookup", TaskConfig("prefix_lookup", min_len=4)),
    ]
    out = []
    for label, cfg in variants:
        for max_len in (20, 100, 400):
            out.append(Setting(label, replace(cfg, max_len=max_len), 1024))
    out.append(Setting("copy", TaskConfig("copy", max_len=20), 64))  # small batches: per-call overhead
    return out


# ---- measurement -------------------------------------------------------------------------------


def real_tokens(batch: Batch) -> int:
    return int((batch.tokens != batch.vocab.pad).sum())


def memory_probe(spec: dict) -> float:
    """Peak MiB of one call (runs in a fresh process, see common.run_probes)."""
    cfg, batch_size = TaskConfig.from_dict(spec["cfg"]), spec["batch_size"]
    if spec["impl"] == "make_batch":
        make_batch(cfg, 4, torch.Generator().manual_seed(1))  # warm-up on tiny inputs
        return common.measure_peak(lambda: make_batch(cfg, batch_size, torch.Generator().manual_seed(0)))
    python_batch(cfg, 4, random.Random(1))
    return common.measure_peak(lambda: python_batch(cfg, batch_size, random.Random(0)))


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    print(common.header("Task generation: make_batch vs per-example Python", args.threads))

    rows, results = [], []
    for st in settings(args.quick):
        check_same_format(st.cfg)
        gen, rng = torch.Generator().manual_seed(0), random.Random(0)
        # Count tokens on batches of each generator (the mean over a few is what the timed calls make).
        ours_tok = sum(real_tokens(make_batch(st.cfg, st.batch_size, gen)) for _ in range(3)) / 3
        base_tok = sum(real_tokens(python_batch(st.cfg, st.batch_size, rng)) for _ in range(3)) / 3
        sec = common.time_interleaved(
            {
                "make_batch": lambda st=st, gen=gen: make_batch(st.cfg, st.batch_size, gen),
                "python": lambda st=st, rng=rng: python_batch(st.cfg, st.batch_size, rng),
            },
            repeats=repeats,
            min_time=0.02 if args.quick else 0.1,
        )
        ours_rate, base_rate = ours_tok / sec["make_batch"], base_tok / sec["python"]
        results.append((st, ours_rate, base_rate))

    mem: list[float | None] = [None] * (2 * len(results))
    if not args.no_memory:
        specs = [
            {"impl": impl, "cfg": st.cfg.to_dict(), "batch_size": st.batch_size}
            for st, _, _ in results
            for impl in ("make_batch", "python")
        ]
        mem = common.run_probes(MODULE, "memory_probe", specs, args.threads)

    for i, (st, ours_rate, base_rate) in enumerate(results):
        cfg = st.cfg
        rows.append(
            [
                st.label,
                f"{cfg.min_len}-{cfg.max_len}",
                st.batch_size,
                common.fmt_rate(ours_rate),
                common.fmt_rate(base_rate),
                f"{ours_rate / base_rate:.1f}x",
                common.fmt_mib(mem[2 * i]),
                common.fmt_mib(mem[2 * i + 1]),
            ]
        )
    print(
        common.table(
            [
                "task",
                "lengths",
                "batch",
                "make_batch tok/s",
                "python tok/s",
                "ratio",
                "make_batch peak MiB",
                "python peak MiB",
            ],
            rows,
        )
    )
    ratios = [o / b for _, o, b in results]
    rates = [o for _, o, _ in results]
    ratio_ok, rate_ok = min(ratios) >= TARGET_RATIO, min(rates) >= TARGET_RATE
    print(
        f"\nratio make_batch / python: min {min(ratios):.1f}x, max {max(ratios):.1f}x "
        f"(target >= {TARGET_RATIO:.0f}x: {'met' if ratio_ok else 'MISSED'}); make_batch min "
        f"{min(rates):,.0f} tokens/s (target >= {TARGET_RATE:,.0f}: {'met' if rate_ok else 'MISSED'})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
