"""HookedMamba2 and the SSD scan: exact against Hugging Face `Mamba2ForCausalLM`, the chunked scan against
the sequential reference (outputs, states, gradients; odd lengths; patched states), state patching inside
the recurrence, the hidden attention matrix, step mode, config errors, and (slow) learning to copy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import Mamba2Config as HFMamba2Config
from transformers import Mamba2ForCausalLM

from interp.hooks import hook_info, state_hooks
from interp.models import build_model
from interp.models.hf.mamba2 import hf_mamba2_config, load_hf_mamba2, mamba2_config_from_dict
from interp.models.mamba2 import HookedMamba2, Mamba2Config
from interp.models.ssd import discretize_dt, ssd_attention, ssd_scan, ssd_scan_chunked, ssd_scan_ref

VOCAB = 40
B, P, H, DH, N, G, DI = 3, 37, 8, 8, 8, 2, 64  # batch, positions, heads, head_dim, d_state, groups, d_inner


def make_hf(**overrides) -> Mamba2ForCausalLM:
    torch.manual_seed(0)
    options = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        state_size=N,
        expand=2,
        head_dim=DH,
        num_heads=H,
        n_groups=G,
        conv_kernel=4,
        chunk_size=16,  # several of Hugging Face's chunks too, so its inter-chunk path runs
        use_cache=False,
    )
    model = Mamba2ForCausalLM(HFMamba2Config(**{**options, **overrides})).eval()
    with torch.no_grad():  # break the symmetric initialisation, and make states change visibly
        for block in model.backbone.layers:
            mixer = block.mixer
            mixer.A_log.add_(0.5 * torch.randn_like(mixer.A_log))
            mixer.D.add_(0.5 * torch.randn_like(mixer.D))
            mixer.dt_bias.add_(1.0)
            mixer.norm.weight.add_(0.2 * torch.randn_like(mixer.norm.weight))
    return model


@pytest.fixture(scope="module")
def hf():
    return make_hf()


@pytest.fixture(scope="module")
def model(hf):
    return load_hf_mamba2(hf)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, VOCAB, (B, P), generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------
# Exactness against Hugging Face
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scan", ["chunked", "reference"])
def test_logits_and_final_state_match_hugging_face(hf, tokens, scan):
    model = load_hf_mamba2(hf, scan=scan)
    with torch.no_grad():
        out = hf(tokens, use_cache=True)
        logits, cache = model(tokens, return_cache=True)
        _, hooked = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_ssm_state"))
    assert logits.shape == (B, P, VOCAB)
    torch.testing.assert_close(logits, out.logits, atol=1e-4, rtol=0)
    for layer in range(2):
        hf_ssm = out.cache.get_recurrent_state(layer, state_idx=0)  # [B, H, head_dim, N]
        torch.testing.assert_close(cache.ssm[layer], hf_ssm, atol=1e-5, rtol=1e-5)
        states = hooked[f"blocks.{layer}.mixer.hook_ssm_state"]  # [B, H, P, head_dim, N]
        assert states.shape == (B, H, P, DH, N)
        torch.testing.assert_close(states[:, :, -1], hf_ssm, atol=1e-5, rtol=1e-5)
        hf_conv = out.cache.get_conv_state(layer, state_idx=0)  # [B, conv_dim, K] (HF keeps K inputs)
        torch.testing.assert_close(cache.conv[layer], hf_conv[..., 1:], atol=1e-6, rtol=0)


def test_dt_limit_and_save_pretrained_folder(tokens, tmp_path):
    hf = make_hf(time_step_limit=(0.05, 2.0), tie_word_embeddings=True)
    hf.save_pretrained(tmp_path)
    model = load_hf_mamba2(tmp_path)
    assert model.cfg.dt_limit == (0.05, 2.0) and model.cfg.tie_embeddings
    assert model.lm_head.weight is model.embed.weight
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-4, rtol=0)


def test_config_table_round_trips():
    ours = Mamba2Config(d_vocab=50, d_model=24, n_layers=3, d_state=6, d_conv=3, expand=2, head_dim=12,
                        n_groups=2, conv_bias=False, bias=True, rms_norm_eps=1e-6, tie_embeddings=False,
                        dt_limit_min=0.01, dt_limit_max=3.0)  # fmt: skip
    back = mamba2_config_from_dict(hf_mamba2_config(ours).to_dict())
    assert back == ours
    with pytest.raises(ValueError, match="model_type='mamba'.*Mamba-2"):
        mamba2_config_from_dict({"model_type": "mamba", "hidden_size": 4})
    with pytest.raises(ValueError, match="cannot override.*allowed: scan, chunk_size, n_ctx"):
        mamba2_config_from_dict({}, d_state=3)


def test_checkpoint_mismatch_names_the_keys(model):
    state = {k: v for k, v in model.state_dict().items() if k != "blocks.1.mixer.D"}
    from interp.models.loading import load_state

    with pytest.raises(ValueError, match=r"missing keys \['blocks\.1\.mixer\.D'\]"):
        load_state(HookedMamba2(model.cfg), state, "test")
    tied = HookedMamba2(Mamba2Config(d_model=16, n_layers=1, d_state=4, head_dim=8, tie_embeddings=True))
    state = dict(tied.state_dict(), **{"lm_head.weight": tied.embed.weight.detach() + 1})  # both copies
    with pytest.raises(
        ValueError, match="different lm_head.weight and embed.weight, but the model ties them"
    ):
        load_state(tied, state, "test")
    load_state(tied, dict(state, **{"lm_head.weight": tied.embed.weight.detach()}), "test")  # equal: fine
    assert tied.lm_head.weight is tied.embed.weight


# ---------------------------------------------------------------------------------------------
# The SSD scan: chunked vs reference
# ---------------------------------------------------------------------------------------------
def scan_inputs(
    batch: int, length: int, h: int = 4, p: int = 3, g: int = 2, n: int = 5, seed: int = 0
) -> dict:
    gen = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    inputs = dict(
        x=r(batch, length, h, p),
        dt=r(batch, length, h),
        A=-torch.rand(h, generator=gen, dtype=torch.float64) * 3,
        B=r(batch, length, g, n),
        C=r(batch, length, g, n),
        D=r(h),
        dt_bias=r(h),
        initial_state=r(batch, h, p, n),
    )
    return {k: v.requires_grad_() for k, v in inputs.items()}


def outputs_and_grads(fn, inputs: dict, extra: dict, states: bool = True, **kwargs) -> list[torch.Tensor]:
    leaves = list(inputs.values()) + [v for v in extra.values() if v.requires_grad]
    for t in leaves:
        t.grad = None
    if states:
        y, hs = fn(**inputs, **extra, return_states=True, **kwargs)
        loss = y.pow(2).sum() + hs.sin().sum()  # reads every output and every state
    else:
        y, hs = fn(**inputs, **extra, return_last_state=True, **kwargs)
        loss = y.pow(2).sum() + hs.sin().sum()
    loss.backward()
    grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves]
    return [y.detach(), hs.detach(), *grads]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("length", [1, 7, 33, 64])
@pytest.mark.parametrize("chunk", [1, 8, 64])
@pytest.mark.parametrize("states", [False, True])
def test_chunked_scan_matches_reference(batch, length, chunk, states):
    """Both chunked paths (SSD form without states, state-building form with them), odd lengths, lengths
    not divisible by the chunk: outputs, last state or every state, and every input's gradient."""
    inputs = scan_inputs(batch, length)
    ref = outputs_and_grads(ssd_scan_ref, inputs, {}, states)
    fast = outputs_and_grads(ssd_scan_chunked, inputs, {}, states, chunk_size=chunk)
    for r, f in zip(ref, fast, strict=True):
        torch.testing.assert_close(f, r, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("kind", ["state_edit", "write", "both"])
def test_chunked_scan_matches_reference_with_edits(kind):
    batch, length, h, p, n = 2, 29, 4, 3, 5
    inputs = scan_inputs(batch, length, h, p, 2, n, seed=3)
    extra = {}
    if kind in ("state_edit", "both"):
        edit = torch.full((batch, h, length, p, n), float("nan"), dtype=torch.float64)
        edit[0, 2, 5, 1, 3] = 3.0
        edit[1, :, 17] = torch.randn(h, p, n, dtype=torch.float64)
        extra["state_edit"] = edit.requires_grad_()
    if kind in ("write", "both"):
        extra["write"] = torch.randn(batch, h, length, p, n, dtype=torch.float64).requires_grad_()
    ref = outputs_and_grads(ssd_scan_ref, inputs, extra)
    fast = outputs_and_grads(ssd_scan_chunked, inputs, extra, chunk_size=8)
    for r, f in zip(ref, fast, strict=True):
        torch.testing.assert_close(f, r, atol=1e-9, rtol=1e-9)
    if "state_edit" in extra:  # the edited state really is the state at that position
        assert fast[1][0, 2, 5, 1, 3] == 3.0


@pytest.mark.parametrize(
    "length, chunk, last", [(7, 3, True), (6, 3, False), (5, 8, True), (4, 1, False), (7, 3, "only")]
)
def test_chunked_scan_backward_passes_gradcheck(length, chunk, last):
    """The hand-written backward of the chunked form against finite differences (float64), with padding
    (length not a multiple of the chunk), two groups, D, an initial state, and with/without h_L (or h_L
    alone, y unused)."""
    inputs = scan_inputs(1, length, h=2, p=2, g=2, n=3, seed=5)
    names = list(inputs)

    def fn(*args):
        kw = dict(zip(names, args, strict=True))
        out = ssd_scan_chunked(**kw, chunk_size=chunk, return_last_state=bool(last))
        return out[1] if last == "only" else out

    assert torch.autograd.gradcheck(fn, tuple(inputs.values()), atol=1e-7, rtol=1e-6)


def test_chunk_size_follows_the_length():
    from interp.models.ssd import auto_chunk_size

    assert [auto_chunk_size(n) for n in (1, 37, 64, 65, 100, 256, 1000)] == [1, 37, 64, 33, 50, 64, 63]
    inputs = scan_inputs(2, 100, seed=2)  # auto: 2 chunks of 50, no padding
    ref = outputs_and_grads(ssd_scan_ref, inputs, {}, False)
    for r, f in zip(ref, outputs_and_grads(ssd_scan_chunked, inputs, {}, False), strict=True):
        torch.testing.assert_close(f, r, atol=1e-9, rtol=1e-9)
    with pytest.raises(ValueError, match="chunk_size must be a positive number of positions, got 0"):
        ssd_scan_chunked(**inputs, chunk_size=0)


def test_chunked_scan_with_vanishing_decays_matches_reference():
    """Strong decays (exp underflows, the clamped fast exp) and long inputs: still the reference's numbers."""
    inputs = scan_inputs(2, 300, seed=7)
    with torch.no_grad():
        inputs["A"].mul_(30)  # dt * A down to about -100 a position
        inputs["dt_bias"].add_(2)
    ref = outputs_and_grads(ssd_scan_ref, inputs, {}, False)
    fast = outputs_and_grads(ssd_scan_chunked, inputs, {}, False, chunk_size=64)
    for r, f in zip(ref, fast, strict=True):
        torch.testing.assert_close(f, r, atol=1e-9, rtol=1e-9)


def test_scan_dispatch_and_errors():
    inputs = {k: v.detach().float() for k, v in scan_inputs(2, 10).items()}
    torch.testing.assert_close(ssd_scan(**inputs), ssd_scan(**inputs, impl="reference"), atol=1e-5, rtol=1e-5)
    with pytest.raises(
        ValueError, match="unknown SSD scan impl 'fast'; allowed: auto, reference, chunked, mamba_ssm"
    ):
        ssd_scan(**inputs, impl="fast")
    if not torch.cuda.is_available():  # "auto" is the chunked path here; the kernel path says what it needs
        assert torch.equal(ssd_scan(**inputs), ssd_scan(**inputs, impl="chunked"))
        with pytest.raises(ValueError, match="impl='mamba_ssm' needs CUDA tensors and mamba-ssm installed"):
            ssd_scan(**inputs, impl="mamba_ssm")
    with pytest.raises(ValueError, match="impl='mamba_ssm' returns no per-position states"):
        ssd_scan(**inputs, impl="mamba_ssm", return_states=True)
    with pytest.raises(ValueError, match=r"C must have shape \[2, 10, 2, 5\]"):
        ssd_scan(**{**inputs, "C": inputs["C"][:, :5]})
    with pytest.raises(ValueError, match="n_heads=4 is not divisible by n_groups=3"):
        ssd_scan(**{**inputs, "B": inputs["B"][:, :, :1].expand(-1, -1, 3, -1)})


def test_hidden_attention_is_the_layer_map():
    """ssd_attention M gives y = M x + D x exactly, for the recurrence materialised position by position."""
    inputs = {k: v.detach() for k, v in scan_inputs(2, 23).items() if k != "initial_state"}
    dt = discretize_dt(inputs["dt"], inputs["dt_bias"], True, (0.0, None), torch.float64)
    M = ssd_attention(dt, inputs["A"], inputs["B"], inputs["C"])  # [B, H, L, L]
    assert M.shape == (2, 4, 23, 23) and bool((M.triu(1) == 0).all())
    x = inputs["x"]
    y = torch.einsum("bhts,bshp->bthp", M, x) + x * inputs["D"][:, None]
    torch.testing.assert_close(y, ssd_scan_ref(**inputs), atol=1e-10, rtol=1e-10)


def test_model_hidden_attention(model, tokens):
    M = model.ssm_attention(tokens)  # {layer: [B, H, P, P]}, as the hybrid's
    assert sorted(M) == [0, 1] and all(m.shape == (B, H, P, P) for m in M.values())
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    for layer in range(2):
        x = cache[f"blocks.{layer}.mixer.hook_ssm_in"]
        D = model.blocks[layer].mixer.D.detach()
        y = torch.einsum("bhts,bshp->bthp", M[layer], x) + x * D[:, None]
        torch.testing.assert_close(y, cache[f"blocks.{layer}.mixer.hook_scan_out"], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Hooks and patching
# ---------------------------------------------------------------------------------------------
def patched_logits(model, tokens, t, hook_name="blocks.0.mixer.hook_ssm_state", in_place=False):
    def hook(act, hook):
        if in_place:
            act[:, :, t] += 1.0
            return None
        act = act.clone()
        act[:, :, t] += 1.0
        return act

    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)])


