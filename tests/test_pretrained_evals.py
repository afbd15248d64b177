"""Pretrained-model loading (tokenizer, hub names, offline) and the Section 4 evaluations, on tiny local models."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import interp
from interp.analysis.pretrained_evals import (
    EvalPrompt,
    first_line,
    generate,
    normalize_answer,
    phonebook_entries,
    phonebook_prompts,
    phonebook_text,
    qa_prompts,
    read_squad,
    run_eval,
    score,
    squad_em,
    squad_f1,
    summarize,
    text_copy_prompts,
)
from interp.models.mamba import HookedMamba
from interp.models.transformer import HookedTransformer
from interp.testing import SQUAD, TEXT, make_folders, make_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_folders(tmp_path_factory.mktemp("pretrained"))


def occurrences(seq: list[int], sub: list[int]) -> int:
    return sum(seq[i : i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


# ---- builders on their own --------------------------------------------------------------------------


def test_phonebook_entries_are_distinct_and_seeded():
    entries = phonebook_entries(200, seed=3)
    assert len({n for n, _ in entries}) == 200 and len({p for _, p in entries}) == 200
    assert entries == phonebook_entries(200, seed=3) and entries != phonebook_entries(200, seed=4)
    with pytest.raises(ValueError, match="distinct names"):
        phonebook_entries(10**6, seed=0)


def test_phonebook_answer_is_in_the_context_once(tokenizer):
    prompts = phonebook_prompts(tokenizer, [3, 10, 30], n_per_size=5, n_shots=2)
    assert [p.x for p in prompts] == [3] * 5 + [10] * 5 + [30] * 5
    for p in prompts:
        text = tokenizer.decode(p.prompt_ids)
        assert text.count(p.answers[0]) == 1
        assert text.count(p.meta["query"] + ":") == 2  # in the book and as the query
        assert text.endswith(p.meta["query"] + ":")
        assert len(text.split("\n\n")[0].splitlines()) == p.x
    assert prompts == phonebook_prompts(tokenizer, [3, 10, 30], n_per_size=5, n_shots=2)  # pure
    with pytest.raises(ValueError, match="must not be one of the solved"):
        phonebook_text([("A B", "1"), ("C D", "2")], shots=[0], query=0)


def test_prompt_too_long_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match="exceeds the model's context of 64 tokens"):
        phonebook_prompts(tokenizer, [30], n_per_size=1, n_ctx=64)
    assert phonebook_prompts(tokenizer, [30], n_per_size=2, n_ctx=64, too_long="skip") == []
    with pytest.raises(ValueError, match="exceeds the model's context"):
        text_copy_prompts(tokenizer, TEXT, [40], n_ctx=60)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        qa_prompts(tokenizer, SQUAD, n_ctx=20)
    with pytest.raises(ValueError, match="fewer than a passage"):
        text_copy_prompts(tokenizer, "short", [40])


def test_text_copy_prompts(tokenizer):
    prompts = text_copy_prompts(tokenizer, TEXT, [10, 25], n_per_length=4, n_given=2, separator="\n\n")
    sep = tokenizer.encode("\n\n", add_special_tokens=False)
    for p in prompts:
        assert len(p.prompt_ids) == p.x + len(sep) + 2
        passage = p.prompt_ids[: p.x]
        assert p.answer_ids == passage[2:] and p.prompt_ids[-2:] == passage[:2]
        assert occurrences(p.prompt_ids, p.answer_ids) == 1
        assert p.max_new_tokens == p.x - 2
    assert prompts == text_copy_prompts(tokenizer, TEXT, [10, 25], n_per_length=4)


def test_read_squad_and_qa_prompts(tokenizer):
    items = read_squad(SQUAD)
    assert len(items) == 3  # the unanswerable question is dropped
    prompts = qa_prompts(tokenizer, SQUAD)
    for p, item in zip(prompts, items):
        text = tokenizer.decode(p.prompt_ids)
        assert text == f"{item['context']}\n\nQuestion: {item['question']}\nAnswer:"
        assert all(a in item["context"] for a in p.answers)
        assert p.x == len(tokenizer.encode(item["context"], add_special_tokens=False))
    with pytest.raises(ValueError, match="SQuAD JSON"):
        read_squad({"paragraphs": []})


def test_squad_scoring_hand_checked():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an Apple a day") == "apple day"
    assert squad_em("the Paris.", ["Paris"]) == 1.0
    assert squad_em("Paris France", ["Paris"]) == 0.0
    assert squad_f1("in the city of Paris", ["Paris"]) == pytest.approx(0.4)  # P=1/4, R=1
    assert squad_f1("Denver Broncos", ["Broncos", "Denver Broncos"]) == 1.0  # max over answers
    # pred "carolina panthers won" vs gold "the panthers": common 1, P=1/3, R=1 -> 0.5
    assert squad_f1("Carolina Panthers won", ["the Panthers"]) == pytest.approx(0.5)
    assert squad_f1("", ["Paris"]) == 0.0 and squad_f1("the", ["a"]) == 1.0  # both empty after normalising
    assert squad_f1("paris paris", ["paris"]) == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_score_rows(tokenizer):
    ids = tokenizer.encode(" 201-555-0101\nBo", add_special_tokens=False)
    p = EvalPrompt("phonebook", [0], ["201-555-0101"], len(ids), 2)
    assert score(p, ids, tokenizer)["exact"] == 1.0
    assert first_line("  Paris\nx") == "Paris"
    q = EvalPrompt("qa", [0], ["in Paris"], 4, 10)
    row = score(q, tokenizer.encode(" Paris\n", add_special_tokens=False), tokenizer)
    assert row["exact"] == 0.0 and row["f1"] == pytest.approx(2 / 3)
    c = EvalPrompt("copy_text", [0], ["x"], 3, 5, answer_ids=[4, 5, 6])
    assert score(c, [4, 5, 6], tokenizer)["exact"] == 1.0 and score(c, [4, 5, 7], tokenizer)["exact"] == 0.0


# ---- loading --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,cls", [("pythia", HookedTransformer), ("mamba", HookedMamba)])
def test_load_folder_matches_hugging_face_and_attaches_tokenizer(folders, kind, cls):
    from transformers import AutoModelForCausalLM

    model = interp.load(str(folders[kind]))
    assert isinstance(model, cls)
    hf = AutoModelForCausalLM.from_pretrained(folders[kind]).eval()
    tokens = torch.tensor([model.tokenizer.encode("Paris is the capital of France. James Smith: 609")])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-4, rtol=0)
    assert model.tokenizer.decode(tokens[0]) == "Paris is the capital of France. James Smith: 609"


def test_folder_without_tokenizer_has_none(tmp_path, tokenizer):
    from interp.testing import save_pythia

    save_pythia(tmp_path, tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / name).unlink(missing_ok=True)
    assert interp.load(tmp_path).tokenizer is None
    other = tmp_path / "tok"
    tokenizer.save_pretrained(other)
    assert interp.load(tmp_path, tokenizer=other).tokenizer.encode("Paris") == tokenizer.encode("Paris")
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        interp.load(tmp_path, tokenizer=tmp_path)


def test_bin_weights_are_loaded_without_unpickling_code(tmp_path, tokenizer, monkeypatch):
    """A pytorch_model.bin holding a pickled object (not just tensors) is refused, not executed."""
    from interp.testing import save_pythia

    monkeypatch.chdir(tmp_path)  # where the exploit would write "pwned"
    hf = save_pythia(tmp_path, tokenizer)
    (tmp_path / "model.safetensors").unlink()
    torch.save({**hf.state_dict(), "evil": Exploit()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights.?only|unpickl|global"):
        interp.load(tmp_path)
    assert not (tmp_path / "pwned").exists()
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")  # plain tensors load fine
    tokens = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(interp.load(tmp_path)(tokens), hf(tokens).logits, atol=1e-4, rtol=0)


class Exploit:
    def __reduce__(self):
        return (open, ("pwned", "w"))


def test_hub_name_offline_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="not available.*HF_HUB_OFFLINE.*local-dir"):
        interp.load("EleutherAI/pythia-70m-does-not-exist")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        interp.load(str(tmp_path / "no" / "such" / "folder"))


# ---- end to end -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pythia", "mamba"])
def test_batched_generation_equals_one_by_one(folders, kind):
    model = interp.load(folders[kind])
    prompts = phonebook_prompts(model.tokenizer, [3, 4], n_per_size=3) + text_copy_prompts(
        model.tokenizer, TEXT, [12], n_per_length=3
    )
    assert (
        len(set(sorted(len(p.prompt_ids) for p in prompts)[:4])) > 1
    )  # the first padded batch mixes lengths
    batched = generate(model, prompts, batch_size=4)
    single = [generate(model, [p], batch_size=1)[0] for p in prompts]
    assert batched == single
    assert generate(model, prompts, batch_size=4, padding=False) == single
    assert [len(c) for c in batched] == [p.max_new_tokens for p in prompts]


@pytest.mark.parametrize("kind", ["pythia", "mamba"])
def test_every_evaluation_runs_end_to_end(folders, kind):
    model = interp.load(folders[kind])
    tok = model.tokenizer
    n_ctx = getattr(model.cfg, "n_ctx", None)
    for prompts in (
        phonebook_prompts(tok, [3, 6], n_per_size=2, n_ctx=n_ctx),
        text_copy_prompts(tok, (folders[kind].parent / "text.txt").read_text(), [8, 16], n_per_length=2),
        qa_prompts(tok, folders[kind].parent / "squad.json", max_new_tokens=4),
    ):
        table = run_eval(model, prompts, name=kind)
        assert len(table) == len(prompts) and table.exact.between(0, 1).all() and table.f1.between(0, 1).all()
        summary = summarize(table)
        assert set(summary.columns) >= {"model", "task", "x", "exact", "f1", "n"}
        assert summary.n.sum() == len(prompts)
    binned = summarize(table, bins=[0, 10, 100])
    assert binned.n.sum() == len(prompts)


def test_copy_of_a_model_that_copies_scores_one(tokenizer):
    """A 'model' that predicts the passage's next token scores exact=1; greedy plumbing is right."""
    prompts = text_copy_prompts(tokenizer, TEXT, [10], n_per_length=2, n_given=2)

    class Oracle(torch.nn.Module):
        cfg = type("Cfg", (), {"n_ctx": None})()
        tokenizer = None

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        @property
        def device(self):
            return torch.device("cpu")

        def forward(self, tokens):  # predicts the token that followed, passage + separator tokens earlier
            out = torch.full((*tokens.shape, len(tokenizer)), -1.0)
            lag = len(prompts[0].prompt_ids) - 2  # passage length + separator tokens
            for b in range(tokens.shape[0]):
                for t in range(tokens.shape[1]):
                    if t - lag + 1 >= 0:
                        out[b, t, tokens[b, t - lag + 1]] = 1.0
            return out

    table = run_eval(Oracle(), prompts, tokenizer=tokenizer)
    assert table.exact.tolist() == [1.0, 1.0]


