"""`StateEdit`, the sparse form of a scan's state edit: equal to the dense NaN form in both scans (outputs,
states and gradients, float64), and its bad input named."""

from __future__ import annotations

import pytest
import torch

from interp.models import build_model
from interp.models.scan import selective_scan_chunked, selective_scan_ref
from interp.models.ssd import ssd_scan_chunked, ssd_scan_ref
from interp.models.state_edit import StateEdit
from tests import test_mamba, test_mamba2

# (scan, reference, inputs, dense state shape [.., L on axis 2, ..]) for Mamba-1 and Mamba-2
B, L = 2, 19
SCANS = {
    "mamba": (selective_scan_chunked, selective_scan_ref, lambda: test_mamba.scan_inputs(B, L, 6, 4, seed=7)),
    "mamba2": (ssd_scan_chunked, ssd_scan_ref, lambda: test_mamba2.scan_inputs(B, L, 4, 3, 2, 5, seed=7)),
}


def unedited_states(scan, inputs) -> torch.Tensor:
    with torch.no_grad():
        return scan(**{k: v.detach() for k, v in inputs.items()}, return_states=True)[1]


def hook_like_edit(original: torch.Tensor) -> torch.Tensor:
    """What a patching hook does: new values at a few positions (some channels of one, all of another),
    the rest unchanged; a leaf requiring grad."""
    new = original.clone()
    g = torch.Generator().manual_seed(1)
    new[0, 1:3, 4] = torch.randn(new[0, 1:3, 4].shape, generator=g, dtype=new.dtype)
    new[1, :, 11] = torch.randn(new[1, :, 11].shape, generator=g, dtype=new.dtype)
    new[:, :, L - 1] += 1.0  # the last position too
    return new.requires_grad_()


def run(scan, inputs, edit, new, **kw) -> list[torch.Tensor]:
    leaves = [*inputs.values(), new]
    for t in leaves:
        t.grad = None
    y, states = scan(**inputs, state_edit=edit(new), return_states=True, **kw)
    (y.pow(2).sum() + states.sin().sum()).backward()
    return [y.detach(), states.detach()] + [t.grad.clone() for t in leaves]


@pytest.mark.parametrize("kind", SCANS)
def test_sparse_edit_equals_the_dense_one(kind):
    scan, ref, make = SCANS[kind]
    inputs = make()
    original = unedited_states(scan, inputs)
    new = hook_like_edit(original)
    changed = new.detach() != original
    dense = lambda v: torch.where(changed, v, torch.full_like(v, float("nan")))  # noqa: E731
    sparse = lambda v: StateEdit.changes(original, v, dim=2)  # noqa: E731
    assert StateEdit.changes(original, new, dim=2).positions() == [4, 11, L - 1]
    expected = run(ref, inputs, dense, new)
    for edit, fn, kw in [
        (sparse, scan, {"chunk_size": 4}),
        (dense, scan, {"chunk_size": 4}),
        (sparse, ref, {}),
    ]:
        for got, want in zip(run(fn, inputs, edit, new, **kw), expected, strict=True):
            torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
    # the edit holds at its positions, inside the recurrence (later states differ from the unedited ones)
    states = scan(**inputs, state_edit=sparse(new), return_states=True)[1].detach()
    assert torch.equal(states[changed], new.detach()[changed])
    assert not torch.allclose(states[:, :, 5], original[:, :, 5])
    torch.testing.assert_close(states[:, :, :4], original[:, :, :4], atol=0, rtol=0)


def test_dense_round_trip_and_an_empty_edit():
    dense = torch.full((2, 3, 7, 4), float("nan"), dtype=torch.float64)
    dense[1, 2, 3, 0] = 5.0
    dense[0, :, 6] = 1.5
    edit = StateEdit.from_nan(dense, dim=2)
    assert edit.positions() == [3, 6] and edit.mask.shape == (2, 3, 2, 4)
    torch.testing.assert_close(edit.dense(7), dense, equal_nan=True)
    none = StateEdit.changes(dense.nan_to_num(), dense.nan_to_num(), dim=2)
    assert len(none) == 0 and none.dense(7).isnan().all()