@pytest.mark.parametrize("scan", ["chunked", "reference"])
@pytest.mark.parametrize("in_place", [False, True])
def test_state_patch_changes_only_later_positions(hf, tokens, scan, in_place):
    model = load_hf_mamba2(hf, scan=scan)
    t = 9
    with torch.no_grad():  # an observing hook: the same (state-building) scan path as the patched run
        clean = model.run_with_hooks(
            tokens, fwd_hooks=[("blocks.0.mixer.hook_ssm_state", lambda a, hook: None)]
        )
        torch.testing.assert_close(clean, model(tokens), atol=1e-5, rtol=0)
    patched = patched_logits(model, tokens, t, in_place=in_place)
    torch.testing.assert_close(patched[:, :t], clean[:, :t], atol=0, rtol=0)
    change = (patched - clean).abs().amax(dim=(0, 2))  # [P]
    assert (change[t:] > 1e-4).all(), change  # the edit propagates through the recurrence


def test_state_patch_is_the_same_on_both_scan_paths(hf, tokens):
    fast = patched_logits(load_hf_mamba2(hf, scan="chunked"), tokens, 20)
    ref = patched_logits(load_hf_mamba2(hf, scan="reference"), tokens, 20)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_write_patch_and_identity_hooks(model, tokens):
    with torch.no_grad():
        clean = model.run_with_hooks(
            tokens, fwd_hooks=[("blocks.1.mixer.hook_ssm_write", lambda a, hook: None)]
        )
    patched = patched_logits(model, tokens, 12, hook_name="blocks.1.mixer.hook_ssm_write")
    torch.testing.assert_close(patched[:, :12], clean[:, :12], atol=0, rtol=0)
    assert ((patched - clean).abs().amax(dim=(0, 2))[12:] > 1e-4).all()
    same = lambda act, hook: act.clone()
    names = ["blocks.0.mixer.hook_ssm_state", "blocks.1.mixer.hook_ssm_write", "blocks.1.mixer.hook_B"]
    with torch.no_grad():
        out = model.run_with_hooks(tokens, fwd_hooks=[(n, same) for n in names])
    torch.testing.assert_close(out, clean, atol=1e-5, rtol=1e-5)


