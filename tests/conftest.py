import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Tiny models on a 2-core machine: one thread avoids oversubscription when other work shares the cores.
torch.set_num_threads(1)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_python():
    """Run `python ARGS...` from the repository root (scripts and `-m benchmarks.NAME`); returns the process."""

    def run(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        env.setdefault("OMP_NUM_THREADS", "1")  # smoke runs: two threads beside other work thrash the cores
        return subprocess.run(
            [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )

    return run
