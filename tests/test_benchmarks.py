"""Smoke test: every benchmark runs end to end with `--quick` and reports its ratio."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ["task_generation", "transformer_training", "hook_overhead"]


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_quick(name):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "\n|--" in proc.stdout, proc.stdout  # the results table
    ratio_lines = [line for line in proc.stdout.splitlines() if line.startswith("ratio ")]
    assert ratio_lines and "x" in ratio_lines[0], proc.stdout
