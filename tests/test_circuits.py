import matplotlib
import pytest
import torch

from interp.analysis.circuits import CircuitGraph, Edge, circuit_from_path_patching, drawing, render, to_dot
from interp.analysis.heads import attention_patterns, head_scores
from interp.analysis.patching import make_metric, paired_batches, patch_grid, path_patching
from interp.analysis.plotting import plot_attention_pattern, plot_head_scores, plot_patching_heatmap
from interp.models import build_model
from interp.models.hash_copy import build_hash_copy, planted_heads
from interp.tasks import TaskConfig

matplotlib.use("Agg")
N = 3
TASK = TaskConfig(task="copy", n_letters=8, max_len=40, unique_ngrams=True, ngram=N)


@pytest.fixture(scope="module")
def paths():
    model = build_hash_copy(8, N, n_ctx=128)
    clean, corrupt = paired_batches(TASK, 6, 16)
    metric = make_metric("logit_diff", clean, corrupt)
    return model, clean, corrupt, metric, path_patching(model, clean.tokens, corrupt.tokens, metric)


def expected_edges(n: int) -> set[tuple[str, str, str]]:
    """The construction's wiring: the lookup query reads offsets 0..n-1 (heads 0..n-1 via S_o - S_{o-1}),
    its key reads offsets 1..n of the previous position (heads 0..n), and only the lookup head writes
    the logits."""
    (layer, head) = planted_heads(n)["lookup"][0]
    lookup = f"L{layer}H{head}"
    edges = {(f"L0H{h}", lookup, "q") for h in range(n)}
    edges |= {(f"L0H{h}", lookup, "k") for h in range(n + 1)}
    return edges | {(lookup, "logits", "direct")}


def test_circuit_has_exactly_the_planted_edges(paths):
    *_, df = paths
    assert {"sender", "receiver", "input", "effect"} <= set(df.columns)
    graph = circuit_from_path_patching(df, threshold=0.03)
    assert graph.edge_set() == expected_edges(N)
    # a clear margin: every planted edge well above every other one
    planted = df.apply(lambda r: (r.sender, r.receiver, r.input) in expected_edges(N), axis=1)
    assert df[planted].effect.min() > 0.03 > 0.01 > df[~planted].effect.abs().max()
    assert graph.nodes["logits"]["layer"] == 2 and graph.nodes["L0H0"]["layer"] == 0


def test_dot_and_pictures_are_written(paths, tmp_path, monkeypatch):
    *_, df = paths
    graph = circuit_from_path_patching(df, threshold=0.03, roles={"L1H4": "lookup"}, title='hash "copy"')
    dot = to_dot(graph)
    assert dot.startswith("digraph circuit {") and dot.rstrip().endswith("}")
    assert '"L0H0" -> "L1H4" [label="q ' in dot and 'label="L1H4\\nlookup"' in dot
    assert 'label="hash \\"copy\\""' in dot  # quotes escaped
    monkeypatch.setattr(drawing.shutil, "which", lambda name: None)  # no graphviz: matplotlib draws it
    written = render(graph, tmp_path / "circuit")
    assert written["renderer"] == "matplotlib"
    assert (tmp_path / "circuit.dot").read_text() == dot
    assert (tmp_path / "circuit.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (tmp_path / "circuit.svg").read_bytes()[:500]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["circuit.dot", "circuit.png", "circuit.svg"]


def test_render_uses_graphviz_when_installed(tmp_path):
    if drawing.shutil.which("dot") is None:
        pytest.skip("the graphviz `dot` program is not installed")
    graph = CircuitGraph(nodes={"a": {"layer": 0, "role": ""}, "b": {"layer": 1, "role": ""}})
    graph.edges.append(Edge("a", "b", "q", 0.5))
    assert render(graph, tmp_path / "g")["renderer"] == "graphviz"
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_circuit_inputs(paths):
    *_, df = paths
    with pytest.raises(ValueError, match="lack columns"):
        circuit_from_path_patching(df.drop(columns=["input"]))
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        circuit_from_path_patching(df, threshold=-1)
    with pytest.raises(ValueError, match="unknown picture formats"):
        render(CircuitGraph(), "x", formats=("gif",))
    with pytest.raises(ValueError, match="a mamba has none"):
        mamba = build_model("mamba", d_vocab=12, d_model=16, n_layers=1)
        path_patching(mamba, torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long), None)


def test_plots_label_their_axes(paths):
    model, clean, corrupt, metric, _ = paths
    grid = patch_grid(model, clean.tokens, corrupt.tokens, metric, "z", heads=True, positions=True)
    fig = plot_patching_heatmap(grid[grid.layer == 1], index="head", columns="pos")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "position (token index)" and ax.get_ylabel() == "head"
    assert "fraction" in fig.axes[1].get_ylabel()  # colour bar
    pattern = attention_patterns(model, clean.tokens[:1])[1, 0, 4]
    fig = plot_attention_pattern(pattern, labels=list(clean.text(0)))
    assert fig.axes[0].get_xlabel().startswith("key position")
    fig = plot_head_scores(head_scores(model, clean, windows=(N + 1,)))
    assert [a.get_title() for a in fig.axes[:4]] == ["offset_1", f"window_{N + 1}", "lookup", "lookup_next"]
    with pytest.raises(ValueError, match="no column 'nope'"):
        plot_patching_heatmap(grid, value="nope")
    matplotlib.pyplot.close("all")
