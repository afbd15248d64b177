"""Reused patching (start at the patch's layer and position) equals the one-forward-per-patch loop."""

import itertools

import pytest
import torch

from interp.analysis.patching import (
    Metric,
    PatchSpec,
    activation_patching,
    make_metric,
    paired_batches,
    patch_specs,
)
from interp.hooks import run_and_cache
from interp.models import build_model
from interp.models.hash_copy import build_hash_copy
from interp.tasks import TaskConfig

TASK = TaskConfig(task="copy", n_letters=8, max_len=40, unique_ngrams=True, ngram=3)


def left_pad(tokens, mask, answers, wrong, shifts, pad=0):
    """Shift example i right by shifts[i], padding on the left: the same strings, left-padded."""
    b, p = tokens.shape
    out = [torch.full((b, p + max(shifts)), fill, dtype=t.dtype) for t, fill in ((tokens, pad), (mask, 0))]
    out += [torch.full((b, p + max(shifts)), pad, dtype=t.dtype) for t in (answers, wrong)]
    attn = torch.zeros(b, p + max(shifts), dtype=torch.long)
    for i, s in enumerate(shifts):
        s0 = max(shifts) - s  # every example ends at the last column
        for o, t in zip(out, (tokens, mask, answers, wrong)):
            o[i, s0 : s0 + p] = t[i]
        attn[i, s0 : s0 + p] = 1
        attn[i, s0 + p :] = 0
    return out, attn


def pair_inputs(clean, corrupt, shifts=None):
    """(clean tokens, corrupted tokens, logit-difference metric, attention_mask) of a pair of task batches;
    with shifts, every example left-padded by shifts[i] (`left_pad`)."""
    if shifts is None:
        return clean.tokens, corrupt.tokens, make_metric("logit_diff", clean, corrupt), None
    answers, wrong = clean.tokens.roll(-1, 1), corrupt.tokens.roll(-1, 1)
    (c_tok, mask, ans, wr), attn = left_pad(clean.tokens, clean.score_mask, answers, wrong, shifts)
    (x_tok, *_), _ = left_pad(corrupt.tokens, clean.score_mask, answers, wrong, shifts)
    return c_tok, x_tok, Metric("logit_diff", ans, mask.bool(), wr), attn


def sharpened(model, dtype=torch.float64):
    """model in eval mode and `dtype`, every weight tripled: a random init's logits nearly tie, so patch
    effects would be tiny and equal-looking."""
    model = model.eval()
    for p in model.parameters():
        p.data.mul_(3)
    return model.to(dtype)


def assert_same(a, b, dtype):
    """Patched metrics agree to 1e-5: per example in float64; in float32 the mean over examples (per
    example, float32 rounding of logit differences of size ~50 reaches 2e-5: other summation orders)."""
    if dtype == torch.float64:
        gap = a.attrs["clean_metric"] - a.attrs["corrupt_metric"]
        per_a, per_b = (torch.tensor(df.attrs["per_example_effect"]) * gap for df in (a, b))
        torch.testing.assert_close(per_a, per_b, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        torch.tensor(a.metric.values), torch.tensor(b.metric.values), atol=1e-5, rtol=0
    )


def grids(model, n_pos):
    return {
        "heads x positions": patch_specs(model, "z", heads=True, positions=True, n_pos=n_pos),
        "residual x positions": patch_specs(model, "resid_pre", positions=True, n_pos=n_pos)
        + patch_specs(model, "resid_mid", positions=True, n_pos=n_pos),
        "layer x head, q/k/v/pattern": patch_specs(model, "q", heads=True)
        + patch_specs(model, "k", heads=True, positions=[3, 7])
        + patch_specs(model, "pattern", heads=True, positions=[5])
        + patch_specs(model, "mlp_out", positions=[0, 9]),
    }


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    trained_like = build_model(
        "transformer", d_vocab=TASK.vocab.size, d_model=32, n_layers=3, n_heads=4
    ).eval()
    for p in trained_like.parameters():  # larger weights than init so patches move the logits
        p.data.mul_(8)
    return {"hash-copy": build_hash_copy(8, 3, n_ctx=128), "random-d32": trained_like}


