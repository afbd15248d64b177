"""Circuit graphs: components as nodes, path-patching effects as weighted edges (no drawing here)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

INPUT_COLORS = {"q": "#1f77b4", "k": "#ff7f0e", "v": "#2ca02c", "direct": "#7f7f7f"}  # shared by renderers


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
