"""Training-step speed and memory of interp's HookedMamba against Hugging Face MambaForCausalLM on CPU.

One training step = forward + next-token cross-entropy + backward, on the same weights (the Hugging
Face model is built from a seed and HookedMamba loads its state dict) and the same tokens. Three
implementations:

    interp        HookedMamba, chunked selective scan (interp/models/scan.py)
    hf-default    MambaForCausalLM's pure-PyTorch fallback: a Python loop over positions
    hf-mambapy    MambaForCausalLM with use_mambapy=True (mamba.py's parallel scan; needs `pip install mambapy`)

Each (implementation, length) runs in a fresh subprocess so the memory numbers do not mix.
Memory column: peak resident set size (ru_maxrss) reached during the measured steps minus the RSS
just before the first step, in MiB. That counts everything the step allocates (activations kept for
backward, gradients, temporaries, allocator slack), not only tensors. Throughput: tokens per second,
best of the timed steps after the first (a single step where the time budget allows only one; a
short warm-up step at length 16 always runs first). The first-step losses are printed too: they agree across implementations, which
shows the three run the same computation.

    python benchmarks/mamba_scan.py                      # lengths 128 256 512 1024, batch 16 (~7 min)
    python benchmarks/mamba_scan.py --hf-default-max-len 1024   # + the loop path at 1024 (~10 min more)
    python benchmarks/mamba_scan.py --lengths 128 256 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

IMPLS = ("interp", "hf-default", "hf-mambapy")


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (this benchmark measures memory on Linux)")


def worker(args: argparse.Namespace) -> dict:
    """Runs in a subprocess: build one implementation, time `steps` training steps at one length."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    import torch.nn.functional as F
    from transformers import MambaConfig, MambaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.impl == "hf-mambapy":
        try:
            import mambapy  # noqa: F401
        except ImportError:
            return {"error": "mambapy not installed"}

    torch.manual_seed(0)
    hf_cfg = MambaConfig(
        vocab_size=args.vocab,
        hidden_size=args.d_model,
        num_hidden_layers=args.n_layers,
        state_size=args.d_state,
        use_cache=False,
        use_mambapy=args.impl == "hf-mambapy",
    )
    hf = MambaForCausalLM(hf_cfg)
    if args.impl == "interp":
        from interp.models.mamba import load_hf_mamba

        model = load_hf_mamba(hf)
        del hf
        forward = model
    else:
        model = hf
        forward = lambda tokens: hf(tokens).logits
    model.train()
    tokens = torch.randint(
        0, args.vocab, (args.batch, args.length), generator=torch.Generator().manual_seed(1)
    )

    def step(tokens) -> float:
        logits = forward(tokens)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss)

    step(tokens[:, :16])  # fault in library code and thread pools before taking the RSS baseline
    base = rss_mib()
    times, losses = [], []
    deadline = time.perf_counter() + args.budget
    for _ in range(args.steps):
        t0 = time.perf_counter()
        losses.append(step(tokens))
        times.append(time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            break
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    timed = times[1:] if len(times) > 1 else times
    return {
        "tok_s": args.batch * args.length / min(timed),
        "median_s": statistics.median(timed),
        "steps": len(times),
        "peak_mib": peak - base,
        "loss": losses[0],
        "threads": torch.get_num_threads(),
    }


def run_one(impl: str, length: int, args: argparse.Namespace) -> dict:
    steps = args.repeats + 1
    budget = args.budget
    if impl == "hf-default" and length > args.hf_default_max_len:
        return {"error": f"skipped (> --hf-default-max-len {args.hf_default_max_len})"}
    if impl == "hf-default" and length >= 512:
        steps = 1  # quadratic-time backward: one step is minutes already
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--impl",
        impl,
        "--length",
        str(length),
        "--steps",
        str(steps),
        "--budget",
        str(budget),
    ]
    for name in ("batch", "d_model", "n_layers", "d_state", "vocab", "threads"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {
            "error": proc.stderr.strip().splitlines()[-1]
            if proc.stderr.strip()
            else f"exit {proc.returncode}"
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[128, 256, 512, 1024], help="sequence lengths"
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after the warm-up step")
    parser.add_argument(
        "--budget", type=float, default=20.0, help="seconds of steps per run before stopping early"
    )
    parser.add_argument(
        "--hf-default-max-len",
        type=int,
        default=512,
        help="skip the Hugging Face loop path above this length (its one step at 1024 takes ~10 minutes)",
    )
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    # worker mode (internal)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args)))
        return

    print(
        f"HookedMamba vs Hugging Face MambaForCausalLM, CPU training step (forward + backward): "
        f"d_model {args.d_model}, {args.n_layers} layers, d_state {args.d_state}, batch {args.batch}, "
        f"threads {args.threads or 'default'}"
    )
    rows = []
    for length in args.lengths:
        res = {impl: run_one(impl, length, args) for impl in args.impls}
        rows.append((length, res))
        print(f"  length {length}: " + ", ".join(f"{k}: {_fmt_short(v)}" for k, v in res.items()), flush=True)

    def tok(r):
        return f"{r['tok_s']:,.0f}" if "tok_s" in r else "-"

    def mem(r):
        return f"{r['peak_mib']:,.0f}" if "peak_mib" in r else "-"

    def ratio(a, b):
        return f"{a['tok_s'] / b['tok_s']:.1f}x" if "tok_s" in a and "tok_s" in b else "-"

    print()
    head = "| length | " + " | ".join(f"{i} tok/s" for i in args.impls)
    others = [i for i in args.impls if i != "interp"]
    if "interp" in args.impls:
        head += " | " + " | ".join(f"interp / {i}" for i in others)
    head += " | " + " | ".join(f"{i} MiB" for i in args.impls) + " | first-step loss |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for length, res in rows:
        line = f"| {length} | " + " | ".join(tok(res[i]) for i in args.impls)
        if "interp" in args.impls:
            line += " | " + " | ".join(ratio(res["interp"], res[i]) for i in others)
        line += " | " + " | ".join(mem(res[i]) for i in args.impls)
        losses = sorted({f"{r['loss']:.5f}" for r in res.values() if "loss" in r})
        line += f" | {' / '.join(losses)} |"
        print(line)
    notes = {f"{i} at {length}: {r['error']}" for length, res in rows for i, r in res.items() if "error" in r}
    for note in sorted(notes):
        print(f"note: {note}")
    print("MiB = peak RSS increase over one process's measured steps (fresh process per cell).")


def _fmt_short(r: dict) -> str:
    if "error" in r:
        return r["error"]
    return f"{r['tok_s']:,.0f} tok/s, {r['peak_mib']:,.0f} MiB ({r['steps']} steps)"


if __name__ == "__main__":
    main()