# ---- the probes/pretrained_eval.py script (run in-process: a subprocess costs seconds of imports) ----------


@pytest.fixture(scope="module")
def script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "probes" / "pretrained_eval.py"
    spec = importlib.util.spec_from_file_location("pretrained_eval_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "task,extra",
    [
        ("phonebook", ["--sizes", "3,6"]),
        ("copy_text", ["--text", "text.txt", "--lengths", "8,16"]),
        ("qa", ["--squad", "squad.json", "--bins", "0,10,100", "--max-new-tokens", "4"]),
    ],
)
def test_script_runs_end_to_end(folders, script, task, extra, tmp_path):
    root = folders["pythia"].parent
    extra = [str(root / e) if e.endswith((".txt", ".json")) else e for e in extra]
    out = tmp_path / task
    args = [f"pythia={folders['pythia']}", f"mamba={folders['mamba']}", "--task", task, "--n", "2"]
    assert script.main([*args, *extra, "--out", str(out), "--quiet"]) == 0
    table = pd.read_csv(out / "results.csv")
    assert set(table.model) == {"pythia", "mamba"} and table.exact.between(0, 1).all()
    assert (table.prompts_per_s > 0).all()
    assert (out / f"{task}.png").stat().st_size > 0 and (out / "predictions.csv").exists()