def test_bad_edits_are_named():
    inputs = {k: v.detach() for k, v in test_mamba.scan_inputs(1, 5, 6, 4).items()}
    good = StateEdit(
        torch.tensor([1, 3]), torch.ones(1, 6, 2, 4, dtype=torch.bool), torch.zeros(1, 6, 2, 4), 2
    )
    selective_scan_chunked(**inputs, state_edit=good)
    wrong_shape = StateEdit(good.times, good.mask[..., :3], good.values[..., :3], 2)
    with pytest.raises(ValueError, match=r"state_edit must hold \[1, 6, 2, 4\].*\[1, 6, 2, 3\]"):
        selective_scan_chunked(**inputs, state_edit=wrong_shape)
    for times in ([3, 1], [1, 5]):
        bad = StateEdit(torch.tensor(times), good.mask, good.values, 2)
        with pytest.raises(ValueError, match=rf"ascending positions in 0\.\.4, got \{times}"):
            selective_scan_ref(**inputs, state_edit=bad)


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
@pytest.mark.parametrize("scan", ["chunked", "reference"])
def test_a_state_patch_is_the_recurrence_continued_from_the_patched_state(arch, scan):
    """A hook on layer 0's hook_ssm_state adding 1 at positions 4 (2 channels or heads) and 9 gives, at every other position,
    the logits of step mode with layer 0's state set to (the hook's input there) + 1 after those steps: an
    independent path, through the edit's positions only and the suffix rescans from the first one. (The
    hook sees the states without edits, so the value at 9 is not the state after the edit at 4 plus 1.)"""
    torch.manual_seed(0)
    # one layer: step mode can change a state only after its step's output, so a later layer would see
    # position t unedited
    kw = dict(d_vocab=11, d_model=16, n_layers=1, d_state=4, scan=scan)
    model = build_model(arch, **kw, **({"head_dim": 8} if arch == "mamba2" else {})).eval()
    tokens = torch.randint(0, 11, (2, 13), generator=torch.Generator().manual_seed(2))
    edited = (4, 9)

    def hook(act, hook):  # part of the state at 4 (so the state before it matters), all of it at 9
        act = act.clone()
        act[:, :2, 4] += 1.0
        act[:, :, 9] += 1.0
        return act

    name = "blocks.0.mixer.hook_ssm_state"
    with torch.no_grad():
        patched = model.run_with_hooks(tokens, fwd_hooks=[(name, hook)])
        seen = model.run_with_cache(tokens, names_filter=name)[1][name]
        cache, steps = model.init_cache(2), []
        for t in range(tokens.shape[1]):
            logits, cache = model.step(tokens[:, t], cache)
            steps.append(logits)
            if t in edited:
                part = slice(0, 2) if t == 4 else slice(None)
                cache.ssm[0][:, part] = seen[:, part, t] + 1.0
    others = [t for t in range(tokens.shape[1]) if t not in edited]
    torch.testing.assert_close(patched[:, others], torch.stack(steps, 1)[:, others], atol=1e-5, rtol=1e-5)
    assert (patched[:, 10:] - model(tokens)[:, 10:]).abs().amax() > 1e-3  # the edits did reach them


def test_changes_at_marked_positions_equal_the_full_compare():
    """`StateEdit.changes` of a marked output (`interp.hooks.mark_edited`) compares only the marked positions
    and finds the same edit as the full compare, including marked positions the hook left as they were."""
    from interp.hooks import edited_positions, mark_edited  # noqa: PLC0415

    states = torch.randn(2, 3, 9, 4)
    new = states.clone()
    new[0, 1, 2] += 1
    new[1, :, 6, 0] = 0.0
    full = StateEdit.changes(states, new, dim=2)
    new = mark_edited(new, states, torch.tensor([2, 4, 6]), 2)  # 4: marked, unchanged
    assert edited_positions(new, states, 2) is not None
    marked = StateEdit.changes(states, new, dim=2)
    assert marked.positions() == full.positions() == [2, 6]
    assert torch.equal(marked.mask, full.mask) and torch.equal(marked.values, full.values)
    same = mark_edited(states.clone(), states, torch.tensor([3]), 2)
    assert not len(StateEdit.changes(states, same, dim=2))


def test_edited_positions_trust_a_mark_only_while_both_tensors_are_as_marked():
    from interp.hooks import edited_positions, mark_edited  # noqa: PLC0415

    def marked():
        act = torch.randn(2, 3, 9, 4)
        out = act.clone()
        out[:, :, 5] = 0.0
        return act, mark_edited(out, act, torch.tensor([5]), 2)

    act, out = marked()
    assert edited_positions(out, act, 2).tolist() == [5]
    assert edited_positions(out, act.clone(), 2) is None  # another input
    assert edited_positions(out, act, 1) is None  # another axis
    assert edited_positions(act.clone(), act, 2) is None  # no mark
    act, out = marked()
    out[:, :, 1] = 1.0  # a later hook edited the output in place
    assert edited_positions(out, act, 2) is None
    act, out = marked()
    act[:, :, 1] = 1.0  # the input changed after the mark
    assert edited_positions(out, act, 2) is None
