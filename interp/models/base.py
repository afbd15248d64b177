"""What every interp model shares: checked hook points, hook-name validation, input checks, state size.

Every model is a TransformerLens `HookedRootModule`, so `run_with_hooks`, `run_with_cache`, `hooks()`
and `ActivationCache` behave as interpretability users expect, and `nnsight.NNsight(model)` wraps it
like any other `nn.Module`. Subclasses set `arch`, keep their dataclass config in `self.cfg`, call
`self.setup()` at the end of `__init__`, and implement `forward(tokens) -> logits`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from interp.generation import decodes_incrementally, greedy_steps
from interp.hooks import HookInfo, UnknownHookError, attached, axes_of, check_hook_name, check_tokens

__all__ = ["Hook", "HookedModel", "StateSize", "UnknownHookError"]


class Hook(HookPoint):
    """A `HookPoint` that refuses hook functions which change the activation's shape.

    TransformerLens silently passes a wrongly shaped return value on, which then fails far away (or
    worse, broadcasts). Here the error names the hook and the shape it must keep.

    `Hook("batch pos head d_head")` declares the activation's axes once, for every analysis
    (`interp.hooks`); `state`, `patch` and `grad_via` go into its `HookInfo` too.
    """

    def __init__(self, axes: str | None = None, **info):
        super().__init__()
        self.info: HookInfo | None = None
        if axes is not None:
            self.info = HookInfo(axes_of(axes).axes, **info)
            self.pos_dim = self.info.pos  # HookPoint's own (optional) field for the position axis

    def __call__(self, x: Tensor) -> Tensor:
        out = super().__call__(x)  # nn.Module.__call__ already skips hook dispatch when none exist
        if out is not x and (not isinstance(out, Tensor) or out.shape != x.shape):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"hook function on {self.name!r} returned {got}; it must return a tensor of the "
                f"activation's shape {tuple(x.shape)} (or None to leave it unchanged)"
            )
        return out

    @property
    def active(self) -> bool:
        """True when a hook function is attached, i.e. the model must compute this activation."""
        return bool(self._forward_hooks)


@dataclass(frozen=True)
class StateSize:
    """The fixed memory a recurrent model carries from one token to the next (paper, Section 2).

    `numbers_per_layer[l]` counts the floats layer `l` keeps (SSM state, conv cache, LSTM h and c);
    bits assume `bits_per_number` bits each (32 for float32). The paper's bound: a model whose state
    holds `bits` bits cannot copy a random string once `L * log2|V|` clearly exceeds it.
    """

    numbers_per_layer: tuple[int, ...]
    bits_per_number: int = 32

    @property
    def numbers(self) -> int:
        return sum(self.numbers_per_layer)

    @property
    def bits(self) -> int:
        return self.numbers * self.bits_per_number

    def max_copy_length(self, n_letters: int) -> float:
        """Longest uniformly random string over `n_letters` letters the state could hold, in tokens."""
        return self.bits / math.log2(n_letters)


class HookedModel(HookedRootModule):
    """Base class: `forward(tokens [B, P]) -> logits [B, P, d_vocab]` with named hook points."""

    arch: ClassVar[str]
    cfg: Any
    # hook names within a block (e.g. "attn.hook_z") where a patch at position p changes only position p of
    # that block (`interp.analysis.patching.reuse`); a model whose forward can resume sets its own
    POSITION_LOCAL: ClassVar[frozenset[str]] = frozenset()

    def position_local(self, hook: str) -> bool:
        """Whether a patch of `hook` at position p changes only position p of its own block (so
        `forward_from(..., single=True)` may run that block on position p alone)."""
        return hook.split(".", 2)[-1] in self.POSITION_LOCAL if hook.startswith("blocks.") else False

    @contextmanager
    def hooks_first(self, fwd_hooks: Iterable[tuple[str, Callable]]):
        """Forward hooks that run before any hook already attached (TransformerLens' `prepend=True`), so
        they see each activation as the forward computed it, before a user's hook edits it; removed on
        exit. Resumed forwards record what their hooks will see again this way (`resume_state`)."""
        with attached(self, list(fwd_hooks), prepend=True):
            yield

    # ---- inputs -------------------------------------------------------------------------------
    def check_tokens(self, tokens: Tensor) -> None:
        """Raise a clear error for tokens the model cannot take (wrong rank, ids, or too long)."""
        check_tokens(self, tokens)

    @torch.no_grad()
    def generate_greedy(self, prompt: Tensor, n_new: int, attention_mask: Tensor | None = None) -> Tensor:
        """prompt [B, P] -> [B, P + n_new]: the prompt read in one pass (`prefill`), then one argmax token
        per step (`decode_step`: a key/value cache for the transformer, step mode for Mamba, (h, c) for
        the LSTM), through `interp.generation.greedy_steps`, the loop task evaluation uses too.
        attention_mask [B, P] marks left padding (0), as in Hugging Face."""
        if not decodes_incrementally(self):
            raise NotImplementedError(
                f"{type(self).__name__} has no incremental decoding (prefill/decode_step)"
            )
        if n_new < 0:
            raise ValueError(f"n_new must be >= 0, got {n_new}")
        if prompt.ndim != 2 or prompt.shape[1] < 1:
            raise ValueError(
                f"prompt must be [batch, pos] with at least one token, got {tuple(prompt.shape)}"
            )
        n_ctx = getattr(self.cfg, "n_ctx", None)
        if n_ctx is not None and prompt.shape[1] + n_new > n_ctx:
            raise ValueError(
                f"prompt of {prompt.shape[1]} tokens + {n_new} new ones exceeds the model's n_ctx={n_ctx}"
            )
        self.check_left_padding(attention_mask)
        new = greedy_steps(self, prompt, n_new, attention_mask=attention_mask, incremental=True)
        return torch.cat([prompt, new.to(prompt.dtype)], dim=1)

    @staticmethod
    def check_left_padding(attention_mask: Tensor | None) -> None:
        """Generation reads each sequence's last position, so padding must come first (left padding)."""
        if attention_mask is None:
            return
        mask = attention_mask.bool()
        if not bool(mask[:, -1].all()) or bool((mask[:, 1:] < mask[:, :-1]).any()):
            raise ValueError(
                "attention_mask must be left padding (0s, then 1s, ending with a token) for generation and "
                "for a returned cache; right-padded rows would continue from a padding position"
            )

    @staticmethod
    def check_attention_mask(tokens: Tensor, attention_mask: Tensor | None) -> None:
        """attention_mask [B, P] (1 = token, 0 = padding) must have the tokens' shape."""
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(tokens.shape):
            raise ValueError(
                f"attention_mask must have the tokens' shape {tuple(tokens.shape)}, got {tuple(attention_mask.shape)}"
            )

    @staticmethod
    def check_logits_to_keep(n: int) -> None:
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"logits_to_keep must be an int >= 0 (0 = every position), got {n!r}")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- what TransformerLens's utilities read ------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self._sync_cfg_device()

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .half(), ... all pass through here
        out = super()._apply(fn, *args, **kwargs)
        self._sync_cfg_device()
        return out

    def _sync_cfg_device(self) -> None:
        """`cfg.device` follows the weights: `transformer_lens.patching` allocates its results there. It
        is a plain attribute, not a config field, so checkpoints do not store it."""
        cfg = getattr(self, "cfg", None)
        if cfg is not None:
            try:
                cfg.device = str(self.device)
            except StopIteration:  # no parameters (yet)
                cfg.device = "cpu"

    # ---- hook names ---------------------------------------------------------------------------
    def hook_names(self) -> list[str]:
        return list(self.hook_dict)

    def check_hook_name(self, name: str) -> None:
        check_hook_name(self, name)

    def add_hook(self, name: str | Callable[[str], bool], hook, *args, **kwargs) -> None:
        if isinstance(name, str):
            self.check_hook_name(name)
        super().add_hook(name, hook, *args, **kwargs)

    def _enable_hook_with_name(self, name: str, hook, dir):  # the path run_with_hooks/hooks() take
        self.check_hook_name(name)
        super()._enable_hook_with_name(name, hook, dir)

    def run_with_cache(self, *args, names_filter=None, **kwargs):
        for name in [names_filter] if isinstance(names_filter, str) else _names_or_empty(names_filter):
            self.check_hook_name(name)
        return super().run_with_cache(*args, names_filter=names_filter, **kwargs)

    # ---- memory --------------------------------------------------------------------------------
    def state_size(self) -> StateSize | None:
        """Fixed recurrent state (numbers and bits per layer); None for models whose memory grows."""
        return None

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _names_or_empty(names_filter: Any) -> Iterable[str]:
    if isinstance(names_filter, (list, tuple, set)):
        return [n for n in names_filter if isinstance(n, str)]
    return []
