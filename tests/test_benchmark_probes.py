"""Smoke test: the probe benchmark runs end to end with `--quick` and reports its ratios."""

import pytest


@pytest.mark.slow
def test_probe_benchmark_quick(run_python):
    proc = run_python("-m", "benchmarks.probes", "--quick", "--threads", "1", timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "\n|--" in proc.stdout, proc.stdout  # the results tables
    ratios = [line for line in proc.stdout.splitlines() if line.startswith("ratio ")]
    assert len(ratios) == 2 and all("x" in line for line in ratios), proc.stdout
