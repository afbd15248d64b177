"""Activation patching: many patches per forward (batched) vs one forward per patch (the loop).

    python -m benchmarks.patching            # full run (a minute or two)
    python -m benchmarks.patching --quick    # smoke test

Workload: full layer x head x position patching of `hook_z` (noising), the finest grid of issue 6,
on two 2-layer models: the hash-copy construction (`interp.models.hash_copy`, 5 heads per layer,
whose circuit is known) and a GPT-style transformer of width 64 with 4 heads (random weights: speed
does not depend on them). The baseline is `activation_patching(..., method="loop")`: one
`run_with_hooks` forward of the B examples per patch, the way patching loops are usually written.
"batched" repeats the batch K = floor(1024 / B) times and patches a different component in each copy.
Both are checked to give the same numbers (max |difference| is printed) before timing.

Where batching helps: it removes per-forward overhead (Python, hook dispatch, kernel launches),
which dominates small batches of a small model and, much more so, a GPU. On one CPU thread a
forward of 16+ examples is already compute-bound, so batching cannot cut the arithmetic and the
ratio stays small there; the table shows the ratio at several batch sizes.

Also reported: how well attribution patching (one forward + one backward) predicts the activation
patching effects on the hash-copy model (Pearson correlation over all layer x head x position
patches), and its time. Peak memory: see `benchmarks/common.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmarks import common
from interp.analysis.patching import (
    activation_patching,
    attribution_patching,
    make_metric,
    paired_batches,
    patch_specs,
)
from interp.models import build_model
from interp.models.hash_copy import build_hash_copy
from interp.tasks import TaskConfig

MODULE = "benchmarks.patching"
TARGET_RATIO = 10.0
N_LETTERS = 8


@dataclass(frozen=True)
class Case:
    model: str  # "hash-copy" | "transformer-d64"
    batch: int  # clean/corrupted example pairs
    length: int  # string length (positions = 2 * length + 3)

    @property
    def label(self) -> str:
        return self.model


def cases(quick: bool) -> list[Case]:
    if quick:
        return [Case("hash-copy", 2, 4)]
    return [Case(m, b, 12) for m in ("hash-copy", "transformer-d64") for b in (1, 4, 16)]


def workload(case: Case):
    """(model, clean tokens, corrupt tokens, metric, specs) for one case."""
    torch.manual_seed(0)
    task = TaskConfig(task="copy", n_letters=N_LETTERS, max_len=64, unique_ngrams=True, ngram=3)
    if case.model == "hash-copy":
        model = build_hash_copy(N_LETTERS, 3, n_ctx=256)
    else:
        model = build_model("transformer", d_vocab=task.vocab.size, d_model=64, n_layers=2, n_heads=4).eval()
    clean, corrupt = paired_batches(task, case.batch, case.length)
    metric = make_metric("logit_diff", clean, corrupt)
    specs = patch_specs(model, "z", heads=True, positions=True, n_pos=clean.tokens.shape[1])
    return model, clean.tokens, corrupt.tokens, metric, specs


def runner(case: Case, method: str):
    model, clean, corrupt, metric, specs = workload(case)
    if method == "attribution":
        return lambda: attribution_patching(model, clean, corrupt, metric, specs, mode="noise")
    return lambda: activation_patching(model, clean, corrupt, metric, specs, mode="noise", method=method)


def memory_probe(spec: dict) -> float:
    """Peak MiB of one full patching run (runs in a fresh process, see common.run_probes)."""
    case = Case(**spec["case"])
    runner(Case(case.model, 1, 4), spec["method"])()  # warm-up on a tiny input
    return common.measure_peak(runner(case, spec["method"]))


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__).parse_args(argv)
    torch.set_num_threads(args.threads)
    print(common.header("Activation patching: batched vs one forward per patch", args.threads))
    methods = ("batched", "loop", "attribution")
    results = []  # (case, n_patches, {method: seconds}, max_diff, correlation)
    for case in cases(args.quick):
        fns = {m: runner(case, m) for m in methods}
        batched, loop, approx = (fns[m]() for m in methods)
        diff = float((batched.metric - loop.metric).abs().max())
        assert diff < 1e-4, f"batched and loop patching disagree by {diff}"
        corr = float(batched.effect.corr(approx.effect)) if case.model == "hash-copy" else float("nan")
        sec = common.time_interleaved(fns, repeats=args.repeats or (1 if args.quick else 3), warmup=0)
        results.append((case, len(batched), sec, diff, corr))

    mem: dict = {}
    if not args.no_memory:
        keys = [(case, m) for case, *_ in results if case.batch == results[-1][0].batch for m in methods[:2]]
        specs = [{"case": vars(case), "method": m} for case, m in keys]
        mem = dict(zip(keys, common.run_probes(MODULE, "memory_probe", specs, args.threads)))

    rows = []
    for case, n, sec, _, _ in results:
        for m in methods:
            rows.append(
                [
                    case.label,
                    case.batch,
                    2 * case.length + 3,
                    n,
                    m,
                    f"{sec[m]:.3f}",
                    f"{sec['loop'] / sec[m]:.2f}x",
                    common.fmt_mib(mem.get((case, m))),
                ]
            )
    headers = ["model", "batch", "positions", "patches", "method", "seconds", "speed-up vs loop", "peak MiB"]
    print(common.table(headers, rows))
    ratios = [sec["loop"] / sec["batched"] for _, _, sec, _, _ in results]
    verdict = "target met" if max(ratios) >= TARGET_RATIO else "TARGET MISSED on this machine"
    per_case = ", ".join(f"{c.label} B={c.batch}: {r:.1f}x" for (c, *_), r in zip(results, ratios))
    print(
        f"\nratio loop / batched: {min(ratios):.1f}x-{max(ratios):.1f}x (target >= {TARGET_RATIO:.0f}x): {verdict}"
    )
    print(f"  per case: {per_case}")
    attr = [sec["loop"] / sec["attribution"] for _, _, sec, _, _ in results]
    print(f"ratio loop / attribution patching: {min(attr):.0f}x-{max(attr):.0f}x")
    corrs = [corr for *_, corr in results if corr == corr]
    print(
        "attribution vs activation patching (hash-copy, layer x head x position, noising): Pearson r = "
        + ", ".join(f"{c:.3f}" for c in corrs)
    )
    print(f"batched == loop: max |metric difference| {max(d for *_, d, _ in results):.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
