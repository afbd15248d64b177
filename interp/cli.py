"""`interp` command line: train, eval, demo, info, reproduce, docs. Run `interp COMMAND --help` for the options.

Defaults stated in the help come from the config dataclasses (`TrainConfig`, `TaskConfig`, each model's
config) and the functions the commands call, so the help cannot disagree with the code (tests/test_docs.py
checks it).

A user error (a bad number, a missing folder, a locked run folder) is one line on stderr and exit code 2;
a traceback means a bug (INTERP_DEBUG=1 shows one for user errors too). Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import json
import os
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from interp.config import check_device, check_int
from interp.experiments.command import add_parser as add_reproduce_parser
from interp.experiments.command import cmd_reproduce
from interp.io import atomic_write, atomic_write_text, read_checkpoint
from interp.models import HookedModel, build_model, model_class
from interp.models.loading import load
from interp.tasks import TASKS, TaskConfig
from interp.training import TrainConfig, TrainingInterrupted, train
from interp.utils import parse_int_list, resolve_device

# Exceptions that mean "the user asked for something impossible": validation (ValueError, raised by
# every config's __post_init__), missing or unwritable files (OSError). Anything else is a bug.
USER_ERRORS = (ValueError, OSError, FloatingPointError)

TRAINABLE = ["transformer", "lstm", "mamba", "mamba2", "hybrid"]  # the others are hand-built ground truths

# command-line flag -> model config field; only flags the user gave are passed on
MODEL_FLAGS = {
    "d_model": int,
    "n_layers": int,
    "n_heads": int,
    "positional": str,
    "hard_alibi_heads": int,
    "n_ctx": int,
    "d_state": int,
    "expand": int,
    "layers": str,  # hybrid layer pattern "mamba,attn"; split by HybridConfig (which lists allowed kinds)
}
TASK_FLAGS = {
    "task": str,
    "n_letters": int,
    "min_len": int,
    "max_len": int,
    "ngram": int,
    "answer_len": int,
    "name_len": int,
    "number_len": int,
    "n_queries": int,
    "pack_context": int,
}


ARCH_LABELS = {
    "transformer": "transformer",
    "lstm": "LSTM",
    "mamba": "Mamba",
    "mamba2": "Mamba-2",
    "hybrid": "hybrid",
}


def _default(cls: type, name: str):
    """A dataclass field's default (also for default_factory fields)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _model_default(field: str) -> str:
    """'(default: transformer 128, LSTM 256, ...)' for a model config field, from the architectures' configs;
    one value when every architecture that has the field agrees."""
    values = {}
    for arch in TRAINABLE:
        cls = model_class(arch).config_class
        if field in {f.name for f in dataclasses.fields(cls)}:
            values[ARCH_LABELS[arch]] = _show(_default(cls, field))
    if len(set(values.values())) == 1:
        return f"({', '.join(values)}; default {next(iter(values.values()))})"
    return "(default: " + ", ".join(f"{arch} {value}" for arch, value in values.items()) + ")"


def _task_default(field: str) -> str:
    return f"(default {_show(_default(TaskConfig, field))})"


def _add_task_args(p: argparse.ArgumentParser, defaults: bool) -> None:
    task = TaskConfig()
    title = f"task (defaults: {task.task}, {task.n_letters} letters, lengths {task.min_len}..{task.max_len})"
    g = p.add_argument_group(title if defaults else "task overrides (default: the checkpoint's task)")
    d = _task_default if defaults else (lambda field: "")
    g.add_argument("--task", choices=TASKS, help=f"synthetic task {d('task')}")
    g.add_argument("--n-letters", type=int, help=f"alphabet size |V|, 2..26 {d('n_letters')}")
    g.add_argument(
        "--min-len", type=int, help=f"shortest string (entries for phonebook, pairs for mqar) {d('min_len')}"
    )
    g.add_argument("--max-len", type=int, help=f"longest string {d('max_len')}")
    g.add_argument("--ngram", type=int, help=f"key n-gram size for lookups / unique n-grams {d('ngram')}")
    g.add_argument(
        "--unique-ngrams", action="store_true", default=None, help="strings without repeated n-grams"
    )
    g.add_argument("--answer-len", type=int, help=f"tokens to retrieve in lookups {d('answer_len')}")
    g.add_argument("--name-len", type=int, help=f"phone-book name length {d('name_len')}")
    g.add_argument("--number-len", type=int, help=f"phone-book number length {d('number_len')}")
    g.add_argument("--n-queries", type=int, help=f"queries per associative-recall example {d('n_queries')}")
    g.add_argument(
        "--pack-context",
        type=int,
        help=f"pack examples into rows of this many tokens (paper: 220) {d('pack_context')}",
    )


