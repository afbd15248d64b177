"""Activation patching: reused computation and batching vs one forward per patch (the loop) and
TransformerLens's own patching.

    python -m benchmarks.patching                                  # default grid (minutes)
    python -m benchmarks.patching --layers 2 4 --batches 8 32 --lengths 64 256   # issue 15's grid
    python -m benchmarks.patching --quick                          # smoke test

Workload: full layer x head x position patching of `hook_z` (noising) on the hash-copy construction
(`interp.models.hash_copy`, 2 layers x 5 heads, whose circuit is known) and on GPT-style transformers
of width 64 with 4 heads and 2 or 4 layers (random weights: speed does not depend on the weights, and
nothing is trained in a benchmark). Methods, all `activation_patching` unless said:
- "reuse": each patched forward starts at the patch's layer and position from one recorded forward
  (cached residual stream and keys/values; `interp.analysis.patching.reuse`), a position-local patch
  runs its own block on its position alone; copies per pass from `max_memory` (default).
- "batched": K copies of the batch per full forward, a different patch in each.
- "loop": one forward of the B examples per patch, the baseline.
- "tl": TransformerLens's `patching.generic_activation_patch` with
  `layer_pos_head_vector_patch_setter` (= `get_act_patch_attn_head_out_by_pos`) on the same model.
- "attribution": one forward + one backward (an approximation; its Pearson r with the exact effects on
  the hash-copy model is printed).
Large grids take hours with the loop, so "loop" and "tl" time a seeded sample of `--sample` patches
and report seconds scaled to the full grid (per-patch cost is the same for every patch of these two).
Correctness is checked before timing: reuse and batched against the loop on the sampled patches.
Timings on a shared CPU vary with the load of other processes (the header reports it).
"""

from __future__ import annotations

import random
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
SAMPLED = ("loop", "tl")  # methods timed on a sample of patches, scaled to the grid


@dataclass(frozen=True)
class Case:
    model: str  # "hash-copy" | "transformer-L{n}"
    batch: int  # clean/corrupted example pairs
    length: int  # string length (positions = 2 * length + 3)

    @property
    def label(self) -> str:
        return self.model


def cases(args) -> list[Case]:
    if args.quick:
        return [Case("hash-copy", 2, 4)]
    grid = [Case(f"transformer-L{n}", b, t) for n in args.layers for b in args.batches for t in args.lengths]
    return [Case("hash-copy", 16, 12)] + grid


def workload(case: Case):
    """(model, clean tokens, corrupt tokens, metric, specs) for one case."""
    torch.manual_seed(0)
    task = TaskConfig(task="copy", n_letters=N_LETTERS, max_len=512, unique_ngrams=True, ngram=3)
    if case.model == "hash-copy":
        model = build_hash_copy(N_LETTERS, 3, n_ctx=1024)
    else:
        n_layers = int(case.model.rsplit("L", 1)[1])
        model = build_model(
            "transformer", d_vocab=task.vocab.size, d_model=64, n_layers=n_layers, n_heads=4, n_ctx=1024
        ).eval()
    clean, corrupt = paired_batches(task, case.batch, case.length)
    metric = make_metric("logit_diff", clean, corrupt)
    specs = patch_specs(model, "z", heads=True, positions=True, n_pos=clean.tokens.shape[1])
    return model, clean.tokens, corrupt.tokens, metric, specs


def sample(specs, n: int):
    return specs if n >= len(specs) else random.Random(0).sample(specs, n)


def runner(case: Case, method: str, n_sample: int):
    model, clean, corrupt, metric, specs = workload(case)
    if method in SAMPLED:
        specs = sample(specs, n_sample)
    if method == "attribution":
        return lambda: attribution_patching(model, clean, corrupt, metric, specs, mode="noise")
    if method == "tl":
        return tl_runner(model, clean, corrupt, metric, specs)
    return lambda: activation_patching(model, clean, corrupt, metric, specs, mode="noise", method=method)


def tl_runner(model, clean, corrupt, metric, specs):
    """TransformerLens's layer x pos x head patching of z, noising: run clean, patch in corrupted z."""
    import pandas as pd  # noqa: PLC0415
    from transformer_lens import patching  # noqa: PLC0415

    index = pd.DataFrame([(s.layer, s.pos, s.head) for s in specs], columns=["layer", "pos", "head"])

    def run():
        _, cache = model.run_with_cache(corrupt)
        return patching.generic_activation_patch(
            model,
            clean,
            cache,
            lambda logits: metric(logits).mean(),
            patch_setter=patching.layer_pos_head_vector_patch_setter,
            activation_name="z",
            index_df=index,
        )

    return run


