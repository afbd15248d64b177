"""Run benchmarks and keep their output as JSON for the documentation site.

    python scripts/docs_benchmarks.py task_generation hook_overhead probes      # the cheap ones
    python scripts/docs_benchmarks.py task_generation -- --threads 1 --repeats 3  # extra arguments
    python scripts/docs_benchmarks.py pretrained_cost --record pretrained_cost_large -- --models pythia-1b
        # a second record of one benchmark (another configuration), docs/benchmarks/pretrained_cost_large.json

Each benchmark (`python -m benchmarks.NAME ARGS`) runs in its own process; its stdout (Markdown: a header
with the torch version, threads and CPU load, then tables) is stored verbatim in
`docs/benchmarks/NAME.json` with the command, the commit it ran on, the machine and the wall time. The docs
build (docs/hooks/generate.py) renders those files on the benchmarks page, so no number on that page is
typed by hand. A benchmark that fails writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "benchmarks"
DEFAULT_ARGS = ["--threads", "1"]  # the 2-core machines are shared; see the benchmarks page


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "interp", "benchmarks")
    return commit + (" + local changes" if dirty else "")


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.platform()}, {os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}"


def run(name: str, args: list[str], record_name: str | None = None) -> Path:
    command = [sys.executable, "-m", f"benchmarks.{name}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"benchmarks.{name} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    record = {
        "benchmark": name,
        "command": "python -m benchmarks." + " ".join([name, *args]),
        "commit": git_commit(),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "output": proc.stdout,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{record_name or name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="+", help="benchmark modules under benchmarks/")
    p.add_argument(
        "--record",
        help="name of the JSON record (default: the benchmark's name); for a second configuration of one benchmark",
    )
    parsed = p.parse_args(names)
    names = parsed.names
    if parsed.record and len(names) != 1:
        p.error(f"--record names one record, but {len(names)} benchmarks were given: {', '.join(names)}")
    for name in names:
        if not (ROOT / "benchmarks" / f"{name}.py").exists():
            p.error(f"no benchmark {name!r}; allowed: {', '.join(sorted(known()))}")
    for name in names:
        print(f"wrote {run(name, extra or DEFAULT_ARGS, parsed.record)}", flush=True)
    return 0


def known() -> list[str]:
    return [p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem not in ("__init__", "common")]


if __name__ == "__main__":
    sys.exit(main())
