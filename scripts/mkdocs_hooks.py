"""MkDocs hooks (mkdocs.yml `hooks:`): the parts of the site generated from code and files at build time.

A page asks for generated text with a directive on a line of its own, an HTML comment so that the page
still reads on GitHub:

    <!-- gen: axes_table -->                      the standard-name hook table (interp.hooks.axes_table)
    <!-- gen: axes_table mamba d_model=8 -->      one model's hook table, from its hooks' declarations
    <!-- gen: cli -->                             every `interp` subcommand's --help, from the parser
    <!-- gen: benchmark task_generation -->      docs/benchmarks/task_generation.json (scripts/docs_benchmarks.py)
    <!-- gen: roles -->                           the axis names analyses index (interp.hooks.ROLES)
    <!-- gen: patch_semantics -->                 what a patch changes (interp.hooks.PATCH_SEMANTICS)
    <!-- gen: reports -->                         links to the reports in docs/experiments/ (on a page there)

and a number from an experiment's committed per-seed results (docs/experiments/NAME.csv) inline:

    {{ exp("sample-efficiency", "examples_to_90", max_len=10, model="mamba") }}       -> 28,800 ± 3,200
    {{ ratio("sample-efficiency", "examples_to_90", dict(model="mamba", max_len=20),
             dict(model="transformer rope", max_len=20)) }}                         -> 1.4x

so that no number on a page is typed by hand. The notebooks are rendered as pages (notebooks/NAME.md)
from the .ipynb files, without executing them. Anything that does not resolve fails the build.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
DIRECTIVE = re.compile(r"^<!-- gen: (.+?) -->$", re.M)
INLINE = re.compile(r"\{\{(.+?)\}\}", re.S)


# ---- directives ---------------------------------------------------------------------------------------
def _options(words: list[str]) -> dict:
    out = {}
    for word in words:
        key, _, value = word.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def axes_table_md(arch: str | None = None, **options) -> str:
    from interp.hooks import axes_table
    from interp.models import build_model

    return axes_table() if arch is None else axes_table(build_model(arch, **options))


def roles_md() -> str:
    from interp.hooks import ROLES

    return "\n".join(
        ["| axis | what it indexes |", "|---|---|", *(f"| `{k}` | {v} |" for k, v in ROLES.items())]
    )


def patch_semantics_md() -> str:
    from interp.hooks import PATCH_SEMANTICS

    rows = (f"| `{k}` | {v} |" for k, v in PATCH_SEMANTICS.items())
    return "\n".join(["| patch | what patching position t changes |", "|---|---|", *rows])


def cli_md() -> str:
    """Each subcommand's --help as argparse prints it, at a fixed width so the page does not depend on
    the terminal that built it."""
    import argparse

    from interp.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        parser = build_parser()
        parts = ["### `interp`", "", "```text", parser.format_help().rstrip(), "```"]
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for name, p in sub.choices.items():
            parts += ["", f"### `interp {name}`", "", "```text", p.format_help().rstrip(), "```"]
        return "\n".join(parts)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def benchmark_md(name: str) -> str:
    path = ROOT / "docs" / "benchmarks" / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run `python scripts/docs_benchmarks.py {name}`")
    rec = json.loads(path.read_text())
    # the benchmark's own "## Title" becomes a smaller heading under the page's section
    output = re.sub(r"^## ", "#### ", rec["output"].strip(), flags=re.M)
    # a WARNING line of the header is worth seeing as such
    output = re.sub(r"^WARNING: (.*)$", r"**Warning:** \1", output, flags=re.M)
    # Markdown needs a blank line between a table and the text around it; the printed output has none
    output = re.sub(r"^([^|\n].*)\n(?=\|)", r"\1\n\n", output, flags=re.M)
    output = re.sub(r"^(\|.*)\n(?=[^|\n])", r"\1\n\n", output, flags=re.M)
    meta = (
        f"*Generated from [`docs/benchmarks/{name}.json`](benchmarks/{name}.json): `{rec['command']}`, "
        f"commit {rec['commit']}, {rec['date']}, {rec['wall_seconds']:.0f} s; machine: {rec['machine']}.*"
    )
    return meta + "\n\n" + output


def reports_md() -> str:
    """A list of the experiment reports in docs/experiments/ (links relative to that folder), each with the
    title its report gives itself; a report added later (a new experiment, another scale) is listed too."""
    lines = []
    for path in sorted((ROOT / "docs" / "experiments").glob("*.md")):
        if path.stem in ("index", "copy-circuit"):
            continue
        title = next(
            (ln[2:].strip() for ln in path.read_text().splitlines() if ln.startswith("# ")), path.stem
        )
        lines.append(f"- [{title}]({path.name})")
    return "\n".join(lines)


GENERATORS = {
    "reports": reports_md,
    "axes_table": axes_table_md,
    "roles": roles_md,
    "patch_semantics": patch_semantics_md,
    "cli": cli_md,
    "benchmark": benchmark_md,
}


def expand_directive(text: str) -> str:
    words = shlex.split(text)
    if not words or words[0] not in GENERATORS:
        raise ValueError(f"unknown docs directive {text!r}; allowed: {', '.join(GENERATORS)}")
    positional = [w for w in words[1:] if "=" not in w]
    return GENERATORS[words[0]](*positional, **_options([w for w in words[1:] if "=" in w]))


# ---- numbers from the experiments' committed results -------------------------------------------------
_TABLES: dict[str, object] = {}


def _rows(name: str, column: str, where: dict):
    import pandas as pd

    if name not in _TABLES:  # an experiment's name, or a CSV of the same layout under docs/
        path = ROOT / "docs" / (name if name.endswith(".csv") else f"experiments/{name}.csv")
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist (written by `interp reproduce {name}`)")
        _TABLES[name] = pd.read_csv(path)
    table = _TABLES[name]
    for key in [column, *where]:
        if key not in table.columns:
            raise ValueError(f"{name}.csv has no column {key!r}; it has {list(table.columns)}")
    mask = pd.Series(True, index=table.index)
    for key, value in where.items():
        mask &= table[key] == value
    rows = table.loc[mask, column]
    if rows.empty:
        raise ValueError(f"{name}.csv has no rows where {where}")
    if "seed" in table.columns and table.loc[mask, "seed"].duplicated().any():
        raise ValueError(f"{name}.csv: {where} matches several rows per seed; name more columns")
    return rows


def _fmt(x: float, column: str, digits: int | None) -> str:
    if column.endswith("_acc"):
        return f"{100 * x:.{1 if digits is None else digits}f}"
    if digits is not None:
        return f"{x:,.{digits}f}"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def exp(name: str, column: str, stat: str = "mean ± sd", digits: int | None = None, **where) -> str:
    """Mean ± sd over seeds of `column` in the rows matching `where` (accuracies in %, as the reports);
    stat="mean" or "sum" for one number; digits: decimals (default as the reports)."""
    rows = _rows(name, column, where)
    mean, sd = rows.mean(), rows.std()
    if math.isnan(mean):
        return "never"
    if stat in ("mean", "sum"):
        return _fmt(mean if stat == "mean" else rows.sum(), column, digits)
    if stat != "mean ± sd":
        raise ValueError(f"stat must be 'mean ± sd', 'mean' or 'sum', got {stat!r}")
    if len(rows) < 2:
        return _fmt(mean, column, digits)
    return f"{_fmt(mean, column, digits)} ± {_fmt(sd, column, digits)}"


def ratio(name: str, column: str, a: dict, b: dict, digits: int = 1) -> str:
    """mean(a) / mean(b), e.g. how many times the examples one model needed compared with another."""
    return f"{_rows(name, column, a).mean() / _rows(name, column, b).mean():.{digits}f}x"


INLINE_FUNCTIONS = {"exp": exp, "ratio": ratio}


def expand_inline(text: str) -> str:
    """`exp(...)` / `ratio(...)` with literal arguments only (parsed, never evaluated as code)."""
    try:
        call = ast.parse(" ".join(text.split()), mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"docs placeholder {{{{{text}}}}} is not a call: {e}") from None
    if not (
        isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in INLINE_FUNCTIONS
    ):
        raise ValueError(f"docs placeholder {{{{{text}}}}}: allowed are {', '.join(INLINE_FUNCTIONS)}(...)")

    def value(node):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
            return {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        return ast.literal_eval(node)

    args = [value(a) for a in call.args]
    kwargs = {k.arg: value(k.value) for k in call.keywords}
    return INLINE_FUNCTIONS[call.func.id](*args, **kwargs)


# ---- pages --------------------------------------------------------------------------------------------
def render(markdown: str) -> str:
    """A page with its directives and inline numbers filled in (code blocks and `code` are left alone)."""
    markdown = DIRECTIVE.sub(lambda m: expand_directive(m.group(1)), markdown)
    parts = re.split(r"(^```.*?^```|`[^`\n]+`)", markdown, flags=re.M | re.S)
    return "".join(
        p if p.startswith("`") else INLINE.sub(lambda m: expand_inline(m.group(1)), p) for p in parts
    )


def notebook_md(path: Path) -> str:
    """A notebook as a page: its Markdown cells, its code cells, and whatever outputs are stored in it
    (the committed notebooks hold none; `pytest tests/test_notebooks.py` executes them)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    parts = [
        f'!!! note "Notebook `notebooks/{path.name}`"\n    Rendered from the notebook without running it. '
        "Run it with `jupyter lab notebooks/` (`pip install -e '.[notebooks]'`); "
        "`INTERP_NOTEBOOK_QUICK=1` selects the small settings the tests use.\n"
    ]
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append(cell.source)
        elif cell.cell_type == "code" and cell.source.strip():
            parts.append(f"```python\n{cell.source}\n```")
            for out in cell.get("outputs", []):
                text = out.get("text") or out.get("data", {}).get("text/plain")
                if "image/png" in out.get("data", {}):
                    parts.append(f"![output](data:image/png;base64,{out['data']['image/png'].strip()})")
                elif text:
                    parts.append("```text\n" + "".join(text).rstrip() + "\n```")
    return "\n\n".join(parts) + "\n"


def on_config(config):
    """Every report in docs/experiments/ is in the navigation, also those added after mkdocs.yml was
    written (a new experiment, a `--scale gpu` report)."""
    section = next((s for s in config["nav"] if isinstance(s, dict) and "Experiments" in s), None)
    if section is None:
        return config
    entries = section["Experiments"]
    listed = {v if isinstance(v, str) else next(iter(v.values())) for v in entries}
    new = [
        {path.stem.replace("-", " ").capitalize(): f"experiments/{path.name}"}
        for path in sorted((ROOT / "docs" / "experiments").glob("*.md"))
        if f"experiments/{path.name}" not in listed
    ]
    notes = next(
        (i for i, v in enumerate(entries) if isinstance(v, dict) and "notes/" in next(iter(v.values()))),
        len(entries),
    )
    entries[notes:notes] = new
    return config


def on_files(files, config):
    from mkdocs.structure.files import File

    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        files.append(File.generated(config, f"notebooks/{path.stem}.md", content=notebook_md(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    return render(markdown)
