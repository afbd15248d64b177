"""Activation patching: reused computation and batching vs one forward per patch (the loop) and
TransformerLens's own patching.

    python -m benchmarks.patching                                  # issue 15's grid (an hour on 1 CPU)
    python -m benchmarks.patching --layers 2 --batches 8 --lengths 64   # one transformer size
    python -m benchmarks.patching --quick                          # smoke test
    python -m benchmarks.patching --same-prefix 0.5 --layers 4 --batches 8 --lengths 64   # a minimal pair

Workload: full layer x head x position noising of `hook_z` on the hash-copy construction
(`interp.models.hash_copy`, 2 layers x 5 heads, whose circuit is known) and on GPT-style transformers
(RoPE, width 64, 4 heads, 2 or 4 layers; sequential blocks, or with `--parallel-residual` GPT-NeoX's
(Pythia's) parallel attention + MLP block); full layer x channel group (4) x position noising of Mamba-1's
`hook_ssm_state` (width 64, 2 layers, d_state 16). Lengths are string lengths: 2 * L + 3 positions. The
transformers and Mamba are trained briefly on the copy task first (`--train-steps`, default 150 steps
of `interp.training.train`, cached in the temp folder): not random weights, though speed does not
depend on the weights. Clean and corrupted strings are independent (issue 15's workload), or with
`--same-prefix F` the corrupted string starts with the clean one's first F of letters (a minimal pair, as
in IOI-style datasets): the patches before the first difference write the base run's own values, and
reuse and batched skip them (`activation_patching`'s no-op patches). Methods, all `activation_patching`
unless said:
- "reuse": each patched forward starts at the patch's layer and position from one recorded forward
  (residual stream, keys/values, Mamba's conv window and state; `interp.analysis.patching.reuse`); a
  position-local patch runs its own block on its position alone; copies per pass from `max_memory`.
- "batched": K copies of the batch per full forward, a different patch in each.
- "loop": one forward of the B examples per patch, the baseline.
- "tl": TransformerLens's `patching.generic_activation_patch` with
  `layer_pos_head_vector_patch_setter` (= `get_act_patch_attn_head_out_by_pos`) on the same model
  (transformers only).
- "attribution": one forward + one backward (an approximation; its Pearson r with the exact effects on
  the hash-copy model is printed).
"reuse" runs the whole grid. "batched", "loop" and "tl" cost the same for every patch, so they run a
seeded sample of `--sample` patches and report seconds scaled to the full grid. Correctness is checked
on the sample first: reuse and batched against the loop. Each method runs once, timed (`--repeats N`:
the median of N interleaved runs). On grids up to `--flops-max-patches` patches (not Mamba, whose scans are
not matrix products) the loop's and reuse's matrix-product FLOPs per patch are counted too
(`torch.utils.flop_counter`): their ratio is what reuse would reach with no per-operation overhead. Peak memory: the most tensor memory a method held at once
(`patching.memory.peak_tensor_bytes`), measured on a separate run over a few patches including the
longest passes (the first positions). Timings on a shared CPU vary with the load of other processes
(the header reports it).
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from benchmarks import common
from interp.analysis.patching import (
    activation_patching,
    attribution_patching,
    make_metric,
    paired_batches,
    patch_specs,
)
from interp.analysis.patching.memory import peak_tensor_bytes
from interp.models import build_model
from interp.models.hash_copy import build_hash_copy
from interp.tasks import TaskConfig

TARGET_RATIO = 10.0
N_LETTERS = 8
SAMPLED = ("batched", "loop", "tl")  # methods timed on a sample of patches, scaled to the grid
METHODS = ("reuse", "batched", "loop", "tl", "attribution")
TASK = TaskConfig(task="copy", n_letters=N_LETTERS, max_len=512, unique_ngrams=True, ngram=3)


@dataclass(frozen=True)
class Case:
    model: str  # "hash-copy" | "transformer-L{n}" | "mamba-L{n}"
    batch: int  # clean/corrupted example pairs
    length: int  # string length (positions = 2 * length + 3)
    same_prefix: float = 0.0  # fraction of the string's first letters the corrupted string shares
    parallel: bool = False  # transformers: GPT-NeoX's (Pythia's) parallel attention + MLP block

    @property
    def name(self) -> str:
        return self.model + (" parallel" if self.parallel else "")

    @property
    def label(self) -> str:
        shared = f" shared {self.same_prefix:.0%}" if self.same_prefix else ""
        return f"{self.name} B={self.batch} P={2 * self.length + 3}{shared}"

    @property
    def family(self) -> str:
        return self.model.split("-")[0]


def cases(args) -> list[Case]:
    f = args.same_prefix
    if args.quick:
        layout = [Case("transformer-L2", 2, 4, f, True)] if args.parallel_residual else []
        return [Case("hash-copy", 2, 4, f), *layout, Case("mamba-L2", 2, 4, f)]
    grid = [
        Case(f"transformer-L{n}", b, t, f, args.parallel_residual)
        for n in args.layers
        for b in args.batches
        for t in args.lengths
    ]
    mamba = [Case("mamba-L2", b, min(args.lengths), f) for b in args.batches]
    return [c for c in [Case("hash-copy", 16, 12, f)] + grid + mamba if c.family in args.families]


def trained(name: str, steps: int, parallel: bool = False):
    """A 2- or 4-layer transformer (parallel: GPT-NeoX's block) or a Mamba, trained `steps` steps on
    copying (cached on disk)."""
    family, n_layers = name.split("-L")
    kw = dict(d_vocab=TASK.vocab.size, d_model=64, n_layers=int(n_layers))
    if family == "transformer":
        kw.update(n_heads=4, n_ctx=1024, parallel_residual=parallel)
    else:
        kw.update(d_state=16)
    torch.manual_seed(0)
    model = build_model(family, **kw)
    if steps:
        layout = "-parallel" if parallel else ""
        path = Path(tempfile.gettempdir()) / "interp-benchmark-patching" / f"{name}{layout}-{steps}.pt"
        if path.exists():
            model.load_state_dict(torch.load(path))
        else:
            from interp.training import TrainConfig, train  # noqa: PLC0415

            task = TaskConfig(task="copy", n_letters=N_LETTERS, max_len=64, unique_ngrams=True, ngram=3)
            cfg = TrainConfig(steps=steps, warmup_steps=min(20, steps), eval_every=0, eval_examples=32)
            train(model, task, cfg, progress=False)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), path)
    return model.eval()


def workload(case: Case, steps: int):
    """(model, clean tokens, corrupt tokens, metric, specs) for one case."""
    model = (
        build_hash_copy(N_LETTERS, 3, n_ctx=1024)
        if case.model == "hash-copy"
        else trained(case.model, steps, case.parallel)
    )
    torch.manual_seed(0)
    # the hash-copy circuit reads 3-grams; 8 letters have too few distinct 3-grams for 32 strings of 256
    task = TASK if case.model == "hash-copy" else replace(TASK, ngram=4)
    clean, corrupt = paired_batches(task, case.batch, case.length)
    if case.same_prefix:
        corrupt = replace(corrupt, tokens=sharing_prefix(clean.tokens, corrupt.tokens, case))
    metric = make_metric("logit_diff", clean, corrupt)
    n = clean.tokens.shape[1]
    if case.family == "mamba":
        specs = patch_specs(model, "ssm_state", positions=True, channel_groups=4, n_pos=n)
    else:
        specs = patch_specs(model, "z", heads=True, positions=True, n_pos=n)
    return model, clean.tokens, corrupt.tokens, metric, specs


def sharing_prefix(clean: torch.Tensor, corrupt: torch.Tensor, case: Case) -> torch.Tensor:
    """Corrupted copy-task tokens (BOS, string, SEP, string, EOS) whose string starts with the clean
    string's first `case.same_prefix` of letters: a minimal pair, whose patches before the first
    difference are no-ops (`Prepared.unchanged`). Only for timing: the spliced strings may repeat an n-gram,
    and at the shared copy positions the answer and the wrong answer are the same token (logit difference 0)."""
    n, L = max(1, min(case.length - 1, round(case.same_prefix * case.length))), case.length
    out = corrupt.clone()
    for start in (1, L + 2):  # the string and its copy
        out[:, start : start + n] = clean[:, start : start + n]
    return out


def sample(specs, n: int):
    return specs if n >= len(specs) else random.Random(0).sample(specs, n)


def runner(method: str, model, clean, corrupt, metric, specs):
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


def matmul_flops(fn) -> int:
    """FLOPs of fn()'s matrix products (linear layers, einsums, attention) as `torch.utils.flop_counter`
    counts them; attention counts every key it is given, masked or not, CPU attention included."""
    from torch.utils import flop_counter  # noqa: PLC0415

    def attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    cpu_attention = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention}
    with flop_counter.FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
        fn()
    return counter.get_total_flops()


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_case(case: Case, args) -> dict:
    """Seconds for the full grid per method, the metric differences from the loop, peak MiB, r."""
    model, clean, corrupt, metric, specs = workload(case, 0 if args.quick else args.train_steps)
    n = len(specs)
    chosen = sample(specs, args.sample)
    pick = [specs.index(s) for s in chosen]
    methods = [m for m in METHODS if not (m == "tl" and case.family == "mamba")]
    fns = {m: runner(m, model, clean, corrupt, metric, chosen if m in SAMPLED else specs) for m in methods}
    for m in methods:  # warm-up: first-call costs (imports, allocator growth) are not the method's
        runner(m, model, clean, corrupt, metric, chosen[:2])()
    out, sec = {}, {}
    for m in methods:
        out[m], sec[m] = timed(fns[m])
    if args.repeats and args.repeats > 1:
        sec = common.time_interleaved(fns, repeats=args.repeats, warmup=0)
    sec = {m: s * (n / len(chosen) if m in SAMPLED else 1.0) for m, s in sec.items()}
    loop = torch.tensor(out["loop"].metric.values)
    diffs = {
        "reuse": float((torch.tensor(out["reuse"].metric.values)[pick] - loop).abs().max()),
        "batched": float((torch.tensor(out["batched"].metric.values) - loop).abs().max()),
    }
    for m, d in diffs.items():
        assert d < 1e-4, f"{m} and loop patching disagree by {d} on {case}"
    if "tl" in out:
        diffs["tl"] = float((out["tl"].flatten().cpu() - loop).abs().max())
    flops = None  # loop / reuse FLOPs per patch: the speed-up a run with no per-op overhead would reach
    if case.family != "mamba" and n <= args.flops_max_patches:  # a scan's work is not matrix products
        per_patch = {
            m: matmul_flops(fns[m]) / len(chosen if m in SAMPLED else specs) for m in ("loop", "reuse")
        }
        flops = per_patch["loop"] / per_patch["reuse"]
    corr = float("nan")
    if case.model == "hash-copy":
        corr = float(out["reuse"].effect.corr(out["attribution"].effect))
    mem = {}
    if not args.no_memory:  # a few patches, the longest passes (position 0) among them
        few = sorted(chosen[:4] + [s for s in specs if s.pos == 0][:4], key=specs.index)
        mem = {
            m: peak_tensor_bytes(runner(m, model, clean, corrupt, metric, few)) / 2**20
            for m in methods
            if m != "attribution"
        }
    return dict(case=case, n=n, sec=sec, diffs=diffs, corr=corr, mem=mem, flops=flops)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--layers", type=int, nargs="+", default=[2, 4], help="transformer depths")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 32], help="example pairs per grid")
    p.add_argument(
        "--lengths", type=int, nargs="+", default=[64, 256], help="string lengths (2 * L + 3 positions)"
    )
    p.add_argument(
        "--sample", type=int, default=64, help="patches timed for batched, loop and tl (scaled to the grid)"
    )
    p.add_argument("--train-steps", type=int, default=150, help="copy-task training steps per model")
    p.add_argument(
        "--flops-max-patches",
        type=int,
        default=2100,
        help="count reuse's and the loop's FLOPs (a run of the whole grid) on grids up to this many patches",
    )
    p.add_argument(
        "--families", nargs="+", default=["hash", "transformer", "mamba"], help="which models to run"
    )
    p.add_argument(
        "--same-prefix",
        type=float,
        default=0.0,
        metavar="F",
        help="corrupted strings share the clean ones' first F of letters (a minimal pair; 0 = independent "
        "strings, issue 15's workload): reuse skips the patches before the first difference",
    )
    p.add_argument(
        "--parallel-residual",
        action="store_true",
        help="the transformers use GPT-NeoX's (Pythia's) parallel attention + MLP block instead of the "
        "sequential one",
    )
    args = p.parse_args(argv)
    if not 0 <= args.same_prefix < 1:
        p.error(f"--same-prefix must be in [0, 1), got {args.same_prefix}")
    torch.set_num_threads(args.threads)
    print(
        common.header(
            "Activation patching: reuse / batched vs one forward per patch and TransformerLens", args.threads
        )
    )
    print(
        f"models trained {0 if args.quick else args.train_steps} steps on copying; batched, loop and tl "
        f"timed on {args.sample} sampled patches and scaled to the grid\n"
    )
    results = []
    for case in cases(args):
        r = run_case(case, args)
        results.append(r)
        ratio = r["sec"]["loop"] / r["sec"]["reuse"]
        print(
            f"done {case.label}: reuse {r['sec']['reuse']:.1f} s, {ratio:.1f}x the loop",
            file=sys.stderr,
            flush=True,
        )

    rows = []
    for r in results:
        case, sec = r["case"], r["sec"]
        for m in METHODS:
            if m not in sec:
                continue
            rows.append(
                [
                    case.name + (f" (shares {case.same_prefix:.0%})" if case.same_prefix else ""),
                    case.batch,
                    2 * case.length + 3,
                    r["n"],
                    m + (" (sampled)" if m in SAMPLED and r["n"] > args.sample else ""),
                    f"{sec[m]:.2f}",
                    f"{sec['loop'] / sec[m]:.2f}x",
                    f"{sec['tl'] / sec[m]:.2f}x" if "tl" in sec else "-",
                    common.fmt_mib(r["mem"].get(m)),
                ]
            )
    headers = ["model", "batch", "positions", "patches", "method", "seconds", "vs loop", "vs TL", "peak MiB"]
    print(common.table(headers, rows))
    for m in ("reuse", "batched"):
        ratios = [r["sec"]["loop"] / r["sec"][m] for r in results]
        tl = [r["sec"]["tl"] / r["sec"][m] for r in results if "tl" in r["sec"]]
        verdict = "target met" if min(ratios) >= TARGET_RATIO else "TARGET MISSED on this machine"
        print(
            f"\nratio loop / {m}: {min(ratios):.1f}x-{max(ratios):.1f}x (target >= {TARGET_RATIO:.0f}x): "
            f"{verdict}"
            + (
                f"; TransformerLens / {m}: {min(tl):.1f}x-{max(tl):.1f}x"
                if tl
                else " (no TransformerLens case)"
            )
        )
        print("  per case: " + ", ".join(f"{r['case'].label}: {x:.1f}x" for r, x in zip(results, ratios)))
    counted = [r for r in results if r["flops"]]
    if counted:
        print(
            "\nloop / reuse in matrix-product FLOPs per patch (what reuse could reach with no overhead per "
            "operation; Mamba's scans are not matrix products): "
            + ", ".join(f"{r['case'].label}: {r['flops']:.1f}x" for r in counted)
        )
    attr = [r["sec"]["loop"] / r["sec"]["attribution"] for r in results]
    print(f"ratio loop / attribution patching: {min(attr):.0f}x-{max(attr):.0f}x")
    corrs = [r["corr"] for r in results if r["corr"] == r["corr"]]
    if corrs:  # only the hash-copy case computes it
        print(
            "attribution vs activation patching (hash-copy, layer x head x position, noising): Pearson r = "
            + ", ".join(f"{c:.3f}" for c in corrs)
        )
    worst = {m: max(r["diffs"].get(m, 0.0) for r in results) for m in ("reuse", "batched", "tl")}
    print(f"batched == loop: max |metric difference| {worst['batched']:.2e}")
    print(
        f"reuse == loop: max |metric difference| {worst['reuse']:.2e}; TransformerLens == loop: {worst['tl']:.2e}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