def test_hook_axes_and_values(model, tokens):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    for name, act in cache.items():
        hook_info(model, name).check(name, act)  # every hook declares axes matching its activation
    info = hook_info(model, "blocks.0.mixer.hook_ssm_state")
    assert info.state and info.patch == "recurrence" and info.head == 1 and info.pos == 2
    assert state_hooks(model) == ["blocks.0.mixer.hook_ssm_state", "blocks.1.mixer.hook_ssm_state"]
    # the write term is dt * x B^T (head h reads group h // (H / G)), the state recurrence decays by head
    dt = F.softplus(cache["blocks.0.mixer.hook_ssm_dt"])  # [B, P, H]
    x = cache["blocks.0.mixer.hook_ssm_in"]
    Bh = cache["blocks.0.mixer.hook_B"].repeat_interleave(H // G, dim=2)
    write = torch.einsum("blhp,blhn->bhlpn", x * dt[..., None], Bh)
    torch.testing.assert_close(cache["blocks.0.mixer.hook_ssm_write"], write)
    A = -torch.exp(model.blocks[0].mixer.A_log.detach())
    states = cache["blocks.0.mixer.hook_ssm_state"]
    decay = torch.exp(dt[:, 5] * A)[..., None, None]  # [B, H, 1, 1]
    torch.testing.assert_close(
        states[:, :, 5], decay * states[:, :, 4] + write[:, :, 5], atol=1e-6, rtol=1e-5
    )


# ---------------------------------------------------------------------------------------------
# Config, state size, recurrent mode
# ---------------------------------------------------------------------------------------------
def test_config_errors_and_state_size():
    with pytest.raises(
        ValueError, match=r"d_inner = expand \* d_model = 2 \* 24 = 48 is not divisible by head_dim=20"
    ):
        Mamba2Config(d_model=24, head_dim=20)
    with pytest.raises(ValueError, match="n_heads = d_inner / head_dim = 3 is not divisible by n_groups=2"):
        Mamba2Config(d_model=24, head_dim=16, n_groups=2)
    with pytest.raises(ValueError, match="unknown scan 'gpu'"):
        Mamba2Config(scan="gpu")
    cfg = Mamba2Config(d_vocab=30, d_model=32, n_layers=3, d_state=16, head_dim=16, d_conv=3)
    assert Mamba2Config.from_dict(cfg.to_dict()) == cfg
    model = build_model("mamba2", **cfg.to_dict())
    assert isinstance(model, HookedMamba2) and model.arch == "mamba2" and model.cfg.n_heads == 4
    conv_dim = 64 + 2 * 16
    assert model.state_size().numbers_per_layer == (64 * 16 + conv_dim * 2,) * 3
    A = -torch.exp(model.blocks[0].mixer.A_log)
    assert bool((A <= -1).all() and (A >= -16).all())  # mamba-ssm's A_init_range
    dt = F.softplus(model.blocks[0].mixer.dt_bias)
    assert dt.min() >= 1e-3 - 1e-7 and dt.max() <= 0.1 + 1e-7


def test_step_mode_and_greedy_generation(model, tokens):
    with torch.no_grad():
        full = model(tokens)
        cache = model.init_cache(B)
        steps = []
        for t in range(P):
            logits, cache = model.step(tokens[:, t], cache)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.n_tokens == P and cache.ssm.shape == (2, B, H, DH, N)
    prompt = tokens[:, :5]
    out = model.generate_greedy(prompt, n_new=12)
    with torch.no_grad():
        predicted = model(out).argmax(-1)
    assert torch.equal(predicted[:, 4:-1], out[:, 5:])


def test_left_padding_gives_the_unpadded_logits(model, tokens):
    padded = torch.cat([torch.zeros(B, 4, dtype=tokens.dtype), tokens], dim=1)
    mask = torch.cat([torch.zeros(B, 4), torch.ones(B, P)], dim=1).long()
    with torch.no_grad():
        torch.testing.assert_close(
            model(padded, attention_mask=mask)[:, 4:], model(tokens), atol=1e-5, rtol=1e-5
        )


# ---------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_mamba2_learns_to_copy():
    from interp.tasks import TaskConfig, make_batch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        task = TaskConfig(task="copy", n_letters=4, min_len=1, max_len=6)
        model = HookedMamba2(
            Mamba2Config(d_vocab=task.vocab.size, d_model=64, n_layers=2, d_state=16, head_dim=16)
        )
        steps = 300
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / 30, max(0.0, (steps - s) / 270))
        )
        gen = torch.Generator().manual_seed(1)
        for _ in range(steps):
            batch = make_batch(task, 64, gen)
            loss = F.cross_entropy(
                model(batch.tokens).flatten(0, 1), batch.targets.flatten(), ignore_index=-100
            )
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            test = make_batch(task, 512, torch.Generator().manual_seed(99))
            string_correct, _ = test.score(model(test.tokens))
        assert string_correct.float().mean() >= 0.9
    finally:
        torch.set_num_threads(before)


