"""Greedy task evaluation: the cached decoder against re-running the whole prefix per answer token.

    python -m benchmarks.greedy_eval --threads 1            # lengths 200 and 1000 (a few minutes)
    python -m benchmarks.greedy_eval --quick                # smoke test
    python -m benchmarks.greedy_eval --full-reference       # the whole quadratic path at 1000 too (~30 min)

Workload: `greedy_predictions` on a batch of copy strings (`$ s | s .`, 26 letters): a prompt of L + 2
tokens, then L + 1 scored answer tokens, for three randomly initialised models of d_model 64 and 2
layers (a Hard-ALiBi transformer with 4 heads, Mamba with d_state 16, an LSTM).

    cached      `interp.analysis.evaluation.greedy_predictions`: the prompt in one pass, then one
                `decode_step` per answer token (key/value cache; Mamba's step mode; the LSTM's (h, c))
    reference   `greedy_predictions_reference`: a full forward of the prefix for every answer token
                (what greedy evaluation did before; quadratic in L for the transformer's attention
                and in the number of positions read for every model)

Both run in one process with the same thread count, timed with `common.time_interleaved`. At
lengths up to `--full-max-len` (default 200) the reference runs whole and its predictions must equal
the cached ones everywhere. Above it the reference takes tens of minutes, so it is *estimated*: its
steps are independent full forwards, so `--sample-steps` of them, evenly spread over the answer, are
timed on the tokens the reference would read (the prompt plus the model's own earlier answers), and
mean step time x answer length gives its total; each sampled step's argmax must equal the cached
prediction there (this checks identity at those positions). Peak memory per `common.run_probes`
(fresh interpreter, RSS high-water mark above the RSS before): cached = the whole evaluation;
reference = its largest step (one forward of the full prefix; steps keep nothing from each other).
Target: cached >= 5x faster at length 200 and >= 20x at 1000, identical predictions.
"""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks import common
from interp.analysis.evaluation import greedy_predictions, greedy_predictions_reference
from interp.models import build_model
from interp.tasks import TaskConfig, make_batch

MODULE = "benchmarks.greedy_eval"
TARGETS = {200: 5.0, 1000: 20.0}  # length -> minimum speed-up
MODELS = {
    "transformer hard_alibi": ("transformer", {"positional": "hard_alibi", "n_heads": 4}),
    "mamba": ("mamba", {"d_state": 16}),
    "lstm": ("lstm", {}),
}


def task(length: int) -> TaskConfig:
    return TaskConfig(task="copy", n_letters=26, min_len=1, max_len=max(length, 1))


def model(name: str, d_model: int = 64):
    arch, kw = MODELS[name]
    torch.manual_seed(0)
    return build_model(arch, d_model=d_model, n_layers=2, **kw).eval()


def batch(length: int, size: int):
    return make_batch(task(length), size, torch.Generator().manual_seed(length), length=length)


def reference_fed_tokens(tokens: torch.Tensor, score_mask: torch.Tensor, preds: torch.Tensor) -> torch.Tensor:
    """The tokens the reference reads if its predictions equal `preds`: answers replaced by predictions."""
    fed = tokens.clone()
    write = score_mask[:, :-1]
    fed[:, 1:][write] = preds[:, :-1][write]
    return fed


def timed_pair(m, b, cached: torch.Tensor, repeats: int) -> tuple[float, float, bool]:
    """Median seconds of the cached and the reference evaluation, alternating (the reference is too
    slow to time more than once or twice; the cached path already ran once as warm-up), and whether
    every reference prediction equals the cached one."""
    times: dict[str, list[float]] = {"cached": [], "reference": []}
    same = True
    for r in range(repeats):
        for impl in ("cached", "reference") if r % 2 == 0 else ("reference", "cached"):
            fn = greedy_predictions if impl == "cached" else greedy_predictions_reference
            start = time.perf_counter()
            preds = fn(m, b)
            times[impl].append(time.perf_counter() - start)
            same &= bool(torch.equal(preds, cached))
    return statistics.median(times["cached"]), statistics.median(times["reference"]), same


def sampled_reference(m, b, preds: torch.Tensor, n_samples: int) -> tuple[float, int]:
    """(estimated seconds of the whole reference, sampled steps whose argmax equals `preds`)."""
    scored = b.score_mask.any(0).nonzero().flatten()
    picks = scored[torch.linspace(0, len(scored) - 1, min(n_samples, len(scored))).round().long()]
    fed = reference_fed_tokens(b.tokens, b.score_mask, preds)
    times, agree = [], 0
    with torch.no_grad():
        m(fed[:, : int(picks[0]) + 1])  # warm-up
        for p in picks.tolist():
            start = time.perf_counter()
            choice = m(fed[:, : p + 1])[:, -1].argmax(-1)
            times.append(time.perf_counter() - start)
            agree += bool(torch.equal(choice, preds[:, p]))
    return sum(times) / len(times) * len(scored), agree


