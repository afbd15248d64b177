"""Cached greedy evaluation (prefill + decode_step) equals the quadratic reference token for token."""

import pytest
import torch
import torch.nn.functional as F

from interp.analysis import evaluation
from interp.analysis.evaluation import evaluate, greedy_predictions, greedy_predictions_reference
from interp.generation import decodes_incrementally, greedy_steps
from interp.models import build_model
from interp.models.shift_register import ShiftRegister, ShiftRegisterConfig
from interp.tasks import TaskConfig, make_batch

N_LETTERS = 8
TASKS = {
    "copy": TaskConfig(task="copy", n_letters=N_LETTERS, min_len=3, max_len=12),
    "suffix_lookup": TaskConfig(
        task="suffix_lookup", n_letters=N_LETTERS, min_len=6, max_len=12, answer_len=3
    ),
    "mqar": TaskConfig(task="mqar", n_letters=N_LETTERS, min_len=2, max_len=4),  # queries between answers
}
MODELS = {
    "rope": ("transformer", {"positional": "rope"}),
    "nope": ("transformer", {"positional": "nope"}),
    "alibi": ("transformer", {"positional": "alibi"}),
    "hard_alibi": ("transformer", {"positional": "hard_alibi"}),
    "mamba-chunked": ("mamba", {"scan": "chunked", "chunk_size": 4}),
    "mamba-reference": ("mamba", {"scan": "reference"}),
    "lstm": ("lstm", {}),
}
_trained: dict = {}


def trained(name: str):
    """A partially trained model (60 Adam steps over the three tasks): often wrong, but its predictions
    depend on the input."""
    if name not in _trained:
        arch, kw = MODELS[name]
        torch.manual_seed(0)
        model = build_model(arch, d_vocab=TASKS["copy"].vocab.size, d_model=32, n_layers=2, **kw)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(0)
        for step in range(60):
            batch = make_batch(TASKS[("copy", "mqar", "suffix_lookup", "mqar")[step % 4]], 32, gen)
            loss = F.cross_entropy(
                model(batch.tokens).flatten(0, 1), batch.targets.flatten(), ignore_index=-100
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        _trained[name] = model.eval()
    return _trained[name]


def eval_batch(task: str, n: int = 8):
    return make_batch(TASKS[task], n, torch.Generator().manual_seed(1))  # random lengths: rows differ


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("name", list(MODELS))
def test_cached_greedy_equals_quadratic_reference(name, task):
    model, batch = trained(name), eval_batch(task)
    assert decodes_incrementally(model)
    cached = greedy_predictions(model, batch)
    reference = greedy_predictions_reference(model, batch)
    assert torch.equal(cached, reference)
    sm = batch.score_mask
    assert cached[sm].unique().numel() >= 2, "predictions must vary for the comparison to mean anything"
    wrong = (cached[:, :-1] != batch.tokens[:, 1:]) & sm[:, :-1]
    assert wrong.any(1).sum() >= 2, "some rows must contain mistakes, so that feeding them back matters"


@pytest.mark.parametrize("name", ["rope", "hard_alibi", "mamba-chunked", "lstm"])
def test_comparison_catches_wrong_decoders(name):
    """Two plausible bugs give different tokens on these batches: teacher forcing the answers (not feeding
    the model's choices back) and feeding choices into unscored positions (mqar's queries)."""
    model = trained(name)
    copy = eval_batch("copy")
    teacher = model(copy.tokens).argmax(-1)
    assert not torch.equal(teacher[copy.score_mask], greedy_predictions(model, copy)[copy.score_mask])

    mqar = eval_batch("mqar")
    first = int(mqar.score_mask.any(0).nonzero()[0])
    last = int(mqar.score_mask.any(0).nonzero()[-1])
    overwrite_all = greedy_steps(model, mqar.tokens[:, : first + 1], last - first + 1)  # free generation
    right = greedy_predictions(model, mqar)[:, first : last + 1]
    scored = mqar.score_mask[:, first : last + 1]
    assert not torch.equal(overwrite_all[scored], right[scored])


@pytest.mark.parametrize("name", ["rope", "alibi", "mamba-reference", "lstm"])
def test_teacher_forcing_through_the_cache_equals_the_full_forward(name):
    """Feeding the given tokens through prefill + decode_step reproduces the full forward's argmax everywhere."""
    model, batch = trained(name), eval_batch("copy")
    tokens = batch.tokens
    steps = greedy_steps(model, tokens[:, :2], tokens.shape[1] - 1, feed=lambda i, c: tokens[:, i + 2])
    assert torch.equal(steps, model(tokens).argmax(-1)[:, 1:])


def test_quadratic_fallback_for_models_without_prefill():
    model = ShiftRegister(ShiftRegisterConfig(d_vocab=TASKS["copy"].vocab.size, memory=3))
    assert not decodes_incrementally(model)
    batch = eval_batch("mqar")
    assert torch.equal(greedy_predictions(model, batch), greedy_predictions_reference(model, batch))
    # the shared loop without the cache gives the cached tokens (here for a transformer)
    lstm = trained("hard_alibi")
    prompt = batch.tokens[:, :5]
    assert torch.equal(greedy_steps(lstm, prompt, 9, incremental=False), greedy_steps(lstm, prompt, 9))


def test_greedy_respects_n_ctx():
    model = build_model("lstm", d_vocab=TASKS["copy"].vocab.size, d_model=8, n_layers=1, n_ctx=10)
    batch = make_batch(TASKS["copy"], 2, length=8)  # 2 * 8 + 3 tokens
    with pytest.raises(ValueError, match="n_ctx=10"):
        greedy_predictions(model, batch)
    state = model.prefill(batch.tokens[:, :10])[1]
    with pytest.raises(ValueError, match="context is full"):
        model.decode_step(batch.tokens[:, 10], state)


def test_lstm_prefill_and_decode_step_equal_the_full_forward():
    torch.manual_seed(0)
    model = build_model("lstm", d_vocab=12, d_model=16, n_layers=3).eval()
    tokens = torch.randint(0, 12, (3, 14))
    full = model(tokens)
    logits, state = model.prefill(tokens[:, :5])
    torch.testing.assert_close(logits, full[:, 4], atol=1e-5, rtol=0)
    for p in range(5, 14):
        logits, state = model.decode_step(tokens[:, p], state)
        torch.testing.assert_close(logits, full[:, p], atol=1e-5, rtol=0)
    assert state.n_tokens == 14 and len(state.layers) == 3 and state.layers[0][0].shape == (3, 16)
    # hooks fire in prefill, through the explicit loop, and give the same state
    seen = []
    logits_hooked, state_hooked = None, None
    model.blocks[1].hook_cell.add_hook(lambda c, hook: seen.append(c.shape))
    try:
        logits_hooked, state_hooked = model.prefill(tokens[:, :5])
    finally:
        model.reset_hooks()
    assert seen == [(3, 5, 16)]
    torch.testing.assert_close(logits_hooked, full[:, 4], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        state_hooked.layers[2][1], model.prefill(tokens[:, :5])[1].layers[2][1], atol=1e-5, rtol=0
    )


def test_lstm_left_padding_gives_the_sequence_alone():
    torch.manual_seed(0)
    model = build_model("lstm", d_vocab=12, d_model=16, n_layers=2).eval()
    short = torch.randint(0, 12, (1, 4))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), short], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    torch.testing.assert_close(model(padded, attention_mask=mask)[:, 3:], model(short), atol=1e-5, rtol=0)
    out = model.generate_greedy(padded, 6, attention_mask=mask)[:, 7:]
    assert torch.equal(out, model.generate_greedy(short, 6)[:, 4:])
    with pytest.raises(ValueError, match="left padding"):
        model.generate_greedy(short, 2, attention_mask=torch.tensor([[1, 1, 1, 0]]))


