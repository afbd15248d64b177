"""The documentation cannot rot: its examples run, its generated parts resolve, the help agrees with the code.

- Every ```python block of README.md, docs/getting-started.md and the concept pages runs, in order, one
  namespace per page (so a page reads as one session). A block that cannot run here (network, GPU, API key)
  carries `<!-- docs-test: skip, needs network: why -->` on the line before its fence; such markers must be
  few and say why.
- Every page's generated parts (`<!-- gen: ... -->`, `{{ exp(...) }}`) resolve; the numbers quoted from an
  experiment equal the cells of its generated report.
- Every default the CLI's help states equals the default of the config dataclass or function behind it.
- `interp docs` names the extra to install when mkdocs is missing. (The strict site build runs in .ci/run.)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import re
import sys
from pathlib import Path

import pytest
import torch

from interp.cli import MODEL_FLAGS, TASK_FLAGS, TRAINABLE, build_parser, docs_command, main
from interp.models import model_class
from interp.tasks import TaskConfig
from interp.training import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
EXECUTED = [
    ROOT / "README.md",
    ROOT / "docs" / "getting-started.md",
    *sorted((ROOT / "docs" / "concepts").glob("*.md")),
]
SKIP = re.compile(r"<!-- docs-test: skip, (needs (?:network|a GPU|an API key)): (.+?) -->")
MAX_SKIPS = 3  # in all executed pages together


def _load_hooks():
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "scripts" / "mkdocs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load_hooks()


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(line, code, skip reason or None) of each ```python block."""
    blocks = []
    for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.M | re.S):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.fullmatch(before.strip())
        blocks.append((line, m.group(1), f"{skip.group(1)}: {skip.group(2)}" if skip else None))
    return blocks


# ---- the examples run -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("page", EXECUTED, ids=[str(p.relative_to(ROOT)) for p in EXECUTED])
def test_every_python_block_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    torch.manual_seed(0)
    namespace: dict = {"__name__": f"docs:{page.name}"}
    blocks = python_blocks(page.read_text())
    assert blocks, f"{page.name} has no python example"
    for line, code, skip in blocks:
        if skip is None:
            exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)


def test_skip_markers_are_few_and_say_why():
    skips, markers = [], 0
    for page in EXECUTED:
        text = page.read_text()
        markers += text.count("docs-test:")
        skips += [(page.name, line, why) for line, _, why in python_blocks(text) if why]
    assert markers == len(skips), "a docs-test marker that is not on the line before a ```python fence"
    assert len(skips) <= MAX_SKIPS, f"too many examples skipped: {skips}"
    assert all(len(why.split(": ", 1)[1]) >= 10 for _, _, why in skips), skips


def test_skip_marker_parsing():
    text = "a\n<!-- docs-test: skip, needs a GPU: mamba-ssm's CUDA kernels -->\n```python\nx = 1\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n", "needs a GPU: mamba-ssm's CUDA kernels")]
    assert python_blocks("<!-- docs-test: skip, because -->\n```python\nx\n```\n")[0][2] is None


def test_readme_is_the_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert "bash setup.sh && .venv/bin/interp demo" in text and ".venv/bin/python -m pytest" in text
    assert len(re.findall(r"!\[[^\]]*\]\(", text)) == 1  # one figure
    for target in re.findall(r"\]\(((?:docs/)[^)#]+)", text):  # every local link resolves
        assert (ROOT / target).exists(), target


# ---- the generated parts resolve -------------------------------------------------------------------
PAGES = sorted((ROOT / "docs").rglob("*.md"))


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT / "docs")) for p in PAGES])
def test_generated_parts_resolve(page):
    out = re.sub(r"`[^`\n]+`", "", hooks.render(page.read_text()))  # `code` may show the syntax
    assert "<!-- gen:" not in out and not hooks.INLINE.search(out)


