"""Cost per model size of the paper's pretrained comparison: interp `generate` vs Hugging Face `generate`.

    python -m benchmarks.pretrained_cost --threads 1                        # default sizes (see --models)
    python -m benchmarks.pretrained_cost --threads 1 --models pythia-1b,mamba-790m --n 1
    python -m benchmarks.pretrained_cost --quick                            # tiny models, a smoke test

Time and memory do not depend on the weights' values, so this measures the real cost on models with the
published architectures of Pythia (GPT-NeoX) and Mamba and random weights: no download needed. Each
model is built as a Hugging Face `GPTNeoXForCausalLM` / `MambaForCausalLM` (its ordinary random
initialisation), converted with our loaders (`from_hf_gpt_neox`, `load_hf_mamba`), and both run the same
phone-book prompts in the same process, greedy, one prompt at a time (batch 1: the cost of one prompt;
`generate` can also batch prompts of unequal length with left padding, which mostly speeds up decoding),
in alternating order, `--repeats` times each (median; default 1). One model is measured at a time and
freed before the next.

Prompts. The real GPT-NeoX tokenizer is not available offline. By default prompts are tokenized with a
byte-level BPE that uses GPT-NeoX's pre-tokenizer and is trained here on phone-book text; its vocabulary
size (1,500) was chosen so that its prompt lengths match the GPT-NeoX-20B tokenizer's (Pythia's and
Mamba's) within 1% on average at 20-320 entries (about 11 tokens per entry). `--tokenizer PATH` uses a
real one (a tokenizer.json or a folder with one, e.g. a downloaded models/pythia-160m).

Reported per model and book size: prompt and answer tokens, seconds per prompt (prefill + greedy
decoding) for both, their ratio, and how many generated tokens agree. Per model: parameters, weight
memory (fp32, bf16), peak memory of one prompt at the largest measured size above the loaded weights
(RSS high-water mark after `malloc_trim`, benchmarks/common.py `measure_peak`), the whole process's
peak (both copies of the weights included), and the extrapolated time of a full phone-book sweep.

Extrapolation. Per model and implementation, seconds per prompt are fitted as t = a + F / R by least
squares over the measured prompts, where F is the analytic FLOP count of the prompt (prefill: 2 x block
parameters per token, plus 2 x n_layers x L^2 x d_model for causal attention in the transformer; decoding:
the same per new token, plus the unembedding) and R the fitted effective FLOP/s. The quadratic attention
term is what makes long Pythia prompts cost more than a straight line through short ones would say. The
sweep (`--sweep-sizes` x `--sweep-n`) is then the sum of t over its prompts' real token lengths;
prompts longer than a model's context (Pythia: 2,048 tokens, about 180 entries) are left out and counted.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import random
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from benchmarks import common
from interp.analysis.pretrained_evals import EvalPrompt, generate, phonebook_entries, phonebook_prompts
from interp.testing import make_tokenizer

# ---- model presets -----------------------------------------------------------------------------------
# Published architectures, checked against:
#   Pythia: EleutherAI/pythia models/<size>/pythia-<size>.yml (GPT-NeoX training configs: num-layers,
#     hidden-size, num-attention-heads, rotary-pct 0.25, gpt-j-residual (parallel residual) true,
#     no-weight-tying true, max-position-embeddings 2048) and the Hugging Face config.json of
#     EleutherAI/pythia-* (vocab_size 50304, intermediate_size 4 x hidden_size, hidden_act gelu,
#     rotary_emb_base 10000, layer_norm_eps 1e-5).
#   Mamba: state-spaces/mamba-<size>/config.json as quoted in LaurentMazare/mamba.rs src/constants.rs
#     (d_model, n_layer; vocab 50277 padded to a multiple of 8 = 50280; d_state 16, d_conv 4) and
#     state-spaces/mamba-130m-hf config.json (hidden_size 768, num_hidden_layers 24, vocab_size 50280,
#     state_size 16, conv_kernel 4, expand 2 (intermediate_size 1536), time_step_rank 48 = ceil(768 / 16),
#     tied embeddings).
PYTHIA_VOCAB, MAMBA_VOCAB = 50304, 50280


@dataclass(frozen=True)
class Preset:
    family: str  # "pythia" | "mamba"
    d_model: int
    n_layers: int
    n_heads: int = 0  # pythia only
    vocab: int | None = None  # None: the tokenizer's size (tiny presets)
    default: bool = False  # measured when --models is not given
    note: str = ""


PRESETS: dict[str, Preset] = {
    "tiny-pythia": Preset("pythia", 64, 2, 4),
    "tiny-mamba": Preset("mamba", 64, 2),
    "pythia-160m": Preset("pythia", 768, 12, 12, PYTHIA_VOCAB, default=True),
    "pythia-410m": Preset("pythia", 1024, 24, 16, PYTHIA_VOCAB, default=True),
    "pythia-1b": Preset("pythia", 2048, 16, 8, PYTHIA_VOCAB, note="~2.5 min with --n 1"),
    "pythia-1.4b": Preset("pythia", 2048, 24, 16, PYTHIA_VOCAB, note="~3.5 min, 12 GiB with --n 1"),
    "pythia-2.8b": Preset("pythia", 2560, 32, 32, PYTHIA_VOCAB, note="~22 GiB for both copies: too big here"),
    "mamba-130m": Preset("mamba", 768, 24, vocab=MAMBA_VOCAB, default=True),
    "mamba-370m": Preset("mamba", 1024, 48, vocab=MAMBA_VOCAB, default=True),
    "mamba-790m": Preset("mamba", 1536, 48, vocab=MAMBA_VOCAB, note="~3 min with --n 1"),
    "mamba-1.4b": Preset("mamba", 2048, 48, vocab=MAMBA_VOCAB, note="~5 min, 12 GiB with --n 1"),
    "mamba-2.8b": Preset("mamba", 2560, 64, vocab=MAMBA_VOCAB, note="~22 GiB for both copies: too big here"),
}
ALIASES = {"tiny": ["tiny-pythia", "tiny-mamba"], "all": [k for k in PRESETS if not k.startswith("tiny")]}


def hf_model(preset: Preset, vocab: int):
    """A randomly initialised Hugging Face model with the preset's architecture (eval mode)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    if preset.family == "pythia":
        cfg = GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=preset.d_model,
            num_hidden_layers=preset.n_layers,
            num_attention_heads=preset.n_heads,
            intermediate_size=4 * preset.d_model,
            max_position_embeddings=2048,
            rotary_pct=0.25,
            rotary_emb_base=10000,
            use_parallel_residual=True,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            tie_word_embeddings=False,
        )
        return GPTNeoXForCausalLM(cfg).eval()
    cfg = MambaConfig(
        vocab_size=vocab,
        hidden_size=preset.d_model,
        num_hidden_layers=preset.n_layers,
        state_size=16,
        expand=2,
        conv_kernel=4,
        use_bias=False,
        use_conv_bias=True,
        tie_word_embeddings=True,
    )
    return MambaForCausalLM(cfg).eval()


