"""Synthetic copy and retrieval tasks in the paper's token format (see `synthetic.py` for examples)."""

from interp.tasks.batch import IGNORE_INDEX, Batch
from interp.tasks.synthetic import TASKS, TaskConfig, make_batch
from interp.tasks.vocab import Vocab

__all__ = ["IGNORE_INDEX", "TASKS", "Batch", "TaskConfig", "Vocab", "make_batch"]
