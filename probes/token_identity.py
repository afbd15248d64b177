"""Which past tokens can each layer give back? Linear probes for token identity, layer x lag.

For every checkpoint, copy-task strings of one length are run through the model; at every position
from --max-lag on, a linear probe (closed-form ridge, all lags in one solve; see
interp/analysis/probing.py) decodes the token 0..max_lag positions back from each hook. Splits are by
example; a Hewitt & Liang control task gives selectivity. Writes:

    OUT/token_identity.csv   model, hook, lag, accuracy, control_accuracy, selectivity, ce_bits, chance, ...
    OUT/token_identity.png   accuracy (%) heatmap, hook (layer) x lag, one panel per model
    OUT/config.json          every setting, to reproduce the run

Default hooks per layer: the residual stream (transformer and Mamba: hook_embed and
blocks.{l}.hook_resid_post; LSTM: hook_embed and blocks.{l}.hook_hidden). Pass --hooks to probe others,
e.g. blocks.1.mixer.hook_ssm_state with --max-features 512.

Example:
    python probes/token_identity.py runs/capacity/transformer runs/capacity/mamba_d_state16 --out runs/token_identity
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch

import interp
from interp.analysis.plotting import plot_probe_heatmap
from interp.analysis.probing import SOLVERS, probe_lags
from interp.hooks import has_hooks
from interp.models import HookedModel
from interp.models.loading import atomic_write, atomic_write_text
from interp.tasks import TaskConfig, make_batch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoint folders (interp.load: interp or Hugging Face)")
    p.add_argument("--out", default="runs/token_identity", help="output folder (default runs/token_identity)")
    p.add_argument(
        "--hooks", default=None, help="comma-separated hook names (default: residual stream per layer)"
    )
    p.add_argument("--max-lag", type=int, default=8, help="decode lags 0..MAX_LAG (default 8)")
    p.add_argument("--length", type=int, default=None, help="string length (default: the task's max_len)")
    p.add_argument(
        "--n-letters", type=int, default=None, help="alphabet size (default: the checkpoint's task)"
    )
    p.add_argument("--examples", type=int, default=256, help="examples (strings); 1/4 held out (default 256)")
    p.add_argument("--solver", default="ridge", choices=SOLVERS, help="probe solver (default ridge)")
    p.add_argument("--max-features", type=int, default=None, help="PCA to this many features first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    return p.parse_args(argv)


def checkpoint_task(model: HookedModel, n_letters: int | None) -> TaskConfig:
    """The copy task a checkpoint was trained on (its letters and lengths), or a default one."""
    saved = dict(getattr(model, "checkpoint", {}).get("task") or {})
    letters = n_letters or saved.get("n_letters") or min(26, model.cfg.d_vocab - 4)
    return TaskConfig(task="copy", n_letters=letters, max_len=saved.get("max_len", 20))


def default_hooks(model: HookedModel) -> list[str]:
    """hook_embed, then one residual-stream (or LSTM hidden-state) hook per layer."""
    n_layers = getattr(model.cfg, "n_layers", 0)
    per_layer = "hook_resid_post" if has_hooks(model, "blocks.{layer}.hook_resid_post") else "hook_hidden"
    names = ["hook_embed"] + [f"blocks.{layer}.{per_layer}" for layer in range(n_layers)]
    return [name for name in names if name in model.hook_dict]


def main(argv=None) -> int:
    args = parse_args(argv)
    frames = []
    for folder in args.checkpoints:
        model = interp.load(folder, device=args.device)
        task = checkpoint_task(model, args.n_letters)
        length = args.length or task.max_len
        batch = make_batch(task, args.examples, torch.Generator().manual_seed(args.seed), length=length)
        n_pos = batch.tokens.shape[1]
        if args.max_lag >= n_pos - 1:
            raise SystemExit(
                f"--max-lag {args.max_lag} needs sequences longer than {n_pos} tokens; use --max-lag <= "
                f"{n_pos - 2} or a longer --length"
            )
        reads = torch.arange(args.max_lag, n_pos - 1)  # every position that sees max_lag tokens back
        hooks = args.hooks.split(",") if args.hooks else default_hooks(model)
        name = Path(folder).name
        for hook in hooks:
            df = probe_lags(
                model,
                batch.tokens,
                hook,
                reads,
                args.max_lag,
                solver=args.solver,
                max_features=args.max_features,
                seed=args.seed,
            )
            df.insert(0, "model", name)
            frames.append(df)
        print(f"{name}: probed {len(hooks)} hooks at {len(reads)} positions", file=sys.stderr)

    results = pd.concat(frames, ignore_index=True)
    out = Path(args.out)
    fig = plot_probe_heatmap(results, title=f"token identity: probe accuracy by lag (length {length})")
    atomic_write(out / "token_identity.csv", lambda tmp: results.to_csv(tmp, index=False))
    atomic_write(out / "token_identity.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    atomic_write_text(out / "config.json", json.dumps(vars(args), indent=2))
    print(f"wrote {out / 'token_identity.csv'} and {out / 'token_identity.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