def _task_options(args: argparse.Namespace) -> dict:
    opts = {k: getattr(args, k) for k in TASK_FLAGS if getattr(args, k, None) is not None}
    if getattr(args, "unique_ngrams", None):
        opts["unique_ngrams"] = True
    return opts


def _parse_model_opts(pairs: list[str]) -> dict:
    """`--model-opt rotary_pct=0.25` -> {"rotary_pct": 0.25}; values are read as JSON when they parse."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--model-opt expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line like every other interp error, instead of the usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser; each subcommand names its handler with `set_defaults(handler=...)`."""
    parser = _Parser(
        prog="interp",
        description="Train, evaluate and inspect transformers, Mamba and LSTMs on copy and retrieval tasks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on a synthetic task into a run folder")
    p.set_defaults(handler=cmd_train)
    p.add_argument("--arch", choices=TRAINABLE, help="model family (default transformer)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, config.json, metrics.jsonl)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    how.add_argument("--overwrite", action="store_true", help="delete the run saved in --out and start over")
    g = p.add_argument_group("model (defaults: each architecture's config)")
    m = _model_default
    g.add_argument("--d-model", type=int, help=f"width {m('d_model')}")
    g.add_argument("--n-layers", type=int, help=f"layers {m('n_layers')}")
    g.add_argument("--n-heads", type=int, help=f"attention heads {m('n_heads')}")
    g.add_argument("--positional", help=f"rope | nope | alibi | hard_alibi {m('positional')}")
    g.add_argument(
        "--hard-alibi-heads", type=int, help="heads with a hard window (hard_alibi; default n_heads // 2)"
    )
    g.add_argument("--n-ctx", type=int, help=f"longest input the model accepts {m('n_ctx')}")
    g.add_argument("--d-state", type=int, help=f"SSM state size per channel {m('d_state')}")
    g.add_argument("--expand", type=int, help=f"inner width factor {m('expand')}")
    g.add_argument(
        "--layers",
        help=f"hybrid layer pattern, comma-separated kinds: mamba, mamba2, attn, mlp {m('layers')}",
    )
    g.add_argument("--model-opt", action="append", metavar="KEY=VALUE", help="any other model config field")
    _add_task_args(p, defaults=True)
    g = p.add_argument_group("training")
    for name, typ, help_ in [
        ("steps", int, "optimizer steps"),
        ("batch-size", int, "examples per step"),
        ("lr", float, "peak learning rate"),
        ("warmup-steps", int, "linear warm-up steps"),
        ("eval-every", int, "steps between evaluations"),
        ("checkpoint-every", int, "steps between checkpoints"),
        ("seed", int, "seed for data and initialisation"),
    ]:
        default = _default(TrainConfig, name.replace("-", "_"))
        g.add_argument(f"--{name}", type=typ, help=f"{help_} (default {default})")
    g.add_argument(
        "--device",
        default=_default(TrainConfig, "device"),
        help="auto (CUDA if present) | cpu | cuda[:N] (default %(default)s)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")

    from interp.analysis.evaluation import evaluate

    ev = {k: v.default for k, v in inspect.signature(evaluate).parameters.items()}
    p = sub.add_parser("eval", help="accuracy per string length of a checkpoint")
    p.set_defaults(handler=cmd_eval)
    p.add_argument("checkpoint", help="checkpoint folder")
    p.add_argument(
        "--lengths", default="10,20,40", help="comma-separated string lengths (default %(default)s)"
    )
    p.add_argument(
        "--mode",
        choices=["teacher", "greedy", "both"],
        default=ev["modes"][0],
        help="decoding: teacher-forced, greedy, or both (default %(default)s)",
    )
    p.add_argument(
        "--examples", type=int, default=ev["n_examples"], help="examples per length (default %(default)s)"
    )
    p.add_argument(
        "--batch-size", type=int, default=ev["batch_size"], help="examples per forward (default %(default)s)"
    )
    p.add_argument(
        "--seed", type=int, default=ev["seed"], help="seed of the evaluation batches (default %(default)s)"
    )
    p.add_argument(
        "--device", default="auto", help="auto (CUDA if present) | cpu | cuda[:N] (default %(default)s)"
    )
    p.add_argument("--json", help="also write the table as JSON records to this file")
    p.add_argument("--csv", help="also write the table as CSV to this file")
    _add_task_args(p, defaults=False)

    p = sub.add_parser(
        "demo",
        help="the paper's first result in minutes: a transformer, Mamba and an LSTM learn to copy; "
        "accuracy vs training examples seen",
    )
    p.set_defaults(handler=cmd_demo)
    from interp.demo import DEMO_MODELS

    demo_steps = sorted({train.steps for _, train in DEMO_MODELS.values()})
    p.add_argument(
        "--out", default="demo_out", help="folder for checkpoints, table and plot (default %(default)s)"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps per model (default {','.join(map(str, demo_steps))}, the demo preset's)",
    )
    p.add_argument(
        "--archs", default=None, help=f"comma-separated subset of {','.join(DEMO_MODELS)} (default: all)"
    )
    p.add_argument(
        "--device", default="auto", help="auto (CUDA if present) | cpu | cuda[:N] (default %(default)s)"
    )
    p.add_argument("--workers", type=int, default=None, help="models trained at once (default: one per core)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("info", help="print a checkpoint's configuration, size and state size")
    p.set_defaults(handler=cmd_info)
    p.add_argument("checkpoint")

    add_reproduce_parser(sub).set_defaults(handler=cmd_reproduce)

    p = sub.add_parser(
        "docs",
        help="build the documentation site (mkdocs build --strict), or serve it with --serve",
        description="Build the documentation site from docs/ and mkdocs.yml of this source checkout, "
        "strictly (a broken link or an unresolved generated table fails), or serve it with live reload. "
        "Needs the docs extra: pip install -e '.[docs]'.",
    )
    p.set_defaults(handler=cmd_docs)
    p.add_argument("--serve", action="store_true", help="serve the site locally and rebuild on changes")
    p.add_argument("--addr", default="127.0.0.1:8000", help="address for --serve (default %(default)s)")
    p.add_argument("--out", help="folder for the built site (default: site_dir of mkdocs.yml, build/site)")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    model_opts = {k: getattr(args, k) for k in MODEL_FLAGS if getattr(args, k, None) is not None}
    model_opts |= _parse_model_opts(args.model_opt)
    if args.resume:
        found = read_checkpoint(out) if out.is_dir() else None
        if found is None:
            what = "does not exist" if not out.exists() else "holds no checkpoint"
            raise FileNotFoundError(f"--resume: {out} {what}; give the --out folder of an earlier run")
        # the saved run, with the flags given now on top; train() refuses those that would change the run
        saved = found.config
        if args.arch and args.arch != saved.get("arch"):
            raise ValueError(
                f"cannot resume {out}: --arch {args.arch} differs from the saved {saved.get('arch')}"
            )
        section = lambda key: _section(saved, key, found.path)
        task = TaskConfig.from_dict({**section("task"), **_task_options(args)})
        cfg = TrainConfig.from_dict({**section("train"), **_train_overrides(args)})
        model = build_model(saved.get("arch"), **{**section("model"), **model_opts})
    else:
        task = TaskConfig.from_dict(_task_options(args))
        cfg = TrainConfig.from_dict(_train_overrides(args))
        model_opts.setdefault("d_vocab", task.vocab.size)
        torch.manual_seed(cfg.seed)
        model = build_model(args.arch or "transformer", **model_opts)
    print(
        f"training {model.arch} ({model.num_params():,} parameters) on {task.task}, {cfg.steps} steps -> {out}"
    )
    result = train(
        model, task, cfg, out_dir=out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet
    )
    if result.metrics:
        last = result.metrics[-1]
        print(
            f"step {last['step']}: loss {last['loss']:.4f}, held-out string accuracy {last['string_acc']:.3f}, "
            f"char accuracy {last['char_acc']:.3f}"
        )
    return 0


def _section(saved: dict, key: str, where: Path) -> dict:
    if not isinstance(saved.get(key), dict):
        raise ValueError(f"{where / 'config.json'}: {key!r} must be a JSON object, got {saved.get(key)!r}")
    return saved[key]


def _train_overrides(args: argparse.Namespace) -> dict:
    names = ["steps", "batch_size", "lr", "warmup_steps", "eval_every", "checkpoint_every", "seed"]
    opts = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    opts["device"] = args.device
    return opts


def cmd_eval(args: argparse.Namespace) -> int:
    from interp.analysis.evaluation import evaluate

    check_int("--examples", args.examples)
    check_int("--batch-size", args.batch_size)
    device = resolve_device(check_device(args.device))
    model = load(args.checkpoint, device)
    saved_task = getattr(model, "checkpoint", {}).get("task") or {}
    task = TaskConfig.from_dict({**saved_task, **_task_options(args)})
    modes = ("teacher", "greedy") if args.mode == "both" else (args.mode,)
    df = evaluate(
        model,
        task,
        parse_int_list(args.lengths),
        n_examples=args.examples,
        batch_size=args.batch_size,
        modes=modes,
        seed=args.seed,
        progress=True,
        name=Path(args.checkpoint).name,
    )
    print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    write_table(df, args.json, args.csv)
    return 0


def write_table(df, json_path: str | None, csv_path: str | None) -> None:
    if json_path:
        atomic_write_text(json_path, df.to_json(orient="records", indent=2))
    if csv_path:
        atomic_write(csv_path, lambda tmp: df.to_csv(tmp, index=False))


def cmd_info(args: argparse.Namespace) -> int:
    model: HookedModel = load(args.checkpoint)
    print(f"{args.checkpoint}: {model.arch}, {model.num_params():,} parameters")
    saved = getattr(model, "checkpoint", {})
    if saved.get("step") is not None:
        total = saved.get("train", {}).get("steps")
        print(f"checkpoint at step {saved['step']}" + (f" of {total}" if total else ""))
    print(json.dumps(model.cfg.to_dict(), indent=2))
    size = model.state_size()
    if size is not None:
        print(
            f"recurrent state: {size.numbers:,} numbers = {size.bits:,} bits ({size.numbers_per_layer} per layer)"
        )
    print(f"{len(model.hook_names())} hook points, e.g. {', '.join(model.hook_names()[:4])}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from interp.demo import run_demo

    t0 = time.perf_counter()
    archs = args.archs.split(",") if args.archs else None
    if args.steps is not None:
        check_int("--steps", args.steps)
    if args.workers is not None:
        check_int("--workers", args.workers)
    table, paths = run_demo(
        args.out,
        archs=archs,
        steps=args.steps,
        device=check_device(args.device),
        progress=not args.quiet,
        workers=args.workers,
    )
    print(table)
    print(f"\nwrote {', '.join(str(p) for p in paths)} in {time.perf_counter() - t0:.0f} s")
    return 0


DOCS_PACKAGES = {"mkdocs": "mkdocs", "material": "mkdocs-material", "mkdocstrings": "mkdocstrings[python]"}


def docs_command(serve: bool = False, addr: str = "127.0.0.1:8000", out: str | None = None) -> list[str]:
    """The mkdocs command `interp docs` runs; raises if mkdocs (the docs extra) or mkdocs.yml is missing."""
    missing = [pip for module, pip in DOCS_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ValueError(
            f"the documentation tools are not installed ({', '.join(missing)}); install the docs extra: "
            "pip install -e '.[docs]' (bash setup.sh installs it)"
        )
    config = Path(__file__).resolve().parent.parent / "mkdocs.yml"
    if not config.exists():
        raise FileNotFoundError(f"{config} not found: interp docs builds the site of a source checkout")
    command = [sys.executable, "-m", "mkdocs", "serve" if serve else "build", "--strict", "-f", str(config)]
    if serve:
        command += ["--dev-addr", addr]
    elif out:
        command += ["--site-dir", str(Path(out).resolve())]
    return command


def cmd_docs(args: argparse.Namespace) -> int:
    command = docs_command(args.serve, args.addr, args.out)
    root = Path(command[command.index("-f") + 1]).parent  # mkdocs.yml names its folders from the repo root
    # NO_MKDOCS_2_WARNING: Material's banner about MkDocs 2.0 is not about this site
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    if args.serve:  # runs until stopped: become the server, so that Ctrl-C or kill reaches it (no orphan)
        os.chdir(root)
        os.execve(command[0], command, env)
    return subprocess.run(command, cwd=root, env=env).returncode


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _warn_one_line
        try:
            return args.handler(args)
        except TrainingInterrupted as e:
            where = f"; checkpoint saved. Continue with: interp train --out {shlex.quote(str(e.out_dir))} --resume"
            print(f"interp {args.command}: interrupted after step {e.step}{where}", file=sys.stderr)
            return 130
        except KeyboardInterrupt:
            print(f"interp {args.command}: interrupted", file=sys.stderr)
            return 130
        except USER_ERRORS as e:
            if os.environ.get("INTERP_DEBUG"):
                raise
            message = " ".join(str(e).split()) or type(e).__name__
            print(f"interp {args.command}: error: {message}", file=sys.stderr)
            return 2


def _warn_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"interp: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
