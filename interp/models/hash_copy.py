"""The paper's 2-layer copy construction with hand-set weights: a ground-truth copying circuit.

Jelassi et al. (Section 3) show a 2-layer transformer copies strings of length exponential in n by
"hashing" n-grams. This module builds that circuit inside our `HookedTransformer`, so probes,
patching and head detectors can be tested on a model whose mechanism is known exactly:

- Layer 1, heads h = 0..n (Hard-ALiBi, window h + 1, uniform attention): head h writes the sum of
  the last h + 1 token embeddings, S_h, into its own block of the residual stream. The token at
  relative offset o is then S_o - S_{o-1}: a linear read-out, which layer 2 folds into its weights.
- Layer 2, head n + 1 (no positional signal): the lookup head. Its query at position p is the
  n-gram ending at p, its key at position j is the n-gram ending at j - 1, and its value is the token
  at j. It attends to the position right after the earlier occurrence of the current n-gram and
  copies that token. Offsets are weighted 1, 1/3, 1/9, ... so an earlier offset always outranks all
  later ones together: the best match is exact whenever the n-gram is unique.

The begin `$` and separator `|` hash to the same symbol, so the first answer tokens (whose n-gram
reaches back across `|`) find the string's first tokens (whose n-gram reaches back to `$`). The
value `|` (the end of the string) is read out as `.`. Layers have no normalisation and no MLP.
"""

from __future__ import annotations

import torch

from interp.models.transformer import HookedTransformer, TransformerConfig
from interp.tasks import Vocab

OFFSET_DECAY = 3.0  # weight of offset o is OFFSET_DECAY ** -o: each offset outranks all later ones
SHARPNESS = 400.0  # attention inverse temperature: the best key wins by >= SHARPNESS * 3**-n / 2
LOGIT_SCALE = 20.0  # logit of the copied token (others get 0)


def build_hash_copy(n_letters: int = 26, ngram: int = 3, n_ctx: int = 4096) -> HookedTransformer:
    """A `HookedTransformer` that copies (`$ s | s .`) any string whose n-grams are unique.

    Layout of the residual stream (d_model = 2 * |V| + (n + 1) * K, K = n_letters + 1 hash symbols):
    [token one-hot | S_0 | S_1 | ... | S_n | copied-token one-hot].
    Planted heads: layer 0 heads 0..n (offset windows), layer 1 head n + 1 (lookup).
    """
    vocab = Vocab(n_letters)
    v, n, k = vocab.size, ngram, n_letters + 1  # hash alphabet: letters + one delimiter symbol
    if n < 1:
        raise ValueError(f"ngram={n} is not allowed: use n >= 1")
    n_heads = n + 2
    d_model = 2 * v + (n + 1) * k
    d_head = max(n * k + 1, v)  # n offset blocks + one dimension that vetoes the `$` position
    cfg = TransformerConfig(
        d_vocab=v,
        d_model=d_model,
        n_layers=2,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=1,
        n_ctx=n_ctx,
        positional="hard_alibi",
        hard_alibi_heads=n + 1,
        normalization="none",
        act_fn="relu",
    )
    model = HookedTransformer(cfg)
    for p in model.parameters():
        torch.nn.init.zeros_(p)

    token = slice(0, v)
    block = lambda h: slice(v + h * k, v + (h + 1) * k)  # S_h
    out_block = slice(v + (n + 1) * k, 2 * v + (n + 1) * k)

    # hash: letters keep their identity, `$` and `|` share the delimiter symbol, `.`/`*` vanish
    hash_map = torch.zeros(k, v)
    hash_map[torch.arange(n_letters), torch.arange(n_letters)] = 1.0
    hash_map[n_letters, vocab.bos] = hash_map[n_letters, vocab.sep] = 1.0

    with torch.no_grad():
        model.embed.weight[:, token] = torch.eye(v)

        # Layer 1: head h averages its window (q = k = 0) of hashed tokens; W_O scales by h + 1 -> S_h.
        attn = model.blocks[0].attn
        wq, wk, wv = _qkv_views(attn, cfg)
        wo = attn.out.weight.view(d_model, n_heads, d_head)
        for h in range(n + 1):
            wv[h, :k, token] = hash_map
            wo[block(h), h, :k] = (h + 1) * torch.eye(k)

        # Layer 2: the lookup head compares offset tokens of the query and key n-grams.
        attn = model.blocks[1].attn
        wq, wk, wv = _qkv_views(attn, cfg)
        wo = attn.out.weight.view(d_model, n_heads, d_head)
        head = n + 1
        scale = (SHARPNESS * d_head**0.5) ** 0.5  # our attention divides scores by sqrt(d_head)
        for o in range(n):
            weight = scale * OFFSET_DECAY ** (-o / 2)
            rows = slice(o * k, (o + 1) * k)
            # query: token at offset o of the n-gram ending at p = S_o - S_{o-1}
            wq[head, rows, block(o)] = weight * torch.eye(k)
            if o > 0:
                wq[head, rows, block(o - 1)] = -weight * torch.eye(k)
            # key: token at offset o of the n-gram ending at j - 1 = S_{o+1} - S_o
            wk[head, rows, block(o + 1)] = weight * torch.eye(k)
            wk[head, rows, block(o)] = -weight * torch.eye(k)
        # Position 0 (`$`) sees only itself, so its key reads as "delimiter at every offset" and would
        # tie with the string's first position: a constant query dimension vetoes it.
        qkv_bias = attn.qkv.bias.view(n_heads, 3, d_head)
        qkv_bias[head, 0, n * k] = scale
        wk[head, n * k, vocab.bos] = -2 * scale
        wv[head, :v, token] = torch.eye(v)
        wo[out_block, head, :v] = torch.eye(v)

        # Unembedding: the copied token's logit; the end of the string `|` is read out as `.`.
        readout = torch.eye(v)
        readout[vocab.sep] = 0.0
        readout[vocab.eos, vocab.sep] = 1.0
        model.unembed.weight[:, out_block] = LOGIT_SCALE * readout
    return model.eval()


def _qkv_views(attn, cfg: TransformerConfig):
    """Views of the fused qkv weight as [head, d_head, d_model] for q, k and v (GPT-NeoX layout)."""
    w = attn.qkv.weight.view(cfg.n_heads, 3, cfg.d_head, cfg.d_model)
    return w[:, 0], w[:, 1], w[:, 2]


def planted_heads(ngram: int) -> dict[str, list[tuple[int, int]]]:
    """(layer, head) of the construction's components, for tests and circuit comparisons."""
    return {"offset": [(0, h) for h in range(ngram + 1)], "lookup": [(1, ngram + 1)]}
