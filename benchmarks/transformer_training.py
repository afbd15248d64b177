"""Training throughput: our `HookedTransformer` (GPT-NeoX layout) vs Hugging Face `GPTNeoXForCausalLM`.

    python -m benchmarks.transformer_training            # full run (a few minutes)
    python -m benchmarks.transformer_training --quick    # smoke test

One training step = forward, next-token cross-entropy over all positions, backward, AdamW step,
`zero_grad(set_to_none=True)`. Both models have the same shape (d_model, layers, heads, d_mlp = 4
d_model, vocabulary 30, parallel residual, rotary on 25% of each head's dims, exact GELU, untied
embeddings, biases everywhere) and start from the same weights: ours are copied from the HF model,
and the benchmark asserts that both then give the same logits, so both compute the same function.
HF runs with `attn_implementation="sdpa"` (the fused `scaled_dot_product_attention`, its default
and fastest CPU path); ours uses the same kernel whenever no hook reads attention scores/patterns.
The loss is computed identically outside both models (HF gets no `labels`). No hooks are attached.

Also measured, ours only (informative): ALiBi and Hard-ALiBi positions, which pass an additive
[heads, P, P] bias to the same fused kernel instead of using `is_causal`.

Tokens/s = batch * length / median step time. Peak memory: see `benchmarks/common.py` (a fresh
interpreter per measurement): RSS high-water mark during two training steps above the RSS
just before them (model, optimizer and batch already built, AdamW state not yet allocated), i.e.
activations + gradients + optimizer state + allocator overhead. Target: ours / HF >= 1.0x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from benchmarks import common
from benchmarks.common import Size
from interp.models.transformer import HookedTransformer, TransformerConfig

MODULE = "benchmarks.transformer_training"  # where the memory probes import `memory_probe` from
VOCAB = 30
TARGET_RATIO = 1.0


def sizes(quick: bool) -> list[Size]:
    if quick:
        return [Size(64, 2, 4, 64, batch=4)]
    return [
        Size(d, layers, heads, length)
        for d, layers, heads in ((128, 2, 4), (256, 4, 8))
        for length in (128, 512)
    ]


# ---- the two models ----------------------------------------------------------------------------


def hf_model(size: Size) -> GPTNeoXForCausalLM:
    cfg = GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=size.d_model,
        num_hidden_layers=size.n_layers,
        num_attention_heads=size.n_heads,
        intermediate_size=4 * size.d_model,
        hidden_act="gelu",
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        use_parallel_residual=True,
        tie_word_embeddings=False,
        use_cache=False,
        attn_implementation="sdpa",
    )
    model = GPTNeoXForCausalLM(cfg)
    assert model.config._attn_implementation == "sdpa"
    return model


def our_model(size: Size, positional: str = "rope") -> HookedTransformer:
    return HookedTransformer(
        TransformerConfig(
            d_vocab=VOCAB,
            d_model=size.d_model,
            n_layers=size.n_layers,
            n_heads=size.n_heads,
            positional=positional,
            rotary_pct=0.25,
            parallel_residual=True,
            act_fn="gelu",
        )
    )


def copy_hf_weights(hf: GPTNeoXForCausalLM, ours: HookedTransformer) -> None:
    """Load the HF model's weights into ours (same fused qkv layout, so a plain copy)."""
    hf_state, state = hf.state_dict(), ours.state_dict()
    head = "lm_head.weight" if "lm_head.weight" in hf_state else "embed_out.weight"  # transformers < 5
    names = {"embed.weight": "gpt_neox.embed_in.weight", "unembed.weight": head}
    for ln in ("weight", "bias"):
        names[f"ln_final.{ln}"] = f"gpt_neox.final_layer_norm.{ln}"
    parts = {
        "ln1": "input_layernorm",
        "ln2": "post_attention_layernorm",
        "attn.qkv": "attention.query_key_value",
        "attn.out": "attention.dense",
        "mlp.fc_in": "mlp.dense_h_to_4h",
        "mlp.fc_out": "mlp.dense_4h_to_h",
    }
    for i in range(len(ours.blocks)):
        for ours_part, hf_part in parts.items():
            for p in ("weight", "bias"):
                names[f"blocks.{i}.{ours_part}.{p}"] = f"gpt_neox.layers.{i}.{hf_part}.{p}"
    assert set(names) == set(state), sorted(set(state) ^ set(names))
    ours.load_state_dict({k: hf_state[v] for k, v in names.items()})


