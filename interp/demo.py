"""The README demo: train a transformer and an LSTM (and Mamba, when available) on copy, on the CPU
in a few minutes, then compare string accuracy per length, including lengths beyond training."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from interp.analysis.evaluation import evaluate
from interp.analysis.plotting import plot_accuracy_vs_length
from interp.models import ARCHITECTURES, build_model
from interp.models.loading import atomic_write, atomic_write_text
from interp.tasks import TaskConfig
from interp.training import TrainConfig, train

DEMO_TASK = TaskConfig(task="copy", n_letters=10, min_len=1, max_len=16)
EVAL_LENGTHS = [2, 4, 8, 12, 16, 20, 24]
# Small models (0.07-0.27M parameters) with learning rates that suit each family on this task.
DEMO_MODELS = {
    "transformer": (
        dict(d_model=64, n_layers=2, n_heads=4, positional="rope"),
        TrainConfig(steps=1200, lr=3e-3),
    ),
    "lstm": (dict(d_model=128, n_layers=2), TrainConfig(steps=800, lr=3e-3)),
    "mamba": (dict(d_model=64, n_layers=2, d_state=16), TrainConfig(steps=800, lr=1e-2)),
}


def available_archs() -> list[str]:
    """Architectures the demo can run here (Mamba once its module exists)."""
    out = []
    for arch in DEMO_MODELS:
        try:
            build_model(arch, d_vocab=DEMO_TASK.vocab.size, **DEMO_MODELS[arch][0])
            out.append(arch)
        except (ImportError, ModuleNotFoundError):
            continue
    return out


def run_demo(
    out: str | Path,
    archs: list[str] | None = None,
    steps: int | None = None,
    device: str = "auto",
    progress: bool = True,
    eval_examples: int = 256,
    task: TaskConfig = DEMO_TASK,
    lengths: list[int] = EVAL_LENGTHS,
) -> tuple[str, list[Path]]:
    """Train each architecture into out/<arch>, evaluate, write results.csv and accuracy.png.

    Returns the printed table (string accuracy %, one column per model) and the paths written.
    """
    out = Path(out)
    archs = archs or available_archs()
    unknown = [a for a in archs if a not in ARCHITECTURES]
    if unknown:
        raise ValueError(f"unknown architecture(s) {unknown}; allowed: {', '.join(ARCHITECTURES)}")
    frames = []
    for arch in archs:
        model_opts, train_cfg = DEMO_MODELS[arch]
        train_cfg = TrainConfig.from_dict({**train_cfg.to_dict(), "device": device, "eval_every": 100})
        if steps is not None:
            train_cfg.steps = steps
        torch.manual_seed(train_cfg.seed)
        model = build_model(arch, d_vocab=task.vocab.size, **model_opts)
        train(model, task, train_cfg, out_dir=out / arch, progress=progress, overwrite=True)
        name = f"{arch} ({model.num_params() / 1e3:.0f}k params)"
        frames.append(evaluate(model, task, lengths, n_examples=eval_examples, name=name))
    df = pd.concat(frames, ignore_index=True)
    table = (df.pivot(index="length", columns="model", values="string_acc") * 100).round(1)
    text = f"copy, {task.n_letters} letters, trained on lengths {task.min_len}..{task.max_len}: "
    text += "string accuracy (%), teacher-forced\n" + table.to_string()
    fig = plot_accuracy_vs_length(df, title="copy: string accuracy vs length", train_max_len=task.max_len)
    paths = [out / "results.csv", out / "accuracy.png", out / "demo_config.json"]
    atomic_write(paths[0], lambda tmp: df.to_csv(tmp, index=False))
    atomic_write(paths[1], lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    config = {"task": task.to_dict(), "lengths": lengths, "archs": archs, "steps": steps}
    atomic_write_text(paths[2], json.dumps(config, indent=2))
    return text, paths
