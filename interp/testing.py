"""Test models: tiny random Pythia-style and Mamba Hugging Face folders with a locally trained tokenizer.

No downloads. For tests, notebooks and benchmarks (and for users trying an analysis offline):
`make_folders(root)` writes root/pythia, root/mamba (sharing one byte-level BPE tokenizer trained on
CORPUS), root/text.txt and root/squad.json in about a second.
"""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "James Smith: 609-323-7777",
    "Mary Johnson: 201-555-0101",
    "The quick brown fox jumps over the lazy dog.",
    "Question: Where is Paris?\nAnswer: France",
    "Paris is the capital of France. The Eiffel Tower is in Paris.",
    "0123456789 - : . , ! ? ' \" ( )",
] * 20

TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
    "it was the season of Darkness, it was the spring of hope, it was the winter of despair.\n"
) * 3

SQUAD = {
    "data": [
        {
            "paragraphs": [
                {
                    "context": "Paris is the capital of France. The Eiffel Tower is in Paris.",
                    "qas": [
                        {"question": "What is the capital of France?", "answers": [{"text": "Paris"}]},
                        {"question": "Where is the Eiffel Tower?", "answers": [{"text": "in Paris"}]},
                        {"question": "Impossible?", "answers": [], "is_impossible": True},
                    ],
                },
                {
                    "context": "The fox is quick and brown.",
                    "qas": [{"question": "What colour is the fox?", "answers": [{"text": "brown"}]}],
                },
            ]
        }
    ]
}


def make_tokenizer(vocab_size: int = 320, corpus: list[str] | None = None):
    """A byte-level BPE tokenizer (GPT-NeoX's pre-tokenizer) trained on `corpus` (default CORPUS), as
    PreTrainedTokenizerFast; every string is encodable."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS if corpus is None else corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def save_pythia(folder: Path, tokenizer, n_ctx: int = 2048):
    """A random 2-layer GPT-NeoX with parallel residual and partial rotary (like Pythia) saved to `folder`."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=n_ctx,
        rotary_pct=0.25,
        use_parallel_residual=True,
    )
    hf = GPTNeoXForCausalLM(cfg).eval()
    hf.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return hf


def save_mamba(folder: Path, tokenizer):
    """A random 2-layer Hugging Face Mamba saved to `folder`, with the tokenizer."""
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    cfg = MambaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, state_size=8, conv_kernel=4, expand=2
    )
    hf = MambaForCausalLM(cfg).eval()
    with torch.no_grad():  # break the symmetric initialisation so states differ visibly
        for block in hf.backbone.layers:
            block.mixer.A_log.add_(0.3 * torch.randn_like(block.mixer.A_log))
            block.mixer.dt_proj.bias.add_(1.0)
    hf.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return hf


def make_folders(root: Path) -> dict[str, Path]:
    """{'pythia': folder, 'mamba': folder} under `root`, sharing one tokenizer; also writes text.txt, squad.json."""
    import json

    tok = make_tokenizer()
    save_pythia(root / "pythia", tok)
    save_mamba(root / "mamba", tok)
    (root / "text.txt").write_text(TEXT)
    (root / "squad.json").write_text(json.dumps(SQUAD))
    return {"pythia": root / "pythia", "mamba": root / "mamba"}
