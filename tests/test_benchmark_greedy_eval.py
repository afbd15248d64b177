"""Smoke test: the greedy-evaluation benchmark runs end to end with `--quick`, predictions identical."""

import pytest


@pytest.mark.slow
def test_greedy_eval_benchmark_quick(run_python):
    proc = run_python("-m", "benchmarks.greedy_eval", "--quick", "--threads", "1", "--no-memory", timeout=180)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "\n|--" in out, out  # the results table
    assert out.count("yes, every position") == 2 * 3 * 2, out  # 3 models x 2 lengths, progress + table
    ratios = [line for line in out.splitlines() if line.startswith("ratio reference / cached")]
    assert len(ratios) == 2 and all(line.rstrip().endswith("x") for line in ratios), out
