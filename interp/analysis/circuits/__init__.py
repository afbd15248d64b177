"""Circuit diagrams: components as nodes, path-patching or edge-attribution effects as weighted edges.

`circuit_from_path_patching(df, threshold)` keeps every sender -> receiver edge of
`interp.analysis.patching.path_patching` whose |effect| (fraction of the clean-corrupt gap) reaches
`threshold`; edges into the same receiver through q, k and v stay separate so the diagram says *how*
a head reads its input. `to_dot` writes Graphviz DOT text (always available); `render` draws it with
the `dot` program when installed and otherwise with matplotlib + networkx (layered by layer), so a
script always gets a picture.

    >>> paths = path_patching(model, clean.tokens, corrupt.tokens, metric)
    >>> graph = circuit_from_path_patching(paths, threshold=0.05, roles={"L1H4": "lookup"})
    >>> render(graph, "out/circuit")          # out/circuit.dot, out/circuit.png (+ .svg with dot)

`circuit_from_edges(df, k=20)` does the same for edge attribution (`edge_attribution_patching`, EAP /
EAP-IG) or edge patching: the top-k edges between heads, MLPs, mixers, the embedding and the logits.
"""

from interp.analysis.circuits.drawing import draw_circuit, render, to_dot
from interp.analysis.circuits.graph import (
    INPUT_COLORS,
    CircuitGraph,
    Edge,
    circuit_from_edges,
    circuit_from_path_patching,
)

__all__ = [
    "INPUT_COLORS",
    "CircuitGraph",
    "Edge",
    "circuit_from_edges",
    "circuit_from_path_patching",
    "draw_circuit",
    "render",
    "to_dot",
]
