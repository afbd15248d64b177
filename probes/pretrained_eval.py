"""Section 4 of the paper on pretrained models: phone-book lookup, copying natural text, or QA over paragraphs.

Every model (an interp / Hugging Face folder or a hub name; `NAME=PATH` sets the name shown in the
plot) is loaded with `interp.load`, given the same seeded prompts (built with its own tokenizer), decoded
greedily, and scored. Writes:

    OUT/results.csv       model, task, x, exact, f1, n, seconds, prompts_per_s   (x: entries / tokens)
    OUT/predictions.csv   one row per prompt: model, task, x, answer, prediction, exact, f1
    OUT/<task>.png        accuracy (%) vs x, one line per model
    OUT/config.json       every setting

Examples:
    python probes/pretrained_eval.py EleutherAI/pythia-410m state-spaces/mamba-370m-hf --task phonebook
    python probes/pretrained_eval.py pythia=models/pythia-410m mamba=models/mamba-370m-hf \\
        --task copy_text --text book.txt --lengths 25,50,100,200,400
    python probes/pretrained_eval.py models/pythia-410m --task qa --squad dev-v2.0.json --bins 0,100,200,400,800

Offline (HF_HUB_OFFLINE=1) only local folders and already cached hub models work.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import interp  # noqa: E402
from interp.analysis.pretrained_evals import (  # noqa: E402
    TASKS,
    phonebook_prompts,
    qa_prompts,
    read_squad,
    run_eval,
    summarize,
    text_copy_prompts,
)
from interp.models.loading import atomic_write, atomic_write_text  # noqa: E402
from interp.utils import parse_int_list, resolve_device  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="model folders or hub names; NAME=PATH to name one")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--out", default=None, help="output folder (default runs/pretrained_<task>)")
    p.add_argument("--sizes", default="5,10,20,40,80", help="phonebook: entries per book (default 5,...,80)")
    p.add_argument("--n-shots", type=int, default=2, help="phonebook: solved examples (default 2)")
    p.add_argument("--text", default=None, help="copy_text: a UTF-8 text file to take passages from")
    p.add_argument("--lengths", default="25,50,100,200", help="copy_text: passage lengths in tokens")
    p.add_argument(
        "--n-given", type=int, default=2, help="copy_text: passage tokens given after the separator"
    )
    p.add_argument("--squad", default=None, help="qa: SQuAD-style JSON file")
    p.add_argument("--bins", default="0,100,200,400,800,1600", help="qa: paragraph-length bin edges (tokens)")
    p.add_argument("--max-examples", type=int, default=None, help="qa: use the first N questions")
    p.add_argument("--max-new-tokens", type=int, default=16, help="qa: tokens generated per answer")
    p.add_argument("--n", type=int, default=20, help="prompts per size / length (default 20)")
    p.add_argument(
        "--too-long",
        choices=("skip", "raise"),
        default="skip",
        help="prompts longer than a model's context (Pythia: 2,048 tokens, about 180 phone-book entries): "
        "skip them for that model and say so (default), or stop with an error",
    )
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or hub name for models without one")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def full_xs(args: argparse.Namespace) -> list[int]:
    """The x values asked for (book sizes or passage lengths)."""
    return parse_int_list(args.sizes if args.task == "phonebook" else args.lengths)


def build_prompts(args: argparse.Namespace, tokenizer, n_ctx: int | None) -> list:
    if args.task == "phonebook":
        return phonebook_prompts(
            tokenizer, parse_int_list(args.sizes), args.n, args.n_shots, args.seed, n_ctx, args.too_long
        )
    if args.task == "copy_text":
        if args.text is None:
            raise ValueError("--task copy_text needs --text FILE (natural text to copy passages from)")
        text = Path(args.text).read_text(encoding="utf-8")
        return text_copy_prompts(
            tokenizer,
            text,
            parse_int_list(args.lengths),
            args.n,
            n_given=args.n_given,
            seed=args.seed,
            n_ctx=n_ctx,
            too_long=args.too_long,
        )
    if args.squad is None:
        raise ValueError("--task qa needs --squad FILE (SQuAD-style JSON)")
    return qa_prompts(tokenizer, args.squad, args.max_new_tokens, args.max_examples, n_ctx, args.too_long)


def plot(summary: pd.DataFrame, task: str) -> plt.Figure:
    xlabel = {"phonebook": "entries in the phone book", "copy_text": "passage length (tokens)"}.get(
        task, "paragraph length (tokens, bin start)"
    )
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, part in summary.groupby("model", sort=False):
        ax.plot(part["x"].astype(float), part["exact"] * 100, marker="o", label=f"{name} (exact)")
        if task == "qa":
            ax.plot(
                part["x"].astype(float), part["f1"] * 100, marker="s", linestyle="--", label=f"{name} (F1)"
            )
    ax.set(xlabel=xlabel, ylabel="accuracy (%)", ylim=(-3, 103), title=f"{task}: pretrained models")
    if task != "qa":
        ax.set_xscale("log", base=2)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or f"runs/pretrained_{args.task}")
    try:
        device = resolve_device(args.device)
        summaries, tables = [], []
        for spec in args.models:
            name, _, path = spec.rpartition("=") if "=" in spec else (Path(spec).name, "", spec)
            model = interp.load(path, device=device, tokenizer=args.tokenizer)
            if getattr(model, "tokenizer", None) is None:
                raise ValueError(f"{path} has no tokenizer; pass --tokenizer FOLDER_OR_HUB_NAME")
            prompts = build_prompts(args, model.tokenizer, getattr(model.cfg, "n_ctx", None))
            if not prompts:
                raise ValueError(f"no prompts fit {name}'s context; use smaller sizes/lengths")
            if args.task == "qa":  # questions with an answer, as qa_prompts reads them
                expected = len(read_squad(args.squad)[: args.max_examples])
            else:
                expected = len(full_xs(args)) * args.n
            if len(prompts) < expected:
                gone = sorted(set(full_xs(args)) - {p.x for p in prompts}) if args.task != "qa" else []
                print(
                    f"{name}: skipped {expected - len(prompts)} of {expected} prompts, longer than its context "
                    f"of {model.cfg.n_ctx} tokens"
                    + (f" (all of x={','.join(map(str, gone))})" if gone else "")
                    + "; --too-long raise stops instead",
                    file=sys.stderr,
                )
            start = time.perf_counter()
            table = run_eval(model, prompts, batch_size=args.batch_size, name=name, progress=not args.quiet)
            seconds = time.perf_counter() - start
            bins = parse_int_list(args.bins) if args.task == "qa" else None
            summary = summarize(table, bins=bins).assign(
                seconds=seconds, prompts_per_s=len(prompts) / seconds
            )
            print(summary.to_string(index=False))
            summaries.append(summary)
            tables.append(table)
            del model
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = pd.concat(summaries, ignore_index=True)
    fig = plot(results, args.task)
    atomic_write(out / "results.csv", lambda tmp: results.to_csv(tmp, index=False))
    atomic_write(out / "predictions.csv", lambda tmp: pd.concat(tables).to_csv(tmp, index=False))
    atomic_write(out / f"{args.task}.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    atomic_write_text(out / "config.json", json.dumps(vars(args), indent=2))
    print(f"wrote {out}/results.csv, predictions.csv, {args.task}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
