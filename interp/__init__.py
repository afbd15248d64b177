"""interp: how transformers and state-space models copy and retrieve from context, and where.

>>> import interp
>>> model = interp.load("runs/copy-transformer")        # a checkpoint or a Hugging Face folder
>>> batch = interp.make_batch(interp.TaskConfig(task="copy"), 16)
>>> logits, cache = model.run_with_cache(batch.tokens)
>>> lm = interp.language_model("EleutherAI/pythia-410m")  # the same checkpoint in nnsight (pip install nnsight)
"""

from interp.models import build_model
from interp.models.loading import language_model, load, save_checkpoint
from interp.tasks import Batch, TaskConfig, Vocab, make_batch

__version__ = "0.1.0"
__all__ = [
    "Batch",
    "TaskConfig",
    "Vocab",
    "build_model",
    "language_model",
    "load",
    "make_batch",
    "save_checkpoint",
]
