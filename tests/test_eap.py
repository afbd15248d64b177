"""Edge attribution patching (EAP, EAP-IG), edge-level patching and circuit faithfulness."""

import matplotlib
import pytest
import torch
from scipy.stats import spearmanr

from interp.analysis.circuits import circuit_from_edges, drawing, render, to_dot
from interp.analysis.patching import (
    Metric,
    circuit_faithfulness,
    edge_attribution_patching,
    edge_graph,
    edge_patching,
    make_metric,
    paired_batches,
    path_patching,
)
from interp.analysis.patching.edges import head_writes
from interp.models import build_model
from interp.models.hash_copy import build_hash_copy, planted_heads
from interp.tasks import TaskConfig

matplotlib.use("Agg")
N = 3
TASK = TaskConfig(task="copy", n_letters=8, max_len=40, unique_ngrams=True, ngram=N)
KEY = ["sender", "receiver", "input"]


@pytest.fixture(scope="module")
def hash_copy():
    model = build_hash_copy(8, N, n_ctx=128)
    clean, corrupt = paired_batches(TASK, 6, 16)
    metric = make_metric("logit_diff", clean, corrupt)
    args = (model, clean.tokens, corrupt.tokens, metric)
    eap = edge_attribution_patching(*args)
    ig = edge_attribution_patching(*args, method="eap-ig", steps=10)
    return args, eap, ig


def planted_edges(n: int) -> set[tuple[str, str, str]]:
    """The construction's edges: each offset head reads the (hashed) tokens through v, the lookup head
    reads offsets 0..n-1 through q and 1..n through k, its value is the token itself, and it alone
    writes the logits (the `$` veto reads position 0, equal in both inputs, so it carries nothing)."""
    (layer, head) = planted_heads(n)["lookup"][0]
    lookup = f"L{layer}H{head}"
    edges = {("embed", f"L0H{h}", "v") for h in range(n + 1)}
    edges |= {(f"L0H{h}", lookup, "q") for h in range(n)} | {(f"L0H{h}", lookup, "k") for h in range(n + 1)}
    return edges | {("embed", lookup, "v"), (lookup, "logits", "direct")}


def keys(df, above: float) -> set:
    return set(map(tuple, df.loc[df.effect.abs() > above, KEY].values))


def test_eap_ranks_the_planted_edges_first_and_its_circuit_is_faithful(hash_copy):
    args, eap, ig = hash_copy
    value_path = {("embed", "L1H4", "v"), ("L1H4", "logits", "direct")}
    # EAP: the value path carries the whole gap; every other edge scores 0 (the lookup head's attention
    # is saturated, so the gradient through its q and k vanishes: edge patching gives them 0.05-0.4)
    assert set(map(tuple, eap.loc[:1, KEY].values)) == value_path
    assert eap.effect[:2].tolist() == pytest.approx([1.0, 1.0], abs=1e-4)
    assert keys(eap, 1e-3) == value_path
    # EAP-IG integrates past the saturation: exactly the planted edges score, every other one is 0
    assert set(map(tuple, ig.loc[:1, KEY].values)) == value_path
    assert keys(ig, 1e-6) == planted_edges(N) and len(planted_edges(N)) == 13
    assert ig.effect.abs()[13:].max() < 1e-6 < 1e-5 < ig.effect.abs()[:13].min()
    for df, k in ((eap, 2), (ig, 13)):
        result = circuit_faithfulness(*args, circuit_from_edges(df, k=k))
        assert result["faithfulness"] >= 0.9 and result["n_edges"] == k
        assert result["lo"] <= result["faithfulness"] <= result["hi"]
    # a circuit without the value edge recovers nothing: the check can fail
    assert circuit_faithfulness(*args, [("L1H4", "logits", "direct")])["faithfulness"] == pytest.approx(
        0, abs=1e-3
    )


