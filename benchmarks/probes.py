"""Probe fitting speed and activation-caching memory.

    python -m benchmarks.probes            # full run (a few minutes, most of it in scikit-learn)
    python -m benchmarks.probes --quick    # smoke test

(a) Speed. Token-identity probes for 32 lags (0..31) on the same activations, the same split by
example and the same test rows:
  - ours: `interp.analysis.probing.fit_probes(solver="ridge")`, every lag in ONE eigendecomposition,
    including its per-lag choice of ridge penalty and softmax temperature on a validation split;
  - baseline: scikit-learn `LogisticRegression` (multinomial, lbfgs, default C=1, standardised
    features) fitted once per lag, with no hyper-parameter search at all (which favours it).
(`--quick`: 4 lags, 128 features.) Target: ours >= 20x faster with mean accuracy no more than 2 points below. The activations are the per-position
SSM state (`blocks.0.mixer.hook_ssm_state`, D_inner * N = 256 features) of a randomly initialised Mamba,
read at the last 8 positions of random 26-letter strings: recent lags decode well, old ones at chance,
so accuracy is compared across the whole range.

(b) Memory. Caching `hook_ssm_state` [B, D_inner, P, N] at length P = 1024 for B strings, to probe
one read position per string: `run_with_cache` on the whole batch at once (the naive way) against
`gather_activations`, which streams over batches sized to stay under `max_batch_bytes` and keeps only
the requested positions ([B, R, D_inner * N]). Peak memory per `benchmarks/common.py` (fresh
interpreter, RSS high-water mark above the RSS before the workload).
"""

from __future__ import annotations

import statistics
import time
import warnings

import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from benchmarks import common
from interp.analysis.probing import fit_probes, gather_activations, lag_targets, split_examples
from interp.models import build_model

MODULE = "benchmarks.probes"
HOOK = "blocks.0.mixer.hook_ssm_state"
TARGET_SPEEDUP = 20.0
TARGET_ACCURACY_GAP = 0.02
N_LETTERS, D_VOCAB = 26, 30
STREAM_BYTES = 32 * 2**20  # max_batch_bytes of the streamed variant
OURS, SKLEARN = "ridge, all lags in one solve", "sklearn LogisticRegression per lag"


def mamba(d_model: int, d_state: int):
    torch.manual_seed(0)
    return build_model("mamba", d_vocab=D_VOCAB, d_model=d_model, n_layers=1, d_state=d_state).eval()


def speed_data(quick: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Activations [B, R, F], lag targets [B, R, 32] and the number of lags."""
    n_examples, n_lags, reads = (120, 4, 2) if quick else (600, 32, 4)
    model = mamba(d_model=16, d_state=4) if quick else mamba(d_model=32, d_state=4)  # F = 128 or 256
    tokens = torch.randint(
        0, N_LETTERS, (n_examples, n_lags + reads), generator=torch.Generator().manual_seed(0)
    )
    read_positions = torch.arange(n_lags, n_lags + reads)
    acts = gather_activations(model, tokens, HOOK, read_positions)
    targets = lag_targets(tokens, read_positions.expand(n_examples, -1), range(n_lags))
    return acts, targets, n_lags


def ours(acts: torch.Tensor, targets: torch.Tensor) -> list[float]:
    df = fit_probes(acts, targets, D_VOCAB, solver="ridge", control=False, seed=0)
    return df["accuracy"].tolist()


def sklearn_per_lag(acts: torch.Tensor, targets: torch.Tensor, max_iter: int) -> list[float]:
    """One LogisticRegression per lag, on the split `fit_probes` uses (same seed, same test rows)."""
    train, test = split_examples(len(acts), 0.25, torch.Generator().manual_seed(0))
    x_train, x_test = acts[train].flatten(0, 1), acts[test].flatten(0, 1)
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    x_train, x_test = ((x_train - mean) / std).numpy(), ((x_test - mean) / std).numpy()
    y_train, y_test = targets[train].flatten(0, 1), targets[test].flatten(0, 1)
    accuracy = []
    for lag in range(targets.shape[-1]):
        with warnings.catch_warnings():  # lbfgs may stop at max_iter; the accuracy is what counts here
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = LogisticRegression(max_iter=max_iter).fit(x_train, y_train[:, lag].numpy())
        accuracy.append(float((clf.predict(x_test) == y_test[:, lag].numpy()).mean()))
    return accuracy


def time_both(
    acts: torch.Tensor, targets: torch.Tensor, repeats: int, max_iter: int
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Median seconds of each method (ours: 5 calls per repeat, it is fast) and its per-lag accuracy.

    Calls alternate between the two methods; no calibration call, since one scikit-learn call takes
    minutes. Both run under the same thread limit (torch threads, and BLAS via threadpoolctl).
    """
    seconds: dict[str, list[float]] = {OURS: [], SKLEARN: []}
    accuracy: dict[str, list[float]] = {}
    with threadpool_limits(limits=torch.get_num_threads()):
        ours(acts, targets)  # warm-up: first-call allocations and lazy imports
        for _ in range(repeats):
            for _ in range(5):
                start = time.perf_counter()
                accuracy["ours"] = ours(acts, targets)
                seconds[OURS].append(time.perf_counter() - start)
            start = time.perf_counter()
            accuracy["sklearn"] = sklearn_per_lag(acts, targets, max_iter)
            seconds[SKLEARN].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in seconds.items()}, accuracy


