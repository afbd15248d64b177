"""Memory-aware batching: the copies per forward come from the activation sizes and `max_memory=`."""

import pytest
import torch

from interp.analysis.patching import activation_patching, make_metric, paired_batches, patch_specs
from interp.analysis.patching.memory import bytes_per_copy, copies_per_forward, parse_bytes
from interp.models.hash_copy import build_hash_copy
from interp.tasks import TaskConfig

TASK = TaskConfig(task="copy", n_letters=8, max_len=40, unique_ngrams=True, ngram=3)


@pytest.fixture(scope="module")
def setup():
    model = build_hash_copy(8, 3, n_ctx=128)
    clean, corrupt = paired_batches(TASK, 3, 8)
    specs = patch_specs(model, "z", heads=True, positions=True, n_pos=clean.tokens.shape[1])
    return model, clean, corrupt, make_metric("logit_diff", clean, corrupt), specs


def test_small_budget_gives_the_same_numbers_in_more_forwards(setup):
    model, clean, corrupt, metric, specs = setup
    per_copy = bytes_per_copy(model, clean.tokens)
    assert per_copy > clean.tokens.numel() * model.cfg.d_model * 4  # at least the residual stream
    calls = []
    model.hook_dict["blocks.1.hook_resid_post"].add_perma_hook(
        lambda act, hook: calls.append(act.shape[0] * act.shape[1])
    )
    try:
        for method in ("batched", "reuse"):
            calls.clear()
            args = (model, clean.tokens, corrupt.tokens, metric, specs)
            small = activation_patching(*args, mode="noise", method=method, max_memory=2 * per_copy)
            rows_small = max(calls)
            big = activation_patching(*args, mode="noise", method=method, max_memory="4GiB")
            torch.testing.assert_close(
                torch.tensor(small.metric.values), torch.tensor(big.metric.values), atol=1e-5, rtol=0
            )
            # row-positions per forward: at most two full copies (reuse packs more copies into shorter passes)
            assert rows_small <= 2 * clean.tokens.numel() < max(calls)
    finally:
        model.reset_hooks(including_permanent=True)


def test_budget_too_small_for_one_patch_says_what_one_needs(setup):
    model, clean, corrupt, metric, specs = setup
    need = bytes_per_copy(model, clean.tokens) / 2**20
    with pytest.raises(ValueError, match=rf"too small for one patch: .* needs about {need:.1f} MiB"):
        activation_patching(model, clean.tokens, corrupt.tokens, metric, specs, max_memory=1000)


def test_sizes():
    assert parse_bytes("512MiB") == 512 * 2**20 and parse_bytes("2GB") == 2 * 10**9 and parse_bytes(10) == 10
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes("lots")
    assert copies_per_forward(10, 95, 100) == 9 and copies_per_forward(10, 10**6, 4) == 4