@pytest.mark.slow
def test_edge_patching_equals_path_patching_between_adjacent_layers(hash_copy):
    """Between layer 0 and layer 1 (the MLPs are zero) an edge patch of sender -> q/k/v is path
    patching's sender -> receiver effect: a reference computed a different way (freeze, record, patch)."""
    (model, clean, corrupt, metric), *_ = hash_copy
    senders = [f"L0H{h}" for h in range(N + 2)]
    edges = edge_patching(model, clean, corrupt, metric, senders=senders, receivers=["L1H4"])
    paths = path_patching(
        model, clean, corrupt, metric, senders=[(0, h) for h in range(N + 2)], receivers=[(1, 4)]
    )
    merged = edges.merge(paths[paths.input != "direct"], on=KEY, suffixes=("", "_path"))
    assert len(merged) == len(edges) == 3 * (N + 2)
    torch.testing.assert_close(
        torch.tensor(merged.effect.values), torch.tensor(merged.effect_path.values), atol=1e-5, rtol=0
    )
    assert keys(edges, 1e-3) == {e for e in planted_edges(N) if e[0] in senders}


def tiny(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    if arch == "hybrid":
        return build_model(
            "hybrid", d_vocab=12, d_model=16, layers=["mamba2", "attn", "mlp"], n_heads=2
        ).eval()
    if arch == "parallel":  # GPT-NeoX's block: attention and MLP read the same residual stream
        opts = {"n_heads": 2, "parallel_residual": True}
        return build_model("transformer", d_vocab=12, d_model=16, n_layers=2, **opts).eval()
    extra = {"n_heads": 2, "d_mlp": 32} if arch == "transformer" else {}
    return build_model(arch, d_vocab=12, d_model=16, n_layers=2, **extra).eval()


def tiny_inputs(near: float | None = None, model=None, b: int = 4, p: int = 8):
    """Random clean / corrupted tokens and a logit-difference metric on the last position. near: make
    tokens 6..11 copies of 0..5 moved by `near` x the embedding's spread (corrupt = clean + 6), so every
    activation difference is small and EAP's first-order estimate must approach the finite difference."""
    g = torch.Generator().manual_seed(1)
    if near is None:
        clean, corrupt = torch.randint(0, 12, (b, p), generator=g), torch.randint(0, 12, (b, p), generator=g)
    else:
        with torch.no_grad():
            w = model.embed.weight
            w[6:] = w[:6] + near * w[:6].std() * torch.randn(6, w.shape[1], generator=g)
        clean = torch.randint(0, 6, (b, p), generator=g)
        corrupt = clean + 6
    answers = torch.randint(0, 12, (b, p), generator=g)
    mask = torch.zeros(b, p, dtype=torch.bool)
    mask[:, -1] = True
    return clean, corrupt, Metric("logit_diff", answers, mask, (answers + 1) % 12)


def scores(model, clean, corrupt, metric, steps=8):
    bf = edge_patching(model, clean, corrupt, metric)
    eap = edge_attribution_patching(model, clean, corrupt, metric)
    ig = edge_attribution_patching(model, clean, corrupt, metric, method="eap-ig", steps=steps)
    m = bf.merge(eap, on=KEY, suffixes=("_bf", "_eap")).merge(ig[[*KEY, "score"]], on=KEY)
    assert len(m) == len(bf) == len(eap) == len(ig)
    return m.score_bf.values, m.score_eap.values, m.score.values


@pytest.mark.parametrize(
    "arch",
    [
        "transformer",
        "parallel",
        "mamba",
        "hybrid",
    ],
)
def test_eap_is_the_first_order_term_of_edge_patching(arch):
    """With inputs 10x closer, EAP's error against the exact edge patch shrinks ~100x, ~10x relative to
    the edges' effects (it is second order): the gradients into every receiver's input and the heads'
    writes are right (a wrong gradient leaves a relative error that does not shrink). EAP-IG is closer."""
    errors = []
    for near in (0.1, 0.01):
        model = tiny(arch)
        bf, eap, ig = scores(model, *tiny_inputs(near, model))
        scale = abs(bf).max()
        errors.append(abs(eap - bf).max() / scale)
        assert abs(ig - bf).max() < abs(eap - bf).max()
    assert errors[0] < 0.2 and errors[1] < 0.2 * errors[0]


def test_eap_agrees_with_edge_patching_and_eap_ig_is_closer():
    """Real token swaps on a random tiny transformer: EAP ranks and signs the edges like the finite
    difference; EAP-IG (20 steps) is closer, and on the edges out of the embedding it is complete: they
    sum to the whole metric change (the interpolation runs along the embedding)."""
    model = tiny("transformer")
    clean, corrupt, metric = tiny_inputs()
    bf, eap, ig = scores(model, clean, corrupt, metric, steps=20)
    assert spearmanr(bf, eap).statistic > 0.8
    big = abs(bf) > 0.1 * abs(bf).max()
    assert (torch.tensor(bf[big]).sign() == torch.tensor(eap[big]).sign()).all()
    assert abs(ig - bf).sum() < 0.6 * abs(eap - bf).sum()
    df = edge_attribution_patching(model, clean, corrupt, metric, method="eap-ig", steps=20)
    change = df.attrs["corrupt_metric"] - df.attrs["clean_metric"]
    assert df[df.sender == "embed"].score.sum() == pytest.approx(change, rel=2e-3)
    eap_df = edge_attribution_patching(model, clean, corrupt, metric)
    assert abs(eap_df[eap_df.sender == "embed"].score.sum() - change) > 0.05 * abs(change)


@pytest.mark.parametrize("arch", ["transformer", "mamba"])
def test_the_whole_graph_is_the_clean_run_and_the_empty_circuit_the_corrupted(arch):
    model = tiny(arch)
    clean, corrupt, metric = tiny_inputs()
    graph = edge_graph(model)
    every = [graph.key(s, r) for s, r in graph.edges()]
    assert circuit_faithfulness(model, clean, corrupt, metric, every)["faithfulness"] == pytest.approx(
        1, abs=1e-4
    )
    assert circuit_faithfulness(model, clean, corrupt, metric, [])["faithfulness"] == pytest.approx(
        0, abs=1e-4
    )


def test_graph_nodes_per_family():
    names = lambda g: {s.node.name for s in g.senders} | {r.node.name for r in g.receivers}  # noqa: E731
    t = edge_graph(tiny("transformer"))
    assert names(t) == {"embed", "logits", "L0H0", "L0H1", "L1H0", "L1H1", "L0.mlp", "L1.mlp"}
    assert {r.input for r in t.receivers if r.node.name == "L1H0"} == {"q", "k", "v"}
    key = {t.key(s, r) for s, r in t.edges()}
    assert ("L0H0", "L0.mlp", "in") in key and ("L0.mlp", "L0H0", "q") not in key  # MLP reads after attention
    assert ("L1H0", "L1H1", "q") not in key  # heads of one layer read the same residual
    p = edge_graph(tiny("parallel"))
    key = {p.key(s, r) for s, r in p.edges()}
    assert ("L0H0", "L0.mlp", "in") not in key and {("L0H0", "L1.mlp", "in"), ("L0.mlp", "L1H0", "k")} <= key
    m = edge_graph(tiny("mamba"))
    assert names(m) == {"embed", "logits", "L0.mixer", "L1.mixer"} and len(m.edges()) == 6
    h = edge_graph(tiny("hybrid"))  # a hybrid: each layer brings its own kind of node
    assert names(h) == {"embed", "logits", "L0.mixer", "L1H0", "L1H1", "L2.mlp"}


def test_head_writes_match_the_output_projection():
    """The Jacobian-vector product hook_z -> hook_attn_out equals z_h @ W_O^h read off the weights."""
    model = tiny("transformer")
    tokens = torch.randint(0, 12, (3, 5))
    store = {}
    with torch.enable_grad():
        model.run_with_hooks(
            tokens,
            fwd_hooks=[
                (
                    "blocks.1.attn.hook_z",
                    lambda a, hook: store.setdefault("z", a.detach().requires_grad_(True)),
                ),
                ("blocks.1.hook_attn_out", lambda a, hook: store.setdefault("out", a)),
            ],
        )
        dz = torch.randn_like(store["z"])
        got = head_writes(store["out"], store["z"], dz)
    w_o = model.blocks[1].attn.out.weight.view(16, 2, -1)  # [d_model, head, d_head]
    want = torch.einsum("bphe,dhe->hbpd", dz, w_o)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_results_have_error_bars_and_draw_as_a_circuit(hash_copy, tmp_path, monkeypatch):
    _, eap, ig = hash_copy
    assert {"effect_se", "effect_lo", "effect_hi", "distinct", "score"} <= set(ig.columns)
    assert ig.attrs["per_example_effect"].shape == (len(ig), 6) and ig.attrs["method"] == "eap-ig"
    assert ig.attrs["steps"] == 10 and eap.attrs["steps"] is None
    graph = circuit_from_edges(ig, k=13, roles={"L1H4": "lookup"}, title="hash copy")
    assert graph.edge_set() == planted_edges(N)
    assert graph.nodes["embed"]["layer"] == -1 and graph.nodes["logits"]["layer"] == 2
    assert graph.measure == "EAP-IG score" and graph.threshold == pytest.approx(ig.effect.abs()[12])
    assert circuit_from_edges(ig, threshold=0.1).edge_set() == set(
        map(tuple, ig.loc[ig.effect.abs() >= 0.1, KEY].values)
    )
    dot = to_dot(graph)
    assert '"embed" -> "L1H4" [label="v ' in dot and '"L0H0" -> "L1H4" [label="q ' in dot
    monkeypatch.setattr(drawing.shutil, "which", lambda name: None)
    written = render(graph, tmp_path / "eap")
    assert written["renderer"] == "matplotlib" and (tmp_path / "eap.png").read_bytes()[:4] == b"\x89PNG"
    matplotlib.pyplot.close("all")


def test_bad_inputs_say_what_is_allowed(hash_copy):
    (model, clean, corrupt, metric), eap, _ = hash_copy
    args = (model, clean, corrupt, metric)
    with pytest.raises(ValueError, match=r"unknown sender nodes \['L0H9'\].*closest: L0H4"):
        edge_attribution_patching(*args, senders=["L0H9"])
    with pytest.raises(ValueError, match=r"unknown receiver nodes \['logit'\].*receivers are .*logits"):
        edge_patching(*args, receivers=["logit"])
    for steps in (0, -2, 2.5):
        with pytest.raises(ValueError, match=rf"steps={steps!r} must be an integer >= 1"):
            edge_attribution_patching(*args, method="eap-ig", steps=steps)
    with pytest.raises(ValueError, match="unknown method 'ig'; allowed: eap, eap-ig"):
        edge_attribution_patching(*args, method="ig")
    with pytest.raises(ValueError, match=r"not edges of this model's graph: \[\('L1H4', 'L0H0', 'q'\)\]"):
        circuit_faithfulness(*args, [("L1H4", "L0H0", "q")])
    with pytest.raises(ValueError, match="exactly one of k"):
        circuit_from_edges(eap)
    with pytest.raises(ValueError, match="k=0 must be an integer >= 1"):
        circuit_from_edges(eap, k=0)
    with pytest.raises(ValueError, match="lack columns"):
        circuit_from_edges(eap.drop(columns=["input"]), k=3)
    lstm = build_model("lstm", d_vocab=12, d_model=16, n_layers=1)
    tokens = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="needs a residual stream.*lstm lacks blocks.0.hook_resid_pre"):
        edge_attribution_patching(lstm, tokens, tokens, metric)


