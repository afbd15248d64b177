"""How well does edge attribution patching (EAP, EAP-IG) agree with patching on a trained copy model?

Trains a small copy model (2-layer transformer by default; `--arch mamba` for Mamba's mixer nodes,
`--layers` for depth),
then on clean / corrupted copy batches (other strings of the same length, logit difference of the
clean vs the corrupted next token on the answer positions, noising) prints:

- heads: each head's EAP and EAP-IG node score (the sum of its outgoing edges' scores, i.e. the
  first-order effect of patching its output) against activation patching of its `hook_z`: Spearman
  rank correlation, Pearson correlation, overlap of the top-k heads;
- edges: EAP and EAP-IG against exact edge patching (`edge_patching`, one patched edge per run):
  Spearman over all edges, overlap of the top-k edges;
- circuits: the faithfulness of the top-k edges of each method (every other edge corrupted);
- wall time of EAP, EAP-IG and edge patching (`--threads`, default 1).

    python probes/eap_agreement.py                      # transformer, 600 steps
    python probes/eap_agreement.py --arch mamba --steps 400
    python probes/eap_agreement.py --quick              # a smoke test, seconds
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
from scipy.stats import pearsonr, spearmanr

from interp.analysis.circuits import circuit_from_edges, render
from interp.analysis.evaluation import evaluate
from interp.analysis.patching import (
    circuit_faithfulness,
    edge_attribution_patching,
    edge_patching,
    make_metric,
    paired_batches,
    patch_grid,
)
from interp.io import atomic_write
from interp.models import build_model
from interp.tasks import TaskConfig
from interp.training import TrainConfig, train

KEY = ["sender", "receiver", "input"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="transformer", choices=["transformer", "mamba"])
    p.add_argument("--steps", type=int, default=600, help="training steps (default 600)")
    p.add_argument("--max-len", type=int, default=12, help="longest training string (default 12)")
    p.add_argument(
        "--length", type=int, default=10, help="string length of the patching batches (default 10)"
    )
    p.add_argument("--examples", type=int, default=16, help="clean/corrupted pairs (default 16)")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--ig-steps", type=int, default=10, help="EAP-IG integration steps (default 10)")
    p.add_argument("--top", type=int, default=3, help="k of the top-k head overlap (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="folder for edges.csv, summary.json and circuit pictures")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    return p.parse_args(argv)


def trained_model(args):
    task = TaskConfig(task="copy", n_letters=26, min_len=1, max_len=args.max_len)
    torch.manual_seed(args.seed)
    opts = {"d_vocab": task.vocab.size, "d_model": args.d_model, "n_layers": args.layers}
    if args.arch == "transformer":
        opts.update(n_heads=args.n_heads, positional="rope", n_ctx=4 * args.max_len + 8)
    model = build_model(args.arch, **opts)
    cfg = TrainConfig(steps=args.steps, lr=args.lr, warmup_steps=20, eval_every=args.steps, seed=args.seed)
    train(model, task, cfg, progress=False)
    return model.eval(), task


def overlap(a: pd.Series, b: pd.Series, k: int) -> float:
    """Fraction of the top-k (by |value|) of a that are in the top-k of b."""
    top = lambda s: set(s.abs().sort_values(ascending=False).index[:k])  # noqa: E731
    return len(top(a) & top(b)) / k


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.steps, args.examples, args.length, args.d_model = 40, 4, 6, 32
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, task = trained_model(args)
    acc = evaluate(model, task, lengths=[args.length], n_examples=64).string_acc.item()
    print(
        f"{args.arch}: trained {args.steps} steps in {time.perf_counter() - t0:.0f}s; "
        f"held-out string accuracy at length {args.length}: {acc:.3f}"
    )
    clean, corrupt = paired_batches(task, args.examples, args.length, seed=args.seed + 1)
    metric = make_metric("logit_diff", clean, corrupt)
    run = (model, clean.tokens, corrupt.tokens, metric)

    timed = {}

    def clock(name, fn):
        start = time.perf_counter()
        out = fn()
        timed[name] = time.perf_counter() - start
        return out

    eap = clock("eap", lambda: edge_attribution_patching(*run))
    ig = clock("eap-ig", lambda: edge_attribution_patching(*run, method="eap-ig", steps=args.ig_steps))
    exact = clock("edge patching", lambda: edge_patching(*run))
    print(
        f"clean metric {eap.attrs['clean_metric']:.3f}, corrupted {eap.attrs['corrupt_metric']:.3f}; "
        f"{len(exact)} edges"
    )
    print(
        "wall time: "
        + ", ".join(f"{k} {v:.2f}s" for k, v in timed.items())
        + f" (edge patching / EAP = {timed['edge patching'] / timed['eap']:.0f}x)"
    )
    summary: dict = {
        "arch": args.arch,
        "steps": args.steps,
        "string_acc": acc,
        "n_edges": len(exact),
        "seconds": timed,
    }

    # heads: node score = sum of a head's outgoing edges, against activation patching of hook_z
    if args.arch == "transformer":
        heads = patch_grid(*run, "z", heads=True, mode="noise")
        heads.index = [f"L{r.layer}H{r.head}" for r in heads.itertuples()]
        table = pd.DataFrame({"patching": heads.effect})
        for name, df in (("eap", eap), ("eap-ig", ig)):
            table[name] = df.groupby("sender").effect.sum().reindex(table.index)
        print("\nheads (noising effect, fraction of the gap):")
        print(table.round(3).to_string())
        summary["heads"] = {}
        for name in ("eap", "eap-ig"):
            row = {
                "spearman": spearmanr(table.patching, table[name]).statistic,
                "pearson": pearsonr(table.patching, table[name]).statistic,
                f"top{args.top}_overlap": overlap(table.patching, table[name], args.top),
            }
            summary["heads"][name] = row
            print(
                f"  {name:7s} vs activation patching: Spearman {row['spearman']:.3f}, Pearson "
                f"{row['pearson']:.3f}, top-{args.top} overlap {row[f'top{args.top}_overlap']:.2f}"
            )

    # edges: against exact edge patching
    merged = exact.merge(eap, on=KEY, suffixes=("", "_eap")).merge(ig, on=KEY, suffixes=("", "_ig"))
    summary["edges"] = {}
    print("\nedges vs edge patching:")
    for name, col in (("eap", "effect_eap"), ("eap-ig", "effect_ig")):
        row = {"spearman": spearmanr(merged.effect, merged[col]).statistic}
        ks = [k for k in (5, 10, 20) if k < len(merged)]  # the top k of every edge overlap trivially
        for k in ks:
            row[f"top{k}_overlap"] = overlap(merged.effect, merged[col], k)
        summary["edges"][name] = row
        tops = " / ".join(f"{row[f'top{k}_overlap']:.2f}" for k in ks)
        print(f"  {name:7s}: Spearman {row['spearman']:.3f}, top-{'/'.join(map(str, ks))} overlap {tops}")

    # circuits: faithfulness of each method's top-k edges
    ks = [k for k in (5, 10, 20, 40) if k < len(exact)] or [len(exact)]
    summary["faithfulness"] = {}
    print("\nfaithfulness of the top-k edges (fraction of the clean-corrupt gap kept):")
    print("  k      " + "".join(f"{k:>8d}" for k in ks))
    for name, df in (("eap", eap), ("eap-ig", ig), ("edge patching", exact)):
        vals = [circuit_faithfulness(*run, circuit_from_edges(df, k=k))["faithfulness"] for k in ks]
        summary["faithfulness"][name] = dict(zip(ks, vals))
        print(f"  {name:13s}" + "".join(f"{v:8.3f}" for v in vals))

    if args.out:
        out = Path(args.out)
        atomic_write(out / "edges.csv", lambda tmp: merged.to_csv(tmp, index=False))
        render(
            circuit_from_edges(ig, k=min(12, len(ig)), title=f"trained {args.arch}: EAP-IG top 12"),
            out / "circuit",
        )
        atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
        print(f"\nwrote {out}/edges.csv, circuit.png, summary.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
