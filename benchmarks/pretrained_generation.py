"""Evaluation throughput: our loaded models (`pretrained_evals.generate`) vs Hugging Face `generate`.

    python -m benchmarks.pretrained_generation            # full run
    python -m benchmarks.pretrained_generation --quick    # smoke test

The same tiny random checkpoints (a Pythia-style GPT-NeoX and a Hugging Face Mamba, saved to a temporary
folder with a locally trained tokenizer, `interp.testing`) are loaded twice: with
`interp.load` and with `AutoModelForCausalLM.from_pretrained`. Workloads: the text-copy evaluation
(`batch` prompts of one passage length, so neither side pads; `passage - 2` new tokens each) and the
phone-book evaluation (books of 4-12 entries, so prompt lengths differ and both sides left-pad with an
attention mask; 14 new tokens), greedy. Hugging Face uses its KV / recurrent cache; our transformer uses its KV cache
(`HookedTransformer.generate_greedy`; also timed without it, re-reading the whole sequence per token),
our Mamba decodes in step mode. Reported: prompts per second, median of interleaved repeats (benchmarks/common.py), and how many generated tokens agree between the two.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import interp
from benchmarks import common
from interp.analysis.pretrained_evals import generate, left_pad, phonebook_prompts, text_copy_prompts
from interp.testing import TEXT, make_folders


def workloads(tokenizer, quick: bool) -> list[tuple[str, list]]:
    """(name, prompts); each workload is one batch."""
    text = TEXT * 4
    if quick:
        return [
            ("copy 16", text_copy_prompts(tokenizer, text, [16], n_per_length=8)),
            ("phone book, padded", phonebook_prompts(tokenizer, [3, 4], n_per_size=2)),
        ]
    return [
        ("copy 32", text_copy_prompts(tokenizer, text, [32], n_per_length=16)),
        ("copy 128", text_copy_prompts(tokenizer, text, [128], n_per_length=16)),
        ("phone book, padded", phonebook_prompts(tokenizer, [4, 6, 8, 12], n_per_size=4)),
    ]


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoModelForCausalLM

    args = common.parser(__doc__).parse_args(argv)
    torch.set_num_threads(args.threads)
    print(common.header("Evaluation throughput: interp generate vs Hugging Face generate", args.threads))
    rows, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folders = make_folders(Path(tmp))
        for family, folder in folders.items():
            ours = interp.load(folder)
            hf = AutoModelForCausalLM.from_pretrained(folder).eval()
            for workload, prompts in workloads(ours.tokenizer, args.quick):
                batch = len(prompts)
                tokens, mask = left_pad([p.prompt_ids for p in prompts])
                n_new = max(p.max_new_tokens for p in prompts)

                def run_hf(hf=hf, tokens=tokens, mask=mask, n_new=n_new):
                    out = hf.generate(
                        tokens,
                        attention_mask=mask,
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
                ratios.append((family, workload, ratio))
                lengths = sorted({len(p.prompt_ids) for p in prompts})
                rows.append(
                    [
                        family,
                        workload,
                        f"{lengths[0]}-{lengths[-1]}" if len(lengths) > 1 else lengths[0],
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
                "workload",
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
    summary = ", ".join(f"{f} {w}: {r:.2f}x" for f, w, r in ratios)
    print(f"\nratio interp / Hugging Face throughput: {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