# ---- memory ------------------------------------------------------------------------------------


def memory_probe(spec: dict) -> float:
    """Peak MiB of caching `hook_ssm_state` for one read position per string (fresh process)."""
    model = mamba(d_model=spec["d_model"], d_state=spec["d_state"])
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, N_LETTERS, (spec["batch"], spec["length"]), generator=gen)
    read = spec["length"] - 1

    def naive():
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=HOOK)
            return cache[HOOK][:, :, read].clone()

    def streamed():
        return gather_activations(model, tokens, HOOK, read, max_batch_bytes=STREAM_BYTES)

    workload = {"naive": naive, "streamed": streamed}[spec["variant"]]
    with torch.no_grad():
        model.run_with_cache(tokens[:1, :8], names_filter=HOOK)  # warm-up on a tiny input
    return common.measure_peak(workload)


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__).parse_args(argv)
    torch.set_num_threads(args.threads)
    print(common.header("Token-identity probes: one-solve ridge vs per-lag scikit-learn", args.threads))

    acts, targets, n_lags = speed_data(args.quick)
    sec, accuracy = time_both(acts, targets, args.repeats or 1, max_iter=100 if args.quick else 200)
    acc_ours, acc_sk = accuracy["ours"], accuracy["sklearn"]
    n, r, f = acts.shape
    mean_ours, mean_sk = sum(acc_ours) / n_lags, sum(acc_sk) / n_lags
    rows = [
        [name, f"{s:.2f}", f"{100 * acc:.1f}"] for (name, s), acc in zip(sec.items(), (mean_ours, mean_sk))
    ]
    print(
        f"{n} strings x {r} read positions ({int(0.75 * n) * r} training rows), {f} features, {n_lags} lags\n"
    )
    print(common.table(["probe", "seconds", "mean accuracy over lags (%)"], rows))
    print("\naccuracy (%) by lag, ours / sklearn:")
    print(" ".join(f"{k}:{100 * a:.0f}/{100 * b:.0f}" for k, (a, b) in enumerate(zip(acc_ours, acc_sk))))

    speedup = sec[SKLEARN] / sec[OURS]
    gap = mean_sk - mean_ours
    ok = speedup >= TARGET_SPEEDUP and gap <= TARGET_ACCURACY_GAP  # ours may be better, not 2 points worse
    print(
        f"\nratio sklearn per lag / one-solve ridge: {speedup:.1f}x (target >= {TARGET_SPEEDUP:.0f}x); "
        f"mean accuracy ours {100 * mean_ours:.1f}% vs sklearn {100 * mean_sk:.1f}% "
        f"(sklearn - ours {100 * gap:+.1f} points, target <= {100 * TARGET_ACCURACY_GAP:.0f}): "
        f"{'target met' if ok else 'TARGET MISSED'}"
    )

    if not args.no_memory:
        spec = (
            dict(d_model=32, d_state=16, length=128, batch=8)
            if args.quick
            else dict(d_model=64, d_state=16, length=1024, batch=64)
        )
        d_inner = 2 * spec["d_model"]
        full = spec["batch"] * d_inner * spec["length"] * spec["d_state"] * 4 / 2**20
        kept = spec["batch"] * d_inner * spec["d_state"] * 4 / 2**20
        naive, streamed = common.run_probes(
            MODULE, "memory_probe", [{**spec, "variant": v} for v in ("naive", "streamed")], args.threads
        )
        print(
            f"\nhook_ssm_state at length {spec['length']}: batch {spec['batch']}, D_inner {d_inner}, "
            f"N {spec['d_state']}; the whole cache holds {full:.0f} MiB, the read position {kept:.2f} MiB"
        )
        print(
            common.table(
                ["caching", "peak MiB"],
                [
                    ["run_with_cache, whole batch", common.fmt_mib(naive)],
                    [
                        f"gather_activations, <= {STREAM_BYTES / 2**20:.0f} MiB per batch",
                        common.fmt_mib(streamed),
                    ],
                ],
            )
        )
        print(f"ratio peak memory whole-batch cache / streamed: {naive / max(streamed, 1e-9):.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
