"""Smoke test: the patching benchmark runs end to end with `--quick` and reports its ratios."""

from __future__ import annotations

import json
import re

import pytest


@pytest.mark.slow
def test_patching_benchmark_quick(run_python):
    proc = run_python("-m", "benchmarks.patching", "--quick", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "\n|--" in proc.stdout, proc.stdout  # the results table
    ratio_lines = [line for line in proc.stdout.splitlines() if line.startswith("ratio ")]
    assert ratio_lines and "x" in ratio_lines[0], proc.stdout
    assert "Pearson r = " in proc.stdout
    assert "| mamba-L2 " in proc.stdout and "| hash-copy " in proc.stdout  # both families ran
    for method in ("batched", "reuse"):  # each equals the loop (the benchmark also asserts it)
        worst = re.search(rf"{method} == loop: max \|metric difference\| ([0-9.e+-]+)", proc.stdout)
        assert worst and float(worst.group(1)) < 1e-4, proc.stdout


@pytest.mark.slow
def test_find_copy_circuit_probe_on_the_construction(tmp_path, run_python):
    """The probe script end to end on the hash-copy model: files, and the planted circuit."""
    out = tmp_path / "circuit"
    proc = run_python(
        "probes/find_copy_circuit.py", "hash-copy", "--quick", "--out", str(out), "--threads", "1"
    )
    assert proc.returncode == 0, proc.stderr
    names = {p.name for p in out.iterdir()}
    for name in (
        "circuit.dot",
        "circuit.png",
        "paths.csv",
        "patching_heads.csv",
        "heatmap_heads.png",
        "config.json",
    ):
        assert name in names, names
    assert not any(n.endswith(".tmp") for n in names)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["top_head"] == {
        "head": "L1H4",
        "effect": pytest.approx(1.0, abs=1e-3),
        "lookup_score": pytest.approx(1.0, abs=1e-3),
    }
    edges = {(e["sender"], e["receiver"], e["input"]) for e in summary["circuit_edges"]}
    assert ("L1H4", "logits", "direct") in edges and all(r in ("L1H4", "logits") for _, r, _ in edges)
    help_text = run_python("probes/find_copy_circuit.py", "--help")
    assert help_text.returncode == 0 and "hash-copy" in help_text.stdout


def test_same_prefix_makes_a_minimal_pair_of_copy_strings():
    """--same-prefix F: the corrupted string and its copy start with the clean string's first F of letters,
    and the rest is the corrupted example's own (still a valid copy example)."""
    from benchmarks.patching import TASK, Case, sharing_prefix  # noqa: PLC0415
    from interp.tasks.pairs import paired_batches  # noqa: PLC0415

    length = 10
    clean, corrupt = paired_batches(TASK, 4, length)
    out = sharing_prefix(clean.tokens, corrupt.tokens, Case("hash-copy", 4, length, 0.3))
    first, copy = slice(1, 1 + length), slice(length + 2, 2 * length + 2)
    assert (out[:, first] == out[:, copy]).all()  # the copy is still the string
    assert (out[:, 1:4] == clean.tokens[:, 1:4]).all()  # 3 of 10 letters shared
    assert (out[:, 4 : 1 + length] == corrupt.tokens[:, 4 : 1 + length]).all()
    assert (out[:, [0, length + 1, -1]] == clean.tokens[:, [0, length + 1, -1]]).all()  # BOS, SEP, EOS
    assert (out[:, 4] != clean.tokens[:, 4]).any()
