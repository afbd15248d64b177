"""Linear probes: planted ground truth, one-solve ridge = per-lag ridge, split by example, clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from interp.analysis.probing import (
    control_labels,
    fit_probes,
    gather_activations,
    lag_targets,
    probe_lags,
    probe_tokens,
    ridge_weights,
    split_examples,
)
from interp.models import UnknownHookError, build_model
from interp.models.shift_register import ShiftRegister, ShiftRegisterConfig

MEMORY, LETTERS = 4, 8


@pytest.fixture(scope="module")
def register():
    return ShiftRegister(ShiftRegisterConfig(d_vocab=LETTERS + 4, memory=MEMORY))


@pytest.fixture(scope="module")
def random_tokens():
    return torch.randint(0, LETTERS, (300, 16), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("solver", ["ridge", "logistic"])
def test_planted_shift_register_lags(register, random_tokens, solver):
    """Lags < m decode at 100%, lags >= m at chance; the information is log2|V| bits per stored lag."""
    df = probe_lags(register, random_tokens, "hook_state", torch.arange(8, 16), max_lag=7, solver=solver)
    stored, lost = df[df["lag"] < MEMORY], df[df["lag"] >= MEMORY]
    assert (stored["accuracy"] == 1.0).all()
    assert (stored["info_bits"] > 0.99 * math.log2(LETTERS)).all()
    assert (lost["accuracy"] < lost["chance"] + 0.06).all()  # 600 test rows: chance +- a few points
    assert (lost["info_bits"] < 0.05).all()
    assert list(df.columns[:2]) == ["hook", "lag"]


def test_absolute_positions(register, random_tokens):
    """Read at position 10: positions 7..10 (lags 3..0) are in the register, 6 and earlier are not."""
    df = probe_tokens(register, random_tokens, "hook_state", 10, positions=[5, 6, 7, 10])
    assert df["position"].tolist() == [5, 6, 7, 10]
    assert df["accuracy"].tolist()[2:] == [1.0, 1.0]
    assert (df["accuracy"].iloc[:2] < 0.4).all()


def test_one_solve_equals_per_lag_ridge():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 12, generator=gen)
    y = torch.randint(0, 5, (200, 3), generator=gen)
    lam = torch.tensor([0.1, 3.0, 30.0])
    w, b = ridge_weights(x, y, 5, lam)  # [F, T, V], [T, V]
    xd = x.double()
    xc = xd - xd.mean(0)
    for t in range(3):
        onehot = torch.nn.functional.one_hot(y[:, t], 5).double()
        w_t = torch.linalg.solve(xc.T @ xc + lam[t] * torch.eye(12, dtype=torch.float64), xc.T @ onehot)
        b_t = onehot.mean(0) - xd.mean(0) @ w_t
        torch.testing.assert_close(w[:, t], w_t)
        torch.testing.assert_close(b[t], b_t)


def test_split_is_by_example():
    """Features that identify the example (and labels tied to the example) cannot leak across the split:
    held-out accuracy stays at chance although every example appears at many positions."""
    gen = torch.Generator().manual_seed(2)
    n_ex, n_read = 200, 10
    identity = torch.randn(n_ex, 1, 150, generator=gen).expand(-1, n_read, -1)
    labels = torch.randint(0, 4, (n_ex, 1, 1), generator=gen).expand(-1, n_read, 1)
    df = fit_probes(identity.contiguous(), labels.contiguous(), 4, control=False)
    assert df["accuracy"].iloc[0] < 0.45  # chance 0.25; a position-level split would give ~1.0
    train, test = split_examples(n_ex, 0.25, gen)
    assert set(train.tolist()).isdisjoint(test.tolist()) and len(train) + len(test) == n_ex


def test_control_labels_are_a_function_of_the_token():
    gen = torch.Generator().manual_seed(3)
    targets = torch.randint(0, 6, (50, 4, 3), generator=gen)
    control = control_labels(targets, 6, gen)
    for t in range(3):
        pairs = set(zip(targets[..., t].flatten().tolist(), control[..., t].flatten().tolist()))
        assert len(pairs) == len({a for a, _ in pairs})  # each token type maps to one label


def test_gather_matches_run_with_cache_and_batching():
    torch.manual_seed(0)
    model = build_model("mamba", d_vocab=12, d_model=16, n_layers=1, d_state=4)
    tokens = torch.randint(0, 12, (5, 9), generator=torch.Generator().manual_seed(0))
    reads = torch.tensor([[2, 8]] * 5)
    hook = "blocks.0.mixer.hook_ssm_state"
    _, cache = model.run_with_cache(tokens, names_filter=hook)
    expected = cache[hook][:, :, [2, 8]].permute(0, 2, 1, 3).flatten(2)  # [B, R, D_inner * N]
    for options in ({"batch_size": 2}, {"max_batch_bytes": 1}, {}):
        got = gather_activations(model, tokens, hook, reads, **options)
        torch.testing.assert_close(got, expected)


def test_pca_reduction_runs(register, random_tokens):
    df = probe_lags(register, random_tokens, "hook_state", torch.arange(8, 16), max_lag=2, max_features=20)
    assert (df["n_features"] == 20).all()
    assert (df["accuracy"] > 0.9).all()  # 12 one-hot tokens x 3 lags live in < 20 directions


def test_unknown_hook_lists_close_matches(register, random_tokens):
    with pytest.raises(UnknownHookError, match="hook_state"):
        probe_lags(register, random_tokens, "hook_stat", 8, max_lag=2)


def test_lag_errors(random_tokens):
    reads = torch.tensor([[3, 10]]).expand(len(random_tokens), -1)
    with pytest.raises(ValueError, match="longer than the sequence of 16 tokens"):
        lag_targets(random_tokens, reads, range(17))
    with pytest.raises(ValueError, match="largest lag allowed for these read positions is 3"):
        lag_targets(random_tokens, reads, range(5))


def test_too_few_examples(register):
    tokens = torch.randint(0, LETTERS, (20, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="too few examples for the probe's dimension: 15 training"):
        probe_lags(register, tokens, "hook_state", 8, max_lag=2)


def test_argument_errors(register, random_tokens):
    with pytest.raises(ValueError, match="exactly one of lags"):
        probe_tokens(register, random_tokens, "hook_state", 8)
    with pytest.raises(ValueError, match="unknown solver 'svm'; allowed: ridge, logistic"):
        probe_lags(register, random_tokens, "hook_state", 8, max_lag=1, solver="svm")
    with pytest.raises(ValueError, match=r"read positions must lie in \[0, 16\)"):
        probe_lags(register, random_tokens, "hook_state", 16, max_lag=1)
