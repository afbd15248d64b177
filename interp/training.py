"""One training loop for every architecture (transformer, LSTM, Mamba) on the synthetic tasks.

AdamW with warm-up and linear decay, gradient clipping, loss only on scored positions, a progress
bar, periodic evaluation, and resumable run folders (one writer, checkpoints published as a unit:
see `interp.io`). Batches are drawn from a generator seeded by (seed, step), so a resumed run sees
exactly the data it would have seen.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from interp.config import Config, check_device
from interp.io import (
    CONFIG,
    METRICS,
    TRAINER_STATE,
    WEIGHTS,
    RunFolderError,
    RunLock,
    append_jsonl,
    atomic_write_text,
    clear_run,
    publish_checkpoint,
    read_checkpoint,
    read_jsonl,
    run_contents,
)
from interp.models import HookedModel, model_class
from interp.models.loading import checkpoint_config, model_from_checkpoint, weights_bytes
from interp.tasks import IGNORE_INDEX, Batch, TaskConfig, make_batch
from interp.utils import autocast, resolve_device


@dataclass
class TrainConfig(Config):
    steps: int = 2000  # optimizer steps (the paper: 2,000)
    batch_size: int = 32  # examples (or packed rows) per step (the paper: 8 rows of 220 tokens)
    lr: float = 1e-3  # peak learning rate; the paper's 1e-5 suits 150M-parameter models, not tiny ones
    weight_decay: float = 0.1  # AdamW, as in the paper
    warmup_steps: int = 100  # linear warm-up, then linear decay to zero
    grad_clip: float = 1.0  # max gradient norm
    eval_every: int = 100  # steps between evaluations (0: only at the end)
    eval_examples: int = 256  # held-out examples per evaluation
    checkpoint_every: int = 500  # steps between checkpoint saves when training into a folder
    seed: int = 0  # data and initialisation seed
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    mixed_precision: bool = True  # bfloat16 autocast on CUDA (ignored on CPU)

    zero_ok = frozenset({"warmup_steps", "eval_every", "seed"})

    def __post_init__(self):
        super().__post_init__()  # types, and every count >= 1 (>= 0 for the three above)
        check_device(self.device)
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip}")


# Settings a resumed run may change: how long it runs, how often it evaluates and saves, and where.
# Every other setting defines the run (its data, schedule, optimiser): a different value would silently
# continue a different run, so resuming with one is refused, naming it.
RESUMABLE = ("steps", "eval_every", "eval_examples", "checkpoint_every", "device", "mixed_precision")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during `train`: raised after the current step, once a checkpoint of it is saved."""

    def __init__(self, step: int, out_dir: Path | None):
        self.step, self.out_dir = step, out_dir
        saved = f"; checkpoint saved in {out_dir}" if out_dir is not None else ""
        super().__init__(f"training interrupted after step {step}{saved}")


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then linear decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def loss_fn(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over scored positions only. logits: [B, P, V]."""
    return F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=IGNORE_INDEX)


def batch_for_step(task: TaskConfig, cfg: TrainConfig, step: int) -> Batch:
    return make_batch(task, cfg.batch_size, torch.Generator().manual_seed(cfg.seed * 1_000_003 + step))


def examples_in(batch: Batch) -> int:
    """Whole examples in a batch: one per row, or with packing the examples a row holds entirely
    (`lengths` is [rows, K] with 0 for no example; every example has length >= 1)."""
    return int((batch.lengths > 0).sum())


def eval_batch(task: TaskConfig, n: int, seed: int) -> Batch:
    """A fixed held-out batch from the training distribution (a seed stream disjoint from training)."""
    unpacked = TaskConfig.from_dict({**task.to_dict(), "pack_context": None})
    return make_batch(unpacked, n, torch.Generator().manual_seed(10**9 + seed))


@torch.no_grad()
def quick_eval(model: HookedModel, batch: Batch, device: torch.device, mixed_precision: bool) -> dict:
    """Teacher-forced loss, string and character accuracy on one batch, in chunks of 256 examples."""
    was_training = model.training
    model.eval()
    losses, strings, chars = [], [], []
    for i in range(0, len(batch), 256):
        part = batch[i : i + 256].to(device)
        with autocast(device, mixed_precision):
            logits = model(part.tokens)
        losses.append(loss_fn(logits, part) * len(part))
        string_ok, char_acc = part.score(logits)
        strings.append(string_ok.float())
        chars.append(char_acc)
    model.train(was_training)
    return {
        "eval_loss": float(sum(losses) / len(batch)),
        "string_acc": float(torch.cat(strings).mean()),
        "char_acc": float(torch.cat(chars).mean()),
    }


@dataclass
class TrainResult:
    model: HookedModel
    metrics: list[dict]  # one dict per evaluation: step, examples_seen, loss, eval_loss, string_acc, ...
    out_dir: Path | None


def train(
    model: HookedModel,
    task: TaskConfig,
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> TrainResult:
    """Train `model` on `task`; with `out_dir`, into that run folder (layout and guarantees: `interp.io`).

    The folder is locked for the whole run (a second writer is refused, naming the holder). A fresh run
    refuses a folder that already holds anything: `resume=True` continues its latest checkpoint (with
    the same model, task and settings, except those in RESUMABLE), `overwrite=True` deletes it first.
    Ctrl-C finishes the current step, saves a checkpoint and raises `TrainingInterrupted`.
    """
    if resume and overwrite:
        raise ValueError("resume=True continues a run and overwrite=True deletes it; pass one of them")
    out = Path(out_dir) if out_dir is not None else None
    if out is None and resume:
        raise ValueError("resume=True needs the run folder (out_dir) to resume from")
    if resume and not out.is_dir():
        raise FileNotFoundError(
            f"cannot resume: {out} does not exist; give the --out folder of an earlier run"
        )
    device = resolve_device(cfg.device)
    max_tokens = getattr(model.cfg, "n_ctx", None)
    make_batch(task, 1, length=task.max_len, max_tokens=max_tokens)  # fail now if examples don't fit
    vocab = task.vocab.size
    if model.cfg.d_vocab < vocab:
        raise ValueError(
            f"model vocabulary d_vocab={model.cfg.d_vocab} is smaller than the task's {vocab} tokens"
        )
    if out is None:
        return _train(model, task, cfg, device, None, resume, progress)
    with RunLock(
        out
    ):  # creates the folder and writes to it: an unwritable --out fails here, not after training
        if not resume and run_contents(out):
            if not overwrite:
                raise RunFolderError(
                    f"{out} already holds a run ({', '.join(run_contents(out))}); pass --resume (resume=True) "
                    f"to continue it or --overwrite (overwrite=True) to delete it and start over"
                )
            clear_run(out)
        return _train(model, task, cfg, device, out, resume, progress)


def _train(model, task, cfg, device, out: Path | None, resume: bool, progress: bool) -> TrainResult:
    model.to(device).train()
    # No decay on biases, norms and parameters that opt out (Mamba's A_log and D, as in mamba-ssm).
    decayed = lambda p: p.ndim >= 2 and not getattr(p, "_no_weight_decay", False)
    decay = [p for p in model.parameters() if decayed(p)]
    no_decay = [p for p in model.parameters() if not decayed(p)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps)
    )
    start, examples_seen, metrics = 0, 0, []
    if resume:
        start, examples_seen, metrics = _restore(out, model, task, cfg, optimizer, schedule, device)

    def save(step: int) -> None:
        _save(out, model, task, cfg, optimizer, schedule, step, examples_seen)

    held_out = eval_batch(task, cfg.eval_examples, cfg.seed)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress, desc=model.arch)
    t0, tokens_seen, loss = time.perf_counter(), 0, float("nan")
    done = saved = start
    with _StopOnSigint() as stop:
        for step in bar:
            if stop.requested:
                break
            cpu_batch = batch_for_step(task, cfg, step)
            batch = cpu_batch.to(device)
            with autocast(device, cfg.mixed_precision):
                logits = model(batch.tokens)
            loss_t = loss_fn(logits, batch)
            optimizer.zero_grad(set_to_none=True)
            loss_t.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            schedule.step()
            loss = loss_t.item()
            if not math.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss} at step {step}; try a lower --lr")
            tokens_seen += batch.tokens.numel()
            examples_seen += examples_in(cpu_batch)
            done = step + 1
            if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
                row = {
                    "step": done,
                    "examples_seen": examples_seen,
                    "loss": loss,
                    "lr": schedule.get_last_lr()[0],
                }
                row |= quick_eval(model, held_out, device, cfg.mixed_precision)
                row["tokens_per_s"] = tokens_seen / (time.perf_counter() - t0)
                metrics.append(row)
                bar.set_postfix(loss=f"{loss:.3f}", acc=f"{row['string_acc']:.2f}")
                if out is not None:
                    append_jsonl(out / METRICS, row)
            if out is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                save(done)
                saved = done
    bar.close()
    model.eval()
    if stop.requested and done < cfg.steps:
        if out is not None and saved != done:
            save(done)  # small models: a second or less, and the run continues exactly from here
        raise TrainingInterrupted(done, out)
    return TrainResult(model, metrics, out)


class _StopOnSigint:
    """While active (main thread only: signals reach no other), the first Ctrl-C asks the loop to stop
    at the next step boundary, so that a consistent checkpoint can be saved; a second one interrupts
    at once."""

    requested = False

    def __enter__(self):
        self._active = threading.current_thread() is threading.main_thread()
        if self._active:
            self._previous = signal.getsignal(signal.SIGINT) or signal.default_int_handler
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)
        print(
            "\ninterrupted: finishing this step and saving a checkpoint (Ctrl-C again to stop now)",
            file=sys.stderr,
        )

    def __exit__(self, *exc) -> None:
        if self._active:
            signal.signal(signal.SIGINT, self._previous)


def _save(
    out: Path, model, task: TaskConfig, cfg: TrainConfig, optimizer, schedule, step: int, examples_seen: int
):
    config = json.dumps(
        checkpoint_config(model, task=task.to_dict(), train=cfg.to_dict(), step=step), indent=2
    )
    state = BytesIO()
    torch.save(
        {
            "step": step,
            "examples_seen": examples_seen,
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
        },
        state,
    )
    publish_checkpoint(
        out, step, {CONFIG: config.encode(), WEIGHTS: weights_bytes(model), TRAINER_STATE: state.getvalue()}
    )
    atomic_write_text(out / CONFIG, config)  # the copy people read; the checkpoint's own is the one used
    for name in (WEIGHTS, TRAINER_STATE):  # a folder from before step directories: now superseded
        (out / name).unlink(missing_ok=True)


def _restore(out: Path, model, task, cfg, optimizer, schedule, device) -> tuple[int, int, list[dict]]:
    """Load the latest checkpoint of `out` into model, optimizer and schedule; (step, examples_seen, metrics)."""
    found = read_checkpoint(out)
    if found is None or TRAINER_STATE not in found.files:
        raise FileNotFoundError(
            f"cannot resume: {out} holds no complete checkpoint with a trainer state (a run killed before "
            f"its first checkpoint?); start over with --overwrite (overwrite=True)"
        )
    _check_same_run(out, found.config, model, task, cfg)
    model.load_state_dict(model_from_checkpoint(found, device).state_dict())
    state = torch.load(BytesIO(found.files[TRAINER_STATE]), map_location=device, weights_only=True)
    step = int(state["step"])
    if found.step is not None and found.step != step:
        raise ValueError(
            f"{found.path}: config.json is from step {found.step}, trainer_state.pt from step {step}"
        )
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    examples_seen = state.get("examples_seen")
    if examples_seen is None:  # written before examples were counted: the batches are reproducible
        examples_seen = sum(examples_in(batch_for_step(task, cfg, s)) for s in range(step))
    # evaluations after the checkpoint are redone by this run; torn lines are dropped (with a warning)
    metrics = [m for m in read_jsonl(out / METRICS) if isinstance(m.get("step"), int) and m["step"] <= step]
    atomic_write_text(out / METRICS, "".join(json.dumps(m) + "\n" for m in metrics))
    return step, int(examples_seen), metrics


def _check_same_run(out: Path, saved: dict, model, task: TaskConfig, cfg: TrainConfig) -> None:
    """Refuse to resume with a model, task or run-defining setting that differs from the saved run."""
    for key in ("arch", "model", "task", "train"):
        if key not in saved:
            raise ValueError(f"cannot resume: the checkpoint config of {out} has no {key!r} entry")
    if saved["arch"] != model.arch:
        raise ValueError(f"cannot resume: {out} holds a {saved['arch']} model, not a {model.arch}")
    saved_model = model_class(saved["arch"]).config_class.from_dict(saved["model"]).to_dict()
    pairs = [
        ("model", saved_model, model.cfg.to_dict(), ()),
        ("task", TaskConfig.from_dict(saved["task"]).to_dict(), task.to_dict(), ()),
    ]
    pairs.append(("train", TrainConfig.from_dict(saved["train"]).to_dict(), cfg.to_dict(), RESUMABLE))
    differ = [
        f"{section}.{k}={new[k]!r} (saved: {old[k]!r})"
        for section, old, new, free in pairs
        for k in old
        if k not in free and old[k] != new.get(k)
    ]
    if differ:
        raise ValueError(
            f"cannot resume {out}: {', '.join(differ)} differ from the saved run; leave them out to continue "
            f"it, or start over with --overwrite (overwrite=True)"
        )