def check_same_function(hf: GPTNeoXForCausalLM, ours: HookedTransformer, tokens: torch.Tensor) -> None:
    with torch.no_grad():
        diff = (hf(input_ids=tokens).logits - ours(tokens)).abs().max().item()
    assert diff < 1e-4, f"ours and HF disagree by {diff:.2e}: not the same model"


def training_step(model: torch.nn.Module, opt: torch.optim.Optimizer, tokens: torch.Tensor, hf: bool) -> None:
    logits = model(input_ids=tokens).logits if hf else model(tokens)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def build(size: Size, impl: str, seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer, bool]:
    """impl: "hf" or one of our positional variants ("rope", "alibi", "hard_alibi")."""
    torch.manual_seed(seed)
    hf = hf_model(size)
    model = hf
    if impl != "hf":
        model = our_model(size, impl)
        if impl == "rope":
            copy_hf_weights(hf, model)
    model.train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3), impl == "hf"


def memory_probe(spec: dict) -> float:
    """Peak MiB of two training steps (runs in a fresh process, see common.run_probes)."""
    size, impl = Size(**spec["size"]), spec["impl"]
    tiny = Size(size.d_model, size.n_layers, size.n_heads, 8, batch=1)
    model, opt, is_hf = build(tiny, impl)
    training_step(model, opt, torch.randint(0, VOCAB, (1, 8)), is_hf)  # warm-up on tiny inputs
    model, opt, is_hf = build(size, impl)
    tokens = torch.randint(0, VOCAB, (size.batch, size.length))

    def two_steps() -> None:
        training_step(model, opt, tokens, is_hf)
        training_step(model, opt, tokens, is_hf)

    return common.measure_peak(two_steps)


# ---- main --------------------------------------------------------------------------------------

IMPLS = {
    "hf": "HF GPTNeoX (sdpa)",
    "rope": "ours rope",
    "alibi": "ours alibi",
    "hard_alibi": "ours hard_alibi",
}


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__).parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    print(common.header("Transformer training step: ours vs Hugging Face GPT-NeoX", args.threads))

    results = []  # (size, {impl: tokens/s})
    for size in sizes(args.quick):
        tokens = torch.randint(
            0, VOCAB, (size.batch, size.length), generator=torch.Generator().manual_seed(0)
        )
        built = {impl: build(size, impl) for impl in IMPLS}
        check_same_function(built["hf"][0], built["rope"][0], tokens)
        steps = {
            impl: (lambda m=m, o=o, h=h, t=tokens: training_step(m, o, t, h))
            for impl, (m, o, h) in built.items()
        }
        sec = common.time_interleaved(steps, repeats=repeats, warmup=2, min_time=0.05 if args.quick else 0.2)
        results.append((size, {impl: size.batch * size.length / s for impl, s in sec.items()}))
        del built, steps

    mem: dict[tuple[Size, str], float] = {}
    if not args.no_memory:
        probed = ("hf", "rope") if args.quick else tuple(IMPLS)
        keys = [(size, impl) for size, _ in results for impl in probed]
        specs = [{"size": vars(size), "impl": impl} for size, impl in keys]
        mem = dict(zip(keys, common.run_probes(MODULE, "memory_probe", specs, args.threads)))

    rows = []
    for size, rate in results:
        for impl, name in IMPLS.items():
            rows.append(
                [
                    size.label,
                    size.batch,
                    size.length,
                    name,
                    common.fmt_rate(rate[impl]),
                    f"{rate[impl] / rate['hf']:.3f}x",
                    common.fmt_mib(mem.get((size, impl))),
                ]
            )
    print(common.table(["model", "batch", "length", "implementation", "tokens/s", "vs HF", "peak MiB"], rows))
    ratios = [rate["rope"] / rate["hf"] for _, rate in results]
    verdict = "target met" if min(ratios) >= TARGET_RATIO else "TARGET MISSED"
    print(
        f"\nratio ours rope / HF GPTNeoX sdpa (tokens/s): min {min(ratios):.3f}x, max {max(ratios):.3f}x "
        f"(target >= {TARGET_RATIO:.1f}x): {verdict}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
