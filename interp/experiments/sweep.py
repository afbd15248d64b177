"""Run a grid of `RunSpec`s: locally (a process per run, one torch thread each) or as Ray tasks.

Both executors share the rules that make a sweep safe to kill and rerun:
- a finished run (`trained.json` and every evaluation file present) is skipped, its record read back;
- a run that raises is reported with its error and traceback, and the others still finish;
- Ctrl-C stops the sweep; the runs in flight keep their last checkpoint and continue on the next call.
Each run is a separate process, so runs never share torch's thread pool or memory.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from tqdm.auto import tqdm

from interp.experiments.runner import execute_run_safely, read_result
from interp.experiments.spec import RunSpec

EXECUTORS = ("local", "ray")


@dataclass
class SweepResult:
    records: list[dict]  # finished runs (skipped ones included), in grid order
    failed: list[tuple[RunSpec, str]] = field(default_factory=list)  # (run, error with traceback)
    skipped: int = 0  # runs already finished before this call
    ran: int = 0  # runs finished by this call

    @property
    def complete(self) -> bool:
        return not self.failed


def run_sweep(
    specs: list[RunSpec],
    root: str | Path,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    gpu: bool = False,
    progress: bool = True,
) -> SweepResult:
    """Execute every run of `specs` under `root` (one folder per run) and return the records.

    executor: "local" (a pool of `workers` processes, default one per CPU core) or "ray" (`ray.init()`
    on this machine, or `address` of a running cluster; each run is a task asking for 1 CPU, and 1 GPU
    when `gpu`). On a multi-node cluster `root` must be a filesystem every node sees.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    ids = [s.run_id for s in specs]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ValueError(
            f"the grid holds these runs twice: {', '.join(twice)}; give them distinct settings or seeds"
        )
    if address is not None and executor != "ray":
        raise ValueError(
            f"--address {address!r} is for the Ray executor; add --executor ray or leave --address out"
        )
    root = Path(root).resolve()  # Ray workers on other nodes do not share this process's working directory
    root.mkdir(parents=True, exist_ok=True)
    finished = {s.run_id: r for s in specs if (r := read_result(root, s)) is not None}
    todo = [s for s in specs if s.run_id not in finished]
    result = SweepResult(records=[], skipped=len(finished))
    bar = tqdm(total=len(specs), initial=len(finished), disable=not progress, desc="sweep", unit="run")

    def on_done(spec: RunSpec, outcome: dict) -> None:
        if "record" in outcome:
            finished[spec.run_id] = outcome["record"]
            result.ran += 1
        else:
            result.failed.append((spec, f"{outcome['error']}\n{outcome['traceback']}"))
        bar.update(1)
        remaining = len(specs) - len(finished) - len(result.failed)
        bar.set_postfix(done=len(finished), failed=len(result.failed), remaining=remaining)

    try:
        if todo:
            if executor == "local" and gpu and not torch.cuda.is_available():
                raise ValueError(
                    "this preset trains ~150M-parameter models and asks one GPU per run, but this machine has "
                    "no CUDA GPU; run it where there are GPUs (--executor ray --address HOST:PORT for a cluster) "
                    "or use a smaller preset such as --scale cpu"
                )
            submit = (
                _ray_executor(address, workers, gpu) if executor == "ray" else _local_executor(workers, gpu)
            )
            submit(todo, str(root), on_done)
    finally:
        bar.close()
    result.records = [finished[s.run_id] for s in specs if s.run_id in finished]
    return result


Submit = Callable[[list[RunSpec], str, Callable[[RunSpec, dict], None]], None]


def _local_executor(workers: int | None, gpu: bool) -> Submit:
    """One fresh process per run (spawn: fork would copy this process's torch thread pool and locks), at
    most `workers` at once (default: one per core, or one per GPU for GPU presets, each seeing only its
    own GPU). A process that dies (killed, out of memory) fails its run only."""
    devices = torch.cuda.device_count() if gpu else 0

    def submit(todo: list[RunSpec], root: str, on_done) -> None:
        ctx = multiprocessing.get_context("spawn")
        queue, running = list(todo), {}  # sentinel -> (process, pipe, spec, slot)
        slots = list(range(min(workers or devices or os.cpu_count() or 1, len(todo))))
        try:
            with _sigterm_as_interrupt():
                while queue or running:
                    while queue and slots:
                        slot, spec = slots.pop(), queue.pop(0)
                        receive, send = ctx.Pipe(duplex=False)
                        gpu_index = slot % devices if devices else None
                        proc = ctx.Process(target=_run_in_child, args=(spec.to_dict(), root, send, gpu_index))
                        proc.start()
                        send.close()
                        running[proc.sentinel] = (proc, receive, spec, slot)
                    for sentinel in multiprocessing.connection.wait(list(running)):
                        proc, receive, spec, slot = running.pop(sentinel)
                        message = _receive(receive)
                        proc.join()
                        receive.close()
                        slots.append(slot)
                        on_done(spec, _child_outcome(message, proc.exitcode, root, spec))
        except BaseException:
            for proc, *_ in running.values():  # runs in flight keep their last checkpoint
                proc.terminate()
            for proc, *_ in running.values():
                proc.join(timeout=30)
            raise

    return submit


