"""The paper's experiments as code: grids of runs, sweeps (local processes or Ray), generated reports.

    from interp.experiments import reproduce
    sweep, report = reproduce("length-generalization", scale="cpu")   # runs/reproduce/..., docs/experiments/...

or from the shell: `interp reproduce --list`, `interp reproduce lookup --scale cpu --executor ray`.
"""

from __future__ import annotations

import time
from pathlib import Path

from interp.experiments.common import SCALES
from interp.experiments.paper import EXPERIMENTS, get_experiment, with_seeds
from interp.experiments.report import Report, write_report
from interp.experiments.runner import execute_run
from interp.experiments.spec import EvalSpec, Experiment, Preset, RunSpec
from interp.experiments.sweep import EXECUTORS, SweepResult, run_sweep


def reproduce(
    name: str,
    scale: str = "cpu",
    out: str | Path = "runs/reproduce",
    report_dir: str | Path = "docs/experiments",
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    seeds: list[int] | None = None,
    progress: bool = True,
    command: str | None = None,
) -> tuple[SweepResult, Report | None]:
    """Run experiment `name` at `scale` (a preset) into `out/<scale>/`, then write its report.

    Run folders of one scale are shared by its experiments (a trained model is reused by every experiment
    that trains the same one); `out/<scale>/<name>/results.csv` holds this experiment's table.

    The report (Markdown, figure, per-seed CSV) goes to `report_dir`; it is written only when every run
    finished (a sweep with failures returns `(sweep, None)`; rerun to retry the failed runs).
    """
    experiment = get_experiment(name)
    preset = experiment.preset(scale)
    specs = preset.runs()
    if seeds is not None:
        specs = with_seeds(specs, seeds)
    root = Path(out) / scale
    t0 = time.perf_counter()
    sweep = run_sweep(
        specs, root, executor=executor, workers=workers, address=address, gpu=preset.gpu, progress=progress
    )
    if not sweep.complete:
        return sweep, None
    command = command or f"interp reproduce {name} --scale {scale}"
    wall = time.perf_counter() - t0
    report = write_report(experiment, scale, sweep.records, root / name, report_dir, command, sweep, wall)
    return sweep, report


__all__ = [
    "EXECUTORS",
    "EXPERIMENTS",
    "SCALES",
    "EvalSpec",
    "Experiment",
    "Preset",
    "Report",
    "RunSpec",
    "SweepResult",
    "execute_run",
    "get_experiment",
    "reproduce",
    "run_sweep",
]