def _mamba_ssm_on_cuda() -> bool:
    from interp.models.ssd import _mamba_ssm_kernel

    return torch.cuda.is_available() and _mamba_ssm_kernel() is not None


@pytest.mark.skipif(
    not _mamba_ssm_on_cuda(), reason="needs a CUDA GPU and mamba-ssm (its Triton Mamba-2 kernels) installed"
)
def test_mamba_ssm_kernel_path_matches_the_reference():
    """On CUDA with mamba-ssm, impl='auto' runs mamba_chunk_scan_combined: outputs, last state and
    gradients equal the reference (fp32, atol 1e-3), and a model's state hooks still use the chunked path."""
    inputs = {
        k: v.detach().float().cuda().requires_grad_() for k, v in scan_inputs(2, 300, h=4, p=16, n=16).items()
    }
    ref = outputs_and_grads(ssd_scan_ref, inputs, {}, False)
    fast = outputs_and_grads(ssd_scan, inputs, {}, False, impl="mamba_ssm")
    for r, f in zip(ref, fast, strict=True):
        torch.testing.assert_close(f, r, atol=1e-3, rtol=1e-3)
    model = load_hf_mamba2(make_hf()).cuda()
    tokens = torch.randint(0, VOCAB, (2, 40), device="cuda")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_ssm_state"))
        torch.testing.assert_close(
            model(tokens), load_hf_mamba2(make_hf(), scan="reference").cuda()(tokens), atol=1e-3, rtol=1e-3
        )
    assert cache["blocks.0.mixer.hook_ssm_state"].shape == (2, H, 40, DH, N)
