"""Memory-aware batching: the copies per forward come from the activation sizes and `max_memory=`."""

import json
import re

import pytest
import torch

from interp.analysis.patching import activation_patching, make_metric, paired_batches, patch_specs
from interp.analysis.patching.memory import bytes_per_copy, copies_per_forward, parse_bytes, peak_tensor_bytes
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
    need = bytes_per_copy(model, clean.tokens, hooks=sorted({s.hook for s in specs})) / 2**20
    args = (model, clean.tokens, corrupt.tokens, metric, specs)
    with pytest.raises(ValueError, match=rf"too small for one patch: .* needs about {need:.1f} MiB"):
        activation_patching(*args, method="batched", max_memory=1000)
    # reuse measures its own (shorter) passes: the longest needs about what a full patched forward does
    with pytest.raises(ValueError, match="too small for one patch") as err:
        activation_patching(*args, method="reuse", max_memory=1000)
    reuse_need = float(re.search(r"needs about ([0-9.]+) MiB", str(err.value)).group(1))
    assert need / 1.5 <= reuse_need <= need * 1.5


# One patched forward per hook in a fresh interpreter: the rise of its resident memory (VmHWM) while the
# patched forward runs, `bytes_per_copy` for the same patch, and the old estimate (every hook's activation).
# A fixed mmap threshold (MALLOC_MMAP_THRESHOLD_) makes glibc return every large block when it is freed,
# so one patch's peak does not hide in memory an earlier one left behind.
PROBE = """
import json, sys, torch
torch.set_num_threads(1)
from interp.analysis.patching import PatchSpec
from interp.analysis.patching.activation import patch_hooks
from interp.analysis.patching.memory import bytes_per_copy
from interp.hooks import hook_info
from interp.models import build_model

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

torch.manual_seed(0)
model = build_model("mamba", d_vocab=20, d_model=64, n_layers=2)
tokens = torch.randint(0, 20, (8, 259))
model(tokens[:1, :8])  # warm-up
out = {}
for hook in sys.argv[1:]:
    with torch.no_grad():
        src = model.run_with_cache(tokens.flip(0), names_filter=[hook])[1][hook]
        patch = patch_hooks([[(PatchSpec(hook, pos=5), src)]], 8, {hook: hook_info(model, hook)})[hook]
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark to the current resident size
        before = status("VmRSS")
        model.run_with_hooks(tokens, fwd_hooks=[(hook, patch)])
        measured = status("VmHWM") - before
        sizes = []
        if hook.endswith("resid_pre"):
            every = [(lambda name: True, lambda a, hook: sizes.append(a.nbytes))]
            model.run_with_hooks(tokens, fwd_hooks=every)
        out[hook] = {"measured": measured, "estimate": bytes_per_copy(model, tokens, hooks=[hook]), "every_hook": sum(sizes)}
        del src, patch
print(json.dumps(out))
"""


@pytest.mark.slow
def test_estimate_is_within_a_factor_of_the_measured_peak_of_one_patch(run_python, monkeypatch):
    """Mamba: a residual patch (the old estimate counted the full-state hooks it never computes) and a
    state patch (the full states and the scan re-run with the edit do count)."""
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(2**17))
    resid, state = "blocks.0.hook_resid_pre", "blocks.0.mixer.hook_ssm_state"
    proc = run_python("-c", PROBE, resid, state)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for hook, g in got.items():
        assert g["measured"] > 10 * 2**20, (hook, g)  # large enough that allocator noise is small
        assert g["measured"] / 1.5 <= g["estimate"] <= g["measured"] * 1.5, (hook, g)
    assert got[resid]["every_hook"] > 2 * got[resid]["measured"], got[resid]
    assert got[state]["measured"] > 2 * got[resid]["measured"]


def test_sizes():
    assert parse_bytes("512MiB") == 512 * 2**20 and parse_bytes("2GB") == 2 * 10**9 and parse_bytes(10) == 10
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes("lots")
    assert copies_per_forward(10, 95, 100) == 9 and copies_per_forward(10, 10**6, 4) == 4


def test_peak_tensor_bytes_counts_what_is_alive_at_once():
    x = torch.randn(1000, 1000)  # made before counting: its views are not new memory

    def work():
        a = x * 2  # 4 MB
        b = a + 1  # 8 MB alive
        del a
        c = b @ b.T  # 8 MB alive (b, c); b.T is a view
        c.add_(1)  # in place: nothing new
        return c.sum()

    assert peak_tensor_bytes(work) == 2 * x.nbytes + 4  # a and b at once, then b and c; plus the sum