def convert(preset: Preset, hf):
    """Our hooked model holding the same weights, through our loaders."""
    if preset.family == "pythia":
        from interp.models.loading import from_hf_gpt_neox

        return from_hf_gpt_neox(hf)
    from interp.models.mamba import load_hf_mamba

    return load_hf_mamba(hf)


def flops(preset: Preset, n_params_blocks: int, vocab: int, n_prompt: int, n_new: int) -> float:
    """Forward FLOPs of one prompt: prefill of n_prompt tokens, then n_new - 1 decoding steps."""
    d, layers = preset.d_model, preset.n_layers
    unembed = 2 * d * vocab

    def attention(pairs: float) -> float:  # QK^T and AV: 4 d FLOPs per (query, key) pair per layer
        return 4 * layers * d * pairs if preset.family == "pythia" else 0.0

    prefill = 2 * n_params_blocks * n_prompt + attention(n_prompt * (n_prompt + 1) / 2) + unembed
    steps = max(n_new - 1, 0)
    decode = steps * (2 * n_params_blocks + unembed) + attention(steps * n_prompt + steps * (steps + 1) / 2)
    return float(prefill + decode)


# ---- tokenizer ---------------------------------------------------------------------------------------


def neox_like_tokenizer(vocab_size: int = 1500):
    """Byte-level BPE with GPT-NeoX's pre-tokenizer, trained on phone-book text (see the module doc)."""
    rng = random.Random(1)
    books = []
    for _ in range(60):
        entries = phonebook_entries(40, seed=rng.randrange(2**31))
        books.append("\n".join(f"{name}: {number}" for name, number in entries) + "\n\n")
    return make_tokenizer(vocab_size, corpus=books)


