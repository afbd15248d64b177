"""The README demo: the paper's first result, sample efficiency, in a few minutes on a laptop CPU.

A transformer, Mamba and an LSTM of ~100k parameters each learn to copy strings of 1-10 letters with
one training recipe; the held-out string accuracy is measured every 50 steps, so the figure shows
accuracy against training examples seen. It is the `demo` preset of the `sample-efficiency`
experiment (`interp reproduce sample-efficiency --scale demo`), one seed, trained as a sweep (one
process per model), and writes that experiment's report into the output folder.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from interp.experiments import get_experiment, run_sweep
from interp.experiments.common import SCALES
from interp.experiments.copying import sample_efficiency_grid
from interp.experiments.report import write_report
from interp.experiments.spec import records_to_frame
from interp.training import TrainConfig

DEMO_FAMILIES = ("transformer rope", "mamba", "lstm")
_SCALE = SCALES["demo"]
# arch -> (model options, TrainConfig) of the demo, for notebooks that train the same models by hand
DEMO_MODELS = {
    arch: (options, TrainConfig.from_dict(train))
    for arch, options, train in (_SCALE.model(family) for family in ("transformer", "mamba", "lstm"))
}


def available_archs() -> list[str]:
    """Architectures the demo trains (all three run in plain PyTorch on the CPU)."""
    return list(DEMO_MODELS)


def run_demo(
    out: str | Path,
    archs: list[str] | None = None,
    steps: int | None = None,
    device: str = "auto",
    progress: bool = True,
    workers: int | None = None,
) -> tuple[str, list[Path]]:
    """Train each architecture into out/runs/, then write the sample-efficiency report into `out`.

    Returns the printed table and the paths written. `archs`: a subset of transformer, mamba, lstm;
    `steps`: training steps per model instead of the preset's 1,000. A rerun skips finished models.
    """
    out = Path(out)
    families = list(DEMO_FAMILIES)
    if archs is not None:
        unknown = [a for a in archs if a not in DEMO_MODELS]
        if unknown:
            raise ValueError(f"unknown demo architecture(s) {unknown}; allowed: {', '.join(DEMO_MODELS)}")
        families = [f for f in DEMO_FAMILIES if f.split()[0] in archs]
    specs = sample_efficiency_grid("demo", families)
    overrides = {"device": device, **({"steps": steps} if steps is not None else {})}
    specs = [replace(s, train={**s.train, **overrides}) for s in specs]
    t0 = time.perf_counter()
    sweep = run_sweep(specs, out / "runs", workers=workers, progress=progress)
    if not sweep.complete:
        errors = "; ".join(f"{spec.label}: {error.splitlines()[0]}" for spec, error in sweep.failed)
        raise RuntimeError(f"demo runs failed: {errors}")
    experiment = get_experiment("sample-efficiency")
    command = "interp demo" + "".join(
        f" {flag} {value}"
        for flag, value in [("--steps", steps), ("--archs", ",".join(archs or [])), ("--workers", workers)]
        if value
    )
    wall = time.perf_counter() - t0
    description = _SCALE.description + (f"; --steps {steps}" if steps is not None else "")
    report = write_report(
        experiment,
        "demo",
        sweep.records,
        out,
        out,
        command,
        sweep,
        wall,
        runs_dir=out / "runs",
        description=description,
    )
    curves = report.summary.set_index("model")
    final = records_to_frame(sweep.records).pivot(index="model", columns="length", values="string_acc")
    lines = [
        f"copy, {_SCALE.n_letters} letters, strings of 1-{_SCALE.max_len} letters, one recipe for every model "
        f"({specs[0].train['steps']} steps of {specs[0].train['batch_size']} examples)",
        "model: training examples seen until the held-out string accuracy first reached 50% / 90%; "
        "then the final string accuracy per length",
    ]
    for model in final.index:
        reach = [curves.loc[model, f"examples_to_{x}_mean"] for x in (50, 90)]
        reach = " / ".join("never" if pd.isna(r) else f"{r:,.0f}" for r in reach)
        accs = ", ".join(f"L={length}: {100 * acc:.0f}%" for length, acc in final.loc[model].items())
        lines.append(f"  {model:<18} {reach:<16} {accs}")
    return "\n".join(lines), report.paths