def test_generated_hook_tables_come_from_the_models():
    from interp.hooks import axes_table
    from interp.models import build_model

    out = hooks.render("<!-- gen: axes_table mamba d_model=8 -->\n")
    assert out.strip() == axes_table(build_model("mamba", d_model=8))
    assert "| `blocks.{l}.mixer.hook_ssm_state` | [batch, channel, pos, state] | recurrence, state |" in out
    assert hooks.render("<!-- gen: axes_table -->") == axes_table()


def test_quoted_experiment_numbers_equal_the_reports():
    report = (ROOT / "docs" / "experiments" / "sample-efficiency.md").read_text()
    for model in ("mamba", "transformer rope", "lstm"):
        cell = hooks.exp("sample-efficiency", "final_string_acc", max_len=10, model=model)
        assert f"| 10 | {model} |" in report and f"{cell} (n=3)" in report, (model, cell)
    assert hooks.exp("sample-efficiency", "examples_to_90", max_len=10, model="mamba") + " (n=3)" in report
    assert (
        hooks.render(
            '{{ ratio("sample-efficiency", "examples_budget", dict(max_len=10, model="mamba"), '
            'dict(max_len=10, model="lstm")) }}'
        )
        == "1.0x"
    )


def test_generation_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="unknown docs directive 'tabel'; allowed: .*axes_table"):
        hooks.render("<!-- gen: tabel -->")
    with pytest.raises(ValueError, match="no rows where"):
        hooks.exp("sample-efficiency", "examples_to_90", model="gpt-5")
    with pytest.raises(ValueError, match="several rows per seed"):
        hooks.exp("sample-efficiency", "examples_to_90", model="mamba")  # max_len 10 and 20
    with pytest.raises(ValueError, match="allowed are exp, ratio"):
        hooks.render("{{ __import__('os').system('true') }}")
    with pytest.raises(FileNotFoundError, match="docs_benchmarks.py nope"):
        hooks.render("<!-- gen: benchmark nope -->")


def test_benchmark_pages_come_from_the_json_files():
    import json

    for path in sorted((ROOT / "docs" / "benchmarks").glob("*.json")):
        record = json.loads(path.read_text())
        assert {"command", "commit", "machine", "date", "output"} <= set(record), path
        out = hooks.render(f"<!-- gen: benchmark {path.stem} -->")
        assert record["commit"] in out and record["machine"] in out
        first_row = next(line for line in record["output"].splitlines() if line.startswith("| "))
        assert first_row in out
    assert "<!-- gen: benchmark task_generation -->" in (ROOT / "docs" / "benchmarks.md").read_text()


def test_every_benchmark_has_a_generated_table_and_none_is_typed():
    """Each benchmark module has its JSON record and its marker on the benchmarks page (a new benchmark
    without a table fails), and the page has no table of its own: every measured table is generated."""
    import re

    page = (ROOT / "docs" / "benchmarks.md").read_text()
    shown = set(re.findall(r"<!-- gen: benchmark (\w+) -->", page))
    modules = {p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem not in ("__init__", "common")}
    records = {p.stem for p in (ROOT / "docs" / "benchmarks").glob("*.json")}
    assert modules <= shown, f"benchmarks without a table on the page: {sorted(modules - shown)}"
    assert shown == records, (
        f"markers {sorted(shown - records)} lack a record; {sorted(records - shown)} unshown"
    )
    assert not [line for line in page.splitlines() if line.lstrip().startswith("|")], "a typed table"


# ---- the help agrees with the code ------------------------------------------------------------------
def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def stated(action: argparse.Action) -> str | None:
    """What the help's '(... default X)' says (as argparse prints it), or None."""
    text = (action.help or "") % {**vars(action), "prog": "interp"}
    m = re.search(r"\(([^()]*; )?default:? ([^()]+)\)", text)
    return m.group(2).split(": ")[0].strip() if m else None  # "local: a process per run" says "local"