def load_tokenizer(spec: str):
    """(tokenizer, description) for --tokenizer: 'neox-like', 'tiny', a tokenizer.json or a folder."""
    if spec == "neox-like":
        return neox_like_tokenizer(), "neox-like (local BPE, GPT-NeoX pre-tokenizer, lengths within 1%)"
    if spec == "tiny":
        return make_tokenizer(), "tiny (interp.testing, ~2.4x GPT-NeoX's lengths)"
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if os.path.isfile(spec):
        return PreTrainedTokenizerFast(tokenizer_file=spec), f"{spec}"
    if os.path.isdir(spec):
        return AutoTokenizer.from_pretrained(spec, trust_remote_code=False), f"{spec}"
    raise SystemExit(f"--tokenizer {spec!r}: not 'neox-like', 'tiny', a tokenizer.json or a folder")


# ---- measurement -------------------------------------------------------------------------------------


def malloc_trim() -> None:
    """Give freed heap memory back to the kernel so the next RSS high-water mark counts only new use."""
    gc.collect()
    with contextlib.suppress(OSError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_gib(field: str = "VmRSS") -> float:
    return common._status_mib(field) / 1024


@dataclass
class Result:
    name: str
    preset: Preset
    params: int = 0
    build_s: float = 0.0
    rows: list[list] = field(default_factory=list)  # per size
    samples: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: {"interp": [], "hf": []})
    peak_mib: dict[str, float] = field(default_factory=dict)
    process_peak_gib: float = 0.0
    agree: float = 1.0
    fit: dict[str, tuple[float, float]] = field(default_factory=dict)  # impl -> (a seconds, R flop/s)
    sweep_h: dict[str, float] = field(default_factory=dict)
    sweep_flop: float = 0.0
    sweep_note: str = ""


