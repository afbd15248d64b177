"""`interp reproduce`: the paper's experiments from the shell (parser and handler; wired in interp.cli)."""

from __future__ import annotations

import argparse
import shlex
import sys

from interp.experiments.common import SCALES
from interp.experiments.paper import EXPERIMENTS
from interp.experiments.sweep import EXECUTORS
from interp.utils import parse_int_list


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "reproduce",
        help="run one of the paper's experiments (a sweep of runs) and write its report",
        description="Run one of the paper's synthetic experiments: a grid of training runs (model x task "
        "setting x seed), each a checkpoint folder under --out, then results.csv, a figure and a Markdown "
        "report in --report-dir. Finished runs are skipped, so rerunning resumes a killed sweep.",
    )
    p.add_argument("experiment", nargs="?", help=f"one of: {', '.join(EXPERIMENTS)}")
    p.add_argument("--list", action="store_true", help="list the experiments and presets, one line each")
    p.add_argument("--scale", default="cpu", help=f"preset: {', '.join(SCALES)} (default cpu)")
    p.add_argument(
        "--executor", default="local", help=f"{' | '.join(EXECUTORS)} (default local: a process per run)"
    )
    p.add_argument(
        "--address", help="Ray cluster address (auto, HOST:PORT or ray://HOST:PORT); default: start Ray here"
    )
    p.add_argument(
        "--workers",
        type=int,
        help="runs at once (default: one per CPU core; with Ray started here: the CPUs it may use)",
    )
    p.add_argument("--seeds", help="comma-separated seeds instead of the preset's (e.g. 0,1,2,3,4)")
    p.add_argument(
        "--out", default="runs/reproduce", help="folder for the run folders (default runs/reproduce)"
    )
    p.add_argument(
        "--report-dir", default="docs/experiments", help="folder for the report (default docs/experiments)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def list_experiments() -> str:
    width = max(map(len, EXPERIMENTS))
    lines = [f"{name:<{width}}  {e.summary}" for name, e in EXPERIMENTS.items()]
    lines.append("")
    lines += [f"--scale {name:<6} {scale.description}" for name, scale in SCALES.items()]
    return "\n".join(lines)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from interp.experiments import reproduce

    if args.list:
        print(list_experiments())
        return 0
    if not args.experiment:
        raise ValueError(f"name an experiment ({', '.join(EXPERIMENTS)}) or use --list")
    seeds = parse_int_list(args.seeds) if args.seeds else None
    command = "interp " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["reproduce"] else None
    try:
        sweep, report = reproduce(
            args.experiment,
            scale=args.scale,
            out=args.out,
            report_dir=args.report_dir,
            executor=args.executor,
            workers=args.workers,
            address=args.address,
            seeds=seeds,
            progress=not args.quiet,
            command=command,
        )
    except ImportError as e:  # an optional executor that is not installed: a user error, not a bug
        if "interp[sweep]" not in str(e):
            raise
        raise ValueError(str(e)) from None
    except KeyboardInterrupt:
        print(
            "interp reproduce: interrupted; finished runs are kept and runs in flight keep their last "
            "checkpoint: rerun the same command to continue",
            file=sys.stderr,
        )
        return 130
    print(
        f"{args.experiment}: {sweep.ran} runs finished now, {sweep.skipped} were finished before, {len(sweep.failed)} failed"
    )
    for spec, error in sweep.failed:
        print(f"failed: {spec.run_id}: {error.splitlines()[0]}", file=sys.stderr)
    if report is None:
        print("report not written: rerun the same command to retry the failed runs", file=sys.stderr)
        return 1
    print(report.summary.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    print("wrote " + ", ".join(str(p) for p in report.paths))
    return 0