def test_script_skips_what_does_not_fit_one_model(script, folders, tokenizer, tmp_path, capsys):
    """A short-context transformer drops the long passages (and says so); Mamba still gets them."""
    from interp.testing import save_pythia

    save_pythia(tmp_path / "short", tokenizer, n_ctx=64)
    text = str(folders["pythia"].parent / "text.txt")
    args = [f"short={tmp_path / 'short'}", f"mamba={folders['mamba']}", "--task", "copy_text", "--text", text]
    args += ["--lengths", "8,40", "--n", "2", "--quiet", "--out", str(tmp_path / "out")]
    assert script.main(args) == 0
    assert "short: skipped 2 of 4 prompts, longer than its context of 64 tokens (all of x=40)" in (
        capsys.readouterr().err
    )
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert sorted(table[table.model == "short"].x) == [8] and sorted(table[table.model == "mamba"].x) == [
        8,
        40,
    ]
    assert script.main([*args, "--too-long", "raise"]) == 2
    assert "exceeds the model's context of 64 tokens" in capsys.readouterr().err
    squad = str(folders["pythia"].parent / "squad.json")
    qa = [
        f"short={tmp_path / 'short'}",
        "--task",
        "qa",
        "--squad",
        squad,
        "--quiet",
        "--out",
        str(tmp_path / "qa"),
    ]
    assert script.main(qa) == 0  # QA prompts of 52, 50 and 46 tokens + 16 new ones: two do not fit
    assert "short: skipped 2 of 3 prompts, longer than its context of 64 tokens;" in capsys.readouterr().err