def test_generate_greedy_uses_the_shared_loop_and_equals_rerunning():
    model = trained("lstm")
    prompt = eval_batch("copy").tokens[:, :6]
    out = model.generate_greedy(prompt, 10)
    assert torch.equal(out[:, :6], prompt)
    assert torch.equal(out[:, 6:], greedy_steps(model, prompt, 10, incremental=False))
    assert model.generate_greedy(prompt, 0).shape == prompt.shape


def test_evaluate_greedy_takes_the_cached_path(monkeypatch):
    model = trained("hard_alibi")
    expected = evaluate(model, TASKS["mqar"], [3], n_examples=12, batch_size=12, modes=("greedy",))

    def refuse(*args, **kwargs):
        raise AssertionError("evaluate must not fall back to the quadratic path")

    steps = []
    original = model.decode_step
    monkeypatch.setattr(evaluation, "greedy_predictions_reference", refuse)
    monkeypatch.setattr(model, "decode_step", lambda *a: steps.append(1) or original(*a))
    table = evaluate(model, TASKS["mqar"], [3], n_examples=12, batch_size=12, modes=("greedy",))
    assert steps and table.equals(expected)
    gen = torch.Generator().manual_seed(1234 + 3)
    batch = make_batch(TaskConfig.from_dict({**TASKS["mqar"].to_dict()}), 12, gen, length=3)
    ok, _ = batch.score(greedy_predictions_reference(model, batch))
    assert table.string_acc[0] == pytest.approx(float(ok.float().mean()))
