import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from interp.models import UnknownHookError, build_model
from interp.models.loading import from_hf_gpt_neox
from interp.models.transformer import POSITIONAL, alibi_slopes


def tiny_neox(parallel: bool, rotary_pct: float = 0.25) -> GPTNeoXForCausalLM:
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(
        vocab_size=61,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        rotary_pct=rotary_pct,
        use_parallel_residual=parallel,
    )
    return GPTNeoXForCausalLM(cfg).eval()


@pytest.mark.parametrize("parallel,rotary_pct", [(True, 0.25), (False, 1.0)])
def test_matches_hugging_face_gpt_neox(parallel, rotary_pct):
    hf = tiny_neox(parallel, rotary_pct)
    model = from_hf_gpt_neox(hf)
    tokens = torch.randint(0, 61, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(tokens).logits
        torch.testing.assert_close(model(tokens), expected, atol=1e-4, rtol=0)
        logits, cache = model.run_with_cache(tokens)  # the eager (hooked) attention path too
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    assert ("blocks.0.hook_resid_mid" in cache) != parallel


def test_alibi_slopes_are_the_standard_ones():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([2.0 ** -(2 * (i + 1)) for i in range(4)]))
    # not a power of two: the 4 slopes of n=4, then every other slope of n=8
    torch.testing.assert_close(alibi_slopes(6), torch.tensor([1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8]))


def test_alibi_scores_carry_the_linear_penalty():
    model = build_model("transformer", d_vocab=10, positional="alibi", n_heads=4, n_layers=1)
    tokens = torch.randint(0, 10, (2, 12))
    _, cache = model.run_with_cache(tokens)
    scores = cache["blocks.0.attn.hook_attn_scores"]
    q, k = cache["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_k"]
    raw = torch.einsum("bqhd,bkhd->bhqk", q, k) / model.cfg.d_head**0.5
    distance = torch.arange(12)[:, None] - torch.arange(12)[None, :]
    expected = raw - alibi_slopes(4)[:, None, None] * distance
    causal = distance >= 0
    torch.testing.assert_close(scores[..., causal], expected[..., causal])
    assert torch.isinf(scores[..., ~causal]).all()


def test_hard_alibi_heads_see_only_their_window():
    model = build_model(
        "transformer", d_vocab=10, positional="hard_alibi", n_heads=6, d_model=48, hard_alibi_heads=4
    )
    _, cache = model.run_with_cache(torch.randint(0, 10, (2, 15)))
    pattern = cache["blocks.1.attn.hook_pattern"]
    distance = torch.arange(15)[:, None] - torch.arange(15)[None, :]
    for head in range(4):
        outside = (distance < 0) | (distance > head)
        assert (pattern[:, head][:, outside] == 0).all(), f"head {head} leaks outside its window"
        assert (pattern[:, head][:, ~outside] > 0).all()
    # the remaining heads are NoPE: causal, everything in the past visible
    assert (pattern[:, 4:][..., distance < 0] == 0).all() and (pattern[:, 4:][..., distance >= 0] > 0).all()
    torch.testing.assert_close(pattern[:, 0], torch.eye(15).expand(2, 15, 15))


@pytest.mark.parametrize("positional", POSITIONAL)
def test_fused_attention_equals_reference_path(positional):
    torch.manual_seed(0)
    model = build_model("transformer", d_vocab=12, positional=positional, rotary_pct=0.5)
    tokens = torch.randint(0, 12, (3, 17))
    fast = model(tokens)
    logits, _ = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_pattern")
    model.cfg.attn_impl = "eager"
    torch.testing.assert_close(fast, logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast, model(tokens), atol=1e-5, rtol=0)


def test_unknown_positional_variant():
    with pytest.raises(ValueError, match="rope, nope, alibi, hard_alibi"):
        build_model("transformer", positional="learned")


def test_unknown_hook_name_suggests_close_matches():
    model = build_model("transformer", d_vocab=10)
    with pytest.raises(UnknownHookError, match=r"blocks\.0\.attn\.hook_pattern"):
        model.run_with_hooks(
            torch.zeros(1, 3, dtype=torch.long), fwd_hooks=[("blocks.0.attn.hook_patern", None)]
        )
    with pytest.raises(UnknownHookError, match="hook_resid_post"):
        model.run_with_cache(torch.zeros(1, 3, dtype=torch.long), names_filter=["blocks.0.hook_resid_pots"])


def test_hook_returning_wrong_shape_names_hook_and_shape():
    model = build_model("transformer", d_vocab=10)
    bad = lambda x, hook: x[:, :-1]
    with pytest.raises(ValueError, match=r"blocks\.1\.hook_resid_pre.*\(2, 5, 128\)"):
        model.run_with_hooks(
            torch.zeros(2, 5, dtype=torch.long), fwd_hooks=[("blocks.1.hook_resid_pre", bad)]
        )
    assert all(not hp.fwd_hooks for hp in model.hook_points()), "hooks left behind after an error"


def test_run_with_hooks_patches_and_leaves_no_hooks_behind():
    torch.manual_seed(0)
    model = build_model("transformer", d_vocab=10)
    tokens = torch.randint(0, 10, (2, 8))
    clean = model(tokens)
    zero_head = lambda z, hook: z.index_fill(2, torch.tensor([1]), 0.0)
    patched = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero_head)])
    assert not torch.allclose(clean, patched)
    assert all(not hp.fwd_hooks for hp in model.hook_points())
    torch.testing.assert_close(model(tokens), clean)


def test_cache_has_documented_shapes():
    model = build_model("transformer", d_vocab=10, n_heads=4, d_model=32, n_layers=2)
    _, cache = model.run_with_cache(torch.zeros(3, 7, dtype=torch.long))
    assert cache["hook_embed"].shape == (3, 7, 32)
    assert cache["blocks.1.attn.hook_q"].shape == (3, 7, 4, 8)
    assert cache["blocks.1.attn.hook_pattern"].shape == (3, 4, 7, 7)
    assert cache["blocks.0.mlp.hook_post"].shape == (3, 7, 128)
    assert cache["ln_final.hook_normalized"].shape == (3, 7, 32)


def test_too_long_input_and_bad_token_ids_are_rejected():
    model = build_model("transformer", d_vocab=10, n_ctx=8)
    with pytest.raises(ValueError, match="n_ctx=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        model(torch.full((1, 4), 10))


def test_nnsight_wraps_the_model():
    nnsight = pytest.importorskip("nnsight")
    torch.manual_seed(0)
    model = build_model("transformer", d_vocab=10)
    tokens = torch.randint(0, 10, (2, 6))
    _, cache = model.run_with_cache(tokens)
    wrapped = nnsight.NNsight(model)
    with wrapped.trace(tokens):
        resid = wrapped.blocks[1].hook_resid_pre.output.save()
        wrapped.blocks[1].attn.hook_z.output[:] = 0.0
        logits = wrapped.output.save()
    torch.testing.assert_close(resid, cache["blocks.1.hook_resid_pre"])
    expected = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", lambda z, hook: z * 0)])
    torch.testing.assert_close(logits, expected)
