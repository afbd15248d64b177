"""Shared benchmark machinery: fair interleaved timing, peak-memory probes and markdown tables.

Timing. Every implementation under test runs in the same process with the same `torch` thread
count. After warm-up, each repeat times every implementation once, in an order that rotates from
repeat to repeat (so drift in machine load or clock speed hits all of them alike), and we report
the median over repeats. A sample repeats its call until it lasts at least `min_time` seconds, so
that fast calls are not lost in timer and scheduler noise.

Peak memory. One measurement runs in one fresh interpreter (`python -m benchmarks.common ...`),
so no earlier measurement's freed memory can be reused and hide a later one's. The child runs the
workload once on tiny inputs (so that lazily loaded library code and one-off caches are already
resident), resets the kernel's RSS high-water mark (`/proc/self/clear_refs`), runs the real
workload, and reports `peak RSS - RSS before`: the memory the workload itself needed (activations,
gradients, optimizer state, Python objects), not the interpreter and its imports. Linux only.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

# ---- command line ------------------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (well under 20 s)")
    p.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch intra-op threads, the same for every implementation (default: %(default)s)",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per implementation (median)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    return p


def busy_cpus(seconds: float = 0.5) -> float:
    """How many CPUs other processes keep busy, from /proc/stat while this process sleeps."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # total, idle + iowait

    (total0, idle0), _, (total1, idle1) = sample(), time.sleep(seconds), sample()
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / max(total1 - total0, 1))


def header(title: str, threads: int) -> str:
    busy = busy_cpus()
    text = (
        f"## {title}\n\n"
        f"torch {torch.__version__}, {threads} thread(s), {os.cpu_count()} CPU(s) "
        f"({platform.processor() or platform.machine()}); CPUs busy with other work at start: {busy:.1f}\n"
    )
    if busy > 0.3:
        text += "\nWARNING: other processes are using the CPUs; timings will be noisy.\n"
    return text


# ---- timing ------------------------------------------------------------------------------------


def time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1, min_time: float = 0.05
) -> dict[str, float]:
    """Median seconds per call of each function, timed in rotating order after `warmup` calls each."""
    names = list(fns)
    loops = {}
    for name in names:
        for _ in range(warmup):
            fns[name]()
        start = time.perf_counter()  # calibrate: calls per sample so a sample lasts >= min_time
        fns[name]()
        once = time.perf_counter() - start
        loops[name] = max(1, int(min_time / max(once, 1e-9)) + 1)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn, n = fns[name], loops[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n)
    return {name: statistics.median(s) for name, s in samples.items()}


# ---- peak memory -------------------------------------------------------------------------------


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_peak(workload: Callable[[], object]) -> float:
    """MiB by which the RSS high-water mark rises above the current RSS while `workload()` runs."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status_mib("VmRSS")
    workload()
    return _status_mib("VmHWM") - before


def run_probes(
    module: str, function: str, specs: Sequence[dict], threads: int, workers: int = 2
) -> list[float]:
    """Run `module.function(spec)` for each spec, each in a fresh interpreter; returns its MiB.

    The function must build its inputs, warm up on tiny ones and return `measure_peak(workload)`.
    Probes run `workers` at a time: concurrency changes their speed, not their memory.
    """
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    commands = [
        [sys.executable, "-m", "benchmarks.common", module, function, json.dumps(spec), str(threads)]
        for spec in specs
    ]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = pool.map(
            lambda cmd: subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True), commands
        )
        results = []
        for cmd, proc in zip(commands, done):
            if proc.returncode:
                raise RuntimeError(f"memory probe {cmd[4:]} failed:\n{proc.stderr}")
            results.append(float(proc.stdout.strip().splitlines()[-1]))
    return results


def _probe_main(module: str, function: str, spec: str, threads: str) -> None:
    torch.set_num_threads(int(threads))
    print(getattr(importlib.import_module(module), function)(json.loads(spec)))


# ---- output ------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table with right-aligned numeric columns."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if num else "-") for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])


def _is_number(s: str) -> bool:
    try:
        float(s.rstrip("x%").replace(",", "").replace("n/a", "0"))
        return True
    except ValueError:
        return False


def fmt_rate(x: float) -> str:
    """Tokens per second, e.g. 1,234,567."""
    return f"{x:,.0f}"


def fmt_mib(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


if __name__ == "__main__":  # a memory probe: python -m benchmarks.common MODULE FUNCTION SPEC_JSON THREADS
    _probe_main(*sys.argv[1:])


@dataclass(frozen=True)
class Size:
    """A transformer size and workload for the benchmarks (batch x length tokens per step)."""

    d_model: int
    n_layers: int
    n_heads: int
    length: int
    batch: int = 16

    @property
    def label(self) -> str:
        return f"d{self.d_model} L{self.n_layers} H{self.n_heads}"
