"""Evaluation throughput: our loaded models (`pretrained_evals.generate`) vs Hugging Face `generate`.

    python -m benchmarks.pretrained_generation            # full run
    python -m benchmarks.pretrained_generation --quick    # smoke test

The same tiny random checkpoints (a Pythia-style GPT-NeoX and a Hugging Face Mamba, saved to a temporary
folder with a locally trained tokenizer, `interp.models.tiny_pretrained`) are loaded twice: with
`interp.load` and with `AutoModelForCausalLM.from_pretrained`. The workload is the text-copy evaluation:
`batch` prompts of one passage length (so neither side needs padding), greedy, `passage - 2` new tokens
each. Hugging Face uses its KV / recurrent cache; our transformer uses `transformer_greedy_kv` (a KV
cache; also timed without it, re-reading the whole sequence per token), our Mamba decodes in step mode. Reported: prompts per second, median of interleaved
repeats (benchmarks/common.py), and how many generated tokens agree between the two.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import interp
from benchmarks import common
from interp.analysis.pretrained_evals import generate, text_copy_prompts
from interp.models.tiny_pretrained import TEXT, make_folders


def workloads(quick: bool) -> list[tuple[int, int]]:
    """(passage tokens, prompts per batch)."""
    return [(16, 8)] if quick else [(32, 16), (128, 16)]


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoModelForCausalLM

    args = common.parser(__doc__).parse_args(argv)
    torch.set_num_threads(args.threads)
    print(common.header("Evaluation throughput: interp generate vs Hugging Face generate", args.threads))
    rows, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folders = make_folders(Path(tmp))
        text = TEXT * 4
        for family, folder in folders.items():
            ours = interp.load(folder)
            hf = AutoModelForCausalLM.from_pretrained(folder).eval()
            for length, batch in workloads(args.quick):
                prompts = text_copy_prompts(ours.tokenizer, text, [length], n_per_length=batch)
                tokens = torch.tensor([p.prompt_ids for p in prompts])
                n_new = prompts[0].max_new_tokens

                def run_hf(hf=hf, tokens=tokens, n_new=n_new):
                    out = hf.generate(
                        tokens,
                        attention_mask=torch.ones_like(tokens),
                        max_new_tokens=n_new,
                        min_new_tokens=n_new,
                        do_sample=False,
                        pad_token_id=0,
                    )
                    return out[:, tokens.shape[1] :].tolist()

                def run_ours(ours=ours, prompts=prompts, batch=batch):
                    return generate(ours, prompts, batch_size=batch)

                def run_no_cache(ours=ours, prompts=prompts, batch=batch):
                    return generate(ours, prompts, batch_size=batch, kv_cache=False)

                with torch.no_grad():
                    a, b = run_ours(), run_hf()
                    agree = sum(x == y for ra, rb in zip(a, b) for x, y in zip(ra, rb)) / sum(map(len, a))
                    fns = {"interp": run_ours, "hf": run_hf}
                    if family == "pythia":
                        assert run_no_cache() == a, "KV-cache decoding must equal full re-computation"
                        fns["interp, no KV cache"] = run_no_cache
                    sec = common.time_interleaved(
                        fns,
                        repeats=args.repeats or (3 if args.quick else 7),
                        warmup=1,
                        min_time=0.02 if args.quick else 0.2,
                    )
                ratio = sec["hf"] / sec["interp"]
                ratios.append((family, length, ratio))
                rows.append(
                    [
                        family,
                        tokens.shape[1],
                        n_new,
                        batch,
                        f"{batch / sec['interp']:.1f}",
                        f"{batch / sec['hf']:.1f}",
                        f"{batch / sec['interp, no KV cache']:.1f}"
                        if "interp, no KV cache" in sec
                        else "n/a",
                        f"{ratio:.2f}x",
                        f"{100 * agree:.1f}%",
                    ]
                )
    print(
        common.table(
            [
                "model",
                "prompt tokens",
                "new tokens",
                "batch",
                "interp prompts/s",
                "HF prompts/s",
                "interp no-KV-cache prompts/s",
                "speed-up",
                "agree",
            ],
            rows,
        )
    )
    summary = ", ".join(f"{f} L={n}: {r:.2f}x" for f, n, r in ratios)
    print(f"\nratio interp / Hugging Face throughput: {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
