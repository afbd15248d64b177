"""One run of a grid: train into its checkpoint folder (resuming a killed run), evaluate, record.

A run folder is a normal `interp train` checkpoint folder (load it with `interp.load`, continue it with
`interp train --resume`) plus `trained.json` (the training record, written when training ended) and one
`evals/<kind>-<hash>.json` per evaluation, each written atomically when it is complete. A run is
finished when all of them exist, so a sweep killed at any moment redoes only what has no file. Runs are
keyed by their label and training settings, not their evaluations (`RunSpec.run_id`), so experiments
that need the same trained model (sample efficiency and length generalisation train the same copy
models) share one training and add only their own evaluations. An evaluation file written by an older
version of the evaluation code (`EVAL_SCHEMA`) counts as missing and is redone.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
import traceback
from pathlib import Path

import torch

from interp.experiments.provenance import git_commit
from interp.experiments.spec import EvalSpec, RunSpec
from interp.io import atomic_write_text, checkpoint_step
from interp.models import HookedModel, build_model
from interp.models.loading import load_checkpoint
from interp.tasks import TaskConfig
from interp.training import TrainConfig, train
from interp.utils import resolve_device

TRAINED = "trained.json"
ERROR = "error.txt"
# version of each evaluation's rows; bump it when they change, so older cached rows are redone
# (files without one are version 1; accuracy 2: `first_error`; lookup_heads 2: `offset_1`)
EVAL_SCHEMA = {"accuracy": 2, "saturation": 1, "patching": 1, "lookup_heads": 2}


def _current(evaluation: dict | None, kind: str) -> bool:
    return evaluation is not None and evaluation.get("schema", 1) == EVAL_SCHEMA[kind]


def eval_path(folder: Path, ev: EvalSpec) -> Path:
    digest = hashlib.sha256(json.dumps(ev.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return folder / "evals" / f"{ev.kind}-{digest}.json"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_result(root: str | Path, spec: RunSpec) -> dict | None:
    """The finished run's record (training record + every evaluation of `spec`), or None if unfinished."""
    folder = Path(root) / spec.run_id
    trained = _read_json(folder / TRAINED)
    if trained is None:
        return None
    evals = [_read_json(eval_path(folder, EvalSpec.from_dict(e))) for e in spec.evals]
    if not all(_current(e, spec_e["kind"]) for e, spec_e in zip(evals, spec.evals)):
        return None
    return {**trained, "spec": spec.to_dict(), "run_id": spec.run_id, "evals": evals}


def run_evaluation(model: HookedModel, task: TaskConfig, ev: EvalSpec, seed: int) -> list[dict]:
    """Rows of one evaluation (DataFrame records)."""
    from interp.analysis.evaluation import evaluate
    from interp.analysis.saturation import state_saturation
    from interp.experiments.where import lookup_rows, patching_rows

    eval_task = TaskConfig.from_dict({**task.to_dict(), **ev.task})
    where = {"patching": patching_rows, "lookup_heads": lookup_rows}.get(ev.kind)
    if where is not None:  # rows already, per length
        return [row for n in ev.lengths for row in where(model, eval_task, n, ev.examples, seed)]
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
    """Train and evaluate one run under `root/<run_id>/`; returns its record.

    What is finished is not repeated: a trained run is loaded from its checkpoint for evaluations it
    lacks, a run killed during training continues from its last checkpoint. `threads`: torch CPU
    threads for this run (None: leave as is).
    """
    spec = spec if isinstance(spec, RunSpec) else RunSpec.from_dict(spec)
    done = read_result(root, spec)
    if done is not None:
        return done
    if threads is not None:
        torch.set_num_threads(threads)
    folder = Path(root) / spec.run_id
    task = TaskConfig.from_dict(spec.task)
    if (folder / TRAINED).is_file():  # trained for another experiment or an earlier call: evaluate only
        model = load_checkpoint(folder, resolve_device(spec.train.get("device", "auto")))
    else:
        cfg = TrainConfig.from_dict({**spec.train, "seed": spec.seed})
        torch.manual_seed(spec.seed)
        model = build_model(spec.arch, **{"d_vocab": task.vocab.size, **spec.model})
        t0 = time.perf_counter()
        resume = checkpoint_step(folder) is not None
        result = train(
            model, task, cfg, out_dir=folder, resume=resume, overwrite=not resume, progress=progress
        )
        size = model.state_size()
        trained = {
            "params": model.num_params(),
            "state_bits": size.bits if size is not None else None,
            "metrics": result.metrics,
            "train_seconds": round(time.perf_counter() - t0, 2),
            "resumed": resume,
            "device": str(model.device),
            "torch_threads": torch.get_num_threads(),
            "host": platform.node(),
            "commit": git_commit(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_text(folder / TRAINED, json.dumps(trained, indent=1))
    for ev in map(EvalSpec.from_dict, spec.evals):
        path = eval_path(folder, ev)
        if _current(_read_json(path), ev.kind):
            continue
        t1 = time.perf_counter()
        rows = run_evaluation(model, task, ev, spec.seed)
        atomic_write_text(
            path,
            json.dumps(
                {
                    "schema": EVAL_SCHEMA[ev.kind],
                    "spec": ev.to_dict(),
                    "rows": rows,
                    "seconds": round(time.perf_counter() - t1, 2),
                    "commit": git_commit(),
                }
            ),
        )
    record = read_result(root, spec)
    if record is None:
        raise RuntimeError(f"{folder}: the run's records could not be read back after it finished")
    return record


def execute_run_safely(spec_dict: dict, root: str, threads: int | None = 1) -> dict:
    """`execute_run` for executors: never raises; a failure comes back as {"error": ..., "traceback": ...}."""
    try:
        return {"record": execute_run(spec_dict, root, threads)}
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # a failed run is reported, the sweep goes on
        text = traceback.format_exc()
        path = Path(root) / RunSpec.from_dict(spec_dict).run_id / ERROR
        try:
            atomic_write_text(path, text)
            where = f" (traceback in {path})"
        except OSError:
            where = ""
        return {"error": f"{type(e).__name__}: {e}{where}", "traceback": text}
