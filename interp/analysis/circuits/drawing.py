"""Drawing circuit graphs: Graphviz DOT text, the `dot` program when installed, matplotlib otherwise."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import networkx as nx
from matplotlib.figure import Figure

from interp.analysis.circuits.graph import INPUT_COLORS, CircuitGraph
from interp.io import atomic_write, atomic_write_text


def to_dot(graph: CircuitGraph) -> str:
    """Graphviz DOT text: one rank per layer (bottom to top), edges labelled `q 0.42` etc."""
    lines = [
        "digraph circuit {",
        "  rankdir=BT;",
        '  node [shape=box, style="rounded,filled", fillcolor="#f4f4f4", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    if graph.title:
        lines.append(f'  label="{_escape(graph.title)}"; labelloc=t;')
    by_layer: dict[int, list[str]] = {}
    for name, info in graph.nodes.items():
        by_layer.setdefault(info["layer"], []).append(name)
        label = name if not info["role"] else f"{name}\\n{_escape(info['role'])}"
        fill = ', fillcolor="#dbe9f6"' if name in ("logits", "embed") else ""
        lines.append(f'  "{name}" [label="{label}"{fill}];')
    for layer, names in sorted(by_layer.items()):
        lines.append("  { rank=same; " + " ".join(f'"{n}";' for n in names) + " }" + f"  // layer {layer}")
    w_max = max((abs(e.weight) for e in graph.edges), default=1.0) or 1.0
    for e in graph.edges:
        width = 0.8 + 3.2 * abs(e.weight) / w_max
        color = INPUT_COLORS.get(e.input, "black")
        lines.append(
            f'  "{e.sender}" -> "{e.receiver}" [label="{e.input} {e.weight:.2f}", '
            f'penwidth={width:.2f}, color="{color}", fontcolor="{color}"];'
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def draw_circuit(graph: CircuitGraph) -> Figure:
    """The diagram with matplotlib + networkx: layers bottom to top, edge width and label = effect."""
    g = nx.MultiDiGraph()
    for name, info in graph.nodes.items():
        g.add_node(name, layer=info["layer"])
    by_layer: dict[int, list[str]] = {}
    for name, info in graph.nodes.items():
        by_layer.setdefault(info["layer"], []).append(name)
    pos = {}
    width = max((len(v) for v in by_layer.values()), default=1)
    for layer, names in by_layer.items():
        # a half-layer row (an MLP above its heads) sits off to the right, clear of edges going up
        shift = (width + 1) / 2 if layer != int(layer) else 0.0
        for i, name in enumerate(sorted(names)):
            pos[name] = (i - (len(names) - 1) / 2 + shift, layer)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * width), 1.2 + 1.6 * max(len(by_layer), 1)))
    w_max = max((abs(e.weight) for e in graph.edges), default=1.0) or 1.0
    # parallel edges (q and k into one head) are bent apart so both stay readable
    seen: dict[tuple[str, str], int] = {}
    for e in graph.edges:
        n = seen.get((e.sender, e.receiver), 0)
        seen[(e.sender, e.receiver)] = n + 1
        rad = 0.0 if n == 0 else 0.25 * (1 if n % 2 else -1) * ((n + 1) // 2)
        color = INPUT_COLORS.get(e.input, "black")
        nx.draw_networkx_edges(
            g,
            pos,
            edgelist=[(e.sender, e.receiver)],
            width=0.8 + 3.2 * abs(e.weight) / w_max,
            edge_color=color,
            arrowsize=14,
            connectionstyle=f"arc3,rad={rad}",
            node_size=2200,
            ax=ax,
        )
        (x0, y0), (x1, y1) = pos[e.sender], pos[e.receiver]
        t = 0.3 + 0.25 * n
        ax.text(
            x0 + t * (x1 - x0) + rad * (y1 - y0) * 0.5,
            y0 + t * (y1 - y0) - rad * (x1 - x0) * 0.5,
            f"{e.input} {e.weight:.2f}",
            color=color,
            fontsize=8,
            ha="center",
            va="center",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.5},
        )
    labels = {n: n if not i["role"] else f"{n}\n{i['role']}" for n, i in graph.nodes.items()}
    colors = ["#dbe9f6" if n in ("logits", "embed") else "#f4f4f4" for n in g.nodes]
    nx.draw_networkx_nodes(
        g, pos, node_color=colors, node_size=2200, node_shape="s", edgecolors="#555", ax=ax
    )
    nx.draw_networkx_labels(g, pos, labels=labels, font_size=8, ax=ax)
    ax.set_yticks(sorted(by_layer))
    ax.set_yticklabels([_row_label(layer, names) for layer, names in sorted(by_layer.items())])
    ax.tick_params(left=False, bottom=False, labelbottom=False)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.margins(x=0.25, y=0.2)
    title = graph.title or "circuit"
    ax.set_title(
        f"{title}\n(edges: {graph.measure} >= {graph.threshold:.2g} of the clean-corrupt gap)", fontsize=9
    )
    fig.tight_layout()
    return fig


def _row_label(layer: float, names: list[str]) -> str:
    for special in ("logits", "embed"):
        if special in names:
            return special
    return f"layer {layer}" if layer == int(layer) else f"layer {int(layer)} MLP"  # MLPs sit half a layer up


def render(
    graph: CircuitGraph, stem: str | Path, formats: tuple[str, ...] = ("png", "svg")
) -> dict[str, Path]:
    """Write `stem.dot` and a picture in each format; returns {"dot": path, format: path, ...,
    "renderer": "graphviz" | "matplotlib"}.

    With the Graphviz `dot` program on PATH every format comes from it; without it PNG and SVG come
    from `draw_circuit` (matplotlib). Every file is written atomically.
    """
    stem = Path(stem)
    bad = [f for f in formats if f not in ("png", "svg", "pdf")]
    if bad:
        raise ValueError(f"unknown picture formats {bad}; allowed: png, svg, pdf")
    dot_text = to_dot(graph)
    written: dict = {"dot": stem.with_suffix(".dot")}
    atomic_write_text(written["dot"], dot_text)
    dot = shutil.which("dot")
    fig = None if dot else draw_circuit(graph)
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        if dot:
            atomic_write(path, lambda tmp, fmt=fmt: _run_dot(dot, dot_text, fmt, tmp))
        else:
            atomic_write(path, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, dpi=130))
        written[fmt] = path
    if fig is not None:
        plt.close(fig)
    written["renderer"] = "graphviz" if dot else "matplotlib"
    return written


def _run_dot(dot: str, text: str, fmt: str, out: str) -> None:
    proc = subprocess.run([dot, f"-T{fmt}", "-o", out], input=text, text=True, capture_output=True)
    if proc.returncode:
        raise RuntimeError(f"graphviz `dot -T{fmt}` failed: {proc.stderr.strip()}")
