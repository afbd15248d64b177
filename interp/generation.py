"""One greedy decoder: read a prompt once, then one argmax token per step.

Models that decode incrementally supply two methods:

    prefill(prompt [B, P], attention_mask [B, P] | None) -> (logits [B, d_vocab] at the last position, state)
    decode_step(token [B], state) -> (logits [B, d_vocab] after that token, state)

The state is the transformer's key/value cache, Mamba's conv window and SSM state (step mode) or the
LSTM's per-layer (h, c). `greedy_steps` is the loop. Both greedy entry points use it:

- `HookedModel.generate_greedy(prompt, n_new)`: free generation, every choice is fed back;
- `interp.analysis.evaluation.greedy_predictions(model, batch)`: task evaluation, where the choice at a
  scored position is fed back and unscored tokens (an MQAR query between two answers) are read as given.

A model without `prefill`/`decode_step` (e.g. `ShiftRegister`, or any `nn.Module` mapping tokens to
logits) is decoded by re-running it on the whole sequence at every step: the same tokens, quadratic
time. Hooks fire in `prefill` (a forward pass) but not in `decode_step`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Feed = Callable[[int, Tensor], Tensor]


def decodes_incrementally(model) -> bool:
    """True when `model` has `prefill` and `decode_step` (our transformer, Mamba and LSTM)."""
    return callable(getattr(model, "prefill", None)) and callable(getattr(model, "decode_step", None))


@torch.no_grad()
def greedy_steps(
    model,
    prompt: Tensor,
    n_steps: int,
    feed: Feed | None = None,
    attention_mask: Tensor | None = None,
    incremental: bool | None = None,
) -> Tensor:
    """prompt [B, P] -> choices [B, n_steps], choice i = the argmax after the prompt and i more tokens.

    feed(i, choice_i [B]) -> the token [B] read after step i (default: choice_i, i.e. free generation).
    It is not called after the last step. attention_mask [B, P] marks left padding of the prompt (0).
    incremental: prefill + decode_step (default where the model has them); False re-runs the model
    on the whole sequence per step (the quadratic reference, which must give the same tokens).
    """
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    if n_steps == 0:
        return prompt[:, :0]
    if incremental is None:
        incremental = decodes_incrementally(model)
    choices = []
    if incremental:
        logits, state = model.prefill(prompt, attention_mask)
        for i in range(n_steps):
            choice = logits.argmax(-1)
            choices.append(choice)
            if i + 1 < n_steps:
                logits, state = model.decode_step(choice if feed is None else feed(i, choice), state)
        return torch.stack(choices, dim=1)
    seq, mask = prompt, attention_mask
    for i in range(n_steps):
        logits = model(seq) if mask is None else model(seq, attention_mask=mask)
        choice = logits[:, -1].argmax(-1)
        choices.append(choice)
        if i + 1 < n_steps:
            token = choice if feed is None else feed(i, choice)
            seq = torch.cat([seq, token[:, None].to(seq.dtype)], dim=1)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    return torch.stack(choices, dim=1)
