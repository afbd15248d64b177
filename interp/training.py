"""One training loop for every architecture (transformer, LSTM, Mamba) on the synthetic tasks.

AdamW with warm-up and linear decay, gradient clipping, loss only on scored positions, a progress
bar, periodic evaluation, and resumable checkpoint folders written atomically. Batches are drawn
from a generator seeded by (seed, step), so a resumed run sees exactly the data it would have seen.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from interp.config import Config
from interp.models import HookedModel
from interp.models.loading import WEIGHTS, atomic_write, load_checkpoint, save_checkpoint
from interp.tasks import IGNORE_INDEX, Batch, TaskConfig, make_batch
from interp.utils import autocast, resolve_device

TRAINER_STATE = "trainer_state.pt"
METRICS = "metrics.jsonl"


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
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    mixed_precision: bool = True  # bfloat16 autocast on CUDA (ignored on CPU)

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


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
    metrics: list[dict]  # one dict per evaluation: step, loss, eval_loss, string_acc, char_acc, ...
    out_dir: Path | None


def train(
    model: HookedModel,
    task: TaskConfig,
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train `model` on `task`. With `out_dir`, checkpoints go there; `resume=True` continues from it."""
    device = resolve_device(cfg.device)
    out = Path(out_dir) if out_dir is not None else None
    max_tokens = getattr(model.cfg, "n_ctx", None)
    make_batch(task, 1, length=task.max_len, max_tokens=max_tokens)  # fail now if examples don't fit
    vocab = task.vocab.size
    if model.cfg.d_vocab < vocab:
        raise ValueError(
            f"model vocabulary d_vocab={model.cfg.d_vocab} is smaller than the task's {vocab} tokens"
        )

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
    start, metrics = 0, []
    if resume:
        start, metrics = _restore(out, model, optimizer, schedule, device)

    held_out = eval_batch(task, cfg.eval_examples, cfg.seed)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress, desc=model.arch)
    t0, tokens_seen, loss = time.perf_counter(), 0, float("nan")
    for step in bar:
        batch = batch_for_step(task, cfg, step).to(device)
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
        done = step + 1
        if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
            row = {"step": done, "loss": loss, "lr": schedule.get_last_lr()[0]}
            row |= quick_eval(model, held_out, device, cfg.mixed_precision)
            row["tokens_per_s"] = tokens_seen / (time.perf_counter() - t0)
            metrics.append(row)
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{row['string_acc']:.2f}")
            if out is not None:
                _append_metrics(out, row)
        if out is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            _save(out, model, task, cfg, optimizer, schedule, done)
    model.eval()
    return TrainResult(model, metrics, out)


def _append_metrics(out: Path, row: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / METRICS, "a") as f:  # one complete line per write; a crash loses at most one line
        f.write(json.dumps(row) + "\n")


def _save(out: Path, model, task: TaskConfig, cfg: TrainConfig, optimizer, schedule, step: int) -> None:
    save_checkpoint(out, model, task=task.to_dict(), train=cfg.to_dict(), step=step)
    state = {"step": step, "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}
    atomic_write(out / TRAINER_STATE, lambda tmp: torch.save(state, tmp))


def _restore(out: Path | None, model, optimizer, schedule, device) -> tuple[int, list[dict]]:
    if out is None:
        raise ValueError("resume=True needs the checkpoint folder (out_dir) to resume from")
    if not (out / TRAINER_STATE).is_file() or not (out / WEIGHTS).is_file():
        raise FileNotFoundError(
            f"cannot resume: {out} has no {TRAINER_STATE} and {WEIGHTS}; start without --resume, or point "
            f"--out at a folder an earlier `interp train` run wrote"
        )
    saved = load_checkpoint(out, device)
    if saved.arch != model.arch or saved.cfg != model.cfg:
        raise ValueError(f"cannot resume: {out} holds a different model ({saved.arch}: {saved.cfg})")
    model.load_state_dict(saved.state_dict())
    state = torch.load(out / TRAINER_STATE, map_location=device, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    metrics = []
    if (out / METRICS).is_file():
        metrics = [json.loads(line) for line in (out / METRICS).read_text().splitlines() if line.strip()]
        metrics = [m for m in metrics if m["step"] <= state["step"]]
        atomic_write(
            out / METRICS, lambda tmp: Path(tmp).write_text("".join(json.dumps(m) + "\n" for m in metrics))
        )
    return int(state["step"]), metrics