def test_script_help_and_errors(script, folders, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--help"])
    assert exit_info.value.code == 0 and "--task" in capsys.readouterr().out
    assert script.main([str(folders["pythia"]), "--task", "copy_text", "--out", str(tmp_path)]) == 2
    assert "needs --text" in capsys.readouterr().err
    assert script.main([str(tmp_path / "nothing"), "--task", "phonebook", "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_hub_name_goes_through_snapshot_download(monkeypatch, folders):
    """A hub name is fetched with snapshot_download (config, safetensors and tokenizer files only)."""
    import huggingface_hub

    calls = []

    def fake_snapshot_download(name, allow_patterns, local_files_only):
        calls.append((name, allow_patterns, local_files_only))
        return str(folders["pythia"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = interp.load("EleutherAI/pythia-tiny")
    assert isinstance(model, HookedTransformer) and model.tokenizer is not None
    ((name, patterns, offline),) = calls  # safetensors found: no second call for pytorch_model.bin
    assert name == "EleutherAI/pythia-tiny" and offline is True
    assert (
        "*.safetensors" in patterns and "tokenizer.json" in patterns and "pytorch_model.bin" not in patterns
    )


@pytest.mark.slow
def test_generation_benchmark_quick(run_python):
    proc = run_python("-m", "benchmarks.pretrained_generation", "--quick", "--no-memory", timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "\n|--" in proc.stdout and "ratio interp / Hugging Face" in proc.stdout, proc.stdout
    assert "100.0%" in proc.stdout  # greedy tokens agree with Hugging Face on the tiny models


def random_transformer(positional: str, parallel: bool, seed: int = 0) -> HookedTransformer:
    from interp.models import build_model

    torch.manual_seed(seed)
    return build_model(
        "transformer",
        d_vocab=50,
        d_model=32,
        n_heads=4,
        n_layers=2,
        positional=positional,
        parallel_residual=parallel,
        rotary_pct=0.25,
        init_std=0.3,
    ).eval()


POSITIONAL_VARIANTS = [("rope", True), ("nope", False), ("alibi", False), ("hard_alibi", False)]


@pytest.mark.parametrize("positional,parallel", POSITIONAL_VARIANTS)
def test_kv_cache_decoding_equals_full_recomputation(positional, parallel):
    from interp.analysis.pretrained_evals import greedy_continue

    model = random_transformer(positional, parallel)
    tokens = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(1))
    cached = greedy_continue(model, tokens, 12)
    full = greedy_continue(model, tokens, 12, kv_cache=False)
    assert torch.equal(cached, full)
    assert len(set(cached.flatten().tolist())) > 3  # a non-trivial continuation
    with pytest.raises(ValueError, match="exceeds the model's n_ctx"):
        model.generate_greedy(tokens, model.cfg.n_ctx)
    # the cache also takes several tokens per call: logits equal one full forward
    seq = torch.cat([tokens, cached], dim=1)
    cache = model.init_kv_cache()
    with torch.no_grad():
        pieces = [model(seq[:, a:b], past_kv_cache=cache) for a, b in [(0, 5), (5, 6), (6, 14), (14, 21)]]
        torch.testing.assert_close(torch.cat(pieces, dim=1), model(seq), atol=1e-5, rtol=0)
        torch.testing.assert_close(model(seq, logits_to_keep=3), model(seq)[:, -3:], atol=1e-6, rtol=0)
    assert cache.n_tokens == 21 and cache.layers[0][0].shape == (3, 4, 21, 8)


def left_padded_batch(lengths: list[int], vocab: int, seed: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g) for n in lengths]


@pytest.mark.parametrize("attn_impl", ["auto", "eager"])
@pytest.mark.parametrize("positional,parallel", POSITIONAL_VARIANTS)
def test_left_padding_gives_each_sequence_its_own_logits(positional, parallel, attn_impl):
    """A left-padded batch with an attention mask = every sequence run alone (logits and greedy tokens)."""
    from interp.analysis.pretrained_evals import left_pad

    model = random_transformer(positional, parallel)
    model.cfg.attn_impl = attn_impl
    seqs = left_padded_batch([9, 4, 1, 7], 50)
    tokens, mask = left_pad([s.tolist() for s in seqs], pad_id=3)
    with torch.no_grad():
        padded = model(tokens, attention_mask=mask)
        alone = [model(s[None])[0] for s in seqs]
        unmasked = model(tokens)
    for row, s in enumerate(seqs):
        torch.testing.assert_close(padded[row, -len(s) :], alone[row], atol=1e-5, rtol=0)
    assert not torch.allclose(unmasked[1, -4:], alone[1], atol=1e-3)  # without the mask padding leaks in
    new = model.generate_greedy(tokens, 6, attention_mask=mask)[:, tokens.shape[1] :]
    for row, s in enumerate(seqs):
        assert new[row].equal(model.generate_greedy(s[None], 6)[0, len(s) :])


def test_right_padding_and_bad_arguments_are_refused():
    from interp.models import build_model

    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    tokens = torch.randint(1, 50, (2, 4))
    torch.manual_seed(0)
    mamba = build_model("mamba", d_vocab=50, d_model=32, n_layers=2, d_state=8).eval()
    for model in (random_transformer("rope", True), mamba):
        with pytest.raises(ValueError, match="left padding"):
            model.generate_greedy(tokens, 3, attention_mask=right)
        with pytest.raises(ValueError, match="logits_to_keep"):
            model(tokens, logits_to_keep=-1)
    with pytest.raises(ValueError, match="left padding"):
        mamba(tokens, attention_mask=right, return_cache=True)


def test_padded_batches_respect_the_context():
    """A short prompt wanting many tokens and a long one wanting few fit alone but not padded together."""
    from interp.models import build_model

    torch.manual_seed(0)
    model = build_model("transformer", d_vocab=50, d_model=32, n_heads=4, n_layers=2, n_ctx=20, init_std=0.3)
    a = EvalPrompt("copy_text", list(range(1, 16)), ["-"], 5, 15, answer_ids=[0] * 5)
    b = EvalPrompt("copy_text", list(range(1, 6)), ["-"], 15, 5, answer_ids=[0] * 15)
    together = generate(model.eval(), [a, b], batch_size=2)
    assert together == [generate(model, [a])[0], generate(model, [b])[0]]
    assert [len(c) for c in together] == [5, 15]


def test_left_padding_gives_each_sequence_its_own_mamba_state():
    from interp.analysis.pretrained_evals import left_pad
    from interp.models import build_model

    torch.manual_seed(0)
    model = build_model("mamba", d_vocab=50, d_model=32, n_layers=2, d_state=8).eval()
    seqs = left_padded_batch([9, 2, 1, 7], 50)  # 2 and 1 are shorter than the conv window
    tokens, mask = left_pad([s.tolist() for s in seqs], pad_id=3)
    with torch.no_grad():
        padded, cache = model(tokens, attention_mask=mask, return_cache=True)
        for row, s in enumerate(seqs):
            logits, alone = model(s[None], return_cache=True)
            torch.testing.assert_close(padded[row, -len(s) :], logits[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(cache.ssm[:, row], alone.ssm[:, 0], atol=1e-5, rtol=0)
            torch.testing.assert_close(cache.conv[:, row], alone.conv[:, 0], atol=1e-5, rtol=0)
        assert not torch.allclose(model(tokens)[1, -2:], padded[1, -2:], atol=1e-3)
        last = model(tokens, attention_mask=mask, logits_to_keep=2)
        torch.testing.assert_close(last, padded[:, -2:], atol=1e-6, rtol=0)
    new = model.generate_greedy(tokens, 6, attention_mask=mask)[:, tokens.shape[1] :]
    for row, s in enumerate(seqs):
        assert new[row].equal(model.generate_greedy(s[None], 6)[0, len(s) :])


@pytest.mark.parametrize("kind", ["pythia", "mamba"])
def test_left_padding_matches_hugging_face(folders, kind):
    """Our masked forward equals Hugging Face's on the same left-padded batch (positions as in `generate`)."""
    from transformers import AutoModelForCausalLM

    from interp.analysis.pretrained_evals import left_pad

    model = interp.load(folders[kind])
    hf = AutoModelForCausalLM.from_pretrained(folders[kind]).eval()
    texts = ["James Smith: 609-323-7777", "Paris", "Question: Where is Paris?\nAnswer:"]
    tokens, mask = left_pad([model.tokenizer.encode(t) for t in texts])
    kwargs = {"attention_mask": mask}
    if kind == "pythia":
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)  # what HF `generate` passes
    with torch.no_grad():
        ours, theirs = model(tokens, attention_mask=mask), hf(tokens, **kwargs).logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-4, rtol=0)


def test_mamba_ssm_folder_with_a_tokenizer_from_elsewhere(folders, tmp_path):
    """mamba-ssm checkpoints (config + pytorch_model.bin, no tokenizer) take `tokenizer=` from another folder."""
    import json

    from transformers import MambaForCausalLM

    hf = MambaForCausalLM.from_pretrained(folders["mamba"]).eval()
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in hf.state_dict().items()}
    vocab = hf.config.vocab_size
    config = {
        "d_model": 32,
        "n_layer": 2,
        "vocab_size": vocab,
        "pad_vocab_size_multiple": 1,
        "ssm_cfg": {"d_state": 8, "d_conv": 4, "expand": 2},
        "tie_embeddings": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.save(state, tmp_path / "pytorch_model.bin")
    assert interp.load(tmp_path).tokenizer is None
    model = interp.load(tmp_path, tokenizer=str(folders["mamba"]))
    assert isinstance(model, HookedMamba) and model.tokenizer is not None
    tokens = torch.tensor([model.tokenizer.encode("James Smith: 609-323-7777")])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-4, rtol=0)