def memory_probe(spec: dict) -> float:
    """Peak MiB of one patching run (runs in a fresh process, see common.run_probes)."""
    case = Case(**spec["case"])
    runner(Case(case.model, 1, 4), spec["method"], 4)()  # warm-up on a tiny input
    return common.measure_peak(runner(case, spec["method"], spec["sample"]))


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--layers", type=int, nargs="+", default=[2, 4], help="transformer depths")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 32], help="example pairs per grid")
    p.add_argument(
        "--lengths", type=int, nargs="+", default=[64], help="string lengths (2 * L + 3 positions)"
    )
    p.add_argument(
        "--sample", type=int, default=64, help="patches timed for loop and tl (scaled to the grid)"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        common.header(
            "Activation patching: reuse / batched vs one forward per patch and TransformerLens", args.threads
        )
    )
    methods = ("reuse", "batched", "loop", "tl", "attribution")
    n_sample = 10**9 if args.quick else args.sample
    results = []  # (case, n_patches, {method: seconds for the full grid}, diffs, correlation)
    for case in cases(args):
        model, clean, corrupt, metric, specs = workload(case)
        n = len(specs)
        fns = {m: runner(case, m, n_sample) for m in methods}
        out = {m: fns[m]() for m in ("reuse", "batched", "loop")}
        chosen = sample(specs, n_sample)
        pick = [specs.index(s) for s in chosen] if len(chosen) < n else list(range(n))
        loop = torch.tensor(out["loop"].metric.values)
        diffs = {
            m: float((torch.tensor(out[m].metric.values)[pick] - loop).abs().max())
            for m in ("reuse", "batched")
        }
        for m, d in diffs.items():
            assert d < 1e-4, f"{m} and loop patching disagree by {d}"
        tl = fns["tl"]()
        diffs["tl"] = (
            float((tl.flatten().cpu() - loop).abs().max()) if tl.numel() == len(pick) else float("nan")
        )
        corr = float("nan")
        if case.model == "hash-copy":
            corr = float(out["reuse"].effect.corr(fns["attribution"]().effect))
        sec = common.time_interleaved(fns, repeats=args.repeats or 1, warmup=0)
        scale = {m: n / len(chosen) if m in SAMPLED else 1.0 for m in methods}
        results.append((case, n, {m: sec[m] * scale[m] for m in methods}, diffs, corr))

    mem: dict = {}
    if not args.no_memory:
        last = results[-1][0]
        keys = [(last, m) for m in ("reuse", "batched", "loop")]
        specs = [{"case": vars(c), "method": m, "sample": n_sample} for c, m in keys]
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
                    m + (" (sampled)" if m in SAMPLED and n > n_sample else ""),
                    f"{sec[m]:.2f}",
                    f"{sec['loop'] / sec[m]:.2f}x",
                    f"{sec['tl'] / sec[m]:.2f}x",
                    common.fmt_mib(mem.get((case, m))),
                ]
            )
    headers = ["model", "batch", "positions", "patches", "method", "seconds", "vs loop", "vs TL", "peak MiB"]
    print(common.table(headers, rows))
    for m in ("reuse", "batched"):
        ratios = [sec["loop"] / sec[m] for _, _, sec, _, _ in results]
        tl_ratios = [sec["tl"] / sec[m] for _, _, sec, _, _ in results]
        verdict = "target met" if min(ratios) >= TARGET_RATIO else "TARGET MISSED on this machine"
        per_case = ", ".join(
            f"{c.label} B={c.batch} P={2 * c.length + 3}: {r:.1f}x" for (c, *_), r in zip(results, ratios)
        )
        print(
            f"\nratio loop / {m}: {min(ratios):.1f}x-{max(ratios):.1f}x (target >= {TARGET_RATIO:.0f}x): {verdict}; "
            f"TransformerLens / {m}: {min(tl_ratios):.1f}x-{max(tl_ratios):.1f}x"
        )
        print(f"  per case: {per_case}")
    attr = [sec["loop"] / sec["attribution"] for _, _, sec, _, _ in results]
    print(f"ratio loop / attribution patching: {min(attr):.0f}x-{max(attr):.0f}x")
    corrs = [corr for *_, corr in results if corr == corr]
    print(
        "attribution vs activation patching (hash-copy, layer x head x position, noising): Pearson r = "
        + ", ".join(f"{c:.3f}" for c in corrs)
    )
    worst = {m: max(d[m] for *_, d, _ in results) for m in ("reuse", "batched", "tl")}
    print(f"batched == loop: max |metric difference| {worst['batched']:.2e}")
    print(
        f"reuse == loop: max |metric difference| {worst['reuse']:.2e}; TransformerLens == loop: {worst['tl']:.2e}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