def memory_probe(spec: dict) -> float:
    """Peak MiB of the cached evaluation, or of the reference's largest step (fresh process)."""
    m = model(spec["model"])
    small, b = batch(4, 2), batch(spec["length"], spec["batch"])
    with torch.no_grad():
        greedy_predictions(m, small)
        greedy_predictions_reference(m, small)
        if spec["impl"] == "cached":
            return common.measure_peak(lambda: greedy_predictions(m, b))
        last = int(b.score_mask.any(0).nonzero()[-1])
        return common.measure_peak(lambda: m(b.tokens[:, : last + 1].clone())[:, -1].argmax(-1))


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--lengths", type=int, nargs="+", default=None, help="string lengths (default 200 1000)")
    p.add_argument("--batch", type=int, default=None, help="strings per batch (default 8)")
    p.add_argument("--full-max-len", type=int, default=200, help="run the whole reference up to this length")
    p.add_argument("--full-reference", action="store_true", help="run the whole reference at every length")
    p.add_argument("--sample-steps", type=int, default=24, help="reference steps timed above --full-max-len")
    args = p.parse_args(argv)
    lengths = args.lengths or ([20, 60] if args.quick else [200, 1000])
    size = args.batch or (2 if args.quick else 8)
    torch.set_num_threads(args.threads)
    print(common.header("Greedy evaluation: cached decoder vs re-running the prefix", args.threads))
    print(f"copy, 26 letters, batch {size}; models d_model 64, 2 layers: {', '.join(MODELS)}\n", flush=True)

    results = []  # (name, length, cached s, reference s, full?, identical text)
    for length in lengths:
        b = batch(length, size)
        for name in MODELS:
            m = model(name)
            full = args.full_reference or length <= args.full_max_len
            with torch.no_grad():
                cached = greedy_predictions(m, b)
                if full:
                    cached_s, ref_s, same = timed_pair(m, b, cached, args.repeats or 1)
                    ident = "yes, every position" if same else "NO"
                else:
                    cached_s = common.time_interleaved(
                        {"cached": lambda m=m, b=b: greedy_predictions(m, b)},
                        repeats=args.repeats or 3,
                        warmup=0,
                        min_time=0.0,
                    )["cached"]
                    ref_s, agree = sampled_reference(m, b, cached, args.sample_steps)
                    n = min(args.sample_steps, int(b.score_mask.any(0).sum()))
                    ident = (
                        f"yes, {agree}/{n} sampled steps" if agree == n else f"NO ({agree}/{n} sampled steps)"
                    )
            results.append((name, length, cached_s, ref_s, full, ident))
            print(
                f"  {name} L={length}: cached {cached_s:.2f} s, reference {ref_s:.2f} s"
                f"{'' if full else ' (estimated)'}, {ref_s / cached_s:.1f}x, identical: {ident}",
                flush=True,
            )

    mem: dict = {}
    if not args.no_memory:
        keys = [(name, length, impl) for name, length, *_ in results for impl in ("cached", "reference")]
        specs = [{"model": n, "length": L, "impl": i, "batch": size} for n, L, i in keys]
        mem = dict(zip(keys, common.run_probes(MODULE, "memory_probe", specs, args.threads)))

    rows = []
    for name, length, cached_s, ref_s, full, ident in results:
        rows.append(
            [
                name,
                length,
                2 * length + 3,
                f"{cached_s:.3f}",
                f"{ref_s:.2f}" + ("" if full else " (est.)"),
                f"{ref_s / cached_s:.1f}x",
                common.fmt_mib(mem.get((name, length, "cached"))),
                common.fmt_mib(mem.get((name, length, "reference"))),
                ident,
            ]
        )
    print()
    print(
        common.table(
            [
                "model",
                "length",
                "tokens",
                "cached s",
                "reference s",
                "speed-up",
                "cached MiB",
                "reference MiB",
                "identical",
            ],
            rows,
        )
    )
    print()
    ok = True
    for length in lengths:
        ratios = [r / c for _, n, c, r, _, _ in results if n == length]
        target = TARGETS.get(length)
        identical = all(i.startswith("yes") for _, n, *_, i in results if n == length)
        verdict = (
            ""
            if target is None
            else (": target met" if min(ratios) >= target and identical else ": TARGET MISSED")
        )
        ok &= not verdict.endswith("MISSED")
        print(
            f"ratio reference / cached at length {length}: min {min(ratios):.1f}x, max {max(ratios):.1f}x"
            + (f" (target >= {target:.0f}x, identical predictions){verdict}" if target else "")
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
