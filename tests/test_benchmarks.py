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


@pytest.mark.slow
def test_pretrained_cost_tiny(run_python):
    """benchmarks.pretrained_cost on the tiny presets: per-size timings, memory columns and the ratio line."""
    proc = run_python("-m", "benchmarks.pretrained_cost", "--quick", "--threads", "1", timeout=180)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for column in (
        "interp s/prompt",
        "HF s/prompt",
        "speed-up",
        "interp peak MiB",
        "HF peak MiB",
        "sweep h HF",
    ):
        assert column in out, out
    assert "| tiny-pythia " in out and "| tiny-mamba " in out, out
    ratio = [line for line in out.splitlines() if line.startswith("ratio HF / interp")]
    assert ratio and "tiny-pythia:" in ratio[0] and ratio[0].rstrip().endswith("x"), out
    memory = [line for line in out.splitlines() if line.startswith("memory HF / interp peak")]
    assert memory and "tiny-mamba:" in memory[0], out
