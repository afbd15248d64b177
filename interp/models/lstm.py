"""A stacked LSTM baseline (a GSSM in the paper's terms) with hooks on its hidden and cell state.

The fast path is PyTorch's fused `nn.LSTM`. When a hook watches the state, an explicit time loop
(the reference, tested against `nn.LSTM`) produces hidden and cell state at every position; if a
hook function edits them, the recurrence is re-run so that later positions see the edited state:
patching `blocks.{l}.hook_cell` at position t changes every output from t on and none before.

Incremental decoding (`generate_greedy`, `interp.generation`): `prefill(prompt)` reads the prompt in one
pass and returns the last position's logits with the state, per layer (h, c) [B, d_model] each;
`decode_step(token, state)` advances every layer by one token with the fused cell. Hooks fire in
`prefill` (it is a forward pass) but not in `decode_step`, as in Mamba's step mode.

attention_mask [B, P] (1 = token, 0 = padding), as in Hugging Face: the state is held (zero before the
first real token) through padding, so a left-padded row gives the logits of the sequence alone at
its real positions. Masked inputs take the explicit loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from interp.config import Config
from interp.hooks import call_keeping_input
from interp.models.base import Hook, HookedModel, StateSize


def lstm_reference(
    x: Tensor,
    lstm: nn.LSTM,
    h_edit: Tensor | None = None,
    c_edit: Tensor | None = None,
    mask: Tensor | None = None,
    init: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """One-layer LSTM as a plain loop. x: [B, P, D_in] -> hidden, cell: [B, P, D].

    h_edit / c_edit ([B, P, D], NaN where not edited) replace the state at the edited entries: an
    edited c_t also feeds h_t = o_t * tanh(c_t), so the edit shows in the output at t and after.
    mask [B, P] (bool, True = token): at padding positions the state is held unchanged.
    init: the state (h, c) [B, D] each before the first position (default zeros).
    """
    b, p, _ = x.shape
    d = lstm.hidden_size
    w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
    bias = lstm.bias_ih_l0 + lstm.bias_hh_l0
    gates_x = x @ w_ih.T + bias  # [B, P, 4D], input part of every step at once
    h, c = init if init is not None else (x.new_zeros(b, d), x.new_zeros(b, d))
    hs, cs = [], []
    for t in range(p):
        i, f, g, o = (gates_x[:, t] + h @ w_hh.T).chunk(4, dim=-1)  # PyTorch's gate order
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        if c_edit is not None:  # before h reads it: an edited cell state shows from position t on
            c_new = torch.where(torch.isnan(c_edit[:, t]), c_new, c_edit[:, t])
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        if mask is not None:  # padding: keep the previous state
            keep = ~mask[:, t, None]
            c_new, h_new = torch.where(keep, c, c_new), torch.where(keep, h, h_new)
        c, h = c_new, h_new
        if h_edit is not None:
            h = torch.where(torch.isnan(h_edit[:, t]), h, h_edit[:, t])
        hs.append(h)
        cs.append(c)
    return torch.stack(hs, 1), torch.stack(cs, 1)


class LSTMLayer(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.lstm = nn.LSTM(d_model, d_model, batch_first=True)
        self.hook_hidden = Hook(
            "batch pos d_model", state=True, patch="recurrence"
        )  # [batch, pos, d_model], h_t after each position
        self.hook_cell = Hook(
            "batch pos d_model", state=True, patch="recurrence"
        )  # [batch, pos, d_model], c_t after each position

    def forward(
        self,
        x: Tensor,
        state_out: list | None = None,
        mask: Tensor | None = None,
        init: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """x [B, P, D] -> h [B, P, D]. state_out: append the final (h, c), each [B, D]. mask [B, P] bool.
        init: the state (h, c) [B, D] each before x's first position (default zeros)."""
        if mask is None and not (self.hook_hidden.active or self.hook_cell.active):
            hx = None if init is None else (init[0][None].contiguous(), init[1][None].contiguous())
            out, (h_n, c_n) = self.lstm(x, hx)  # fast path: nobody looks at the per-position state
            if state_out is not None:
                state_out.append((h_n[0], c_n[0]))
            return out
        h, c = lstm_reference(x, self.lstm, mask=mask, init=init)
        unedited = lambda i: lambda: lstm_reference(x, self.lstm, mask=mask, init=init)[i]  # noqa: E731
        h_new, h = call_keeping_input(self.hook_hidden, h, unedited(0))  # h: what the hook received
        c_new, c = call_keeping_input(self.hook_cell, c, unedited(1))
        if not (h_new is h and c_new is c):
            # A hook edited the state: replay the recurrence from the edits on.
            edit = lambda new, old: torch.where(new != old, new, torch.full_like(new, float("nan")))
            h, c = lstm_reference(
                x, self.lstm, h_edit=edit(h_new, h), c_edit=edit(c_new, c), mask=mask, init=init
            )
        if state_out is not None:
            state_out.append((h[:, -1], c[:, -1]))
        return h

    def step(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One position: x [B, D] and (h, c) [B, D] each -> h' [B, D] and (h', c'). Hooks do not fire."""
        h, c = state
        out, (h_n, c_n) = self.lstm(x[:, None], (h[None], c[None]))
        return out[:, 0], (h_n[0], c_n[0])


@dataclass
class LSTMResume:
    """What `HookedLSTM.forward_from` restarts from: one recorded forward of B sequences."""

    logits: Tensor  # [B, P, d_vocab]
    embed: Tensor  # [B, P, d_model], the first layer's input
    layers: list[tuple[Tensor, Tensor]]  # per layer (h, c) at every position, each [B, P, d_model]
    mask: Tensor | None  # [B, P] True = token; None: no padding


@dataclass
class LSTMState:
    """What the LSTM remembers after the tokens read so far: `layers[l]` = (h, c), each [B, d_model]."""

    layers: list[tuple[Tensor, Tensor]]
    n_tokens: int = 0


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
        self.hook_embed = Hook("batch pos d_model")  # [batch, pos, d_model]
        self.blocks = nn.ModuleList([LSTMLayer(cfg.d_model) for _ in range(cfg.n_layers)])
        self.ln_final = nn.LayerNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False)
        self.setup()

    def forward(
        self, tokens: Tensor, attention_mask: Tensor | None = None, logits_to_keep: int = 0
    ) -> Tensor:
        """tokens [B, P] -> logits [B, P, d_vocab] (the last `logits_to_keep` positions only when > 0).

        attention_mask [B, P] (1 = token, 0 = padding): the state is held through padding.
        """
        return self._run(tokens, attention_mask, logits_to_keep)[0]

    def _run(
        self, tokens: Tensor, attention_mask: Tensor | None, logits_to_keep: int, states: list | None = None
    ) -> tuple[Tensor, list | None]:
        self.check_tokens(tokens)
        self.check_logits_to_keep(logits_to_keep)
        mask = None
        self.check_attention_mask(tokens, attention_mask)
        if attention_mask is not None:
            mask = attention_mask.bool()
            if bool(mask.all()):
                mask = None  # no padding: the fused path
        x = self.hook_embed(self.embed(tokens))
        for block in self.blocks:
            x = block(x, states, mask)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        return self.unembed(self.ln_final(x)), states

    # Resuming a forward (the capability `interp.analysis.patching.reuse` asks for): a patch at layer l,
    # position p cannot change layers < l or positions < p, so the patched forward restarts layer l at
    # p from the recorded state (h, c) after p - 1, and every later layer likewise from its own.
    def resume_state(self, tokens: Tensor, attention_mask: Tensor | None = None) -> LSTMResume:
        """One forward of tokens [B, P] recording what `forward_from` restarts from."""
        names = ["hook_embed"] + [
            f"blocks.{i}.hook_{s}" for i in range(len(self.blocks)) for s in ("hidden", "cell")
        ]
        with torch.no_grad():
            logits, cache = self.run_with_cache(tokens, attention_mask, names_filter=names)
        mask = None if attention_mask is None else attention_mask.bool()
        layers = [
            (cache[f"blocks.{i}.hook_hidden"], cache[f"blocks.{i}.hook_cell"])
            for i in range(len(self.blocks))
        ]
        return LSTMResume(logits, cache["hook_embed"], layers, mask)

    def forward_from(self, state: LSTMResume, layer: int, pos: int, copies: int = 1) -> Tensor:
        """Logits [copies * B, P - pos, d_vocab] of the recorded forward resumed at layer `layer`, position
        `pos`; hooks of layers >= layer fire with P - pos positions, on `copies` repeats of the batch."""
        b, n, _ = state.embed.shape
        if not (0 <= layer < len(self.blocks) and 0 <= pos < n):
            raise ValueError(
                f"cannot resume at layer {layer}, position {pos}: layers 0..{len(self.blocks) - 1}, positions 0..{n - 1}"
            )
        rep = lambda t: t.repeat(copies, *[1] * (t.ndim - 1))  # noqa: E731
        x = rep((state.embed if layer == 0 else state.layers[layer - 1][0])[:, pos:])
        mask = None if state.mask is None else rep(state.mask[:, pos:])
        for i in range(layer, len(self.blocks)):
            h, c = state.layers[i]
            init = (rep(h[:, pos - 1]), rep(c[:, pos - 1])) if pos else None
            x = self.blocks[i](x, mask=mask, init=init)
        return self.unembed(self.ln_final(x))

    # ---- incremental decoding ---------------------------------------------------------------
    def prefill(self, prompt: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, LSTMState]:
        """For `generate_greedy`: the prompt in one pass -> (last logits [B, d_vocab], state after it)."""
        self.check_left_padding(attention_mask)
        logits, layers = self._run(prompt, attention_mask, 1, states=[])
        return logits[:, -1], LSTMState(layers=layers, n_tokens=prompt.shape[1])

    def decode_step(self, token: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        """For `generate_greedy`: token [B] -> (logits [B, d_vocab], the new state). Hooks do not fire."""
        if not isinstance(token, Tensor) or token.ndim != 1:
            shape = tuple(token.shape) if isinstance(token, Tensor) else type(token).__name__
            raise ValueError(
                f"decode_step takes one token per sequence, an integer tensor [batch]; got {shape}"
            )
        if self.cfg.n_ctx is not None and state.n_tokens >= self.cfg.n_ctx:
            raise ValueError(
                f"the state already holds n_ctx={self.cfg.n_ctx} tokens; the model's context is full"
            )
        self.check_tokens(token[:, None])
        x = self.embed(token)
        layers = []
        for block, layer_state in zip(self.blocks, state.layers):
            x, new = block.step(x, layer_state)
            layers.append(new)
        return self.unembed(self.ln_final(x)), LSTMState(layers=layers, n_tokens=state.n_tokens + 1)

    def state_size(self) -> StateSize:
        return StateSize(tuple(2 * self.cfg.d_model for _ in self.blocks))
