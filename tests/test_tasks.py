import pytest
import torch

from interp.tasks import IGNORE_INDEX, TASKS, TaskConfig, Vocab, make_batch
from interp.tasks.synthetic import make_windows_unique


def answers(batch, i):
    """The scored answer text of example i: the tokens that scored positions must predict."""
    t = batch.tokens[i]
    return batch.vocab.decode(t[1:][batch.score_mask[i, :-1]])


def test_vocab_roundtrip_and_symbols():
    v = Vocab(26)
    assert v.size == 30 and v.decode(v.encode("$abc|abc.")) == "$abc|abc."
    assert (v.bos, v.sep, v.eos, v.pad) == (26, 27, 28, 29)
    assert v.encode("a").item() == 0


@pytest.mark.parametrize("n", [0, 1, 27, 100])
def test_vocab_size_out_of_range_is_rejected(n):
    with pytest.raises(ValueError, match="2..26"):
        Vocab(n)
    with pytest.raises(ValueError, match="2..26"):
        TaskConfig(n_letters=n)


def test_unknown_task_lists_allowed():
    with pytest.raises(ValueError, match="copy"):
        TaskConfig(task="kopy")


def test_copy_format_and_scored_positions(gen):
    b = make_batch(TaskConfig(task="copy", n_letters=26, min_len=3, max_len=9), 64, gen)
    for i in range(64):
        text = b.text(i)
        s = text[1 : text.index("|")]
        assert text == f"${s}|{s}." and len(s) == b.lengths[i]
        assert answers(b, i) == s + "."
        assert b.tokens[i, b.answer_start[i]] == b.vocab.encode(s[0]).item()
    # targets hold the next token where scored and IGNORE_INDEX elsewhere
    assert ((b.targets != IGNORE_INDEX) == b.score_mask).all()


def test_batches_are_seeded():
    cfg = TaskConfig(task="phonebook", n_letters=10)
    a = make_batch(cfg, 8, torch.Generator().manual_seed(3))
    b = make_batch(cfg, 8, torch.Generator().manual_seed(3))
    c = make_batch(cfg, 8, torch.Generator().manual_seed(4))
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)


@pytest.mark.parametrize("key_first", [True, False])
def test_lookup_answer_follows_the_unique_key(gen, key_first):
    task = "prefix_lookup" if key_first else "suffix_lookup"
    b = make_batch(TaskConfig(task=task, n_letters=6, min_len=5, max_len=30, ngram=3, answer_len=2), 128, gen)
    for i in range(128):
        parts = b.text(i)[1:].split("|")
        key, s = (parts[0], parts[1]) if key_first else (parts[1], parts[0])
        assert s.count(key) == 1, "the key n-gram must occur exactly once"
        j = s.index(key) + 3
        assert answers(b, i) == s[j : j + 2] + "."
        ngrams = [s[k : k + 3] for k in range(len(s) - 2)]
        assert len(set(ngrams)) == len(ngrams)


def test_unique_ngram_strings_for_copy(gen):
    b = make_batch(
        TaskConfig(task="copy", n_letters=26, min_len=300, max_len=300, unique_ngrams=True), 16, gen
    )
    for i in range(16):
        s = b.text(i)[1:301]
        grams = [s[k : k + 3] for k in range(len(s) - 2)]
        assert len(set(grams)) == len(grams)


def test_unique_ngrams_impossible_is_a_clear_error(gen):
    with pytest.raises(ValueError, match="distinct"):
        make_windows_unique(torch.zeros(1, 20, dtype=torch.long), 2, 1, torch.tensor([19]), 3, gen)


def test_phonebook_query_is_an_entry_and_answer_its_number(gen):
    cfg = TaskConfig(task="phonebook", n_letters=8, min_len=2, max_len=12, name_len=2, number_len=3)
    b = make_batch(cfg, 64, gen)
    for i in range(64):
        parts = b.text(i)[1:-1].split("|")
        entries, query, number = parts[:-2], parts[-2], parts[-1]
        book = {e[:2]: e[2:] for e in entries}
        assert len(book) == len(entries) == b.lengths[i], "names are distinct"
        assert book[query] == number and answers(b, i) == number + "."


def test_mqar_answers_are_the_queried_values(gen):
    cfg = TaskConfig(task="mqar", n_letters=16, min_len=2, max_len=8, n_queries=3)
    b = make_batch(cfg, 64, gen)
    for i in range(64):
        pairs, queries = b.text(i)[1:].split("|")
        table = dict(zip(pairs[0::2], pairs[1::2]))
        assert len(table) == b.lengths[i]
        assert answers(b, i) == "".join(table[k] for k in queries[0::2]) == queries[1::2]


def test_induction_scores_the_repeat(gen):
    b = make_batch(TaskConfig(task="induction", n_letters=10, min_len=4, max_len=10), 32, gen)
    for i in range(32):
        n = int(b.lengths[i])
        text = b.text(i)
        assert text[1 : n + 1] == text[n + 1 :] and answers(b, i) == text[n + 2 :]


def test_packing_fills_rows_and_scores_only_whole_examples(gen):
    cfg = TaskConfig(task="copy", n_letters=26, min_len=1, max_len=50, pack_context=220)
    b = make_batch(cfg, 8, gen)
    assert b.tokens.shape == (8, 220) and (b.tokens != b.vocab.pad).all()
    for i in range(8):
        text = b.vocab.decode(b.tokens[i])
        whole = [ex for ex in text.split("$")[1:] if ex.endswith(".")]
        lengths = sorted(int(x) for x in b.lengths[i] if x > 0)
        assert lengths == sorted(len(ex.split("|")[0]) for ex in whole)
        assert int(b.score_mask[i].sum()) == sum(n + 1 for n in lengths)


def test_every_task_scores_something_and_fits_its_declared_length(gen):
    for task in TASKS:
        cfg = TaskConfig(task=task, n_letters=16, min_len=5, max_len=7)
        b = make_batch(cfg, 4, gen, length=7)
        assert b.score_mask.any(1).all()
        assert b.tokens.shape[1] == cfg.sequence_length(7), task


def test_string_longer_than_context_is_rejected(gen):
    with pytest.raises(ValueError, match="more than the model.s context of 64"):
        make_batch(TaskConfig(task="copy", max_len=100), 2, gen, max_tokens=64)


def test_unique_ngrams_with_strings_shorter_than_the_ngram(gen):
    b = make_batch(TaskConfig(task="copy", min_len=1, max_len=2, unique_ngrams=True, ngram=3), 8, gen)
    assert b.lengths.max() <= 2 and b.score_mask.any(1).all()


def test_first_error_counts_answer_tokens_before_the_first_mistake(gen):
    from interp.tasks import TaskConfig, make_batch

    batch = make_batch(TaskConfig(task="copy", n_letters=5, min_len=4, max_len=4), 3, gen)
    preds = batch.targets.clone()
    scored = [row.nonzero().flatten() for row in batch.score_mask]  # 5 answer tokens: 4 letters + "."
    preds[1, scored[1][2]] = (preds[1, scored[1][2]] + 1) % 5  # wrong at the 3rd answer token
    preds[2, scored[2][0]] = (preds[2, scored[2][0]] + 1) % 5  # wrong at the first
    preds[2, scored[2][3]] = (preds[2, scored[2][3]] + 1) % 5
    assert batch.first_error(preds).tolist() == [5, 2, 0]
