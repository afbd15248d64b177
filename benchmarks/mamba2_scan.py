"""Training-step speed and memory of interp's HookedMamba2 against Hugging Face Mamba2ForCausalLM on CPU.

One training step = forward + next-token cross-entropy + backward, on the same weights (the Hugging
Face model is built from a seed and HookedMamba2 loads its state dict) and the same tokens:

    interp      HookedMamba2, chunked SSD scan (interp/models/ssd.py), chunk chosen for the length
                (ssd.auto_chunk_size) unless --chunk-size
    hf          Mamba2ForCausalLM's pure-PyTorch path (`torch_forward`'s SSD chunked form, chunk_size
                --hf-chunk-size, its default 256); mamba-ssm / causal-conv1d are not installed on CPU

Each (implementation, length) runs in a fresh subprocess so the memory numbers do not mix. Memory:
peak resident set size during the measured steps minus the RSS just before the first one, in MiB
(activations kept for backward, gradients, temporaries, allocator slack). Throughput: tokens per
second of the best timed step after a warm-up step, by the wall clock and by process CPU time (with
--threads 1 the latter is not inflated by other processes taking the core). The first-step losses are
printed: they agree, which shows both run the same computation.

    python -m benchmarks.mamba2_scan                       # lengths 128 256 512 1024, batch 8
    python -m benchmarks.mamba2_scan --threads 1 --rounds 3  # shared machine: best of 3, alternating
    python -m benchmarks.mamba2_scan --lengths 256 --threads 1 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

IMPLS = ("interp", "hf")


def worker(args: argparse.Namespace) -> dict:
    """Runs in a subprocess: build one implementation, time `steps` training steps at one length."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    import torch.nn.functional as F
    from transformers import Mamba2Config, Mamba2ForCausalLM
    from transformers.utils import logging as hf_logging

    from benchmarks.common import measure_peak

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    heads = args.expand * args.d_model // args.head_dim
    hf_cfg = Mamba2Config(
        vocab_size=args.vocab,
        hidden_size=args.d_model,
        num_hidden_layers=args.n_layers,
        state_size=args.d_state,
        expand=args.expand,
        head_dim=args.head_dim,
        num_heads=heads,
        n_groups=args.n_groups,
        chunk_size=args.hf_chunk_size,
        use_cache=False,
    )
    hf = Mamba2ForCausalLM(hf_cfg)
    if args.impl == "interp":
        from interp.models.hf.mamba2 import load_hf_mamba2

        model = load_hf_mamba2(hf, chunk_size=args.chunk_size)
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
    times, cpu_times, losses = [], [], []

    def steps() -> None:
        deadline = time.perf_counter() + args.budget
        for _ in range(args.steps):
            t0, c0 = time.perf_counter(), time.process_time()
            losses.append(step(tokens))
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
            if time.perf_counter() > deadline:
                break

    peak = measure_peak(steps)
    timed = times[1:] if len(times) > 1 else times
    cpu_timed = cpu_times[1:] if len(cpu_times) > 1 else cpu_times
    return {
        "tok_s": args.batch * args.length / min(timed),
        "cpu_tok_s": args.batch * args.length / min(cpu_timed),
        "median_s": statistics.median(timed),
        "steps": len(times),
        "peak_mib": peak,
        "loss": losses[0],
        "threads": torch.get_num_threads(),
    }


