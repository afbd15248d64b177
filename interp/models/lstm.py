"""A stacked LSTM baseline (a GSSM in the paper's terms) with hooks on its hidden and cell state.

The fast path is PyTorch's fused `nn.LSTM`. When a hook watches the state, an explicit time loop
(the reference, tested against `nn.LSTM`) produces hidden and cell state at every position; if a
hook function edits them, the recurrence is re-run so that later positions see the edited state:
patching `blocks.{l}.hook_cell` at position t changes every output from t on and none before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from interp.config import Config
from interp.models.base import Hook, HookedModel, StateSize


def lstm_reference(
    x: Tensor, lstm: nn.LSTM, h_edit: Tensor | None = None, c_edit: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One-layer LSTM as a plain loop. x: [B, P, D_in] -> hidden, cell: [B, P, D].

    h_edit / c_edit ([B, P, D], NaN where not edited) replace the state at the edited entries: an
    edited c_t also feeds h_t = o_t * tanh(c_t), so the edit shows in the output at t and after.
    """
    b, p, _ = x.shape
    d = lstm.hidden_size
    w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
    bias = lstm.bias_ih_l0 + lstm.bias_hh_l0
    gates_x = x @ w_ih.T + bias  # [B, P, 4D], input part of every step at once
    h = x.new_zeros(b, d)
    c = x.new_zeros(b, d)
    hs, cs = [], []
    for t in range(p):
        i, f, g, o = (gates_x[:, t] + h @ w_hh.T).chunk(4, dim=-1)  # PyTorch's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        if c_edit is not None:  # before h reads it: an edited cell state shows from position t on
            c = torch.where(torch.isnan(c_edit[:, t]), c, c_edit[:, t])
        h = torch.sigmoid(o) * torch.tanh(c)
        if h_edit is not None:
            h = torch.where(torch.isnan(h_edit[:, t]), h, h_edit[:, t])
        hs.append(h)
        cs.append(c)
    return torch.stack(hs, 1), torch.stack(cs, 1)


class LSTMLayer(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.lstm = nn.LSTM(d_model, d_model, batch_first=True)
        self.hook_hidden = Hook()  # [batch, pos, d_model], h_t after each position
        self.hook_cell = Hook()  # [batch, pos, d_model], c_t after each position

    def forward(self, x: Tensor) -> Tensor:
        if not (self.hook_hidden.active or self.hook_cell.active):
            return self.lstm(x)[0]  # fast path: nobody looks at the per-position state
        h, c = lstm_reference(x, self.lstm)
        h_new, c_new = self.hook_hidden(h), self.hook_cell(c)
        if h_new is h and c_new is c:
            return h
        # A hook edited the state: replay the recurrence from the edits on.
        edit = lambda new, old: torch.where(new != old, new, torch.full_like(new, float("nan")))
        return lstm_reference(x, self.lstm, h_edit=edit(h_new, h), c_edit=edit(c_new, c))[0]


@dataclass
class LSTMConfig(Config):
    d_vocab: int = 30  # tokens; 26 letters + 4 symbols for the paper's tasks
    d_model: int = 256  # hidden and cell width; the state is 2 * d_model numbers per layer
    n_layers: int = 2
    n_ctx: int | None = None  # no positional limit; set to guard against overlong inputs
    init_std: float = 0.02


class HookedLSTM(HookedModel):
    """Embedding -> stacked LSTM layers -> LayerNorm -> unembedding; hooks per layer on h and c."""

    arch: ClassVar[str] = "lstm"
    config_class: ClassVar[type] = LSTMConfig

    def __init__(self, cfg: LSTMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        nn.init.normal_(self.embed.weight, std=cfg.init_std)
        self.hook_embed = Hook()  # [batch, pos, d_model]
        self.blocks = nn.ModuleList([LSTMLayer(cfg.d_model) for _ in range(cfg.n_layers)])
        self.ln_final = nn.LayerNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False)
        self.setup()

    def forward(self, tokens: Tensor) -> Tensor:
        self.check_tokens(tokens)
        x = self.hook_embed(self.embed(tokens))
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_final(x))

    def state_size(self) -> StateSize:
        return StateSize(tuple(2 * self.cfg.d_model for _ in self.blocks))