@pytest.mark.parametrize("name", ["hash-copy", "random-d32"])
@pytest.mark.parametrize("grid", ["heads x positions", "residual x positions", "layer x head, q/k/v/pattern"])
@pytest.mark.parametrize("mode", ["noise", "denoise"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reuse_equals_loop(models, name, grid, mode, dtype):
    model = models[name].to(dtype)
    clean, corrupt = paired_batches(TASK, 3, 6)
    metric = make_metric("logit_diff", clean, corrupt)
    specs = grids(model, clean.tokens.shape[1])[grid]
    args = (model, clean.tokens, corrupt.tokens, metric, specs)
    reuse = activation_patching(*args, mode=mode, method="reuse", max_batch=24)
    loop = activation_patching(*args, mode=mode, method="loop")
    assert_same(reuse, loop, dtype)
    torch.testing.assert_close(
        torch.tensor(reuse.metric.values), torch.tensor(loop.metric.values), atol=1e-5, rtol=0
    )
    assert reuse.metric.std() > 0


@pytest.mark.parametrize("positional", ["rope", "alibi"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reuse_equals_loop_with_left_padding(positional, dtype):
    torch.manual_seed(1)
    model = build_model(
        "transformer", d_vocab=TASK.vocab.size, d_model=32, n_layers=2, n_heads=4, positional=positional
    ).eval()
    for p in model.parameters():
        p.data.mul_(8)
    model = model.to(dtype)
    clean, corrupt = paired_batches(TASK, 3, 6)
    c_tok, x_tok, metric, attn = pair_inputs(clean, corrupt, [0, 2, 5])
    n = c_tok.shape[1]
    specs = patch_specs(model, "z", heads=True, positions=True, n_pos=n)
    specs += patch_specs(model, "resid_pre", positions=True, n_pos=n)
    args = (model, c_tok, x_tok, metric, specs)
    reuse = activation_patching(*args, mode="noise", method="reuse", attention_mask=attn)
    loop = activation_patching(*args, mode="noise", method="loop", attention_mask=attn)
    assert_same(reuse, loop, dtype)
    assert reuse.metric.std() > 0


def test_auto_falls_back_without_the_capability(models, monkeypatch):
    model = models["hash-copy"]
    clean, corrupt = paired_batches(TASK, 2, 5)
    metric = make_metric("logit_diff", clean, corrupt)
    specs = patch_specs(model, "z", heads=True) + [PatchSpec("hook_embed", pos=4)]  # no layer: batched
    args = (model, clean.tokens, corrupt.tokens, metric, specs)
    loop = activation_patching(*args, method="loop")
    reuse = activation_patching(*args, method="reuse")
    torch.testing.assert_close(
        torch.tensor(reuse.metric.values), torch.tensor(loop.metric.values), atol=1e-5, rtol=0
    )
    monkeypatch.setattr(model, "forward_from", None)  # a model without the capability
    auto = activation_patching(*args)
    torch.testing.assert_close(
        torch.tensor(auto.metric.values), torch.tensor(loop.metric.values), atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError, match="cannot resume a forward"):
        activation_patching(*args, method="reuse")
    with pytest.raises(ValueError, match="unknown method"):
        activation_patching(*args, method="fast")


@pytest.mark.parametrize("padded", [False, True])
def test_lstm_reuse_equals_loop(padded):
    """LSTM: restart each layer at p from its recorded (h, c) after p - 1; state x position grids."""
    torch.manual_seed(2)
    model = build_model("lstm", d_vocab=TASK.vocab.size, d_model=16, n_layers=2).eval().double()
    for p in model.parameters():
        p.data.mul_(6)
    clean, corrupt = paired_batches(TASK, 3, 5)
    c_tok, x_tok, metric, attn = pair_inputs(clean, corrupt, [0, 1, 4] if padded else None)
    n = c_tok.shape[1]
    specs = [s for c in ("hidden", "cell") for s in patch_specs(model, c, positions=True, n_pos=n)]
    specs += patch_specs(model, "hidden")  # every position at once: starts at 0
    args = (model, c_tok, x_tok, metric, specs)
    reuse = activation_patching(*args, mode="noise", method="reuse", attention_mask=attn)
    loop = activation_patching(*args, mode="noise", method="loop", attention_mask=attn)
    assert_same(reuse, loop, torch.float64)
    assert reuse.metric.std() > 0


def mamba_grids(model, n_pos):
    # Mamba-1's state has a channel axis (D_inner, patched in groups), Mamba-2's a head axis
    groups = dict(channel_groups=4) if model.arch == "mamba" else dict(heads=True)
    return {
        "state x channel groups x positions": patch_specs(
            model, "ssm_state", positions=True, n_pos=n_pos, **groups
        ),
        "residual x positions": patch_specs(model, "resid_pre", positions=True, n_pos=n_pos)
        + patch_specs(model, "mixer_out", positions=True, n_pos=n_pos),  # position-local: one position
        "conv, write, gate, C": patch_specs(model, "conv", positions=[0, 3, n_pos - 1])
        + patch_specs(
            model,
            "ssm_write",
            positions=[1, 6],
            **({"channel_groups": 2} if "channel_groups" in groups else groups),
        )
        + patch_specs(model, "gate", positions=[2, 9])
        + patch_specs(model, "C", positions=[4])
        + patch_specs(model, "ssm_state"),  # every position at once: starts at 0
    }


MAMBAS = {
    "mamba": dict(d_model=16, n_layers=2, d_state=4),
    "mamba2": dict(d_model=16, n_layers=2, d_state=4, head_dim=8),  # 4 heads
}


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "grid", ["state x channel groups x positions", "residual x positions", "conv, write, gate, C"]
)
@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_mamba_reuse_equals_loop(arch, grid, dtype, padded):
    """Mamba-1 and -2: each block restarts at p from its recorded conv window and SSM state after p - 1;
    a state patch at t still feeds the recurrence (the loop's semantics). Mamba-2: heads for channels."""
    torch.manual_seed(3)
    model = sharpened(build_model(arch, d_vocab=TASK.vocab.size, **MAMBAS[arch]), dtype)
    clean, corrupt = paired_batches(TASK, 3, 5)
    c_tok, x_tok, metric, attn = pair_inputs(clean, corrupt, [0, 2, 5] if padded else None)
    specs = mamba_grids(model, c_tok.shape[1])[grid]
    args = (model, c_tok, x_tok, metric, specs)
    reuse = activation_patching(*args, mode="noise", method="reuse", attention_mask=attn, max_batch=12)
    loop = activation_patching(*args, mode="noise", method="loop", attention_mask=attn)
    assert_same(reuse, loop, dtype)
    assert reuse.metric.std() > 0


def test_rotary_without_autograd_equals_the_differentiable_form():
    """apply_rotary's no-grad path (halves written into one buffer, used by every patched pass) gives
    the training path's numbers bit for bit, with partial rotary and per-sequence positions."""
    from interp.models.transformer import apply_rotary, rotary_cos_sin  # noqa: PLC0415

    x = torch.randn(2, 5, 3, 8, requires_grad=True)
    for positions, dim in ((torch.arange(5), 8), (torch.tensor([[0, 0, 1, 2, 3], [0, 1, 2, 3, 4]]), 4)):
        cos, sin = rotary_cos_sin(positions, dim, 10000.0)
        differentiable = apply_rotary(x, cos, sin)
        assert differentiable.requires_grad
        with torch.no_grad():
            assert torch.equal(apply_rotary(x, cos, sin), differentiable)


def test_reuse_with_a_hook_watching_the_next_blocks_queries(models):
    """A position-local patch in block l changes block l + 1's input at its position only, so reuse takes
    block l + 1's later queries/keys/values from the recording; a hook watching them there makes it
    compute them, and it sees every position the pass computes (P - pos), as the contract says."""
    model = models["random-d32"].float()
    clean, corrupt = paired_batches(TASK, 2, 6)
    metric = make_metric("logit_diff", clean, corrupt)
    n = clean.tokens.shape[1]
    specs = patch_specs(model, "z", layers=[0], heads=[1], positions=True, n_pos=n)
    args = (model, clean.tokens, corrupt.tokens, metric, specs)
    loop = activation_patching(*args, mode="noise", method="loop")
    seen = []
    model.hook_dict["blocks.1.attn.hook_q"].add_perma_hook(lambda act, hook: seen.append(act.shape[1]))
    try:
        reuse = activation_patching(*args, mode="noise", method="reuse")
    finally:
        model.reset_hooks(including_permanent=True)
    assert_same(reuse, loop, torch.float32)
    z = [
        run_and_cache(model, t, ["blocks.0.attn.hook_z"])[1]["blocks.0.attn.hook_z"][:, :, 1]
        for t in args[1:3]
    ]
    runs = [p for p in range(n) if not torch.equal(z[0][:, p], z[1][:, p])]  # the rest are no-ops: not run
    assert {n - p for p in runs} <= set(seen)  # every pass computed all its positions
    plain = activation_patching(*args, mode="noise", method="reuse")  # unwatched: the recorded ones
    assert_same(plain, loop, torch.float32)


@pytest.mark.parametrize("positional", ["rope", "alibi", "hard_alibi"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("pos", [0, 4, 9])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_key_changed_equals_full_attention(positional, padded, pos, dtype):
    """The O(T) update of the later queries' outputs when only key/value pos changed equals attention
    recomputed in full, for every bias kind, padding, K copies, and saturated rows (a > 1/2, recomputed)."""
    from interp.models.transformer import (  # noqa: PLC0415
        Recorded,
        TransformerConfig,
        attention_bias,
        log_normaliser,
        one_key_changed,
    )
    from interp.models.transformer import attention_scores as scores  # noqa: PLC0415

    torch.manual_seed(pos)
    cfg = TransformerConfig(d_model=32, n_heads=4, n_layers=1, positional=positional, n_ctx=64)
    b, h, n, dh, k_copies = 3, 4, 10, 8, 2
    key_mask = None
    if padded:
        key_mask = torch.ones(b, n, dtype=torch.bool)
        key_mask[1, :3] = False  # example 1 left-padded by 3 (pos 0 is then a padding key there)
    q, k, v = (torch.randn(b, h, n, dh, dtype=dtype) * 3 for _ in range(3))
    k[:, 0, :, :] *= 8  # head 0 saturated: most of its rows put almost all weight on one key
    full_bias = attention_bias(cfg, n, None, key_mask, 0)
    lse = log_normaliser(q, k, full_bias)
    pattern = torch.softmax(scores(q, k, full_bias), -1)
    z = pattern @ v
    assert (pattern[..., pos + 1 :, pos] > 0.5).any() or pos == 9  # some later row needs the exact path
    # the changed key and value at pos in each of K copies; every other key and value as recorded
    k_new, v_new = k.repeat(k_copies, 1, 1, 1), v.repeat(k_copies, 1, 1, 1)
    k_new[:, :, pos] = torch.randn(k_copies * b, h, dh, dtype=dtype) * 3
    v_new[:, :, pos] = torch.randn(k_copies * b, h, dh, dtype=dtype)
    q_new = q.repeat(k_copies, 1, 1, 1)
    q_new[:, :, pos] = torch.randn(k_copies * b, h, dh, dtype=dtype)
    mask = None if key_mask is None else key_mask.repeat(k_copies, 1)
    bias = attention_bias(cfg, n, None, mask, pos)  # queries pos.. over every key, as forward_from's
    rest = slice(pos + 1, n)
    known = Recorded(q[:, :, rest], k[:, :, rest], v[:, :, rest], z[:, :, rest], lse[:, :, rest])
    known.k_pos, known.v_pos = k[:, :, pos : pos + 1], v[:, :, pos : pos + 1]
    got = one_key_changed(q_new[:, :, pos : pos + 1], k_new, v_new, known, bias)
    want = torch.softmax(scores(q_new[:, :, pos:], k_new, bias), -1) @ v_new
    if dtype == torch.float64:
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    else:  # float32: no further from the float64 truth than attention recomputed in float32 is
        q64, k64, v64 = (t.double() for t in (q_new[:, :, pos:], k_new, v_new))
        bias64 = bias if bias is None or bias.dtype == torch.bool else bias.double()
        truth = torch.softmax(scores(q64, k64, bias64), -1) @ v64
        assert (got - truth).abs().max() <= 2 * (want - truth).abs().max() + 1e-6


def test_forward_from_readout_computes_the_read_positions(models):
    """readout=rows: the logits at the read positions equal the full resumed pass's; the others are the
    recorded ones; a pass with nothing read past its start does not run."""
    model = models["random-d32"].double()
    tokens = paired_batches(TASK, 2, 6)[0].tokens
    n = tokens.shape[1]
    state = model.resume_state(tokens)
    edit = lambda act, hook: act * 1.5  # noqa: E731  changes every position it sees
    # scattered positions, and a run of them (which the pass indexes as a slice)
    for read, (layer, pos) in itertools.product(
        (torch.tensor([2, 5, n - 1]), torch.arange(3, n - 1)), ((0, 0), (1, 4), (0, n - 1))
    ):
        with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_attn_out", edit)]):
            full = model.forward_from(state, layer, pos, copies=2)
            part = model.forward_from(state, layer, pos, copies=2, readout=read)
        rows = read[read >= pos] - pos
        if not rows.numel():  # nothing read, but a pass that is not position-local runs in full
            assert torch.equal(part, full)
            continue
        torch.testing.assert_close(part[:, rows], full[:, rows], atol=1e-12, rtol=0)
        assert not torch.equal(full[:, rows], state.logits[:, pos:][:, rows].repeat(2, 1, 1))
        others = torch.ones(n - pos, dtype=torch.bool)
        others[rows] = False
        assert torch.equal(part[:, others], state.logits[:, pos:][:, others].repeat(2, 1, 1))
    read = torch.tensor([2, 5, n - 1])
    with model.hooks(fwd_hooks=[("blocks.0.hook_attn_out", edit)]):
        skipped = model.forward_from(state, 0, 6, single=True, readout=torch.tensor([2, 5]))
    assert torch.equal(skipped, state.logits[:, 6:])
    seen = []  # a hook after the last block sees every position of the pass: no readout then
    with model.hooks(fwd_hooks=[("ln_final.hook_normalized", lambda act, hook: seen.append(act.shape[1]))]):
        model.forward_from(state, 0, 1, readout=read)
    assert seen == [n - 1]
    for bad in (
        torch.tensor([5, 2]),
        torch.tensor([2, 2]),
        torch.tensor([0, n]),
        torch.tensor([-1]),
        read.float(),
    ):
        with pytest.raises(
            ValueError, match=f"readout must be ascending distinct integer positions in 0..{n - 1}"
        ):
            model.forward_from(state, 0, 1, readout=bad)


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("arch", ["transformer", "mamba", "hybrid"])
def test_reuse_equals_loop_with_user_hooks_editing(arch, in_place):
    """A user's hooks that edit activations (steering, scaling) stay on while patching: a resumed pass
    sends the recorded block inputs and attention outputs through them again, so they are recorded before
    the user's edit (`hooks_first`; copied, so an edit in place leaves the recording alone), and the result
    equals the loop's, which runs them once per forward."""
    torch.manual_seed(5)
    kw = dict(d_vocab=TASK.vocab.size, d_model=16)
    if arch == "transformer":
        model = build_model("transformer", n_layers=3, n_heads=2, **kw)
    elif arch == "mamba":
        model = build_model("mamba", n_layers=2, d_state=4, **kw)
    else:
        model = build_model("hybrid", layers=["mamba", "attn", "attn"], n_heads=2, d_state=4, **kw)
    model = sharpened(model)
    clean, corrupt = paired_batches(TASK, 2, 5)
    metric = make_metric("logit_diff", clean, corrupt)
    n = clean.tokens.shape[1]
    steer = torch.randn(16, dtype=torch.float64)
    if in_place:
        edits = {"blocks.1.hook_resid_pre": lambda act, hook: act.add_(steer)}
        if arch != "mamba":
            edits["blocks.2.attn.hook_z"] = lambda act, hook: act.mul_(2.0)
    else:
        edits = {"blocks.1.hook_resid_pre": lambda act, hook: act + steer}
        if arch != "mamba":
            edits["blocks.2.attn.hook_z"] = lambda act, hook: act * 2.0
    heads = "z" if arch != "mamba" else "mixer_out"
    specs = patch_specs(model, heads, positions=True, n_pos=n, **({"heads": True} if heads == "z" else {}))
    specs += patch_specs(model, "resid_pre", positions=True, n_pos=n)
    args = (model, clean.tokens, corrupt.tokens, metric, specs)
    plain = activation_patching(*args, mode="noise", method="loop")
    for name, fn in edits.items():
        model.hook_dict[name].add_perma_hook(fn)
    try:
        reuse = activation_patching(*args, mode="noise", method="reuse")
        loop = activation_patching(*args, mode="noise", method="loop")
    finally:
        model.reset_hooks(including_permanent=True)
    assert_same(reuse, loop, torch.float64)
    assert not torch.allclose(torch.tensor(loop.metric.values), torch.tensor(plain.metric.values))


def test_reuse_uses_the_one_key_update(models, monkeypatch):
    """The head x position grid of a 3-layer model goes through `one_key_changed` (so the equality tests
    above test it), and a recording it reads, corrupted, changes the result."""
    import interp.models.transformer as tr  # noqa: PLC0415

    model = models["random-d32"].float()
    clean, corrupt = paired_batches(TASK, 2, 6)
    metric = make_metric("logit_diff", clean, corrupt)
    n = clean.tokens.shape[1]
    specs = patch_specs(model, "z", layers=[0, 1], heads=[0], positions=True, n_pos=n)
    args = (model, clean.tokens, corrupt.tokens, metric, specs)
    calls = []
    original = tr.one_key_changed
    monkeypatch.setattr(tr, "one_key_changed", lambda *a: calls.append(1) or original(*a))
    reuse = activation_patching(*args, mode="noise", method="reuse")
    assert len(calls) >= n  # one per pass starting after a position-local patch
    assert_same(reuse, activation_patching(*args, mode="noise", method="loop"), torch.float32)
    resume = model.resume_state
    monkeypatch.setattr(model, "resume_state", lambda *a: (s := resume(*a)).z.__setitem__(1, s.z[1] * 0) or s)
    broken = activation_patching(*args, mode="noise", method="reuse")
    assert not torch.allclose(torch.tensor(broken.metric.values), torch.tensor(reuse.metric.values))


@pytest.mark.parametrize(
    "watched,padded",
    [
        (None, False),
        (None, True),
        ("hook_mlp_out", False),
        ("mlp.hook_post", False),
        ("ln2.hook_normalized", False),
    ],
)
def test_parallel_blocks_reuse_the_recorded_mlp_output(watched, padded, monkeypatch):
    """In a parallel (GPT-NeoX) block the MLP reads the block's input, not the attention output: after a
    position-local patch in the block below, the next block's MLP runs on the patched position alone and
    takes the recorded output elsewhere. A user's hook on that MLP (its input norm, inside, its output)
    sees every position computed."""
    torch.manual_seed(3)
    model = sharpened(
        build_model(
            "transformer", d_vocab=TASK.vocab.size, d_model=16, n_layers=3, n_heads=2, parallel_residual=True
        )
    )
    clean, corrupt = paired_batches(TASK, 3, 5)
    tokens, corrupted, metric, attention_mask = pair_inputs(clean, corrupt, [0, 2, 1] if padded else None)
    n = tokens.shape[1]
    specs = patch_specs(model, "z", heads=True, positions=True, n_pos=n)
    specs += patch_specs(model, "mlp_out", positions=True, n_pos=n) + patch_specs(
        model, "resid_pre", positions=True, n_pos=n
    )
    args = (model, tokens, corrupted, metric, specs)
    options = dict(mode="noise", attention_mask=attention_mask)
    seen = []  # positions block 1's MLP computes in each resumed pass that starts in block 0
    model.blocks[1].mlp.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    resume, forward_from = model.resume_state, model.forward_from

    def spied(state, layer, pos, **kw):
        seen.clear()
        logits = forward_from(state, layer, pos, **kw)
        if layer == 0 and kw.get("single"):
            runs.append((pos, seen[:]))
        return logits

    monkeypatch.setattr(model, "forward_from", spied)
    if watched:
        model.hook_dict[f"blocks.1.{watched}"].add_perma_hook(lambda act, hook: act * 1.5)
    try:
        runs = []
        reuse = activation_patching(*args, **options, method="reuse")
        assert_same(reuse, activation_patching(*args, **options, method="loop"), torch.float64)
        assert runs and all(s == ([n - pos] if watched else [1]) for pos, s in runs)
        # the recording is what it reads: corrupted, the result changes (unless a watched MLP computes)
        monkeypatch.setattr(
            model, "resume_state", lambda *a: (s := resume(*a)).mlp_out[1].mul_(0) is None or s
        )
        broken = activation_patching(*args, **options, method="reuse")
    finally:
        model.reset_hooks(including_permanent=True)
    assert torch.allclose(torch.tensor(broken.metric.values), torch.tensor(reuse.metric.values)) == bool(
        watched
    )


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("positional", ["rope", "hard_alibi"])
def test_hybrid_reuse_equals_loop(positional, padded):
    """A hybrid of Mamba-1, attention, Mamba-2 and MLP layers: each layer restarts at p from its own
    recording (conv window and state, keys and values); heads, states, residual and MLP grids."""
    torch.manual_seed(4)
    model = build_model(
        "hybrid",
        d_vocab=TASK.vocab.size,
        d_model=16,
        layers=["mamba", "attn", "mamba2", "mlp"],
        n_heads=2,
        d_state=4,
        head_dim=8,
        positional=positional,
    )
    model = sharpened(model)
    clean, corrupt = paired_batches(TASK, 3, 5)
    c_tok, x_tok, metric, attn = pair_inputs(clean, corrupt, [0, 2, 5] if padded else None)
    n = c_tok.shape[1]
    specs = (
        patch_specs(model, "z", heads=True, positions=True, n_pos=n)
        + patch_specs(model, "ssm_state", positions=True, n_pos=n)
        + patch_specs(model, "resid_pre", positions=True, n_pos=n)
        + patch_specs(model, "mlp_out", positions=True, n_pos=n)
        + patch_specs(model, "k", heads=True, positions=[2, 6])
    )
    assert {s.layer for s in specs} == {0, 1, 2, 3}
    args = (model, c_tok, x_tok, metric, specs)
    reuse = activation_patching(*args, mode="noise", method="reuse", attention_mask=attn, max_batch=24)
    loop = activation_patching(*args, mode="noise", method="loop", attention_mask=attn)
    assert_same(reuse, loop, torch.float64)
    assert reuse.metric.std() > 0
    assert model.position_local("blocks.1.attn.hook_z") and model.position_local("blocks.3.mlp.hook_pre")
    assert not model.position_local("blocks.1.attn.hook_k") and not model.position_local(
        "blocks.0.hook_resid_pre"
    )


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "hybrid"])
def test_state_patches_take_the_patched_layers_states_from_the_recording(arch, monkeypatch):
    """A pass patching only its layer's hook_ssm_state hands the hook the recorded states instead of
    scanning for them (`patched_hooks`): equal to the loop and to the pass that scans, no scan that
    materialises the states, and a corrupted recording changes the result. A user hook on that same hook
    editing in place leaves no recording to use (`MambaResume.seen` None); one that returns its input
    scaled is recorded with the states it was given."""
    import interp.models.mamba as mamba1  # noqa: PLC0415
    import interp.models.mamba2 as mamba2  # noqa: PLC0415

    torch.manual_seed(4)
    if arch == "hybrid":
        layers = ["mamba", "attn", "mamba"]
        model = build_model(
            "hybrid", layers=layers, d_model=16, n_heads=2, head_dim=8, d_state=4, d_vocab=TASK.vocab.size
        )
    else:
        model = build_model(arch, **MAMBAS[arch], d_vocab=TASK.vocab.size)
    model = sharpened(model)
    clean, corrupt = paired_batches(TASK, 2, 5)
    metric = make_metric("logit_diff", clean, corrupt)
    n = clean.tokens.shape[1]
    grid = dict(heads=True) if arch == "mamba2" else dict(channel_groups=2)
    specs = patch_specs(model, "ssm_state", positions=True, n_pos=n, **grid)
    args = (model, clean.tokens, corrupt.tokens, metric, specs)
    assert_same(
        activation_patching(*args, mode="noise", method="reuse"),
        activation_patching(*args, mode="noise", method="loop"),
        torch.float64,
    )
    state = model.resume_state(clean.tokens)
    layer = specs[0].layer
    hook = f"blocks.{layer}.mixer.hook_ssm_state"
    src = model.run_with_cache(corrupt.tokens, names_filter=hook)[1][hook]
    scans = []  # whether each scan materialised every state
    for module, name in ((mamba1, "selective_scan"), (mamba2, "ssd_scan")):
        real = getattr(module, name)
        monkeypatch.setattr(
            module,
            name,
            lambda *a, real=real, **k: scans.append(k.get("return_states", False)) or real(*a, **k),
        )

    def patch(act, hook):  # reads its input: a replacement alone would hide what the hook received
        act = act.clone()
        act[:, :, 0] = src[:, :, 3] + 0.5 * act[:, :, 0]
        return act

    def resumed(state, known):
        scans.clear()
        with model.hooks(fwd_hooks=[(hook, patch)]):
            out = model.forward_from(state, layer, 3, patched_hooks=frozenset({hook} if known else ()))
        return out, sum(scans)

    (fast, with_states), (slow, slow_with_states) = resumed(state, True), resumed(state, False)
    torch.testing.assert_close(fast, slow, atol=1e-10, rtol=0)
    assert (with_states, slow_with_states) == (0, 1)
    state.seen[layer] = state.seen[layer] + 1.0  # the recording is what the hook receives
    assert not torch.allclose(resumed(state, True)[0], slow)

    def halve_in_place(act, hook):  # the last position: the same one in a resumed pass, which sees P - p
        act[:, :, -1] *= 0.5

    def scale(act, hook):  # every position, relative to what the hook receives
        return act * 0.9

    for user_hook, recorded in ((halve_in_place, False), (scale, True)):
        model.hook_dict[hook].add_perma_hook(user_hook)
        try:
            assert (model.resume_state(clean.tokens).seen[layer] is not None) == recorded
        finally:
            model.reset_hooks(including_permanent=True)


@pytest.mark.parametrize(
    "arch,hook",
    [
        ("lstm", "blocks.1.hook_cell"),
        ("mamba", "blocks.1.mixer.hook_ssm_state"),
        ("mamba2", "blocks.0.mixer.hook_ssm_state"),
        ("hybrid", "blocks.0.mixer.hook_ssm_state"),
        ("mamba", "blocks.1.mixer.hook_ssm_write"),  # feeds the scan, nothing replayed: reuse runs
    ],
)
def test_hooks_kept_on_recurrent_states_make_patching_run_batched(arch, hook, monkeypatch):
    """A hook of yours on a recurrent state (scaling it), kept on while patching: its edit is replayed
    through the recurrence from position 0, which a resumed pass cannot reproduce (it would differ from the
    loop), so "auto" runs batched and equals the loop, and "reuse" refuses, naming the hook. A hook on what
    the scan adds (`hook_ssm_write`) replays nothing, and reuse runs and equals the loop."""
    import interp.analysis.patching.activation as activation  # noqa: PLC0415

    torch.manual_seed(5)
    kw = dict(d_vocab=TASK.vocab.size, d_model=16)
    if arch == "lstm":
        model = build_model("lstm", n_layers=2, **kw)
    elif arch == "hybrid":
        model = build_model("hybrid", layers=["mamba", "attn"], n_heads=2, d_state=4, **kw)
    else:
        model = build_model(arch, d_vocab=TASK.vocab.size, **MAMBAS[arch])
    model = sharpened(model)
    clean, corrupt = paired_batches(TASK, 2, 5)
    metric = make_metric("logit_diff", clean, corrupt)
    n = clean.tokens.shape[1]
    specs = patch_specs(model, "hidden" if arch == "lstm" else "resid_pre", positions=True, n_pos=n)
    args = (model, clean.tokens, corrupt.tokens, metric, specs)
    plain = activation_patching(*args, mode="noise", method="loop")
    model.hook_dict[hook].add_perma_hook(lambda act, hook: act * 1.3)
    try:
        loop = activation_patching(*args, mode="noise", method="loop")
        assert not torch.allclose(torch.tensor(loop.metric.values), torch.tensor(plain.metric.values))
        assert_same(activation_patching(*args, mode="noise", method="auto"), loop, torch.float64)
        if hook.endswith("ssm_write"):
            assert_same(activation_patching(*args, mode="noise", method="reuse"), loop, torch.float64)
            return
        with pytest.raises(ValueError, match=f"cannot reproduce hooks kept on recurrent states \\({hook}\\)"):
            activation_patching(*args, mode="noise", method="reuse")
        monkeypatch.setattr(activation, "recurrent_hooks_in_use", lambda model: [])  # reuse regardless
        unguarded = activation_patching(*args, mode="noise", method="reuse")
        # in float64 reuse equals the loop to ~1e-12 where it is exact
        assert not torch.allclose(
            torch.tensor(unguarded.metric.values), torch.tensor(loop.metric.values), atol=1e-8, rtol=0
        )
    finally:
        model.reset_hooks(including_permanent=True)


@pytest.mark.parametrize("method", ["reuse", "batched"])
@pytest.mark.parametrize("arch", ["transformer", "mamba", "lstm"])
def test_patches_before_the_first_difference_are_not_run(arch, method, monkeypatch):
    """A minimal pair (the corrupted tokens differ from position d on): a patch at p < d writes the
    value the base run already has, so it is skipped and gets the base's metric exactly; the rest still
    equals the loop. Example 0 differs only from d + 3: its patches at d..d+2 are no-ops for it alone."""
    torch.manual_seed(4)
    kw = {"mamba": dict(d_state=4), "transformer": dict(n_heads=4), "lstm": {}}[arch]
    model = sharpened(build_model(arch, d_vocab=TASK.vocab.size, d_model=16, n_layers=2, **kw))
    clean, corrupt = paired_batches(TASK, 3, 6)
    d = 5
    x_tok = clean.tokens.clone()
    x_tok[:, d:] = corrupt.tokens[:, d:]
    x_tok[0, d : d + 3] = clean.tokens[0, d : d + 3]
    answers = clean.tokens.roll(-1, 1)
    metric = Metric("logit_diff", answers, clean.score_mask.bool(), x_tok.roll(-1, 1))
    component = {"transformer": "resid_pre", "mamba": "ssm_state", "lstm": "hidden"}[arch]
    n = x_tok.shape[1]
    specs = patch_specs(model, component, positions=True, n_pos=n)
    passes = []  # reuse: the start of each patched pass; batched: the copies of each patched forward
    if method == "reuse":
        original = model.forward_from

        def counted(state, layer, pos, **options):
            if "copies" in options:  # not the memory probe
                passes.append(pos)
            return original(state, layer, pos, **options)

        monkeypatch.setattr(model, "forward_from", counted)
    else:
        original = model.run_with_hooks

        def counted(tokens, fwd_hooks, **options):
            if "_make_patch_hook" in fwd_hooks[0][1].__qualname__:  # a patched forward: not a probe
                passes.append(tokens.shape[0] // 3)
            return original(tokens, fwd_hooks=fwd_hooks, **options)

        monkeypatch.setattr(model, "run_with_hooks", counted)
    args = (model, clean.tokens, x_tok, metric, specs)
    fast = activation_patching(*args, mode="noise", method=method, max_batch=3)
    ran = list(passes)  # the loop below runs forwards too
    loop = activation_patching(*args, mode="noise", method="loop")
    assert_same(fast, loop, torch.float64)
    # a no-op for example b: the input up to p is the same (a transformer's embedding: the token at p)
    same = clean.tokens == x_tok
    prefix = same.cumprod(1).bool()
    noop = torch.stack(
        [same[:, s.pos] if arch == "transformer" and s.layer == 0 else prefix[:, s.pos] for s in specs]
    )
    per_fast, per_loop = (torch.tensor(df.attrs["per_example_effect"]) for df in (fast, loop))
    assert torch.equal(per_fast[noop], per_loop[noop])  # the base's own value: no rounding at all
    assert (per_fast[noop] == 0).all() and (per_fast[~noop] != 0).any()
    assert noop[:, 0].sum() > noop[:, 1:].sum(0).max()  # example 0 has the most: partial no-ops
    if method == "reuse":
        assert ran and min(ran) >= d  # every pass starts at or after the first difference
    else:  # one copy for each patch that changes some example
        assert sum(ran) == int((~noop.all(1)).sum()) < len(specs)


def test_no_op_hooks_compare_only_what_a_spec_patches():
    """`no_op_hooks` on synthetic activations: a head / channel slice / position is a no-op for an example
    exactly when the values it selects agree there, whatever the rest of the activation does; NaN is never
    the same; another shape (data-dependent) is never a no-op."""
    from interp.analysis.patching.activation import no_op_hooks  # noqa: PLC0415
    from interp.hooks import HookInfo  # noqa: PLC0415

    z = HookInfo(axes=("batch", "pos", "head", "d_head"))
    state = HookInfo(axes=("batch", "channel", "pos", "d_state"))
    src = {"z": torch.randn(3, 5, 4, 2), "s": torch.randn(3, 8, 5, 2)}
    base = {k: v.clone() for k, v in src.items()}
    base["z"][0, 2, 1, 0] += 1  # example 0 differs in head 1 at position 2 only
    base["s"][1, 5, 3, 1] += 1  # example 1 differs in channel 5 at position 3 only
    src["s"][2, 0, 4, 0] = float("nan")  # NaN in example 2, channel 0, position 4: in both runs
    base["s"][2, 0, 4, 0] = float("nan")
    specs = [
        PatchSpec(hook="z", pos=2, head=1),
        PatchSpec(hook="z", pos=2, head=0),
        PatchSpec(hook="z", pos=1, head=1),
        PatchSpec(hook="s", pos=3, channels=(4, 8)),
        PatchSpec(hook="s", pos=3, channels=(0, 4)),
        PatchSpec(hook="s", pos=4, channels=(0, 4)),
        PatchSpec(hook="s", pos=4, channels=(4, 8)),
    ]
    out = torch.zeros(len(specs), 3, dtype=torch.bool)
    hooks = dict(no_op_hooks(specs, src, {"z": z, "s": state}, out))
    for name, act in base.items():
        hooks[name](act, None)
    want = torch.ones(len(specs), 3, dtype=torch.bool)
    want[0, 0] = want[3, 1] = want[5, 2] = False
    assert torch.equal(out, want)
    out.zero_()
    hooks["z"](torch.randn(3, 6, 4, 2), None)  # another shape: no answer, so the patches run
    assert not out.any()


def test_examples_a_running_patch_leaves_alone_get_the_base_value_exactly(monkeypatch):
    """A patch that runs but is a no-op for some examples: those examples take the base's value, not
    the engine's (here an engine made off by 0.5, so a value that came from it would show)."""
    import interp.analysis.patching.activation as activation  # noqa: PLC0415

    torch.manual_seed(4)
    model = sharpened(build_model("transformer", d_vocab=TASK.vocab.size, d_model=16, n_layers=2, n_heads=4))
    clean, corrupt = paired_batches(TASK, 3, 6)
    x_tok = clean.tokens.clone()
    x_tok[1:, 2:] = corrupt.tokens[1:, 2:]  # example 0 is the same in both runs: every patch a no-op for it
    metric = Metric("logit_diff", clean.tokens.roll(-1, 1), clean.score_mask.bool(), x_tok.roll(-1, 1))
    specs = patch_specs(model, "resid_pre", positions=True, n_pos=x_tok.shape[1])
    original = activation.batched
    monkeypatch.setattr(activation, "batched", lambda *a, **k: original(*a, **k) + 0.5)
    df = activation_patching(model, clean.tokens, x_tok, metric, specs, mode="noise", method="batched")
    effects = torch.tensor(df.attrs["per_example_effect"])
    ran = ~(effects[:, 1:] == 0).all(1)  # patches that changed example 1 or 2
    assert ran.sum() > 0 and (effects[:, 0] == 0).all()  # example 0: the base's value, exactly


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_state_patches_compare_only_the_positions_they_wrote(arch, monkeypatch):
    """A patch hook marks the positions it wrote (`interp.hooks.mark_edited`), so the mixer compares only
    those to find its edit; a user hook on the state before it (returning a new tensor) voids the mark and
    the full compare runs. Both equal the loop."""
    import interp.analysis.patching.activation as activation  # noqa: PLC0415
    from interp.hooks import edited_positions  # noqa: PLC0415
    from interp.models.state_edit import StateEdit  # noqa: PLC0415

    torch.manual_seed(3)
    model = sharpened(build_model(arch, d_vocab=TASK.vocab.size, **MAMBAS[arch]))
    clean, corrupt = paired_batches(TASK, 3, 5)
    c_tok, x_tok, metric, _ = pair_inputs(clean, corrupt)
    specs = mamba_grids(model, c_tok.shape[1])["state x channel groups x positions"]
    args = (model, c_tok, x_tok, metric, specs)
    loop = activation_patching(*args, mode="noise", method="loop")
    original = StateEdit.changes.__func__
    compared = []  # per call: marked (True) or full, for states of more than one position

    # (one position: nothing to save, the patch wrote all of it)
    def spy(cls, states, new, dim):
        if new.shape[dim] > 1:
            compared.append(edited_positions(new, states, dim) is not None)
        return original(cls, states, new, dim)

    monkeypatch.setattr(StateEdit, "changes", classmethod(spy))
    reuse = activation_patching(*args, mode="noise", method="reuse", max_batch=12)
    assert_same(reuse, loop, torch.float64)
    probes = len(model.blocks)  # the memory probe's longest pass replaces the states unmarked
    assert compared[:probes] == [False] * probes and len(compared) > probes and all(compared[probes:])
    compared.clear()
    same = [
        (f"blocks.{i}.mixer.hook_ssm_state", lambda act, hook: act * 1.0) for i in range(len(model.blocks))
    ]
    # reuse refuses hooks of yours on a state (their edits replay the recurrence); this one edits nothing
    monkeypatch.setattr(activation, "recurrent_hooks_in_use", lambda model: [])
    with model.hooks(fwd_hooks=same):
        watched = activation_patching(*args, mode="noise", method="reuse", max_batch=12)
    assert_same(watched, loop, torch.float64)
    assert compared and not any(compared)
