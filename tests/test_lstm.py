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


def test_state_size_counts_hidden_and_cell():
    model = build_model("lstm", d_model=64, n_layers=3)
    size = model.state_size()
    assert size.numbers_per_layer == (128, 128, 128) and size.bits == 3 * 128 * 32