def _receive(pipe) -> dict | None:
    """The child's outcome, or None if it died before sending one (a dead child's pipe reads as EOF)."""
    try:
        return pipe.recv() if pipe.poll() else None
    except EOFError:
        return None


def _run_in_child(spec_dict: dict, root: str, send, gpu_index: int | None) -> None:
    if gpu_index is not None:  # before CUDA is first used: this run sees one GPU, as cuda:0
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_index)
    outcome = execute_run_safely(spec_dict, root)
    # the record is on disk; send only the outcome (a large message would block the exit the parent waits on)
    send.send({"error": outcome["error"], "traceback": outcome["traceback"]} if "error" in outcome else {})
    send.close()


def _child_outcome(message: dict | None, exitcode: int | None, root: str, spec: RunSpec) -> dict:
    if message is None:
        return {
            "error": f"the run's process died (exit code {exitcode}; -9 is a kill, e.g. out of memory)",
            "traceback": "",
        }
    if "error" in message:
        return message
    record = read_result(root, spec)
    if record is None:
        return {"error": "the run's process ended without its records on disk", "traceback": ""}
    return {"record": record}


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """`kill` (SIGTERM) of the sweep stops its workers too, as Ctrl-C does, instead of orphaning them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ray_outcome(get: Callable[[], dict]) -> dict:
    """The task's outcome, or a failure if Ray lost the task or its worker process died."""
    try:
        return get()
    except Exception as e:
        return {"error": f"worker process failed: {type(e).__name__}: {e}", "traceback": ""}


def _ray_executor(address: str | None, workers: int | None, gpu: bool) -> Submit:
    ray = import_ray()
    connect_ray(ray, address, workers)
    if gpu and not ray.cluster_resources().get("GPU", 0):
        raise ValueError(
            "this preset asks one GPU per run, and the Ray cluster has none (its runs would wait forever); "
            "connect to a cluster with GPUs (--address) or use a smaller preset such as --scale cpu"
        )

    def submit(todo: list[RunSpec], root: str, on_done) -> None:
        task = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_retries=0)(execute_run_safely)
        refs = {task.remote(s.to_dict(), root, 1): s for s in todo}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    on_done(refs[ref], _ray_outcome(lambda ref=ref: ray.get(ref)))
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise

    return submit


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError(
            "the Ray executor needs Ray, which is an optional extra: pip install 'interp[sweep]' "
            "(or run the sweep with --executor local)"
        ) from e
    return ray


def connect_ray(ray, address: str | None, workers: int | None, timeout: float = 5.0) -> None:
    """`ray.init` on this machine (address None) or on a cluster; an unreachable address fails in seconds."""
    if ray.is_initialized():
        return
    options = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address in (None, "local"):
        ray.init(num_cpus=workers or os.cpu_count(), **options)
        return
    if address != "auto":
        host, port = _host_port(address)
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as e:
            raise ConnectionError(
                f"cannot reach a Ray cluster at {address!r} ({host}:{port}: {e.strerror or e}); start one "
                "with `ray start --head` there, or use --address auto on a node of a running cluster, or "
                "leave --address out to start Ray on this machine"
            ) from None
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError) as e:
        raise ConnectionError(
            f"cannot connect to a Ray cluster at {address!r}: {e}. With --address auto a cluster must "
            "already run on this node (`ray start --head`); leave --address out to start Ray here"
        ) from None


def _host_port(address: str) -> tuple[str, int]:
    """'10.0.0.5:6379' or 'ray://head:10001' -> (host, port), or a clear error."""
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    try:
        port = parsed.port
    except ValueError:
        port = None
    if not parsed.hostname or port is None:
        raise ValueError(f"--address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    return parsed.hostname, port
