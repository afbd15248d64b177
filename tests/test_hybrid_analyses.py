"""Every analysis on hybrids (`mamba2,attn`, `mamba,attn`) and on Mamba-2, layer by layer: components and
patch grids over the layers that have a hook (attention heads, SSM state channel groups or Mamba-2
heads), probes and state saturation on the default state hooks, state patches that feed the recurrence
(a patch at t changes outputs from t on only), head detectors that see attention heads and Mamba-2
hidden-attention heads (planted heads found), and (slow) trained hybrids whose lookup head sits in the
attention layer, found by the detector and by patching."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from interp.analysis.circuits import circuit_from_path_patching
from interp.analysis.heads import (
    attention_layers,
    head_scores,
    lookup_targets,
    mamba_patterns,
    rank_heads,
    scan_layers,
    ssm_patterns,
)
from interp.analysis.patching import make_metric, paired_batches, patch_grid, patch_specs, path_patching
from interp.analysis.probing import probe_lags
from interp.analysis.saturation import default_state_hooks, state_saturation
from interp.hooks import components, hook_layers
from interp.models.hybrid import HookedHybrid, HybridConfig
from interp.models.mamba2 import HookedMamba2, Mamba2Config
from interp.tasks import TaskConfig, make_batch

TASK = TaskConfig(task="copy", n_letters=4, min_len=1, max_len=8)
V = TASK.vocab.size


def hybrid(layers, d_model=32, **kw) -> HookedHybrid:
    torch.manual_seed(0)
    cfg = HybridConfig(d_vocab=V, d_model=d_model, layers=layers, n_heads=4, d_state=8, head_dim=16, **kw)
    return HookedHybrid(cfg).eval()


def mamba2() -> HookedMamba2:
    torch.manual_seed(0)
    return HookedMamba2(Mamba2Config(d_vocab=V, d_model=32, n_layers=2, d_state=8, head_dim=16)).eval()


def copy_batch(n=8, length=6, seed=3):
    return make_batch(TASK, n, torch.Generator().manual_seed(seed), length=length)


# ---- components and grids, per layer -------------------------------------------------------------------
def test_components_and_patch_specs_go_over_the_layers_that_have_the_hook():
    for layers, kind in ((["mamba2", "attn"], "mamba2"), (["mamba", "attn"], "mamba")):
        model = hybrid(layers)
        table = components(model)
        assert table["z"] == "blocks.{layer}.attn.hook_z" and "ssm_state" in table and "resid_pre" in table
        assert hook_layers(model, table["z"]) == [1] == attention_layers(model)
        assert hook_layers(model, table["ssm_state"]) == [0] and scan_layers(model) == {0: kind}
        assert [s.label for s in patch_specs(model, "z", heads=True)] == [
            f"L1 attn.hook_z H{h}" for h in range(4)
        ]
        assert len(patch_specs(model, "resid_pre", positions=True, n_pos=5)) == 2 * 5  # every layer
    # Mamba-2 state hooks count their own heads (d_inner / head_dim = 64 / 16), not the attention's
    wide = hybrid(["mamba2", "attn"], d_model=48)  # 96 / 16 = 6 SSM heads, 4 attention heads
    assert len(patch_specs(wide, "ssm_state", heads=True)) == 6
    assert len(patch_specs(wide, "z", heads=True)) == 4
    assert len(patch_specs(mamba2(), "ssm_state", heads=True)) == 2 * 4
    with pytest.raises(ValueError, match="no channel axis"):
        patch_specs(wide, "ssm_state", channel_groups=2)


# ---- probes and saturation ------------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [["mamba2", "attn"], ["mamba", "attn"], None])
def test_probes_and_saturation_on_the_default_state_hooks(layers):
    model = mamba2() if layers is None else hybrid(layers)
    ssm = [0, 1] if layers is None else [0]
    assert default_state_hooks(model) == [f"blocks.{i}.mixer.hook_ssm_state" for i in ssm]
    b = copy_batch(n=256, length=6)
    read = torch.arange(3, b.tokens.shape[1] - 1)
    df = probe_lags(model, b.tokens, "blocks.0.mixer.hook_ssm_state", read, max_lag=2, max_features=64)
    assert df[["accuracy", "control_accuracy", "ce_bits"]].notna().all().all()
    assert df["accuracy"].iloc[0] > 0.9  # the current token is in the state of a random model
    res = state_saturation(model, TASK, lengths=[2, 4], n_examples=512, copy_examples=32, max_features=64)
    s = res.summary
    assert (s["hooks"] == "+".join(default_state_hooks(model))).all()
    assert s[["decodable_tokens", "info_bits", "string_bits"]].map(math.isfinite).all().all()
    # short strings fit: every letter is read back (2 of 2, 4 of 4; 2 bits a letter)
    assert s["decodable_tokens"].tolist() == pytest.approx([2.0, 4.0], abs=0.05)
    assert s["info_bits"].tolist() == pytest.approx([4.0, 8.0], abs=0.1)


# ---- patching -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [["mamba2", "attn"], ["mamba", "attn"], None])
def test_patch_grids_over_heads_and_state_groups_with_recurrence_semantics(layers):
    model = mamba2() if layers is None else hybrid(layers)
    clean, corrupt = paired_batches(TASK, 4, 6)
    metric = make_metric("logit_diff", clean, corrupt)
    if layers is not None:
        heads = patch_grid(model, clean.tokens, corrupt.tokens, metric, "z", heads=True)
        assert heads["label"].tolist() == [f"L1 attn.hook_z H{h}" for h in range(4)]
        assert heads["effect"].map(math.isfinite).all()
        assert heads.attrs["patch_semantics"] == {"blocks.1.attn.hook_z": "forward"}
    # one query position q: a state patch at t > q cannot change the logits there, one at t <= q can
    q = int(clean.answer_start[0]) + 1

    def at_q(logits):  # clean answer minus corrupt answer at position q, per example
        k = logits.shape[0] // clean.tokens.shape[0]
        right, wrong = clean.targets[:, q].repeat(k), corrupt.targets[:, q].repeat(k)
        rows = torch.arange(logits.shape[0])
        return logits[rows, q, right] - logits[rows, q, wrong]

    groups = dict(channel_groups=4) if layers == ["mamba", "attn"] else dict(heads=True)
    grid = patch_grid(model, clean.tokens, corrupt.tokens, at_q, "ssm_state", positions=True, **groups)
    assert set(grid.attrs["patch_semantics"].values()) == {"recurrence"}
    assert grid["effect"].map(math.isfinite).all()
    assert (
        len(grid)
        == len(hook_layers(model, "blocks.{layer}.mixer.hook_ssm_state")) * 4 * clean.tokens.shape[1]
    )
    after = grid[grid["pos"] > q]
    assert after["metric"].sub(grid.attrs["corrupt_metric"]).abs().max() < 1e-5
    assert grid[grid["pos"] <= q]["effect"].abs().max() > 1e-4  # random Mamba-1: ~3e-4, Mamba-2: larger


def test_path_patching_on_a_hybrid_is_the_brute_force_definition():
    """path_patching on attn, mamba2, attn (heads only in layers 0 and 2) equals the definition run hook by
    hook: sender z from the corrupt run, every other head frozen at clean, the SSM layer recomputed (so
    the path through it counts); then only the receiver's q/k/v replaced by what that run recorded."""
    torch.manual_seed(0)
    cfg = HybridConfig(d_vocab=V, d_model=32, layers=["attn", "mamba2", "attn"], n_heads=2, d_state=8,
                       head_dim=16, init_std=0.3)  # fmt: skip
    model = HookedHybrid(cfg).eval()
    clean, corrupt = paired_batches(TASK, 4, 6)
    metric = make_metric("logit_diff", clean, corrupt)
    df = path_patching(model, clean.tokens, corrupt.tokens, metric)
    assert sorted(set(df["sender"])) == ["L0H0", "L0H1", "L2H0", "L2H1"]
    assert set(df["receiver"]) == {"L2H0", "L2H1", "logits"}
    assert len(df) == 4 + 2 * 2 * 3  # one direct row per head; layer-0 heads x layer-2 heads x q, k, v

    z = {layer: f"blocks.{layer}.attn.hook_z" for layer in (0, 2)}
    _, src = model.run_with_cache(corrupt.tokens)
    _, base = model.run_with_cache(clean.tokens)

    def brute(sl, sh, receiver, inp):
        def freeze(layer):
            def hook(act, hook):
                act = base[z[layer]].clone()
                if layer == sl:
                    act[:, :, sh] = src[z[layer]][:, :, sh]
                return act

            return hook

        hooks = [(z[layer], freeze(layer)) for layer in z]
        if receiver is None:
            return metric(model.run_with_hooks(clean.tokens, fwd_hooks=hooks)).mean()
        rl, rh = receiver
        name, seen = f"blocks.{rl}.attn.hook_{inp}", {}
        model.run_with_hooks(
            clean.tokens, fwd_hooks=[*hooks, (name, lambda a, hook: seen.update(v=a.clone()))]
        )

        def put(act, hook):
            act = act.clone()
            act[:, :, rh] = seen["v"][:, :, rh]
            return act

        return metric(model.run_with_hooks(clean.tokens, fwd_hooks=[(name, put)])).mean()

    with torch.no_grad():
        for row in df.itertuples():
            receiver = None if row.input == "direct" else (int(row.receiver_layer), int(row.receiver_head))
            expected = brute(row.sender_layer, row.sender_head, receiver, row.input)
            assert row.metric == pytest.approx(float(expected), abs=1e-5), row
    paths = df[df["input"] != "direct"]
    assert paths["effect"].abs().max() > 0.01  # the comparison is not between zeros
    graph = circuit_from_path_patching(df, threshold=0.0)
    assert graph.nodes["logits"]["layer"] == 3 and graph.nodes["L2H1"]["layer"] == 2
    with pytest.raises(ValueError, match=r"head \(1, 0\) does not exist: attention layers \[0, 2\]"):
        path_patching(model, clean.tokens, corrupt.tokens, metric, senders=[(1, 0)])


