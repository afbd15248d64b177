import pytest
import torch
import torch.nn.functional as F

from interp.analysis.heads import (
    attention_patterns,
    head_scores,
    lookup_targets,
    mamba_patterns,
    offset_score,
    rank_heads,
    ssm_attention,
    window_score,
)
from interp.models import build_model
from interp.models.hash_copy import build_hash_copy, planted_heads
from interp.tasks import TaskConfig, make_batch

N = 3


@pytest.fixture(scope="module")
def hash_copy():
    return build_hash_copy(8, N, n_ctx=128)


def batch(task, length=16, n=4, **kw):
    cfg = TaskConfig(task=task, n_letters=8, max_len=40, unique_ngrams=True, ngram=N, **kw)
    return make_batch(cfg, n, torch.Generator().manual_seed(1), length=length)


def as_patterns(matrix: torch.Tensor, batch_size: int = 2) -> torch.Tensor:
    """[P, P] -> [1, B, 1, P, P]: one layer, one head."""
    return matrix.expand(1, batch_size, 1, *matrix.shape).clone()


def test_detectors_on_known_patterns():
    p = 6
    itself = torch.eye(p)
    previous = torch.diag(torch.ones(p - 1), -1)
    previous[0, 0] = 1.0
    assert offset_score(as_patterns(itself), 0).item() == pytest.approx(1.0)
    assert offset_score(as_patterns(itself), 1).item() == pytest.approx(0.0)
    assert offset_score(as_patterns(previous), 1).item() == pytest.approx(1.0)
    assert window_score(as_patterns(previous), 2).item() == pytest.approx(1.0)
    uniform = torch.tril(torch.ones(p, p)) / torch.arange(1, p + 1)[:, None]
    # query q (q >= 2) puts 3/(q+1) on its last 3 keys: mean over q = 2..5
    expected = sum(min(3, q + 1) / (q + 1) for q in range(2, p)) / (p - 2)
    assert window_score(as_patterns(uniform), 3).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="offset must be >= 0"):
        offset_score(as_patterns(itself), -1)
    with pytest.raises(ValueError, match=r"\[layer, batch, head, query_pos, key_pos\]"):
        offset_score(itself, 1)


def test_lookup_targets_point_at_the_source_token():
    b = batch("copy", length=5, n=1)
    targets = lookup_targets(b)[0]
    tokens, vocab = b.tokens[0], b.vocab
    for q in targets.ge(0).nonzero().flatten().tolist():
        # the key holds the token the query must predict; the end `.` is read from the separator `|`
        source = tokens[targets[q]]
        assert source == tokens[q + 1] or (source == vocab.sep and tokens[q + 1] == vocab.eos)
    b = batch("induction", length=5, n=1)
    targets = lookup_targets(b)[0]
    for q in targets.ge(0).nonzero().flatten().tolist():
        assert b.tokens[0, targets[q]] == b.tokens[0, q + 1]
    with pytest.raises(ValueError, match="copy and induction tasks, not 'phonebook'"):
        lookup_targets(make_batch(TaskConfig(task="phonebook", n_letters=8), 2))


def test_detectors_rank_the_planted_heads_first(hash_copy):
    planted = planted_heads(N)
    scores = head_scores(hash_copy, batch("copy", length=20), offsets=(0, 1), windows=(N + 1,))
    offset_heads = rank_heads(scores, f"window_{N + 1}", min_activity=0.01)
    ranked = list(zip(offset_heads.layer, offset_heads["head"]))
    assert set(ranked[: N + 1]) == set(planted["offset"])
    assert offset_heads.value.iloc[N] == pytest.approx(1.0) and offset_heads.value.iloc[N + 1] < 0.5
    lookup = rank_heads(scores, "lookup", min_activity=0.01)
    assert (lookup.layer[0], lookup["head"][0]) == planted["lookup"][0]
    assert lookup.value[0] > 0.99 and lookup.value[1] < 0.1
    # the lookup head doubles as an induction head on repeated random strings
    induction = rank_heads(head_scores(hash_copy, batch("induction", length=20)), "induction", 0.01)
    assert (induction.layer[0], induction["head"][0]) == planted["lookup"][0]
    assert induction.value[0] > 0.9
    # dead heads (zero values) are flagged, whatever their pattern
    dead = scores[(scores.layer == 1) & (scores["head"] == 0)]
    assert (dead.activity < 1e-6).all()


def test_attention_patterns_match_the_cache(hash_copy):
    tokens = batch("copy").tokens
    patterns = attention_patterns(hash_copy, tokens)
    _, cache = hash_copy.run_with_cache(tokens)
    assert patterns.shape == (2, 4, N + 2, tokens.shape[1], tokens.shape[1])
    torch.testing.assert_close(patterns[1], cache["blocks.1.attn.hook_pattern"])


@pytest.mark.parametrize("d_state,length", [(4, 7), (16, 20)])
def test_ssm_attention_reproduces_the_scan(d_state, length):
    torch.manual_seed(0)
    model = build_model("mamba", d_vocab=12, d_model=16, n_layers=2, d_state=d_state).eval()
    tokens = torch.randint(0, 12, (3, length))
    hooks = ["hook_ssm_dt", "hook_B", "hook_C", "hook_ssm_in", "hook_gate", "hook_scan_out"]
    names = [f"blocks.{layer}.mixer.{h}" for layer in range(2) for h in hooks]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    for layer in range(2):
        c = {h: cache[f"blocks.{layer}.mixer.{h}"] for h in hooks}
        mixer = model.blocks[layer].mixer
        M = ssm_attention(c["hook_ssm_dt"], c["hook_B"], c["hook_C"], mixer.A_log)
        assert M.shape == (3, model.cfg.d_inner, length, length)
        assert (M.triu(1) == 0).all()
        u = c["hook_ssm_in"]
        y = torch.einsum("bdts,bsd->btd", M, u) + mixer.D * u
        torch.testing.assert_close(y * F.silu(c["hook_gate"]), c["hook_scan_out"], atol=1e-5, rtol=1e-4)


def test_mamba_patterns_are_scored_like_heads():
    torch.manual_seed(0)
    model = build_model("mamba", d_vocab=12, d_model=16, n_layers=2, d_state=4).eval()
    b = batch("copy", length=6, n=2)
    patterns = mamba_patterns(model, b.tokens, reduce="none")
    assert patterns.shape == (2, 2, model.cfg.d_inner, b.tokens.shape[1], b.tokens.shape[1])
    torch.testing.assert_close(patterns.sum(-1), torch.ones(patterns.shape[:-1]))
    scores = head_scores(model, b)
    assert set(scores.score) == {"offset_1", "lookup", "lookup_next"} and len(scores) == 6
    assert scores.value.between(0, 1).all()
    with pytest.raises(ValueError, match="needs attention heads.*mamba has none"):
        attention_patterns(model, b.tokens)
    with pytest.raises(ValueError, match="reduce='max' is not allowed"):
        mamba_patterns(model, b.tokens, reduce="max")
