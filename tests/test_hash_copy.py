import pytest
import torch

from interp.analysis.evaluation import evaluate
from interp.models.hash_copy import build_hash_copy, planted_heads
from interp.tasks import TaskConfig, make_batch


@pytest.mark.parametrize("n_letters,ngram,length", [(26, 3, 200), (26, 3, 500), (8, 4, 300), (4, 6, 250)])
def test_construction_copies_long_strings_with_unique_ngrams(n_letters, ngram, length):
    model = build_hash_copy(n_letters, ngram)
    task = TaskConfig(
        task="copy", n_letters=n_letters, min_len=1, max_len=length, unique_ngrams=True, ngram=ngram
    )
    df = evaluate(model, task, lengths=[length], n_examples=16, batch_size=16)
    assert df.string_acc.item() == 1.0


def test_greedy_generation_is_exact_too():
    model = build_hash_copy(26, 3)
    task = TaskConfig(task="copy", min_len=1, max_len=60, unique_ngrams=True)
    df = evaluate(model, task, lengths=[3, 60], n_examples=8, modes=("greedy",))
    assert (df.string_acc == 1.0).all()


def test_lookup_head_attends_right_after_the_earlier_occurrence():
    n = 3
    model = build_hash_copy(26, n)
    batch = make_batch(TaskConfig(task="copy", unique_ngrams=True), 4, length=30)
    _, cache = model.run_with_cache(batch.tokens)
    (layer, head) = planted_heads(n)["lookup"][0]
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"][:, head]  # [B, Pq, Pk]
    # answer position |+k (predicting s_k) must attend to position k + 1, where s_k sits in the string
    for k in range(31):
        assert (pattern[:, 31 + k, k + 1] > 0.999).all(), k


def test_offset_heads_average_their_window():
    n = 3
    model = build_hash_copy(26, n)
    _, cache = model.run_with_cache(make_batch(TaskConfig(task="copy"), 2, length=10).tokens)
    for layer, head in planted_heads(n)["offset"]:
        # query position 15: uniform over the last head + 1 tokens
        row = cache[f"blocks.{layer}.attn.hook_pattern"][:, head, 15]
        torch.testing.assert_close(row[:, 15 - head : 16], torch.full((2, head + 1), 1 / (head + 1)))


def test_without_unique_ngrams_copying_can_fail():
    """The mechanism needs unique n-grams: with 2 letters and n = 2 repeated bigrams confuse it."""
    model = build_hash_copy(2, 2)
    task = TaskConfig(task="copy", n_letters=2, min_len=1, max_len=40)
    assert evaluate(model, task, lengths=[40], n_examples=32).string_acc.item() < 0.5