# ---- head detectors -------------------------------------------------------------------------------------
def test_head_scores_see_attention_heads_and_mamba2_heads_with_their_layers():
    model = hybrid(["mamba2", "attn"])
    b = copy_batch()
    df = head_scores(model, b, offsets=(0, 1))
    assert df.groupby("kind")["layer"].unique().map(list).to_dict() == {"attention": [1], "mamba2": [0]}
    assert len(df) == 4 * (4 + 4)  # 4 scores x (4 attention heads + 4 SSM heads)
    assert df["value"].between(0, 1).all() and df["activity"].between(0, 1).all()
    # the Mamba-2 rows are the scores of its exact hidden attention, row-normalised
    M = model.ssm_attention(b.tokens)[0].abs()
    pattern = M / M.sum(-1, keepdim=True).clamp(min=1e-12)
    torch.testing.assert_close(ssm_patterns(model, b.tokens, reduce="none")[0], pattern)
    # Mamba-1 layers: one channel mean per layer; a pure Mamba-2 stacks its layers
    df1 = head_scores(hybrid(["mamba", "attn"]), b)
    assert df1.groupby("kind").size().to_dict() == {"attention": 3 * 4, "mamba": 3}
    assert mamba_patterns(mamba2(), b.tokens, reduce="none").shape == (2, 8, 4, *b.tokens.shape[1:] * 2)


