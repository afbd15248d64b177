"""One run of a grid: train into its checkpoint folder (resuming a killed run), evaluate, record.

A run folder is a normal `interp train` checkpoint folder (load it with `interp.load`, continue it with
`interp train --resume`) plus `result.json`, written atomically last: its presence is what marks a run
finished, so a sweep killed at any moment reruns only the runs that have none.
"""

from __future__ import annotations

import json
import platform
import time
import traceback
from pathlib import Path

import torch

from interp.experiments.spec import EvalSpec, RunSpec
from interp.io import atomic_write_text, checkpoint_step
from interp.models import HookedModel, build_model
from interp.tasks import TaskConfig
from interp.training import TrainConfig, train

RESULT = "result.json"


def result_path(root: str | Path, spec: RunSpec) -> Path:
    return Path(root) / spec.run_id / RESULT


def read_result(root: str | Path, spec: RunSpec) -> dict | None:
    """The finished run's record, or None if the run has not finished (no or unreadable result.json)."""
    path = result_path(root, spec)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_evaluation(model: HookedModel, task: TaskConfig, ev: EvalSpec, seed: int) -> list[dict]:
    """Rows of one evaluation (DataFrame records)."""
    from interp.analysis.evaluation import evaluate
    from interp.analysis.saturation import state_saturation

    eval_task = TaskConfig.from_dict({**task.to_dict(), **ev.task})
    if ev.kind == "accuracy":
        df = evaluate(model, eval_task, ev.lengths, n_examples=ev.examples, modes=(ev.mode,), seed=1234)
    else:
        df = state_saturation(
            model, eval_task, ev.lengths, n_examples=ev.examples, seed=seed, max_features=ev.max_features
        ).summary
    return json.loads(df.to_json(orient="records"))


def execute_run(
    spec: RunSpec | dict, root: str | Path, threads: int | None = 1, progress: bool = False
) -> dict:
    """Train and evaluate one run under `root/<run_id>/`; returns its record (also in result.json).

    A finished run is not repeated (its record is read back). A run killed during training continues
    from its last checkpoint. `threads`: torch CPU threads for this run (None: leave as is).
    """
    spec = spec if isinstance(spec, RunSpec) else RunSpec.from_dict(spec)
    done = read_result(root, spec)
    if done is not None:
        return done
    if threads is not None:
        torch.set_num_threads(threads)
    folder = Path(root) / spec.run_id
    task = TaskConfig.from_dict(spec.task)
    cfg = TrainConfig.from_dict({**spec.train, "seed": spec.seed})
    torch.manual_seed(spec.seed)
    model = build_model(spec.arch, **{"d_vocab": task.vocab.size, **spec.model})
    t0 = time.perf_counter()
    resume = checkpoint_step(folder) is not None
    result = train(model, task, cfg, out_dir=folder, resume=resume, overwrite=not resume, progress=progress)
    train_seconds = time.perf_counter() - t0
    evals = []
    for ev in map(EvalSpec.from_dict, spec.evals):
        t1 = time.perf_counter()
        rows = run_evaluation(result.model, task, ev, spec.seed)
        evals.append({"spec": ev.to_dict(), "rows": rows, "seconds": round(time.perf_counter() - t1, 2)})
    size = result.model.state_size()
    record = {
        "spec": spec.to_dict(),
        "run_id": spec.run_id,
        "params": result.model.num_params(),
        "state_bits": size.bits if size is not None else None,
        "metrics": result.metrics,
        "evals": evals,
        "train_seconds": round(train_seconds, 2),
        "resumed": resume,
        "device": str(result.model.device),
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(result_path(root, spec), json.dumps(record, indent=1))
    return record


def execute_run_safely(spec_dict: dict, root: str, threads: int | None = 1) -> dict:
    """`execute_run` for executors: never raises; a failure comes back as {"error": ..., "traceback": ...}."""
    try:
        return {"record": execute_run(spec_dict, root, threads)}
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # a failed run is reported, the sweep goes on
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
