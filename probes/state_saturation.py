"""How a fixed state fills up: decodable bits of the state vs string length, for several models.

For every checkpoint and string length L, copy-task strings are run through the model and the state
is read at the separator `|` (or --read-offset relative to the first answer token); linear probes
decode every letter of the string from it (interp/analysis/saturation.py). Writes:

    OUT/saturation.csv             model, length, decodable_tokens, info_bits, string_bits, state_bits,
                                   copy_string_acc, copy_char_acc, ...   (one row per model and length)
    OUT/saturation_per_letter.csv  the probe's scores for every letter (by lag)
    OUT/state_saturation.png       decodable bits vs L, one line per model, each model's state bound
                                   drawn (or written in the legend when far above), next to copy accuracy
    OUT/config.json                every setting, to reproduce the run

The state is every layer's `hook_ssm_state` for Mamba, h and c for the LSTM, and the last residual
stream for other models (--hooks to choose). Large states are reduced to --max-features principal
components (fitted on the training examples) before the probe, so the bits are a lower bound.

Example:
    python probes/state_saturation.py runs/capacity/mamba_d_state4 runs/capacity/mamba_d_state16 \\
        runs/capacity/mamba_d_state64 --lengths 5,10,20,30,40 --out runs/saturation
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pandas as pd

import interp
from interp.analysis.plotting import plot_state_saturation
from interp.analysis.probing import SOLVERS
from interp.analysis.saturation import state_saturation
from interp.models.loading import atomic_write, atomic_write_text
from interp.tasks import TaskConfig
from interp.utils import parse_int_list


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoint folders (interp.load: interp or Hugging Face)")
    p.add_argument(
        "--out", default="runs/state_saturation", help="output folder (default runs/state_saturation)"
    )
    p.add_argument("--lengths", default="2,5,10,20,30,40", help="string lengths (default 2,5,10,20,30,40)")
    p.add_argument(
        "--n-letters", type=int, default=None, help="alphabet size (default: the first checkpoint's)"
    )
    p.add_argument("--examples", type=int, default=1024, help="probe examples per length (default 1024)")
    p.add_argument("--copy-examples", type=int, default=256, help="examples for copy accuracy (default 256)")
    p.add_argument("--read-offset", type=int, default=-1, help="read at answer_start + this (-1: separator)")
    p.add_argument("--hooks", default=None, help="comma-separated state hooks (default: the model's state)")
    p.add_argument("--max-features", type=int, default=512, help="PCA components per probe (default 512)")
    p.add_argument("--solver", default="ridge", choices=SOLVERS, help="probe solver (default ridge)")
    p.add_argument(
        "--y", default="info_bits", choices=("info_bits", "decodable_tokens"), help="plotted value"
    )
    p.add_argument(
        "--figure", default=None, help="also copy the PNG here (e.g. docs/figures/state_saturation.png)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    lengths = parse_int_list(args.lengths)
    models = [(Path(folder).name, interp.load(folder, device=args.device)) for folder in args.checkpoints]
    saved = dict(getattr(models[0][1], "checkpoint", {}).get("task") or {})
    n_letters = args.n_letters or saved.get("n_letters") or min(26, models[0][1].cfg.d_vocab - 4)
    task = TaskConfig(task="copy", n_letters=n_letters, max_len=max(lengths))
    summaries, letters = [], []
    for name, model in models:
        result = state_saturation(
            model,
            task,
            lengths,
            hooks=args.hooks.split(",") if args.hooks else None,
            n_examples=args.examples,
            read_offset=args.read_offset,
            copy_examples=args.copy_examples,
            seed=args.seed,
            name=name,
            solver=args.solver,
            max_features=args.max_features,
        )
        summaries.append(result.summary)
        letters.append(result.per_letter)
        row = result.summary.iloc[-1]
        print(f"{name}: {row['info_bits']:.1f} bits decodable at L={row['length']}", file=sys.stderr)

    summary = pd.concat(summaries, ignore_index=True)
    per_letter = pd.concat(letters, ignore_index=True)
    out = Path(args.out)
    title = f"state saturation, copy |V|={n_letters}"
    fig = plot_state_saturation(summary, y=args.y, title=title, train_max_len=saved.get("max_len"))
    atomic_write(out / "saturation.csv", lambda tmp: summary.to_csv(tmp, index=False))
    atomic_write(out / "saturation_per_letter.csv", lambda tmp: per_letter.to_csv(tmp, index=False))
    atomic_write(out / "state_saturation.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    atomic_write_text(out / "config.json", json.dumps({**vars(args), "task": task.to_dict()}, indent=2))
    if args.figure:
        atomic_write(args.figure, lambda tmp: shutil.copyfile(out / "state_saturation.png", tmp))
    print(f"wrote {out / 'saturation.csv'} and {out / 'state_saturation.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
