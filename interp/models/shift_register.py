"""A hand-built linear recurrent model whose state is a shift register: a planted ground truth for probes.

The state holds exactly the last `memory` tokens, one-hot, one slot per token:

    h_t = A h_{t-1} + B onehot(x_t)        h_t: [memory * d_vocab]
    A   moves slot j to slot j + 1 (the oldest slot falls off); B writes the new token into slot 0

so slot j of h_t is onehot(x_{t-j}) for j < memory (zeros before the sequence starts). A linear probe
on `hook_state` therefore decodes lags 0..memory-1 perfectly and lags >= memory not at all, and the
state carries exactly `memory * log2|V|` bits about a uniformly random string: tests of
`interp.analysis.probing` and `interp.analysis.saturation` check that they recover these numbers.

Hooks: `hook_embed` [B, P, d_vocab] (the one-hot input), `hook_state` [B, P, memory * d_vocab] (h_t after
each position). The readout is the oldest slot (the model predicts the token `memory - 1` positions
back); an edit of `hook_state` changes only that position's readout, not later states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from interp.config import Config
from interp.models.base import Hook, HookedModel, StateSize

READOUT_SCALE = 10.0  # logit of the token in the oldest slot


@dataclass
class ShiftRegisterConfig(Config):
    d_vocab: int = 30  # tokens; 26 letters + 4 symbols for the paper's tasks
    memory: int = 4  # m: tokens the state holds; its capacity is m * log2(d_vocab) bits
    n_ctx: int | None = None  # optional guard against overlong inputs

    def __post_init__(self):
        for name in ("d_vocab", "memory"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


class ShiftRegister(HookedModel):
    """`forward(tokens [B, P]) -> logits [B, P, d_vocab]` through the linear recurrence above."""

    arch: ClassVar[str] = "shift_register"
    config_class: ClassVar[type] = ShiftRegisterConfig

    def __init__(self, cfg: ShiftRegisterConfig):
        super().__init__()
        self.cfg = cfg
        m, v = cfg.memory, cfg.d_vocab
        shift = torch.zeros(m * v, m * v)
        shift[v:, :-v] = torch.eye((m - 1) * v)  # slot j -> slot j + 1
        write = torch.zeros(m * v, v)
        write[:v] = torch.eye(v)  # the new token goes to slot 0
        self.register_buffer("A", shift)  # [m * V, m * V]
        self.register_buffer("B", write)  # [m * V, V]
        self.hook_embed = Hook("batch pos d_vocab")  # [batch, pos, d_vocab]
        self.hook_state = Hook("batch pos d_state", state=True)  # [batch, pos, memory * d_vocab]
        self.setup()

    def forward(self, tokens: Tensor) -> Tensor:
        self.check_tokens(tokens)
        x = self.hook_embed(F.one_hot(tokens, self.cfg.d_vocab).float())  # [B, P, V]
        h = x.new_zeros(x.shape[0], self.A.shape[0])  # [B, m * V]
        states = []
        for t in range(x.shape[1]):
            h = h @ self.A.T + x[:, t] @ self.B.T
            states.append(h)
        states = self.hook_state(torch.stack(states, dim=1))  # [B, P, m * V]
        v = self.cfg.d_vocab
        return READOUT_SCALE * states[..., -v:]  # the oldest slot

    def state_size(self) -> StateSize:
        """memory * d_vocab numbers, each 0 or 1: one bit per number."""
        return StateSize((self.cfg.memory * self.cfg.d_vocab,), bits_per_number=1)

    @property
    def device(self) -> torch.device:  # no parameters: the buffers say where the model lives
        return self.A.device
