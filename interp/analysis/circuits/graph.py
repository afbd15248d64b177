"""Circuit graphs: components as nodes, patching effects as weighted edges (no drawing here)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

# shared by renderers; "in" is an MLP's or a mixer's input (edge attribution)
INPUT_COLORS = {"q": "#1f77b4", "k": "#ff7f0e", "v": "#2ca02c", "direct": "#7f7f7f", "in": "#9467bd"}


@dataclass(frozen=True)
class Edge:
    sender: str  # node name, e.g. "L0H1"
    receiver: str  # node name, or "logits"
    input: str  # q | k | v | direct
    weight: float  # patching effect, fraction of the clean-corrupt gap


@dataclass
class CircuitGraph:
    """Nodes (name -> layer, label) and weighted edges. Logits sit one layer above the last one."""

    nodes: dict[str, dict] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    threshold: float = 0.0
    title: str = ""
    measure: str = "path-patching effect"  # what the edge weights are, for the diagram's caption

    def edge_set(self) -> set[tuple[str, str, str]]:
        """{(sender, receiver, input)}: what tests compare against a known circuit."""
        return {(e.sender, e.receiver, e.input) for e in self.edges}

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([vars(e) for e in self.edges], columns=["sender", "receiver", "input", "weight"])


def circuit_from_path_patching(
    paths: pd.DataFrame,
    threshold: float = 0.05,
    roles: dict[str, str] | None = None,
    title: str = "",
) -> CircuitGraph:
    """Edges with |effect| >= threshold from a `path_patching` DataFrame; nodes are their endpoints.

    roles: optional node name -> role text shown under the name (e.g. {"L0H1": "offset 1"}).
    """
    need = {"sender", "sender_layer", "receiver", "receiver_layer", "input", "effect"}
    missing = need - set(paths.columns)
    if missing:
        raise ValueError(f"path-patching results lack columns {sorted(missing)}; got {list(paths.columns)}")
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    roles = roles or {}
    kept = paths[paths["effect"].abs() >= threshold].sort_values("effect", ascending=False)
    top_layer = int(paths["sender_layer"].max()) + 1
    graph = CircuitGraph(threshold=threshold, title=title)
    for row in kept.itertuples():
        graph.edges.append(Edge(row.sender, row.receiver, row.input, float(row.effect)))
        for name, layer in ((row.sender, row.sender_layer), (row.receiver, row.receiver_layer)):
            layer = top_layer if name == "logits" or pd.isna(layer) else int(layer)
            graph.nodes[name] = {"layer": layer, "role": roles.get(name, "")}
    return graph


def circuit_from_edges(
    edges: pd.DataFrame,
    k: int | None = None,
    threshold: float | None = None,
    absolute: bool = True,
    roles: dict[str, str] | None = None,
    title: str = "",
) -> CircuitGraph:
    """The top-`k` edges (or those with effect >= `threshold`) of an edge-attribution or edge-patching
    DataFrame (`interp.analysis.patching.edge_attribution_patching`, `edge_patching`) as a circuit.

    absolute: rank by |effect| (an edge that hurts the behaviour is part of the mechanism too).
    Nodes are the kept edges' endpoints: the embedding one layer below layer 0, the logits one above
    the last, an MLP half a layer above its layer's heads. The graph's `threshold` is the smallest kept weight (what the caption reports).
    """
    need = {"sender", "sender_layer", "receiver", "receiver_layer", "input", "effect"}
    missing = need - set(edges.columns)
    if missing:
        raise ValueError(f"edge results lack columns {sorted(missing)}; got {list(edges.columns)}")
    if (k is None) == (threshold is None):
        raise ValueError(
            f"give exactly one of k (top-k edges) and threshold; got k={k}, threshold={threshold}"
        )
    if k is not None and (not isinstance(k, int) or k < 1):
        raise ValueError(f"k={k!r} must be an integer >= 1")
    if threshold is not None and threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    weight = edges["effect"].abs() if absolute else edges["effect"]
    order = weight.sort_values(ascending=False, kind="stable").index
    kept = edges.loc[order[:k]] if k is not None else edges.loc[order[weight[order] >= threshold]]
    shown = weight[kept.index]
    method = edges.attrs.get("method")
    graph = CircuitGraph(
        threshold=float(shown.min()) if len(kept) else 0.0,
        title=title,
        measure=f"{method.upper()} score" if method else "edge-patching effect",
    )
    roles = roles or {}
    for row in kept.itertuples():
        graph.edges.append(Edge(row.sender, row.receiver, row.input, float(row.effect)))
        for name, layer in ((row.sender, row.sender_layer), (row.receiver, row.receiver_layer)):
            # an MLP reads after its layer's heads: half a layer up, so edges into it do not run sideways
            layer = int(layer) + (0.5 if name.endswith(".mlp") else 0)
            graph.nodes[name] = {"layer": layer, "role": roles.get(name, "")}
    return graph