def test_denoising_is_first_order_too():
    model = tiny("transformer")
    clean, corrupt, metric = tiny_inputs(0.01, model)
    bf = edge_patching(model, clean, corrupt, metric, mode="denoise")
    eap = edge_attribution_patching(model, clean, corrupt, metric, mode="denoise")
    m = bf.merge(eap, on=KEY, suffixes=("_bf", "_eap"))
    assert abs(m.score_eap - m.score_bf).max() < 0.01 * abs(m.score_bf).max()
    assert (
        bf.attrs["mode"] == "denoise" and (m.metric_bf - m.score_bf).round(6).nunique() == 1
    )  # base: corrupt
    assert (m.metric_bf - m.score_bf).iloc[0] == pytest.approx(bf.attrs["corrupt_metric"], abs=1e-6)


@pytest.mark.slow
def test_agreement_probe_runs(run_python, tmp_path):
    proc = run_python("probes/eap_agreement.py", "--quick", "--out", str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    for line in (
        "eap     vs activation patching: Spearman",
        "eap-ig : Spearman",
        "faithfulness of the top-k",
    ):
        assert line in proc.stdout, proc.stdout
    assert {p.name for p in tmp_path.iterdir()} >= {"edges.csv", "summary.json", "circuit.png"}


@pytest.mark.parametrize("arch", ["transformer", "mamba", "hybrid"])
def test_padding_gives_each_example_its_unpadded_scores(arch):
    """EAP, EAP-IG, edge patching and faithfulness with attention_mask: a padded batch scores each
    example as the unpadded batch does (padding is neither a sender's write nor read by the metric)."""
    model = tiny(arch).double()
    clean, corrupt, metric = tiny_inputs(b=3, p=6)
    b, n = clean.shape
    shifts = [2, 0, 1]  # example i: shifts[i] padding columns on its left, the rest on its right
    width = n + max(shifts)
    padded = [torch.zeros(b, width, dtype=t.dtype) for t in (clean, corrupt, metric.answers, metric.mask)]
    attn = torch.zeros(b, width, dtype=torch.long)
    for i, s in enumerate(shifts):
        for dst, src in zip(padded, (clean, corrupt, metric.answers, metric.mask)):
            dst[i, s : s + n] = src[i]
        attn[i, s : s + n] = 1
    p_clean, p_corrupt, answers, mask = padded
    p_metric = Metric("logit_diff", answers, mask, (answers + 1) % 12)
    pairs = [((clean, corrupt, metric), {}), ((p_clean, p_corrupt, p_metric), {"attention_mask": attn})]
    frames = []
    for (c, x, m), kw in pairs:
        frames.append(
            [
                edge_attribution_patching(model, c, x, m, **kw),
                edge_attribution_patching(model, c, x, m, method="eap-ig", steps=3, **kw),
                edge_patching(model, c, x, m, **kw),
            ]
        )
    for plain, pad in zip(*frames):
        plain, pad = (df.set_index(KEY).sort_index() for df in (plain, pad))
        assert list(pad.index) == list(plain.index)
        assert plain.score.abs().max() > 1e-3  # the edges do something
        torch.testing.assert_close(
            torch.tensor(pad.score.values), torch.tensor(plain.score.values), atol=1e-9, rtol=0
        )
    split = edge_patching(
        model, p_clean, p_corrupt, p_metric, attention_mask=attn, max_batch=8
    )  # by examples
    torch.testing.assert_close(
        torch.tensor(split.set_index(KEY).sort_index().score.values),
        torch.tensor(frames[0][2].set_index(KEY).sort_index().score.values),
        atol=1e-9,
        rtol=0,
    )
    circuit = frames[0][2].head(5)
    plain_f = circuit_faithfulness(model, clean, corrupt, metric, circuit)
    pad_f = circuit_faithfulness(model, p_clean, p_corrupt, p_metric, circuit, attention_mask=attn)
    assert pad_f["faithfulness"] == pytest.approx(plain_f["faithfulness"], abs=1e-9)


def test_edge_patching_splits_examples_to_fit_max_batch(monkeypatch):
    """A forward holds 3 x heads copies of the batch; a max_batch smaller than that splits the examples,
    with the same results (and with a plain callable metric, which cannot be split, it runs whole)."""
    import interp.analysis.patching.edges as edges  # noqa: PLC0415

    model = tiny("transformer").double()
    clean, corrupt, metric = tiny_inputs(b=4)
    rows = []
    original = edges._run_chunk
    monkeypatch.setattr(
        edges, "_run_chunk", lambda m, g, run, *a: rows.append(run.base.shape[0]) or original(m, g, run, *a)
    )
    whole = edge_patching(model, clean, corrupt, metric)
    assert set(rows) == {4}
    rows.clear()
    split = edge_patching(model, clean, corrupt, metric, max_batch=13)  # 6 copies per example: 2 examples
    assert set(rows) == {2}
    torch.testing.assert_close(
        torch.tensor(split.score.values), torch.tensor(whole.score.values), atol=1e-12, rtol=0
    )
    circuit = whole.head(4)
    args = (model, clean, corrupt, metric, circuit)
    assert circuit_faithfulness(*args, max_batch=7)["faithfulness"] == pytest.approx(
        circuit_faithfulness(*args)["faithfulness"], abs=1e-12
    )
    rows.clear()
    plain = edge_patching(model, clean, corrupt, lambda logits: metric(logits), max_batch=13)
    assert set(rows) == {4}
    torch.testing.assert_close(
        torch.tensor(plain.score.values), torch.tensor(whole.score.values), atol=1e-12, rtol=0
    )
