"""Smoke test: every benchmark runs end to end with `--quick` and reports its ratio."""

import pytest

BENCHMARKS = ["task_generation", "transformer_training", "hook_overhead"]


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_quick(name, run_python):
    proc = run_python("-m", f"benchmarks.{name}", "--quick", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "\n|--" in proc.stdout, proc.stdout  # the results table
    ratio_lines = [line for line in proc.stdout.splitlines() if line.startswith("ratio ")]
    assert ratio_lines and "x" in ratio_lines[0], proc.stdout
