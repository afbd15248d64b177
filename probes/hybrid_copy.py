"""How much attention does a state-space model need to copy, and where does the copy happen? (issue 14, part 4)

Small CPU scale: at roughly equal parameter count, train pure Mamba, pure Mamba-2, hybrids with one and
two attention layers, and a transformer on the copy task with the same recipe; report held-out string
accuracy at the training lengths and at longer strings. Then, inside the best hybrid:

- which layer does the copy: zero-ablate each layer's output (hook_mixer_out / hook_attn_out) and
  measure the accuracy that is left;
- the lookup detector (`interp.analysis.heads.target_score` with `lookup_targets`): attention mass of each
  attention head on the source position of the token being copied, and the same for the Mamba-2
  layers' exact hidden attention (`ssm_attention`, row-normalised |M|);
- how full the SSM states are: `interp.analysis.saturation.state_saturation` on each SSM layer's
  `hook_ssm_state` at the separator, i.e. how many of the string's letters linear probes decode from the
  state (decodable tokens, of L) and the bits they recover (info_bits, of string_bits).

    python probes/hybrid_copy.py --out runs/hybrid_copy            # ~10 min on 1 busy CPU
    python probes/hybrid_copy.py --steps 100 --out /tmp/hc          # smoke run

Writes results.json and prints Markdown tables. Models are small and trained briefly: read the numbers
as a comparison under one recipe, not as each architecture's best.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from interp.analysis.heads import lookup_targets, target_score
from interp.analysis.saturation import state_saturation
from interp.models import build_model
from interp.tasks import TaskConfig, make_batch

# name -> (arch, options); widths chosen so that the parameter counts are within ~30% of each other
MODELS = {
    "mamba": ("mamba", dict(d_model=64, n_layers=2, d_state=16)),
    "mamba2": ("mamba2", dict(d_model=64, n_layers=2, d_state=32, head_dim=16)),
    "hybrid-1attn": (
        "hybrid",
        dict(d_model=64, layers=["mamba2", "attn"], d_state=32, head_dim=16, n_heads=4),
    ),
    "hybrid-2attn": (
        "hybrid",
        dict(d_model=64, layers=["mamba2", "attn", "attn"], d_state=32, head_dim=16, n_heads=4),
    ),
    "transformer": ("transformer", dict(d_model=48, n_layers=2, n_heads=4, positional="hard_alibi")),
}


def train(model, task: TaskConfig, steps: int, batch_size: int, lr: float, seed: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    gen = torch.Generator().manual_seed(seed)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        batch = make_batch(task, batch_size, gen)
        loss = F.cross_entropy(model(batch.tokens).flatten(0, 1), batch.targets.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return loss.item()


@torch.no_grad()
def accuracy(model, task: TaskConfig, length: int, n: int = 256, hooks=()) -> float:
    fixed = TaskConfig.from_dict({**task.to_dict(), "min_len": length, "max_len": length})
    batch = make_batch(fixed, n, torch.Generator().manual_seed(1000 + length))
    logits = model.run_with_hooks(batch.tokens, fwd_hooks=list(hooks)) if hooks else model(batch.tokens)
    return float(batch.score(logits)[0].float().mean())


@torch.no_grad()
def inside(model, task: TaskConfig, length: int) -> dict:
    """Layer ablations, lookup scores and state fullness of one trained hybrid."""
    out: dict = {"ablation": {}, "lookup": {}, "state_fullness": {}}
    for layer, kind in enumerate(model.cfg.layers):
        name = f"blocks.{layer}.hook_{'attn_out' if kind == 'attn' else 'mixer_out' if kind != 'mlp' else 'mlp_out'}"
        out["ablation"][f"{layer}:{kind}"] = accuracy(
            model, task, length, hooks=[(name, lambda a, hook: a * 0)]
        )
    fixed = TaskConfig.from_dict({**task.to_dict(), "min_len": length, "max_len": length})
    batch = make_batch(fixed, 128, torch.Generator().manual_seed(7))
    targets = lookup_targets(batch)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in model.cfg.layers_of("attn")]
    _, cache = model.run_with_cache(batch.tokens, names_filter=names)
    for name in names:
        score = target_score(cache[name][None], targets)[0]  # [H]
        out["lookup"][name] = [round(float(s), 3) for s in score]
    for layer, M in model.ssm_attention(batch.tokens).items():
        pattern = M.abs() / M.abs().sum(-1, keepdim=True).clamp(min=1e-12)
        out["lookup"][f"blocks.{layer}.mixer (ssm_attention, mean over heads)"] = round(
            float(target_score(pattern.mean(1, keepdim=True)[None], targets)[0, 0]), 3
        )
    for layer in sorted(model.cfg.layers_of("mamba") + model.cfg.layers_of("mamba2")):
        name = f"blocks.{layer}.mixer.hook_ssm_state"  # read at the separator: the whole string is in
        sat = state_saturation(
            model, fixed, [length], hooks=[name], n_examples=1024, copy_examples=128, max_features=256
        ).summary.iloc[0]
        out["state_fullness"][name] = {
            "decodable_tokens": round(float(sat["decodable_tokens"]), 2),
            "of_letters": length,
            "info_bits": round(float(sat["info_bits"]), 1),
            "string_bits": round(float(sat["string_bits"]), 1),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--max-len", type=int, default=12, help="training string lengths 1..max-len")
    p.add_argument("--test-lengths", type=int, nargs="+", default=[8, 12, 20])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = TaskConfig(task="copy", n_letters=8, min_len=1, max_len=args.max_len)
    results, trained = {}, {}
    for name in args.models:
        arch, options = MODELS[name]
        torch.manual_seed(args.seed)
        n_ctx = {"n_ctx": 128} if arch in ("transformer", "hybrid") else {}
        model = build_model(arch, d_vocab=task.vocab.size, **options, **n_ctx)
        t0 = time.perf_counter()
        loss = train(model, task, args.steps, args.batch_size, args.lr, args.seed)
        model.eval()
        results[name] = {
            "params": model.num_params(),
            "final_loss": round(loss, 4),
            "seconds": round(time.perf_counter() - t0, 1),
            "accuracy": {length: accuracy(model, task, length) for length in args.test_lengths},
        }
        trained[name] = model
        print(name, json.dumps(results[name]), flush=True)
    hybrids = [n for n in results if MODELS[n][0] == "hybrid"]
    if hybrids:
        best = max(hybrids, key=lambda n: results[n]["accuracy"][args.max_len])
        results["inside"] = {"model": best, **inside(trained[best], task, args.max_len)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print("\n| model | params | " + " | ".join(f"acc L={n}" for n in args.test_lengths) + " |")
    print("|---|---|" + "---|" * len(args.test_lengths))
    for name in args.models:
        r = results[name]
        print(
            f"| {name} | {r['params']:,} | "
            + " | ".join(f"{r['accuracy'][n]:.2f}" for n in args.test_lengths)
            + " |"
        )
    if "inside" in results:
        print(f"\ninside {results['inside']['model']} at L={args.max_len}:")
        print(json.dumps({k: v for k, v in results["inside"].items() if k != "model"}, indent=2))


if __name__ == "__main__":
    main()
