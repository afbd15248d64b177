"""Find the copy circuit of a model: head detectors, activation/attribution/path patching, a diagram.

MODEL is a checkpoint folder (`interp train ...`), a Hugging Face folder, `hash-copy` (the paper's
hand-built 2-layer copy transformer, whose circuit is known) or `train` (train a small 2-layer
transformer on copy first, into OUT/model). The clean batch copies random strings of one length; the
corrupted batch copies other random strings of the same length; the metric is the logit difference
between the clean and the corrupted next token on the answer positions.

Writes (every file atomically):

    OUT/head_scores.csv        layer, head, score (offset_1, window_{n+1}, lookup, lookup_next), value, activity
    OUT/patching_heads.csv     layer x head patching of hook_z, noising and denoising (effect = fraction of gap)
    OUT/patching_head_pos.csv  layer x head x position noising, with the attribution-patching estimate
    OUT/patching_resid.csv     layer x position patching of the residual stream (and Mamba's mixer/state)
    OUT/paths.csv              path patching: sender head -> receiver head q/k/v, and -> logits (transformers)
    OUT/circuit.dot|png|svg    the circuit diagram (edges with effect >= --threshold)
    OUT/heatmap_heads.png, heatmap_head_pos.png, heatmap_resid.png, head_scores.png, attention_top_head.png
    OUT/summary.json, OUT/config.json

Examples:
    python probes/find_copy_circuit.py hash-copy --out runs/circuit-hash-copy
    python probes/find_copy_circuit.py train --out runs/circuit-trained --steps 1000
    python probes/find_copy_circuit.py runs/copy-hard-alibi --out runs/circuit-hard-alibi --length 16
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

from interp import load  # noqa: E402
from interp.analysis.circuits import circuit_from_path_patching, render  # noqa: E402
from interp.analysis.heads import (  # noqa: E402
    attention_patterns,
    has_attention,
    has_selective_scan,
    head_scores,
)
from interp.analysis.patching import (  # noqa: E402
    activation_patching,
    attribution_patching,
    make_metric,
    paired_batches,
    patch_grid,
    patch_specs,
    path_patching,
)
from interp.analysis.plotting import (  # noqa: E402
    plot_attention_pattern,
    plot_head_scores,
    plot_patching_heatmap,
)
from interp.hooks import components, model_label  # noqa: E402
from interp.models import build_model  # noqa: E402
from interp.models.hash_copy import build_hash_copy  # noqa: E402
from interp.models.loading import atomic_write, atomic_write_text  # noqa: E402
from interp.tasks import TaskConfig  # noqa: E402
from interp.training import TrainConfig, train  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="checkpoint folder, Hugging Face folder, 'hash-copy' or 'train'")
    p.add_argument("--out", default="runs/copy_circuit", help="output folder (default runs/copy_circuit)")
    p.add_argument("--length", type=int, default=None, help="string length (default: 20, or the trained max)")
    p.add_argument("--examples", type=int, default=16, help="clean/corrupted example pairs (default 16)")
    p.add_argument(
        "--n-letters", type=int, default=None, help="alphabet size (default: the checkpoint's, or 8)"
    )
    p.add_argument("--ngram", type=int, default=3, help="n-gram size of the hash-copy model (default 3)")
    p.add_argument(
        "--threshold", type=float, default=0.05, help="circuit edges: min path effect (default 0.05)"
    )
    p.add_argument("--seed", type=int, default=0)
    # training (MODEL = train)
    p.add_argument("--steps", type=int, default=800, help="training steps for MODEL=train (default 800)")
    p.add_argument("--max-len", type=int, default=12, help="longest training string (default 12)")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-heads", type=int, default=2)
    p.add_argument("--positional", default="rope", help="rope | nope | alibi | hard_alibi (default rope)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="small settings for a smoke test")
    return p.parse_args(argv)


def get_model(args: argparse.Namespace, out: Path):
    """(model, task) for the MODEL argument."""
    if args.model == "hash-copy":
        n_letters = args.n_letters or 8
        task = TaskConfig(task="copy", n_letters=n_letters, max_len=200, unique_ngrams=True, ngram=args.ngram)
        return build_hash_copy(n_letters, args.ngram, n_ctx=512), task
    if args.model == "train":
        n_letters = args.n_letters or 26
        task = TaskConfig(task="copy", n_letters=n_letters, min_len=1, max_len=args.max_len)
        torch.manual_seed(args.seed)
        model = build_model(
            "transformer",
            d_vocab=task.vocab.size,
            d_model=args.d_model,
            n_layers=2,
            n_heads=args.n_heads,
            positional=args.positional,
            n_ctx=4 * args.max_len + 8,
        )
        cfg = TrainConfig(
            steps=args.steps, lr=args.lr, warmup_steps=20, eval_every=args.steps, seed=args.seed
        )
        result = train(model, task, cfg, out_dir=out / "model", progress=False, overwrite=True)
        print(f"trained: held-out string accuracy {result.metrics[-1]['string_acc']:.3f}", file=sys.stderr)
        return model, task
    model = load(args.model)
    saved = getattr(model, "checkpoint", {}).get("task") or {}
    n_letters = args.n_letters or saved.get("n_letters") or model.cfg.d_vocab - 4
    task = TaskConfig(task="copy", n_letters=n_letters, min_len=1, max_len=saved.get("max_len", 20))
    return model, task


def save_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def save_fig(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def node_roles(scores: pd.DataFrame, at_least: float = 0.5) -> dict[str, str]:
    """Head name -> its strongest detector score when that reaches `at_least` (live heads only)."""
    live = scores[scores["activity"] >= 0.01]
    best = live.sort_values("value").groupby(["layer", "head"]).tail(1)
    return {
        f"L{r.layer}H{r.head}": f"{r.score} {r.value:.2f}" for r in best.itertuples() if r.value >= at_least
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.examples, args.steps = min(args.examples, 4), min(args.steps, 60)
    out = Path(args.out)
    t0 = time.perf_counter()
    model, task = get_model(args, out)
    model.eval()
    length = args.length or (12 if args.quick else min(task.max_len, 20))
    clean, corrupt = paired_batches(task, args.examples, length, seed=args.seed)
    metric = make_metric("logit_diff", clean, corrupt)
    n_pos = clean.tokens.shape[1]
    summary: dict = {"model": args.model, "arch": model_label(model), "length": length, "n_pos": n_pos}
    attention = has_attention(model)

    # 1. detectors
    window = args.ngram + 1
    if attention or has_selective_scan(model):
        scores = head_scores(model, clean, offsets=(1,), windows=(window,))
        save_csv(scores, out / "head_scores.csv")
        save_fig(plot_head_scores(scores, title="head detector scores (copy task)"), out / "head_scores.png")
    else:
        scores = None

    # 2. activation patching: heads, heads x positions, residual stream (and recurrent state)
    if attention:
        heads = pd.concat(
            [
                patch_grid(model, clean.tokens, corrupt.tokens, metric, "z", heads=True, mode=mode).assign(
                    mode=mode
                )
                for mode in ("noise", "denoise")
            ]
        )
        save_csv(heads, out / "patching_heads.csv")
        noise = heads[heads["mode"] == "noise"]
        save_fig(
            plot_patching_heatmap(noise, title="noising each head's output (hook_z)"),
            out / "heatmap_heads.png",
        )
        specs = patch_specs(model, "z", heads=True, positions=True, n_pos=n_pos)
        by_pos = activation_patching(model, clean.tokens, corrupt.tokens, metric, specs, mode="noise")
        approx = attribution_patching(model, clean.tokens, corrupt.tokens, metric, specs, mode="noise")
        by_pos["attribution_effect"] = approx["effect"].values
        save_csv(by_pos, out / "patching_head_pos.csv")
        by_pos = by_pos.assign(layer_head=[f"L{r.layer}H{r.head}" for r in by_pos.itertuples()])
        save_fig(
            plot_patching_heatmap(
                by_pos, index="layer_head", columns="pos", title="noising hook_z per position"
            ),
            out / "heatmap_head_pos.png",
        )
        summary["attribution_vs_activation_corr"] = float(by_pos["effect"].corr(by_pos["attribution_effect"]))
    else:
        noise = None
    available = components(model)
    resid_components = [
        c for c in ("resid_pre", "mixer_out", "ssm_state", "hidden", "cell") if c in available
    ]
    resid = pd.concat(
        [
            patch_grid(model, clean.tokens, corrupt.tokens, metric, c, positions=True, mode="noise")
            for c in resid_components
        ]
    )
    save_csv(resid, out / "patching_resid.csv")
    resid = resid.assign(where=[f"L{r.layer} {r.component}" for r in resid.itertuples()])
    save_fig(
        plot_patching_heatmap(resid, index="where", columns="pos", title="noising by layer and position"),
        out / "heatmap_resid.png",
    )

    # 3. path patching and the circuit (attention heads)
    if attention:
        paths = path_patching(model, clean.tokens, corrupt.tokens, metric, mode="noise")
        save_csv(paths, out / "paths.csv")
        roles = node_roles(scores)
        title = f"{args.model}: copy circuit"
        graph = circuit_from_path_patching(paths, threshold=args.threshold, roles=roles, title=title)
        written = render(graph, out / "circuit")
        summary["circuit_edges"] = graph.to_frame().to_dict(orient="records")
        summary["renderer"] = written["renderer"]

        top = noise.sort_values("effect", ascending=False).iloc[0]
        layer, head = int(top["layer"]), int(top["head"])
        lookup = scores[(scores["score"] == "lookup") & (scores["layer"] == layer) & (scores["head"] == head)]
        summary["top_head"] = {"head": f"L{layer}H{head}", "effect": float(top["effect"])}
        summary["top_head"]["lookup_score"] = float(lookup["value"].iloc[0])
        pattern = attention_patterns(model, clean.tokens[:1])[layer, 0, head]
        fig = plot_attention_pattern(
            pattern, labels=list(clean.text(0)), title=f"L{layer}H{head}: top head by noising effect"
        )
        save_fig(fig, out / "attention_top_head.png")

    summary["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "config.json", json.dumps({**vars(args), "task": task.to_dict()}, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "circuit_edges"}, indent=2))
    for edge in summary.get("circuit_edges", []):
        print(f"  {edge['sender']:>6} -> {edge['receiver']:<6} {edge['input']:<6} {edge['weight']:.2f}")
    print(f"wrote {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
