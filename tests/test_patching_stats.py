"""Error bars on patching results: per-example effects, standard errors, bootstrap intervals."""

import matplotlib
import numpy as np
import pytest
import torch

from interp.analysis.patching import (
    activation_patching,
    attribution_patching,
    make_metric,
    paired_batches,
    patch_specs,
)
from interp.analysis.patching.stats import effect_intervals, percentile
from interp.analysis.plotting import plot_patching_heatmap
from interp.models.hash_copy import build_hash_copy
from interp.tasks import TaskConfig

matplotlib.use("Agg")
TASK = TaskConfig(task="copy", n_letters=8, max_len=40, unique_ngrams=True, ngram=3)


@pytest.fixture(scope="module")
def result():
    model = build_hash_copy(8, 3, n_ctx=128)
    clean, corrupt = paired_batches(TASK, 6, 10)
    metric = make_metric("logit_diff", clean, corrupt)
    specs = patch_specs(model, "z", heads=True)
    return model, clean, corrupt, metric, specs


def test_intervals_cover_the_mean_and_mark_the_planted_head(result):
    model, clean, corrupt, metric, specs = result
    df = activation_patching(model, clean.tokens, corrupt.tokens, metric, specs, mode="noise")
    per = df.attrs["per_example_effect"]
    assert per.shape == (len(specs), 6)
    np.testing.assert_allclose(per.mean(1), df.effect, atol=1e-6)  # the per-example unit is the mean gap
    np.testing.assert_allclose(df.effect_se, per.std(1, ddof=1) / np.sqrt(6), atol=1e-7)
    assert (df.effect_lo <= df.effect + 1e-6).all() and (df.effect <= df.effect_hi + 1e-6).all()
    planted = df[df.label == "L1 attn.hook_z H4"].iloc[0]
    assert planted.distinct and planted.effect_lo > 0.5
    assert not df[df.effect.abs() < 1e-6].distinct.any()  # a patch that changes nothing is not distinct
    loop = activation_patching(
        model, clean.tokens, corrupt.tokens, metric, specs, mode="noise", method="loop"
    )
    np.testing.assert_allclose(loop.attrs["per_example_effect"], per, atol=1e-5)
    fig = plot_patching_heatmap(df, mark_indistinct=True)
    assert "interval contains 0" in fig.axes[0].get_title()


def test_attribution_per_example_sums_to_its_mean(result):
    model, clean, corrupt, metric, specs = result
    df = attribution_patching(model, clean.tokens, corrupt.tokens, metric, specs, mode="noise")
    np.testing.assert_allclose(df.attrs["per_example_effect"].mean(1), df.effect, atol=1e-6)


def test_bootstrap_interval_of_known_data():
    gen = torch.Generator().manual_seed(1)
    effects = torch.cat([torch.randn(1, 400, generator=gen) + 3, torch.randn(1, 400, generator=gen)])
    bars = effect_intervals(effects, n_boot=2000)
    assert bars["distinct"].tolist() == [True, False]
    np.testing.assert_allclose(bars["hi"] - bars["lo"], 2 * 1.96 * bars["se"], rtol=0.15)  # ~ normal
    with pytest.raises(ValueError, match="strictly between"):
        effect_intervals(effects, ci=1.0)


@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_percentile_equals_torch_quantile(n):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(5, n, generator=gen, dtype=torch.float64)
    x[0] = x[0].round()  # ties
    x[1, n // 2] = float("nan")  # a NaN makes the row's percentile NaN, as in quantile
    for q in (0.0, 0.025, 0.3, 0.5, 0.975, 1.0):
        torch.testing.assert_close(
            percentile(x, q), torch.quantile(x, q, dim=1), rtol=0, atol=1e-12, equal_nan=True
        )


def test_percentile_names_bad_input():
    for x, q in ((torch.zeros(3), 0.5), (torch.zeros(2, 0), 0.5), (torch.zeros(2, 4), 1.5)):
        with pytest.raises(ValueError, match=r"percentile takes x \[S, n\] with n >= 1 and q in \[0, 1\]"):
            percentile(x, q)
