import pytest
import torch

from interp.models import build_model
from interp.models.lstm import lstm_reference


def test_reference_loop_equals_fused_lstm():
    torch.manual_seed(0)
    model = build_model("lstm", d_vocab=12, d_model=16, n_layers=2)
    tokens = torch.randint(0, 12, (3, 11))
    fast = model(tokens)
    logits, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(fast, logits, atol=1e-5, rtol=0)
    x = cache["hook_embed"]
    expected_h, _ = model.blocks[0].lstm(x)
    h, c = lstm_reference(x, model.blocks[0].lstm)
    torch.testing.assert_close(h, expected_h, atol=1e-6, rtol=0)
    torch.testing.assert_close(cache["blocks.0.hook_cell"], c)
    assert cache["blocks.1.hook_hidden"].shape == (3, 11, 16)


def test_patching_the_cell_state_changes_only_later_positions():
    torch.manual_seed(0)
    model = build_model("lstm", d_vocab=12, d_model=16, n_layers=1)
    tokens = torch.randint(0, 12, (2, 10))
    clean = model(tokens)
    t = 4

    def patch(cell, hook):
        cell = cell.clone()
        cell[:, t] = 3.0
        return cell

    patched = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_cell", patch)])
    torch.testing.assert_close(patched[:, :t], clean[:, :t])
    assert (patched[:, t:] - clean[:, t:]).abs().amax(-1).gt(1e-4).all(), "every later position must change"


@pytest.mark.parametrize("arch", ["lstm", "mamba", "mamba2"])
@pytest.mark.parametrize("style", ["in place", "in place, returning None"])
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_a_state_edited_in_place_feeds_the_recurrence_like_a_returned_edit(arch, style, mode):
    """A hook that edits a recurrent state in place (TransformerLens style) acts as one returning the edit:
    later positions see it, also under `torch.inference_mode` (whose tensors keep no version counter)."""
    torch.manual_seed(0)
    kw = dict(d_vocab=12, d_model=16, n_layers=1)
    model = build_model(arch, **kw, **({} if arch == "lstm" else {"d_state": 4}))
    hook = "blocks.0.hook_cell" if arch == "lstm" else "blocks.0.mixer.hook_ssm_state"
    tokens = torch.randint(0, 12, (2, 10))
    t = 4  # the position axis: 1 in the LSTM's [B, P, D], 2 in Mamba's [B, D, P, N] (Mamba-2: [B, H, P, Dh, N])
    at = (slice(None), t) if arch == "lstm" else (slice(None), slice(None), t)

    def returned(act, hook):
        act = act.clone()
        act[at] = 3.0
        return act

    def in_place(act, hook):
        act[at] = 3.0
        return None if style.endswith("None") else act

    with mode():
        clean = model(tokens)
        expected = model.run_with_hooks(tokens, fwd_hooks=[(hook, returned)])
        got = model.run_with_hooks(tokens, fwd_hooks=[(hook, in_place)])
    assert not torch.allclose(expected[:, t + 1 :], clean[:, t + 1 :])
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_padded_and_hooked_forwards_run_under_inference_mode():
    """The reference loop (padding, a hook on the state) runs under `torch.inference_mode`, whose tensors
    keep no version counter, and gives the no-grad forward's logits."""
    torch.manual_seed(0)
    model = build_model("lstm", d_vocab=12, d_model=16, n_layers=1)
    tokens = torch.randint(0, 12, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, :2] = 0
    scale = [("blocks.0.hook_cell", lambda act, hook: act * 1.1)]
    with torch.no_grad():
        expected = model(tokens, attention_mask=mask), model.run_with_hooks(tokens, fwd_hooks=scale)
    with torch.inference_mode():
        got = model(tokens, attention_mask=mask), model.run_with_hooks(tokens, fwd_hooks=scale)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_state_size_counts_hidden_and_cell():
    model = build_model("lstm", d_model=64, n_layers=3)
    size = model.state_size()
    assert size.numbers_per_layer == (128, 128, 128) and size.bits == 3 * 128 * 32