def run_one(impl: str, length: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--impl", impl, "--length", str(length)]
    cmd += ["--steps", str(args.repeats + 1), "--budget", str(args.budget)]
    names = ("batch", "d_model", "n_layers", "d_state", "expand", "head_dim", "n_groups", "vocab", "threads")
    for name in (*names, "hf_chunk_size"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def busy_cpus() -> float:
    from benchmarks.common import busy_cpus as busy

    return busy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[128, 256, 512, 1024], help="sequence lengths"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--d-state", type=int, default=128)  # mamba-ssm's Mamba2 default
    parser.add_argument("--expand", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--n-groups", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=32)
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="interp's SSD chunk (default ssd.DEFAULT_CHUNK)"
    )
    parser.add_argument(
        "--hf-chunk-size", type=int, default=256, help="Hugging Face's chunk_size (its default)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after the warm-up step")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds of steps per run before stopping")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every cell this many times, alternating, and keep the best"
    )
    # worker mode (internal)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.quick:
        args.lengths, args.batch, args.d_model, args.d_state, args.head_dim = [64], 2, 32, 16, 16
        args.repeats, args.hf_chunk_size = 1, 32

    print(
        f"HookedMamba2 vs Hugging Face Mamba2ForCausalLM, CPU training step (forward + backward): "
        f"d_model {args.d_model}, {args.n_layers} layers, d_state {args.d_state}, head_dim {args.head_dim}, "
        f"n_groups {args.n_groups}, batch {args.batch}, threads {args.threads or 'default'}; "
        f"CPUs busy with other work at start: {busy_cpus():.1f} of {os.cpu_count()}"
    )
    best: dict[tuple[int, str], dict] = {}
    for round_ in range(args.rounds):  # interp and hf alternate, so a burst of other load hits both
        for length in args.lengths:
            res = {impl: run_one(impl, length, args) for impl in args.impls}
            for impl, r in res.items():
                best[length, impl] = _better(best.get((length, impl)), r)
            line = ", ".join(f"{k}: {_fmt_short(v)}" for k, v in res.items())
            print(f"  round {round_ + 1}, length {length}: {line}", flush=True)
    rows = [(length, {impl: best[length, impl] for impl in args.impls}) for length in args.lengths]

    def cell(r, key, fmt):
        return fmt.format(r[key]) if key in r else "-"

    print()

    def ratio(a, b, key):
        return f"{a[key] / b[key]:.1f}x" if key in a and key in b else "-"

    print(
        "| length | interp tok/s | hf tok/s | interp / hf | interp / hf, CPU time | interp MiB | hf MiB "
        "| first-step loss |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for length, res in rows:
        a, b = res.get("interp", {}), res.get("hf", {})
        losses = " / ".join(sorted({f"{r['loss']:.5f}" for r in res.values() if "loss" in r}))
        print(
            f"| {length} | {cell(a, 'tok_s', '{:,.0f}')} | {cell(b, 'tok_s', '{:,.0f}')} | "
            f"{ratio(a, b, 'tok_s')} | {ratio(a, b, 'cpu_tok_s')} | "
            f"{cell(a, 'peak_mib', '{:,.0f}')} | {cell(b, 'peak_mib', '{:,.0f}')} | {losses} |"
        )
    for length, res in rows:
        for impl, r in res.items():
            if "error" in r:
                print(f"note: {impl} at {length}: {r['error']}")
    print(
        f"Best of {args.rounds} round(s). "
        "MiB = peak RSS increase over one process's measured steps (fresh process per cell). "
        "CPU time: the best step's process CPU time, which waiting for a core does not inflate "
        "(the ratio to read on a shared machine with --threads 1)."
    )


def _better(old: dict | None, new: dict) -> dict:
    """Best of two runs of one cell: the higher throughputs, the higher (more cautious) peak memory."""
    if old is None or "error" in old:
        return new
    if "error" in new:
        return old
    out = dict(old)
    for key in ("tok_s", "cpu_tok_s", "peak_mib"):
        out[key] = max(old[key], new[key])
    return out


def _fmt_short(r: dict) -> str:
    if "error" in r:
        return r["error"]
    rates = f"{r['tok_s']:,.0f} tok/s ({r['cpu_tok_s']:,.0f} by CPU time)"
    return f"{rates}, {r['peak_mib']:,.0f} MiB ({r['steps']} steps)"


if __name__ == "__main__":
    main()