def show(value) -> str:
    if value is None:
        return "none"
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def test_train_help_states_the_config_defaults():
    actions = {a.dest: a for a in subparsers()["train"]._actions}
    configs = {arch: model_class(arch).config_class() for arch in TRAINABLE}
    labels = {
        "transformer": "transformer",
        "lstm": "LSTM",
        "mamba": "Mamba",
        "mamba2": "Mamba-2",
        "hybrid": "hybrid",
    }
    checked = 0
    for flag in MODEL_FLAGS:
        said = stated(actions[flag])
        if said is None or "//" in said:  # hard_alibi_heads: "n_heads // 2", derived in __post_init__
            continue
        having = {
            arch: cfg for arch, cfg in configs.items() if any(f.name == flag for f in dataclasses.fields(cfg))
        }
        if "," in said and " " in said:  # per architecture: "transformer 128, LSTM 256, ..."
            pairs = dict(part.rsplit(" ", 1) for part in said.split(", "))
            assert pairs == {labels[a]: show(getattr(cfg, flag)) for a, cfg in having.items()}, flag
        else:  # one value for every architecture that has the field
            assert {show(getattr(cfg, flag)) for cfg in having.values()} == {said}, flag
        checked += 1
    assert checked >= 7
    assert "Mamba 256" in stated(actions["d_model"])  # the example: it once said 128
    train, task = TrainConfig(), TaskConfig()
    for dest in [
        "steps",
        "batch_size",
        "lr",
        "warmup_steps",
        "eval_every",
        "checkpoint_every",
        "seed",
        "device",
    ]:
        assert stated(actions[dest]) == str(getattr(train, dest)), dest
    for dest in TASK_FLAGS:
        assert stated(actions[dest]) == show(getattr(task, dest)), dest


def test_every_stated_default_equals_the_parsers_default():
    for name, parser in subparsers().items():
        for action in parser._actions:
            said = stated(action)
            if said is None or action.default in (None, argparse.SUPPRESS):
                continue
            assert said == show(action.default), f"interp {name} {action.option_strings}: {said!r}"


def test_eval_and_demo_defaults_are_the_functions_defaults():
    from interp.analysis.evaluation import evaluate
    from interp.demo import DEMO_MODELS

    sig = inspect.signature(evaluate).parameters
    ev = {a.dest: a.default for a in subparsers()["eval"]._actions}
    assert (ev["examples"], ev["batch_size"], ev["seed"]) == tuple(
        sig[k].default for k in ("n_examples", "batch_size", "seed")
    )
    assert ev["mode"] == sig["modes"].default[0]
    demo = {a.dest: a for a in subparsers()["demo"]._actions}
    assert stated(demo["steps"]).startswith(str(DEMO_MODELS["mamba"][1].steps))


def test_docs_pages_quote_the_train_defaults():
    """Prose such as "(`--checkpoint-every`, default 500)" on any page must match the parser's help."""
    actions = {opt: a for a in subparsers()["train"]._actions for opt in a.option_strings}
    found = 0
    for page in [
        ROOT / "README.md",
        ROOT / "docs" / "guide" / "training.md",
        ROOT / "docs" / "guide" / "run-folders.md",
    ]:
        for flag, value in re.findall(r"`(--[a-z-]+)`, default (\w+)", page.read_text()):
            if flag in actions:
                assert stated(actions[flag]) == value, (page.name, flag, value)
                found += 1
    assert found >= 1


# ---- interp docs ------------------------------------------------------------------------------------
def test_interp_docs_without_mkdocs_names_the_extra(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mkdocs" else real(name, *a)
    )
    assert main(["docs"]) == 2
    err = capsys.readouterr().err
    assert "mkdocs" in err and "pip install -e '.[docs]'" in err


def test_interp_docs_runs_a_strict_build_of_this_checkout():
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed here (the docs extra)")
    build = docs_command(out="/tmp/site")
    assert build[:4] == [sys.executable, "-m", "mkdocs", "build"] and "--strict" in build
    assert Path(build[build.index("-f") + 1]) == ROOT / "mkdocs.yml"
    assert build[-2:] == ["--site-dir", "/tmp/site"]
    serve = docs_command(serve=True, addr="127.0.0.1:9000")
    assert serve[3] == "serve" and serve[-2:] == ["--dev-addr", "127.0.0.1:9000"]