def fit_time(samples: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares t = a + F / R over (F, t) samples -> (a, R); a single F gives a = 0."""
    f = np.array([s[0] for s in samples])
    t = np.array([s[1] for s in samples])
    if np.ptp(f) < 1e-6 * f.max():
        return 0.0, float(f.mean() / t.mean())
    slope, a = np.polyfit(f, t, 1)
    if a < 0 or slope <= 0:  # noise on nearly proportional data: fall back to a pure rate
        return 0.0, float(f.sum() / t.sum())
    return float(a), float(1 / slope)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(name: str, preset: Preset, tok, args, sweep: dict[int, list[EvalPrompt]]) -> Result:
    res = Result(name, preset)
    vocab = preset.vocab or len(tok)
    malloc_trim()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # process peak for this model only
    start = time.perf_counter()
    hf = hf_model(preset, vocab)
    ours = convert(preset, hf)
    res.build_s = time.perf_counter() - start
    res.params = sum(p.numel() for p in ours.parameters())
    blocks = sum(p.numel() for p in ours.blocks.parameters())
    for p in ours.parameters():  # random init must be finite (NaN or denormals would skew timing)
        if not torch.isfinite(p).all():
            raise RuntimeError(f"{name}: non-finite weights after initialisation")
    log(f"{name}: {res.params / 1e6:.0f}M parameters, built and converted in {res.build_s:.1f} s")
    n_ctx = getattr(ours.cfg, "n_ctx", None) if preset.family == "pythia" else None

    prompts = phonebook_prompts(tok, args.sizes, n_per_size=args.n, seed=args.seed, n_ctx=n_ctx)

    def run_hf(p: EvalPrompt) -> list[int]:
        tokens = torch.tensor([p.prompt_ids])
        out = hf.generate(
            tokens,
            attention_mask=torch.ones_like(tokens),
            max_new_tokens=p.max_new_tokens,
            min_new_tokens=p.max_new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
        return out[0, tokens.shape[1] :].tolist()

    def run_ours(p: EvalPrompt) -> list[int]:
        return generate(ours, [p], batch_size=1)[0]

    fns = {"interp": run_ours, "hf": run_hf}

    def timed(impl: str, p: EvalPrompt) -> tuple[list[int], float, float | None]:
        """(tokens, seconds, MiB above the RSS before the call, or None with --no-memory)."""
        out: list[list[int]] = []
        if args.no_memory:
            t0 = time.perf_counter()
            out.append(fns[impl](p))
            return out[0], time.perf_counter() - t0, None
        malloc_trim()
        times: list[float] = []

        def work() -> None:
            t0 = time.perf_counter()
            out.append(fns[impl](p))
            times.append(time.perf_counter() - t0)

        mib = common.measure_peak(work)
        return out[0], times[0], mib

    with torch.no_grad():
        warm = phonebook_prompts(tok, [3], n_per_size=1, seed=args.seed + 1)[0]
        for fn in fns.values():
            fn(warm)
        per_size: dict[int, dict[str, list[float]]] = {}
        outputs: dict[str, list[list[int]]] = {"interp": [], "hf": []}
        longest = max(len(p.prompt_ids) for p in prompts)
        for i, p in enumerate(prompts):
            order = list(fns) if i % 2 == 0 else list(fns)[::-1]  # alternate who goes first
            for impl in order:
                runs = [timed(impl, p) for _ in range(args.repeats or 1)]
                dt = float(np.median([r[1] for r in runs]))
                outputs[impl].append(runs[0][0])
                per_size.setdefault(p.x, {"interp": [], "hf": []})[impl].append(dt)
                f = flops(preset, blocks, vocab, len(p.prompt_ids), p.max_new_tokens)
                res.samples[impl].append((f, dt))
                if len(p.prompt_ids) == longest and runs[0][2] is not None:
                    res.peak_mib[impl] = max(res.peak_mib.get(impl, 0.0), *(r[2] for r in runs))
            s = per_size[p.x]
            log(
                f"  {p.x} entries, {len(p.prompt_ids)} tokens: interp {s['interp'][-1]:.2f} s, "
                f"HF {s['hf'][-1]:.2f} s"
            )
        same = sum(x == y for a, b in zip(outputs["interp"], outputs["hf"]) for x, y in zip(a, b))
        res.agree = same / max(sum(map(len, outputs["interp"])), 1)
        for size, times in per_size.items():
            group = [p for p in prompts if p.x == size]
            ti, th = float(np.mean(times["interp"])), float(np.mean(times["hf"]))
            res.rows.append(
                [
                    name,
                    size,
                    round(float(np.mean([len(p.prompt_ids) for p in group]))),
                    round(float(np.mean([p.max_new_tokens for p in group])), 1),
                    f"{ti:.2f}",
                    f"{th:.2f}",
                    f"{th / ti:.2f}x",
                ]
            )
    res.process_peak_gib = rss_gib("VmHWM")

    # extrapolate the sweep
    for impl in fns:
        a, rate = fit_time(res.samples[impl])
        res.fit[impl] = (a, rate)
        total, total_flop = 0.0, 0.0
        for size_prompts in sweep.values():
            for p in size_prompts:
                if n_ctx is not None and len(p.prompt_ids) + p.max_new_tokens > n_ctx:
                    continue
                f = flops(preset, blocks, vocab, len(p.prompt_ids), p.max_new_tokens)
                total, total_flop = total + a + f / rate, total_flop + f
        res.sweep_h[impl], res.sweep_flop = total / 3600, total_flop
    if n_ctx is not None:
        dropped = {
            s: sum(len(p.prompt_ids) + p.max_new_tokens > n_ctx for p in ps) for s, ps in sweep.items()
        }
        dropped = {s: n for s, n in dropped.items() if n}
        if dropped:
            res.sweep_note = (
                f"{name}: left out of the sweep (longer than its {n_ctx}-token context): "
                + ", ".join(f"{n} of {len(sweep[s])} prompts at {s} entries" for s, n in dropped.items())
            )
    hf = ours = fns = None  # free both models before the next one is built
    malloc_trim()
    return res


# ---- command line ------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse(argv: list[str] | None):
    p = common.parser(__doc__)
    skipped = ", ".join(f"{k} ({v.note})" for k, v in PRESETS.items() if v.note)
    p.add_argument(
        "--models",
        default=None,
        help=(
            "comma-separated presets: "
            + ", ".join(PRESETS)
            + "; 'tiny' (both tiny ones) or 'all'. Default: "
            + ", ".join(k for k, v in PRESETS.items() if v.default)
            + f", each under ~4 min on 1 CPU thread. Skipped unless named: {skipped}"
        ),
    )
    p.add_argument("--sizes", type=int_list, default=[20, 80], help="book sizes timed (default 20,80)")
    p.add_argument("--n", type=int, default=2, help="prompts timed per size (default 2)")
    p.add_argument(
        "--sweep-sizes",
        type=int_list,
        default=[20, 40, 80, 160, 320],
        help="book sizes of the extrapolated sweep (default 20,40,80,160,320)",
    )
    p.add_argument("--sweep-n", type=int, default=50, help="prompts per size in the sweep (default 50)")
    p.add_argument(
        "--tokenizer",
        default="neox-like",
        help="neox-like (default) | tiny | a tokenizer.json | a folder with one (e.g. models/pythia-160m)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-gib",
        type=float,
        default=None,
        help="skip models whose two weight copies + 1.5 GiB exceed this (default: available memory - 2 GiB)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.models = args.models or "tiny"
        args.sizes, args.n, args.sweep_sizes, args.sweep_n = [5, 10], 1, [10, 20], 5
    names = []
    for item in (args.models or ",".join(k for k, v in PRESETS.items() if v.default)).split(","):
        item = item.strip()
        if item in ALIASES:
            names += ALIASES[item]
        elif item in PRESETS:
            names.append(item)
        elif item:
            p.error(f"unknown model {item!r}; known: {', '.join([*PRESETS, *ALIASES])}")
    args.models = names
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    print(common.header("Cost per model size: interp generate vs Hugging Face generate", args.threads))
    tok, tok_desc = load_tokenizer(args.tokenizer)
    sweep = {
        s: phonebook_prompts(tok, [s], n_per_size=args.sweep_n, seed=args.seed + 1000)
        for s in args.sweep_sizes
    }
    print(
        f"Random weights with the published architectures, fp32, greedy, one prompt at a time. Tokenizer: "
        f"{tok_desc}. Timed: {args.n} phone-book prompt(s) at each of {args.sizes} entries "
        f"(2 solved examples each); sweep: {args.sweep_n} prompts at each of {args.sweep_sizes} entries.\n"
    )
    budget = args.max_gib
    if budget is None:
        import psutil

        budget = psutil.virtual_memory().available / 2**30 - 2
    results, skipped = [], []
    for name in args.models:
        preset = PRESETS[name]
        vocab = preset.vocab or len(tok)
        d = preset.d_model
        per_layer = 12 * d * d if preset.family == "pythia" else 6 * d * d + 2 * d * (d // 8 + 32)
        est = 2 * 4 * (preset.n_layers * per_layer + 2 * vocab * d) / 2**30 + 1.5
        if est > budget:
            skipped.append(f"{name}: needs ~{est:.0f} GiB for both copies, {budget:.0f} GiB allowed")
            log(f"skipping {skipped[-1]}")
            continue
        results.append(measure(name, preset, tok, args, sweep))

    rows = [row for r in results for row in r.rows]
    print(
        common.table(
            ["model", "entries", "prompt tokens", "new tokens", "interp s/prompt", "HF s/prompt", "speed-up"],
            rows,
        )
    )
    print()
    summary = []
    for r in results:
        fp32 = r.params * 4 / 2**30
        mem = r.peak_mib
        summary.append(
            [
                r.name,
                f"{r.params / 1e6:,.1f}",
                f"{fp32:.2f}",
                f"{fp32 / 2:.2f}",
                common.fmt_mib(mem.get("interp")),
                common.fmt_mib(mem.get("hf")),
                f"{r.process_peak_gib:.2f}",
                f"{r.fit['interp'][1] / 1e9:.1f}",
                f"{r.fit['hf'][1] / 1e9:.1f}",
                f"{r.sweep_h['interp']:.1f}",
                f"{r.sweep_h['hf']:.1f}",
                f"{r.sweep_flop / 1e15:.2f}",
                f"{100 * r.agree:.0f}%",
            ]
        )
    print(
        common.table(
            [
                "model",
                "params (M)",
                "fp32 GiB",
                "bf16 GiB",
                "interp peak MiB",
                "HF peak MiB",
                "process peak GiB",
                "interp GFLOP/s",
                "HF GFLOP/s",
                "sweep h interp",
                "sweep h HF",
                "sweep PFLOP",
                "agree",
            ],
            summary,
        )
    )
    print(
        f"\npeak MiB: one prompt at {max(args.sizes)} entries, above the loaded weights. process peak: both "
        f"copies of the weights (HF's and ours) plus everything else. sweep h: extrapolated hours for "
        f"{args.sweep_n} prompts x {args.sweep_sizes} entries at {args.threads} thread(s) (t = a + FLOPs / "
        f"GFLOP/s, fitted per model); sweep PFLOP: its forward FLOPs (for other hardware). agree: generated "
        f"tokens equal between the two."
    )
    for r in results:
        if r.sweep_note:
            print(r.sweep_note)
    for s in skipped:
        print(f"skipped {s}")
    ratios = ", ".join(
        f"{r.name}: {sum(t for _, t in r.samples['hf']) / sum(t for _, t in r.samples['interp']):.2f}x"
        for r in results
    )
    print(f"\nratio HF / interp seconds per prompt: {ratios}")
    if not args.no_memory:
        mems = ", ".join(
            f"{r.name}: {r.peak_mib['hf'] / max(r.peak_mib['interp'], 1e-3):.2f}x"
            for r in results
            if r.peak_mib
        )
        print(f"memory HF / interp peak: {mems}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
