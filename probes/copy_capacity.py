"""Copy capacity vs state size: Mamba with several d_state values and a transformer of similar size.

The paper's bound says a model with a fixed state cannot copy strings whose information
(L * log2|V| bits) clearly exceeds what the state holds. This script trains each model on the copy
task for the same number of steps on the same data, then measures string accuracy per string length,
and writes:

    OUT/results.csv       model, d_state, params, state_bits, length, string_acc, char_acc
    OUT/copy_capacity.png string accuracy (%) vs string length, one line per model
    OUT/config.json       every setting, to reproduce the run
    OUT/<model>/          each trained checkpoint (usable with `interp eval`, the probes, ...)

Example (a few minutes on 2 CPU cores):
    python probes/copy_capacity.py --out runs/capacity
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from interp.analysis.evaluation import evaluate
from interp.analysis.plotting import plot_accuracy_vs_length
from interp.models import build_model
from interp.models.loading import atomic_write, atomic_write_text
from interp.tasks import TaskConfig
from interp.training import TrainConfig, train
from interp.utils import parse_int_list


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/copy_capacity", help="output folder (default runs/copy_capacity)")
    p.add_argument("--d-states", default="4,16,64", help="Mamba state sizes to compare (default 4,16,64)")
    p.add_argument("--d-model", type=int, default=64, help="Mamba width (default 64)")
    p.add_argument("--n-layers", type=int, default=2, help="layers of every model (default 2)")
    p.add_argument("--n-letters", type=int, default=8, help="alphabet size |V| (default 8)")
    p.add_argument("--max-len", type=int, default=12, help="longest training string (default 12)")
    p.add_argument("--lengths", default="2,4,6,8,10,12,16", help="evaluation lengths (default 2,4,...,12,16)")
    p.add_argument("--steps", type=int, default=1500, help="training steps per model (default 1500)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2, help="peak learning rate (default 1e-2)")
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=400,
        help="linear warm-up (default 400: with 100, Mamba stays on the loss plateau; docs/notes/mamba_recipe.md)",
    )
    p.add_argument("--examples", type=int, default=256, help="evaluation examples per length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--no-transformer", action="store_true", help="skip the transformer baseline")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def transformer_width_matching(n_params: int, n_layers: int, d_vocab: int) -> int:
    """d_model (multiple of 16) whose transformer has about `n_params` parameters (12 d^2 per layer)."""
    d = math.sqrt(max(n_params - 2 * d_vocab * 16, 1) / (12 * n_layers))
    return max(16, int(round(d / 16)) * 16)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    task = TaskConfig(task="copy", n_letters=args.n_letters, min_len=1, max_len=args.max_len)
    lengths = parse_int_list(args.lengths)
    train_cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        device=args.device,
        eval_every=max(args.steps // 10, 1),
    )
    specs = [
        (f"mamba d_state={n}", "mamba", dict(d_model=args.d_model, n_layers=args.n_layers, d_state=n))
        for n in parse_int_list(args.d_states)
    ]
    if not args.no_transformer:
        torch.manual_seed(args.seed)
        reference = build_model("mamba", d_vocab=task.vocab.size, **specs[len(specs) // 2][2])
        width = transformer_width_matching(reference.num_params(), args.n_layers, task.vocab.size)
        specs.append(("transformer", "transformer", dict(d_model=width, n_layers=args.n_layers, n_heads=4)))

    frames = []
    for name, arch, options in specs:
        torch.manual_seed(args.seed)
        model = build_model(arch, d_vocab=task.vocab.size, **options)
        t0 = time.perf_counter()
        folder = out / name.replace(" ", "_").replace("=", "")
        train(model, task, train_cfg, out_dir=folder, progress=not args.quiet, overwrite=True)
        seconds = time.perf_counter() - t0
        df = evaluate(model, task, lengths, n_examples=args.examples, name=name)
        size = model.state_size()
        df["d_state"] = options.get("d_state")
        df["params"] = model.num_params()
        df["state_bits"] = size.bits if size else None
        df["train_seconds"] = round(seconds, 1)
        frames.append(df)
        print(f"{name}: {model.num_params():,} params, trained in {seconds:.0f} s", file=sys.stderr)

    results = pd.concat(frames, ignore_index=True)
    title = f"copy, |V|={args.n_letters}: string accuracy vs length"
    fig = plot_accuracy_vs_length(results, title=title, train_max_len=args.max_len)
    atomic_write(out / "results.csv", lambda tmp: results.to_csv(tmp, index=False))
    atomic_write(out / "copy_capacity.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    atomic_write_text(out / "config.json", json.dumps({**vars(args), "task": task.to_dict()}, indent=2))
    table = (results.pivot(index="length", columns="model", values="string_acc") * 100).round(1)
    print(table.to_string())
    print(f"wrote {out / 'results.csv'} and {out / 'copy_capacity.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
