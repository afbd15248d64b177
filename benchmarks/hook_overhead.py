"""Cost of hook points: idle hook points vs none, and `run_with_cache` vs a plain forward.

    python -m benchmarks.hook_overhead            # full run (about a minute)
    python -m benchmarks.hook_overhead --quick    # smoke test

(a) Idle hook points. Our model calls a `Hook` module on every activation. The baseline is a deep
copy of the same model in which every `Hook` submodule is deleted and replaced by a plain identity
function (not a module), so it runs exactly the same math without any hook machinery; the
benchmark asserts that both give bit-identical logits. Target: <= 5% overhead.

(b) Caching. `run_with_cache` with every hook (which also switches attention to the explicit path
that materialises scores and patterns, so they can be cached) and with a `names_filter` of one
hook, each vs the plain forward of the same model.

All forwards run under `torch.no_grad()` (the analysis setting) on GPT-NeoX-layout models with
rotary positions. Peak memory: see `benchmarks/common.py` (a fresh interpreter per measurement,
RSS high-water mark during one forward above the RSS before it).
"""

from __future__ import annotations

import copy

import torch

from benchmarks import common
from benchmarks.common import Size
from interp.models.base import Hook
from interp.models.transformer import HookedTransformer, TransformerConfig

MODULE = "benchmarks.hook_overhead"  # where the memory probes import `memory_probe` from
TARGET_OVERHEAD = 0.05
ONE_HOOK = "blocks.0.hook_resid_post"


def sizes(quick: bool) -> list[Size]:
    if quick:
        return [Size(64, 2, 4, 32, batch=4)]
    return [Size(128, 2, 4, 128), Size(256, 4, 8, 512)]


def model(size: Size) -> HookedTransformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(
        d_model=size.d_model,
        n_layers=size.n_layers,
        n_heads=size.n_heads,
        parallel_residual=True,
        positional="rope",
        rotary_pct=0.25,
    )
    return HookedTransformer(cfg).eval()


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


identity.active = False  # what Attention asks a hook on scores/pattern before choosing its path


def without_hook_points(m: HookedTransformer) -> HookedTransformer:
    """A deep copy of `m` whose `Hook` modules are replaced by the plain function `identity`."""
    plain = copy.deepcopy(m)
    for name, module in list(plain.named_modules()):
        if isinstance(module, Hook):
            parent_name, _, attr = name.rpartition(".")
            parent = plain.get_submodule(parent_name)
            delattr(parent, attr)  # a registered submodule cannot be overwritten by a function
            setattr(parent, attr, identity)
    assert not any(isinstance(x, Hook) for x in plain.modules())
    return plain


def variants(size: Size) -> dict:
    """name -> zero-argument forward, all on the same weights and tokens."""
    m = model(size)
    plain = without_hook_points(m)
    tokens = torch.randint(
        0, m.cfg.d_vocab, (size.batch, size.length), generator=torch.Generator().manual_seed(0)
    )
    return {
        "hook points, none attached": lambda: m(tokens),
        "no hook points": lambda: plain(tokens),
        "run_with_cache (all hooks)": lambda: m.run_with_cache(tokens),
        "run_with_cache (1 hook)": lambda: m.run_with_cache(tokens, names_filter=ONE_HOOK),
    }


def memory_probe(spec: dict) -> float:
    """Peak MiB of one forward of one variant (runs in a fresh process, see common.run_probes)."""
    size = Size(**spec["size"])
    with torch.no_grad():
        variants(Size(size.d_model, size.n_layers, size.n_heads, 8, batch=1))[spec["variant"]]()  # warm-up
        fn = variants(size)[spec["variant"]]
        return common.measure_peak(fn)


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__).parse_args(argv)
    torch.set_num_threads(args.threads)
    print(common.header("Hook points: idle overhead and run_with_cache", args.threads))

    results = []  # (size, {variant: seconds})
    for size in sizes(args.quick):
        fns = variants(size)
        with torch.no_grad():
            a, b = fns["hook points, none attached"](), fns["no hook points"]()
            assert torch.equal(a, b), "the hook-free copy must compute exactly the same logits"
            # (a) needs precision: many short alternating samples; (b) differences are large.
            idle = common.time_interleaved(
                {k: fns[k] for k in ("hook points, none attached", "no hook points")},
                repeats=args.repeats or (5 if args.quick else 21),
                warmup=3,
                min_time=0.02 if args.quick else 0.2,
            )
            cache = common.time_interleaved(
                {k: fns[k] for k in ("run_with_cache (all hooks)", "run_with_cache (1 hook)")},
                repeats=args.repeats or (3 if args.quick else 7),
                warmup=2,
                min_time=0.02 if args.quick else 0.2,
            )
        results.append((size, idle | cache))
        del fns

    names = list(results[0][1])
    mem: dict = {}
    if not args.no_memory:
        probed = [names[0], names[2]] if args.quick else names  # idle hooks, cache all
        keys = [(size, name) for size, _ in results for name in probed]
        specs = [{"size": vars(size), "variant": name} for size, name in keys]
        mem = dict(zip(keys, common.run_probes(MODULE, "memory_probe", specs, args.threads)))

    rows = []
    for size, sec in results:
        base = sec["hook points, none attached"]
        for name in names:
            rows.append(
                [
                    size.label,
                    size.batch,
                    size.length,
                    name,
                    f"{1e3 * sec[name]:.2f}",
                    f"{sec[name] / base:.3f}x",
                    common.fmt_mib(mem.get((size, name))),
                ]
            )
    print(common.table(["model", "batch", "length", "forward", "ms", "time / idle hooks", "peak MiB"], rows))
    overheads = [s["hook points, none attached"] / s["no hook points"] - 1 for _, s in results]
    all_hooks = [s["run_with_cache (all hooks)"] / s["hook points, none attached"] for _, s in results]
    one_hook = [s["run_with_cache (1 hook)"] / s["hook points, none attached"] for _, s in results]
    verdict = "target met" if max(overheads) <= TARGET_OVERHEAD else "TARGET MISSED"
    print(
        f"\nratio idle hook points / no hook points: max {1 + max(overheads):.3f}x "
        f"(overhead {100 * max(overheads):+.1f}%, target <= {100 * TARGET_OVERHEAD:.0f}%): {verdict}"
    )
    print(
        f"ratio run_with_cache / forward: all hooks {min(all_hooks):.2f}x-{max(all_hooks):.2f}x, "
        f"one hook {min(one_hook):.2f}x-{max(one_hook):.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
