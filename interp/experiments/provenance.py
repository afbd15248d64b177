"""Where a result came from: the commit of the code and the machine, recorded with every run."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def git_commit(repo: Path | None = None) -> str:
    """The commit the code ran from ('+ local changes' when the work tree differs), or 'unknown'."""
    cwd = repo or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True, text=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True)
    except OSError:
        return "unknown"
    if head.returncode:
        return "unknown"
    return head.stdout.strip() + (" + local changes" if dirty.stdout.strip() else "")


def commits_of(records: list[dict]) -> str:
    """The distinct commits the runs' training and evaluations came from (older records lack it)."""
    seen = [r.get("commit") for r in records] + [e.get("commit") for r in records for e in r["evals"]]
    known = sorted({c for c in seen if c})
    missing = sum(c is None for c in seen)
    parts = known + ([f"{missing} records from before commits were recorded"] if missing else [])
    return "; ".join(parts) or "unknown"


def machine() -> str:
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{platform.platform()}, {os.cpu_count()} CPU cores{gpu}, Python {platform.python_version()}, torch {torch.__version__}"