def test_planted_heads_are_found_in_their_layers():
    """A Mamba-2 head whose state forgets at once (decay exp(-dt * 100) ~ 0) attends to itself only; an
    attention head whose pattern is set to the lookup targets (a permanent hook) is the lookup head."""
    model = hybrid(["mamba2", "attn"])
    b = copy_batch(length=6)
    with torch.no_grad():
        model.blocks[0].mixer.A_log[2] = math.log(100.0)
        model.blocks[0].mixer.dt_bias[2] = 20.0
    targets = lookup_targets(b)  # [B, P]

    def plant(pattern, hook):
        pattern = pattern.clone()
        rows = targets >= 0
        one_hot = F.one_hot(targets.clamp(min=0), pattern.shape[-1]).to(pattern.dtype)
        pattern[:, 3] = torch.where(rows[..., None], one_hot, pattern[:, 3])
        return pattern

    model.add_hook("blocks.1.attn.hook_pattern", plant, is_permanent=True)
    try:
        df = head_scores(model, b, offsets=(0,))
    finally:
        model.reset_hooks(including_permanent=True)
    top = rank_heads(df, "lookup").iloc[0]
    assert (top["kind"], top["layer"], top["head"]) == ("attention", 1, 3) and top["value"] == pytest.approx(
        1.0
    )
    self_attn = rank_heads(df[df.kind == "mamba2"], "offset_0").iloc[0]
    assert (self_attn["layer"], self_attn["head"]) == (0, 2) and self_attn["value"] > 0.99


# ---- trained hybrids (slow) -----------------------------------------------------------------------------
def train_copy(layers) -> HookedHybrid:
    """400 AdamW steps of copy (strings of 1-8 over 4 letters), the recipe of tests/test_hybrid.py."""
    torch.manual_seed(0)
    cfg = HybridConfig(d_vocab=V, d_model=48, layers=layers, n_heads=4, head_dim=16)
    model = HookedHybrid(cfg)
    steps, warmup = 400, 40
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup)))
    )
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        batch = make_batch(TASK, 32, gen)
        loss = F.cross_entropy(model(batch.tokens).flatten(0, 1), batch.targets.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("layers", [["mamba", "attn"], ["mamba2", "attn"]])
def test_trained_hybrid_copies_in_its_attention_layer(layers):
    """About 60 s each on one thread: the lookup detector and head patching agree on one attention head,
    and the SSM state still holds the string (saturation)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train_copy(layers)
        test = make_batch(TASK, 512, torch.Generator().manual_seed(99))
        with torch.no_grad():
            correct, _ = test.score(model(test.tokens))
        assert correct.float().mean().item() >= 0.9
        scores = head_scores(model, make_batch(TASK, 64, torch.Generator().manual_seed(5), length=8))
        lookup = rank_heads(scores, "lookup")
        top = lookup.iloc[0]
        assert top["kind"] == "attention" and top["layer"] == 1 and top["value"] >= 0.5
        assert lookup[lookup.kind != "attention"]["value"].max() < 0.2  # the SSM layer does not look up
        clean, corrupt = paired_batches(TASK, 16, 6)
        metric = make_metric("logit_diff", clean, corrupt)
        heads = patch_grid(model, clean.tokens, corrupt.tokens, metric, "z", heads=True, mode="noise")
        best = heads.sort_values("effect").iloc[-1]
        assert best["head"] == top["head"] and best["effect"] >= 0.4
        sat = state_saturation(model, TASK, lengths=[8], n_examples=512, copy_examples=64, max_features=64)
        assert sat.summary["decodable_tokens"].iloc[0] >= 6.0  # of 8 letters
    finally:
        torch.set_num_threads(before)
