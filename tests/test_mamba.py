"""HookedMamba and the selective scan: exact against Hugging Face and the TransformerLens bridge, scan
paths against the reference, state patching, checkpoints, recurrent mode, and (slow) learning to copy."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import MambaConfig as HFMambaConfig
from transformers import MambaForCausalLM

from interp.models import build_model
from interp.models.mamba import HookedMamba, MambaConfig, load_hf_mamba
from interp.models.scan import selective_scan, selective_scan_chunked, selective_scan_ref

VOCAB = 40  # mamba-ssm pads 37 up to a multiple of 8 -> 40, which the mamba-ssm test relies on


def make_hf(use_cache: bool = False) -> MambaForCausalLM:
    torch.manual_seed(0)
    cfg = HFMambaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        state_size=8,
        conv_kernel=4,
        expand=2,
        use_cache=use_cache,
    )
    model = MambaForCausalLM(cfg).eval()
    with torch.no_grad():  # break the symmetric A_log = log(1..N), D = 1 initialisation
        for block in model.backbone.layers:
            block.mixer.A_log.add_(0.3 * torch.randn_like(block.mixer.A_log))
            block.mixer.D.add_(0.5 * torch.randn_like(block.mixer.D))
            block.mixer.dt_proj.bias.add_(1.0)  # larger steps, so states change visibly
    return model


@pytest.fixture(scope="module")
def hf():
    return make_hf()


@pytest.fixture(scope="module")
def model(hf):
    return load_hf_mamba(hf)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 37, (3, 21), generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------
# Exactness against Hugging Face
# ---------------------------------------------------------------------------------------------
def test_logits_match_hugging_face(hf, model, tokens):
    with torch.no_grad():
        expected = hf(tokens).logits
        got = model(tokens)
    assert got.shape == (3, 21, VOCAB)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_states_match_hugging_face_cache(hf, model, tokens):
    with torch.no_grad():
        out = hf(tokens, use_cache=True)
        _, cache = model.run_with_cache(tokens)
        _, step_cache = model(tokens, return_cache=True)
    for layer in range(2):
        hf_ssm = out.cache_params.get_recurrent_state(layer, state_idx=0)  # [B, D_inner, N]
        ours = cache[f"blocks.{layer}.mixer.hook_ssm_state"]  # [B, D_inner, P, N]
        assert ours.shape == (3, 64, 21, 8)
        torch.testing.assert_close(ours[:, :, -1], hf_ssm, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step_cache.ssm[layer], hf_ssm, atol=1e-5, rtol=1e-5)
        hf_conv = out.cache_params.get_conv_state(layer, state_idx=0)  # [B, D_inner, K] (HF keeps K inputs)
        torch.testing.assert_close(step_cache.conv[layer], hf_conv[..., 1:], atol=1e-6, rtol=0)


def test_save_pretrained_folder_round_trips(hf, tokens, tmp_path):
    hf.save_pretrained(tmp_path)
    model = load_hf_mamba(tmp_path)
    assert model.cfg.d_vocab == VOCAB and model.cfg.n_layers == 2 and model.cfg.d_state == 8
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-4, rtol=0)
    # and back: our state_dict uses Hugging Face names, so a fresh HF model loads it strictly
    state = model.state_dict()
    assert "backbone.layers.1.mixer.in_proj.weight" in state and "backbone.norm_f.weight" in state
    fresh = MambaForCausalLM(hf.config).eval()
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(tokens).logits, hf(tokens).logits, atol=0, rtol=0)


def test_mamba_ssm_checkpoint_loads(hf, tokens, tmp_path):
    """A mamba-ssm MambaLMHeadModel folder: config.json (d_model, n_layer, ssm_cfg, ...) + pytorch_model.bin."""
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in hf.state_dict().items()}
    config = {
        "d_model": 32,
        "n_layer": 2,
        "vocab_size": 37,  # padded to 40 by pad_vocab_size_multiple
        "pad_vocab_size_multiple": 8,
        "ssm_cfg": {"d_state": 8, "d_conv": 4, "expand": 2},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "tie_embeddings": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.save(state, tmp_path / "pytorch_model.bin")
    with torch.no_grad():
        expected = hf(tokens).logits
        torch.testing.assert_close(load_hf_mamba(tmp_path)(tokens), expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(load_hf_mamba(state, config=config)(tokens), expected, atol=1e-4, rtol=0)


def test_bridge_names_and_values_match(tokens, tmp_path):
    """Every hook the TransformerLens bridge shares with HookedMamba holds the same value there."""
    from transformer_lens.model_bridge import TransformerBridge

    hf = make_hf(use_cache=False)  # the bridge's eager scan (which fires the SSM hooks) needs no cache
    hf.save_pretrained(tmp_path)
    bridge = TransformerBridge.boot_transformers(str(tmp_path), device="cpu")
    for block in bridge.blocks:
        block.mixer.eager_scan = True
    model = load_hf_mamba(tmp_path)
    with torch.no_grad():
        _, theirs = bridge.run_with_cache(tokens)
        _, ours = model.run_with_cache(tokens)
    shared = set(theirs.keys()) & set(ours.keys())
    for layer in range(2):
        for name in (
            "hook_resid_pre",
            "norm.hook_scale",
            "norm.hook_normalized",
            "hook_mixer_in",
            "mixer.hook_in_proj",
            "mixer.hook_conv",
            "mixer.hook_x_proj",
            "mixer.hook_ssm_dt",
            "mixer.hook_ssm_write",
            "mixer.hook_ssm_state",
            "mixer.hook_ssm_out",
            "hook_mixer_out",
            "hook_resid_post",
        ):
            assert f"blocks.{layer}.{name}" in shared
    assert {"hook_embed", "ln_final.hook_normalized"} <= shared
    for name in sorted(shared):
        torch.testing.assert_close(ours[name], theirs[name], atol=2e-5, rtol=1e-4, msg=name)


# ---------------------------------------------------------------------------------------------
# Scan implementations
# ---------------------------------------------------------------------------------------------
def scan_inputs(batch: int, length: int, d: int = 6, n: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    inputs = dict(
        u=r(batch, d, length),
        delta=r(batch, d, length),
        A=-torch.rand(d, n, generator=g, dtype=torch.float64) * 4,
        B=r(batch, n, length),
        C=r(batch, n, length),
        D=r(d),
        z=r(batch, d, length),
        delta_bias=r(d),
    )
    return {k: v.requires_grad_() for k, v in inputs.items()}


def outputs_and_grads(fn, inputs: dict, extra: dict, **kwargs) -> list[torch.Tensor]:
    leaves = list(inputs.values()) + [v for v in extra.values() if v.requires_grad]
    for t in leaves:
        t.grad = None
    out, states = fn(**inputs, **extra, return_states=True, **kwargs)
    # a loss that reads every output and every state, so all gradient paths are checked
    (out.pow(2).sum() + states.sin().sum()).backward()
    grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves]
    return [out.detach(), states.detach(), *grads]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("length", [1, 7, 33, 64])
@pytest.mark.parametrize("chunk", [1, 8, None])
def test_chunked_scan_matches_reference(batch, length, chunk):
    """Odd lengths, lengths not divisible by the chunk, batch 1: outputs, states and all gradients."""
    inputs = scan_inputs(batch, length)
    ref = outputs_and_grads(selective_scan_ref, inputs, {})
    fast = outputs_and_grads(selective_scan_chunked, inputs, {}, chunk_size=chunk)
    for r, f in zip(ref, fast, strict=True):
        torch.testing.assert_close(f, r, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kind", ["state_edit", "write", "both"])
def test_chunked_scan_matches_reference_with_edits(kind):
    batch, d, length, n = 2, 6, 29, 4
    inputs = scan_inputs(batch, length, d, n, seed=3)
    extra = {}
    if kind in ("state_edit", "both"):
        edit = torch.full((batch, d, length, n), float("nan"), dtype=torch.float64)
        edit[0, 2, 5, 1] = 3.0
        edit[1, :, 17] = torch.randn(d, n, dtype=torch.float64)
        extra["state_edit"] = edit.requires_grad_()
    if kind in ("write", "both"):
        extra["write"] = torch.randn(batch, d, length, n, dtype=torch.float64).requires_grad_()
    ref = outputs_and_grads(selective_scan_ref, inputs, extra)
    fast = outputs_and_grads(selective_scan_chunked, inputs, extra, chunk_size=8)
    for r, f in zip(ref, fast, strict=True):
        torch.testing.assert_close(f, r, atol=1e-10, rtol=1e-10)
    if "state_edit" in extra:  # the edited state really is the state at that position
        assert fast[1][0, 2, 5, 1] == 3.0


def scan_extras(kind: str, batch: int, d: int, length: int, n: int, seed: int = 5) -> dict:
    """state_edit / write / initial_state arguments (float64, requiring grad) named by `kind`."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    extra = {"initial_state": r(batch, d, n).requires_grad_()}
    if kind in ("state_edit", "both"):
        edit = torch.full((batch, d, length, n), float("nan"), dtype=torch.float64)
        edit[0, 2, length // 2, 1] = 3.0
        edit[-1, :, 0] = r(d, n)  # position 0 edited: h0 no longer reaches this sequence
        extra["state_edit"] = edit.requires_grad_()
    if kind in ("write", "both"):
        extra["write"] = r(batch, d, length, n).requires_grad_()
    return extra


@pytest.mark.parametrize("length", [1, 7, 29])
@pytest.mark.parametrize("kind", ["initial_state", "state_edit", "write", "both"])
def test_chunked_scan_matches_reference_with_initial_state(length, kind):
    """Outputs, states and every gradient, d/d initial_state included, with edits and writes present."""
    batch, d, n = 2, 6, 4
    inputs = scan_inputs(batch, length, d, n, seed=4)
    extra = scan_extras(kind, batch, d, length, n)
    ref = outputs_and_grads(selective_scan_ref, inputs, extra)
    fast = outputs_and_grads(selective_scan_chunked, inputs, extra, chunk_size=4)
    for r, f in zip(ref, fast, strict=True):
        torch.testing.assert_close(f, r, atol=1e-10, rtol=1e-10)
    g_h0 = extra["initial_state"].grad
    assert g_h0.abs().sum() > 0  # the initial state reaches the outputs
    if "state_edit" in extra:  # ... except where position 0's state is replaced
        assert torch.all(g_h0[-1] == 0)
    # an empty scan returns the initial state as its last state
    empty = {k: v[..., :0] if k in ("u", "delta", "B", "C", "z") else v for k, v in inputs.items()}
    h0 = extra["initial_state"]
    for fn in (selective_scan_ref, selective_scan_chunked):
        torch.testing.assert_close(fn(**empty, initial_state=h0, return_last_state=True)[1], h0)


@pytest.mark.parametrize("fn", [selective_scan_ref, selective_scan_chunked])
@pytest.mark.parametrize("kind", ["initial_state", "both"])
def test_scan_split_at_t_equals_the_whole_scan(fn, kind):
    """The identity patch reuse relies on: a scan over [0, P) equals a scan over [0, t) and one over
    [t, P) started from the state at t - 1, outputs and states, with edits and writes in both parts."""
    batch, d, length, n = 2, 6, 23, 4
    inputs = {k: v.detach() for k, v in scan_inputs(batch, length, d, n, seed=6).items()}
    extra = {k: v.detach() for k, v in scan_extras(kind, batch, d, length, n).items()}
    whole, states = fn(**inputs, **extra, return_states=True)
    per_pos = ("u", "delta", "B", "C", "z")
    for t in (1, 9, length - 1):
        part = lambda sl: {k: v[..., sl] if k in per_pos else v for k, v in inputs.items()}  # noqa: E731
        edits = lambda sl: {k: v[:, :, sl] for k, v in extra.items() if k != "initial_state"}  # noqa: E731
        head, head_states = fn(
            **part(slice(0, t)),
            **edits(slice(0, t)),
            initial_state=extra["initial_state"],
            return_states=True,
        )
        tail, tail_states = fn(
            **part(slice(t, None)),
            **edits(slice(t, None)),
            initial_state=head_states[:, :, -1],
            return_states=True,
        )
        torch.testing.assert_close(torch.cat([head, tail], -1), whole, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(torch.cat([head_states, tail_states], 2), states, atol=1e-12, rtol=1e-12)


def test_closed_form_initial_state_equals_the_scan_from_it():
    """`_Scan`'s closed form for h0 (kept for the CUDA kernel, which takes no initial state) against
    the scan started from h0, on the mixer's inputs (no delta_bias: dt_proj holds it)."""
    from interp.models.mamba import _Scan

    batch, d, length, n = 2, 6, 19, 4
    inputs = {k: v.detach() for k, v in scan_inputs(batch, length, d, n, seed=7).items() if k != "delta_bias"}
    h0 = scan_extras("initial_state", batch, d, length, n)["initial_state"].detach()
    scan_in = {**inputs, "impl": "chunked", "chunk_size": None}
    y, last = selective_scan(**scan_in, initial_state=h0, return_last_state=True)
    y0, last0 = _Scan(scan_in, h0)._carry_h0(selective_scan(**scan_in, return_last_state=True), True)
    torch.testing.assert_close(y0, y, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(last0, last, atol=1e-12, rtol=1e-12)
    assert not torch.allclose(y, selective_scan(**scan_in))  # h0 matters here


def test_chunked_scan_gradcheck_and_last_state():
    inputs = scan_inputs(2, 9, d=3, n=2)
    fn = lambda u, delta, A, B, C: selective_scan_chunked(
        u, delta, A, B, C, return_last_state=True, chunk_size=4
    )
    args = tuple(inputs[k] for k in ("u", "delta", "A", "B", "C"))
    assert torch.autograd.gradcheck(fn, args)
    out, last = fn(*args)
    _, states = selective_scan_ref(*args, return_states=True)
    torch.testing.assert_close(last, states[:, :, -1])


def test_scan_dispatch():
    inputs = {k: v.detach().float() for k, v in scan_inputs(2, 10).items()}
    torch.testing.assert_close(
        selective_scan(**inputs), selective_scan(**inputs, impl="reference"), atol=1e-5, rtol=1e-5
    )
    with pytest.raises(ValueError, match="unknown selective-scan impl 'fast'.*allowed"):
        selective_scan(**inputs, impl="fast")
    with pytest.raises(ValueError, match="impl='cuda' is not possible here"):
        selective_scan(**inputs, impl="cuda")
    with pytest.raises(ValueError, match="B must have shape"):
        selective_scan(**{**inputs, "B": inputs["B"][:, :, :5]})
    with pytest.raises(ValueError, match=r"initial_state must have shape \[2, 6, 4\]"):
        selective_scan(**inputs, initial_state=torch.zeros(2, 4, 6))


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
    model = load_hf_mamba(hf, scan=scan)
    t = 9
    with torch.no_grad():
        clean = model(tokens)
    patched = patched_logits(model, tokens, t, in_place=in_place)
    torch.testing.assert_close(patched[:, :t], clean[:, :t], atol=0, rtol=0)
    change = (patched - clean).abs().amax(dim=(0, 2))  # [P]
    assert (change[t:] > 1e-4).all(), change  # the edit propagates through the recurrence


def test_state_patch_is_the_same_on_both_scan_paths(hf, tokens):
    fast = patched_logits(load_hf_mamba(hf, scan="chunked"), tokens, 4)
    ref = patched_logits(load_hf_mamba(hf, scan="reference"), tokens, 4)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_write_patch_and_identity_hooks(model, tokens):
    with torch.no_grad():
        clean = model(tokens)
    patched = patched_logits(model, tokens, 12, hook_name="blocks.1.mixer.hook_ssm_write")
    torch.testing.assert_close(patched[:, :12], clean[:, :12], atol=0, rtol=0)
    assert ((patched - clean).abs().amax(dim=(0, 2))[12:] > 1e-4).all()
    # a hook that returns an equal copy changes nothing
    same = lambda act, hook: act.clone()
    names = ["blocks.0.mixer.hook_ssm_state", "blocks.1.mixer.hook_ssm_write", "blocks.1.mixer.hook_B"]
    with torch.no_grad():
        out = model.run_with_hooks(tokens, fwd_hooks=[(n, same) for n in names])
    torch.testing.assert_close(out, clean, atol=1e-5, rtol=1e-5)


def test_hook_names_and_shapes(model, tokens):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    b, p, d, di, n = 3, 21, 32, 64, 8
    expected = {
        "hook_embed": (b, p, d),
        "blocks.0.norm.hook_normalized": (b, p, d),
        "blocks.0.mixer.hook_in_proj": (b, p, 2 * di),
        "blocks.0.mixer.hook_gate": (b, p, di),
        "blocks.0.mixer.hook_conv": (b, di, p + 3),
        "blocks.0.mixer.hook_ssm_in": (b, p, di),
        "blocks.0.mixer.hook_x_proj": (b, p, 2 + 2 * n),
        "blocks.0.mixer.hook_B": (b, p, n),
        "blocks.0.mixer.hook_C": (b, p, n),
        "blocks.0.mixer.hook_ssm_dt": (b, p, di),
        "blocks.0.mixer.hook_ssm_write": (b, di, p, n),
        "blocks.0.mixer.hook_ssm_state": (b, di, p, n),
        "blocks.0.mixer.hook_scan_out": (b, p, di),
        "blocks.0.mixer.hook_ssm_out": (b, p, d),
        "blocks.1.hook_mixer_out": (b, p, d),
        "blocks.1.hook_resid_post": (b, p, d),
        "ln_final.hook_normalized": (b, p, d),
    }
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == shape, name
    assert model.hook_dict["blocks.0.mixer.hook_ssm_state"].pos_dim == 2
    # B and C are the tail of x_proj; the write term is dt * u * B
    x_proj = cache["blocks.0.mixer.hook_x_proj"]
    torch.testing.assert_close(cache["blocks.0.mixer.hook_B"], x_proj[..., 2 : 2 + n])
    dt = F.softplus(cache["blocks.0.mixer.hook_ssm_dt"]).transpose(1, 2)  # [B, Di, P]
    u = cache["blocks.0.mixer.hook_ssm_in"].transpose(1, 2)
    write = dt[..., None] * u[..., None] * cache["blocks.0.mixer.hook_B"][:, None]
    torch.testing.assert_close(cache["blocks.0.mixer.hook_ssm_write"], write)


def test_hook_returning_wrong_shape_raises(model, tokens):
    bad = lambda act, hook: act[:, :, :-1]
    with pytest.raises(ValueError, match="hook_ssm_state.*must return a tensor of the activation's shape"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mixer.hook_ssm_state", bad)])


# ---------------------------------------------------------------------------------------------
# Checkpoints, config, state size
# ---------------------------------------------------------------------------------------------
def test_checkpoint_mismatch_names_the_keys(model):
    state = model.state_dict()
    missing = {k: v for k, v in state.items() if k != "backbone.layers.1.mixer.D"}
    with pytest.raises(ValueError, match=r"missing keys: backbone\.layers\.1\.mixer\.D"):
        HookedMamba(model.cfg).load_state_dict(missing)
    extra = {**state, "backbone.layers.2.mixer.D": state["backbone.layers.1.mixer.D"]}
    with pytest.raises(ValueError, match=r"unexpected keys: backbone\.layers\.2\.mixer\.D"):
        HookedMamba(model.cfg).load_state_dict(extra)
    wrong = {**state, "backbone.layers.0.mixer.A_log": torch.zeros(64, 16)}
    with pytest.raises(
        ValueError, match=r"backbone\.layers\.0\.mixer\.A_log is \(64, 16\) in the checkpoint but \(64, 8\)"
    ):
        HookedMamba(model.cfg).load_state_dict(wrong)
    with pytest.raises(ValueError, match="not a Mamba config"):
        load_hf_mamba(state, config={"n_embd": 32})


def test_config_round_trip_and_state_size():
    cfg = MambaConfig(d_vocab=30, d_model=48, n_layers=3, d_state=4, d_conv=3)
    assert MambaConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.rank == 3 and cfg.d_inner == 96
    model = build_model("mamba", d_vocab=30, d_model=48, n_layers=3, d_state=4, d_conv=3)
    assert isinstance(model, HookedMamba) and model.arch == "mamba"
    assert model.state_size().numbers_per_layer == (96 * 4 + 96 * 2,) * 3
    assert model.lm_head.weight is model.embed.weight
    with pytest.raises(ValueError, match="unknown MambaConfig options.*allowed"):
        MambaConfig.from_dict({"d_modle": 3})
    with pytest.raises(ValueError, match="unknown scan 'gpu'"):
        MambaConfig(scan="gpu")


def test_init_follows_mamba_ssm():
    torch.manual_seed(0)
    model = HookedMamba(MambaConfig(d_vocab=30, d_model=32, n_layers=2, d_state=4))
    mixer = model.blocks[0].mixer
    torch.testing.assert_close(-torch.exp(mixer.A_log), -torch.arange(1.0, 5.0).repeat(64, 1))
    assert torch.equal(mixer.D, torch.ones(64))
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-3 - 1e-7 and dt.max() <= 0.1 + 1e-7


# ---------------------------------------------------------------------------------------------
# Recurrent mode
# ---------------------------------------------------------------------------------------------
def test_step_mode_matches_forward(model, tokens):
    with torch.no_grad():
        full = model(tokens)
        cache = model.init_cache(tokens.shape[0])
        steps = []
        for t in range(tokens.shape[1]):
            logits, cache = model.step(tokens[:, t], cache)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.n_tokens == tokens.shape[1]
    assert cache.ssm.shape == (2, 3, 64, 8) and cache.conv.shape == (2, 3, 64, 3)  # O(1) in length


def test_generate_greedy_equals_teacher_forced_argmax(model, tokens):
    prompt = tokens[:, :5]
    out = model.generate_greedy(prompt, n_new=12)
    assert out.shape == (3, 17) and torch.equal(out[:, :5], prompt)
    with torch.no_grad():
        predicted = model(out).argmax(-1)  # teacher forcing on the generated sequence
    assert torch.equal(predicted[:, 4:-1], out[:, 5:])


# ---------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def one_thread():
    """Train on one thread: on a busy 2-core machine, two threads mostly wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_mamba_learns_to_copy(one_thread):
    from interp.tasks import TaskConfig, make_batch

    torch.manual_seed(0)
    task = TaskConfig(task="copy", n_letters=4, min_len=1, max_len=6)
    model = HookedMamba(MambaConfig(d_vocab=task.vocab.size, d_model=64, n_layers=2, d_state=16))
    steps, lr = 300, 3e-3
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = 30
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup)))
    )
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        batch = make_batch(task, 64, gen)
        loss = F.cross_entropy(model(batch.tokens).flatten(0, 1), batch.targets.flatten(), ignore_index=-100)
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


def test_one_config_table_maps_both_ways():
    """`hf_mamba_config` writes through the table `mamba_config_from_dict` reads with: a round trip
    through the Hugging Face format is the identity on every mapped field."""
    from interp.models.hf.mamba import HF_FIELDS, hf_mamba_config, mamba_config_from_dict
    from interp.models.mamba import MambaConfig

    ours = MambaConfig(
        d_vocab=50,
        d_model=24,
        n_layers=3,
        d_state=6,
        d_conv=3,
        expand=3,
        dt_rank=5,
        conv_bias=False,
        bias=True,
        rms_norm_eps=1e-6,
        tie_embeddings=False,
        dt_min=0.002,
        dt_max=0.2,
        dt_init_floor=2e-4,
        dt_scale=0.5,
    )
    back = mamba_config_from_dict(hf_mamba_config(ours).to_dict())
    assert {f: getattr(back, f) for f in HF_FIELDS} == {f: getattr(ours, f) for f in HF_FIELDS}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("window", [False, True])
def test_depthwise_conv_equals_conv1d(bias, window):
    """The mixers' convolution (shifted multiply-adds in [B, P, C], hand-written backward) equals
    nn.Conv1d(groups=C, padding=K - 1) on the transposed input, outputs and every gradient (float64)."""
    from interp.models.conv import depthwise_conv, reference_conv  # noqa: PLC0415

    torch.manual_seed(0)
    b, p, c, k = 3, 7, 5, 4
    x = torch.randn(b, p, c, dtype=torch.float64, requires_grad=True)
    w = torch.randn(c, 1, k, dtype=torch.float64, requires_grad=True)
    bb = torch.randn(c, dtype=torch.float64, requires_grad=True) if bias else None
    win = torch.randn(b, c, k - 1, dtype=torch.float64, requires_grad=True) if window else None
    inputs = [t for t in (x, w, bb, win) if t is not None]
    ours, ref = depthwise_conv(x, w, bb, win), reference_conv(x, w, bb, win)
    assert ours.shape == ref.shape == (b, c, p + k - 1)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    g = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad(ours, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, r, atol=1e-12, rtol=0)


def test_depthwise_conv_names_a_bad_shape():
    from interp.models.conv import depthwise_conv  # noqa: PLC0415

    x, w = torch.randn(2, 5, 6), torch.randn(6, 1, 4)
    for args, name in (
        ((x[0], w, None), r"x must be \[B, P, C\], got \[5, 6\]"),
        ((x, torch.randn(5, 1, 4), None), r"weight must be \[C, 1, K\] with C = 6"),
        ((x, w, torch.randn(5)), r"bias must be \[C\] = \[6\]"),
        ((x, w, None, torch.randn(2, 6, 4)), r"window must be \[B, C, K - 1\] = \[2, 6, 3\]"),
    ):
        with pytest.raises(ValueError, match=name):
            depthwise_conv(*args)
