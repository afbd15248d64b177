"""HookedHybrid: layer patterns and their errors, cached decoding equal to the full forward, padding, hooks
with declared axes in the layers that have them, Nemotron-H loading with equal logits, `interp.load` of
Hugging Face Mamba-2 / Nemotron-H folders (and the error for other hybrids), `interp train --arch hybrid`,
and (slow) a hybrid learning to copy."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import interp
from interp.cli import main
from interp.generation import greedy_steps
from interp.hooks import hook_info, state_hooks
from interp.models import build_model
from interp.models.hf.nemotron_h import load_hf_nemotron_h
from interp.models.hybrid import HookedHybrid, HybridConfig

VOCAB = 40


def small(layers, positional="nope", **kw) -> HookedHybrid:
    torch.manual_seed(0)
    cfg = HybridConfig(
        d_vocab=VOCAB, d_model=32, layers=layers, positional=positional, d_state=8, head_dim=16, **kw
    )
    return HookedHybrid(cfg).eval()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, VOCAB, (3, 19), generator=torch.Generator().manual_seed(1))


def test_layer_pattern_errors_list_the_allowed_kinds():
    with pytest.raises(
        ValueError, match=r"unknown layer kind 'mamab' at position 1.*allowed: mamba, mamba2, attn, mlp"
    ):
        HybridConfig(layers=["mamba", "mamab"])
    with pytest.raises(ValueError, match="at least one layer"):
        HybridConfig(layers=[])
    with pytest.raises(ValueError, match="unknown positional variant 'learned'"):
        HybridConfig(layers=["attn"], positional="learned")
    with pytest.raises(
        ValueError, match="d_inner = expand \\* d_model = 2 \\* 32 = 64 is not divisible by head_dim=24"
    ):
        HybridConfig(d_model=32, layers=["mamba2"], head_dim=24)
    cfg = HybridConfig(layers="mamba, mamba2,attn,mlp")  # the command line's form
    assert cfg.layers == ["mamba", "mamba2", "attn", "mlp"] and cfg.n_layers == 4
    assert HybridConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.layers_of("attn") == [2]


@pytest.mark.parametrize("positional", ["nope", "rope", "hard_alibi"])
def test_cached_decoding_equals_the_full_forward(tokens, positional):
    model = small(["mamba", "mamba2", "attn", "mlp"], positional)
    with torch.no_grad():
        full = model(tokens)
        logits, cache = model.prefill(tokens[:, :6], None)
        steps = [logits]
        for t in range(6, tokens.shape[1]):
            logits, cache = model.decode_step(tokens[:, t], cache)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 5:], atol=1e-5, rtol=1e-5)
    # greedy evaluation is cached and gives the quadratic reference's tokens
    cached = greedy_steps(model, tokens[:, :6], 10)
    assert torch.equal(cached, greedy_steps(model, tokens[:, :6], 10, incremental=False))
    out = model.generate_greedy(tokens[:, :6], 8)
    assert out.shape == (3, 14)


def test_left_padding_gives_the_unpadded_logits(tokens):
    model = small(["mamba", "attn", "mamba2"], "rope")
    padded = torch.cat([torch.zeros(3, 4, dtype=tokens.dtype), tokens], dim=1)
    mask = torch.cat([torch.zeros(3, 4), torch.ones(3, tokens.shape[1])], dim=1).long()
    with torch.no_grad():
        torch.testing.assert_close(
            model(padded, attention_mask=mask)[:, 4:], model(tokens), atol=1e-5, rtol=1e-5
        )


def test_hooks_declare_axes_per_layer_kind(tokens):
    model = small(["mamba", "attn", "mamba2", "mlp"])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    for name, act in cache.items():
        hook_info(model, name).check(name, act)
    assert cache["blocks.1.attn.hook_pattern"].shape == (3, 4, 19, 19)
    assert cache["blocks.0.mixer.hook_ssm_state"].shape == (3, 64, 19, 8)  # Mamba-1: [B, D_inner, P, N]
    assert cache["blocks.2.mixer.hook_ssm_state"].shape == (
        3,
        4,
        19,
        16,
        8,
    )  # Mamba-2: [B, H, P, head_dim, N]
    assert cache["blocks.3.mlp.hook_post"].shape == (3, 19, 128)
    assert state_hooks(model) == ["blocks.0.mixer.hook_ssm_state", "blocks.2.mixer.hook_ssm_state"]
    assert model.state_size() is None  # the attention layers' memory grows with the input
    assert set(model.ssm_attention(tokens)) == {2}


def test_state_patch_in_a_hybrid_changes_only_later_positions(tokens):
    model = small(["mamba2", "attn"])
    observe = [("blocks.0.mixer.hook_ssm_state", lambda act, hook: None)]

    def bump(act, hook):
        act = act.clone()
        act[:, :, 7] += 1.0
        return act

    with torch.no_grad():
        clean = model.run_with_hooks(tokens, fwd_hooks=observe)
        patched = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mixer.hook_ssm_state", bump)])
    torch.testing.assert_close(patched[:, :7], clean[:, :7], atol=0, rtol=0)
    assert ((patched - clean).abs().amax(dim=(0, 2))[7:] > 1e-4).all()


# ---------------------------------------------------------------------------------------------
# Nemotron-H and interp.load
# ---------------------------------------------------------------------------------------------
def make_nemotron_h(**overrides):
    from transformers import NemotronHConfig, NemotronHForCausalLM

    torch.manual_seed(0)
    options = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        layers_block_type=["mamba", "attention", "mlp", "mamba"],
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention: converted by repeating key/value heads
        head_dim=8,
        intermediate_size=64,
        ssm_state_size=8,
        mamba_num_heads=8,
        mamba_head_dim=8,
        n_groups=2,
        chunk_size=16,
        use_cache=False,
    )
    hf = NemotronHForCausalLM(NemotronHConfig(**{**options, **overrides})).eval()
    with torch.no_grad():  # break the symmetric initialisation
        for layer in hf.model.layers:
            if hasattr(layer.mixer, "A_log"):
                layer.mixer.A_log.add_(0.5 * torch.randn_like(layer.mixer.A_log))
                layer.mixer.dt_bias.add_(torch.randn_like(layer.mixer.dt_bias))
                layer.mixer.D.add_(0.5 * torch.randn_like(layer.mixer.D))
            layer.norm.weight.add_(0.3 * torch.randn_like(layer.norm.weight))
    return hf


def test_nemotron_h_folder_loads_with_equal_logits(tokens, tmp_path):
    hf = make_nemotron_h()
    hf.save_pretrained(tmp_path)
    model = interp.load(tmp_path)
    assert isinstance(model, HookedHybrid)
    assert model.cfg.layers == ["mamba2", "attn", "mlp", "mamba2"] and model.cfg.positional == "nope"
    with torch.no_grad():
        expected = hf(tokens).logits
        torch.testing.assert_close(model(tokens), expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(
            load_hf_nemotron_h(hf, scan="reference")(tokens), expected, atol=1e-4, rtol=0
        )


def test_nemotron_h_moe_layers_are_refused():
    from interp.models.hf.nemotron_h import nemotron_h_config_from_dict

    with pytest.raises(ValueError, match=r"layer types \['moe'\] are not supported.*mixture-of-experts"):
        nemotron_h_config_from_dict(
            {"hidden_size": 32, "vocab_size": 10, "layers_block_type": ["mamba", "moe"]}
        )


def test_interp_load_reads_a_mamba2_folder(tokens, tmp_path):
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(0)
    hf = Mamba2ForCausalLM(
        Mamba2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=8, head_dim=16,
                     num_heads=4, n_groups=1, use_cache=False)
    ).eval()  # fmt: skip
    hf.save_pretrained(tmp_path)
    model = interp.load(tmp_path)
    assert model.arch == "mamba2"
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-4, rtol=0)


def test_unsupported_hybrid_family_names_the_supported_one(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bamba", "hidden_size": 8}))
    with pytest.raises(ValueError, match="'bamba' hybrid.*supported hybrid family is nemotron_h"):
        interp.load(tmp_path)


# ---------------------------------------------------------------------------------------------
# Command line and learning
# ---------------------------------------------------------------------------------------------
def test_train_hybrid_from_the_shell(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--arch", "hybrid", "--layers", "mamba,attn", "--task", "suffix_lookup", "--min-len", "6", "--max-len", "8", "--d-model", "32",
            "--n-heads", "2", "--d-state", "8", "--steps", "3", "--eval-every", "3", "--out", str(run), "--quiet"]  # fmt: skip
    assert main(args) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["arch"] == "hybrid" and saved["model"]["layers"] == ["mamba", "attn"]
    model = interp.load(run)
    assert isinstance(model, HookedHybrid) and model.cfg.layers == ["mamba", "attn"]
    bad = [
        "train",
        "--arch",
        "hybrid",
        "--layers",
        "mamba,attention",
        "--steps",
        "1",
        "--out",
        str(tmp_path / "b"),
    ]
    assert main(bad) == 2
    assert "unknown layer kind 'attention'" in capsys.readouterr().err
    assert main(["train", "--arch", "mamba2", "--d-state", "8", "--d-model", "32", "--steps", "2", "--eval-every",
                 "2", "--out", str(tmp_path / "m2"), "--quiet"]) == 0  # fmt: skip
    assert build_model("hybrid", layers=["mamba2"]).arch == "hybrid"


@pytest.mark.slow
def test_hybrid_learns_to_copy():
    """A Mamba layer + an attention layer copies strings of up to 8 tokens (about 25 s on one thread)."""
    from interp.tasks import TaskConfig, make_batch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        task = TaskConfig(task="copy", n_letters=4, min_len=1, max_len=8)
        model = HookedHybrid(
            HybridConfig(d_vocab=task.vocab.size, d_model=48, layers=["mamba", "attn"], n_heads=4)
        )
        steps, warmup = 400, 40
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup)))
        )
        gen = torch.Generator().manual_seed(1)
        for _ in range(steps):
            batch = make_batch(task, 32, gen)
            loss = F.cross_entropy(
                model(batch.tokens).flatten(0, 1), batch.targets.flatten(), ignore_index=-100
            )
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        model.eval()
        test = make_batch(task, 512, torch.Generator().manual_seed(99))
        with torch.no_grad():
            string_correct, _ = test.score(model(test.tokens))
        accuracy = string_correct.float().mean().item()
        assert accuracy >= 0.9, accuracy
        # greedy decoding (cached) agrees with teacher forcing on this task
        assert greedy_steps(model, test.tokens[:8, :3], 2).shape == (8, 2)
    finally:
        torch.set_num_threads(before)
