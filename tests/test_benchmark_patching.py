"""Smoke test: the patching benchmark runs end to end with `--quick` and reports its ratios."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_patching_benchmark_quick():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.patching", "--quick", "--threads", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert "\n|--" in proc.stdout, proc.stdout  # the results table
    ratio_lines = [line for line in proc.stdout.splitlines() if line.startswith("ratio ")]
    assert ratio_lines and "x" in ratio_lines[0], proc.stdout
    assert "Pearson r = " in proc.stdout and "max |metric difference| 0.00e+00" in proc.stdout


@pytest.mark.slow
def test_find_copy_circuit_probe_on_the_construction(tmp_path):
    """The probe script end to end on the hash-copy model: files, and the planted circuit."""
    import json

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "circuit"
    proc = subprocess.run(
        [
            sys.executable,
            "probes/find_copy_circuit.py",
            "hash-copy",
            "--quick",
            "--out",
            str(out),
            "--threads",
            "1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
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
    help_text = subprocess.run(
        [sys.executable, "probes/find_copy_circuit.py", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert help_text.returncode == 0 and "hash-copy" in help_text.stdout
