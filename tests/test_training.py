import json

import pytest
import torch

from interp import load
from interp.analysis.evaluation import evaluate, greedy_predictions
from interp.models import build_model
from interp.models.loading import save_checkpoint
from interp.tasks import TaskConfig, make_batch
from interp.training import TrainConfig, lr_factor, train

TASK = TaskConfig(task="copy", n_letters=8, min_len=1, max_len=8)


def tiny(arch="transformer", **kw):
    torch.manual_seed(0)
    opts = {"transformer": dict(d_model=32, n_heads=2, n_ctx=64), "lstm": dict(d_model=32)}[arch]
    return build_model(arch, d_vocab=TASK.vocab.size, **{**opts, **kw})


def test_schedule_warms_up_then_decays_to_zero():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5)
    assert lr_factor(100, 10, 100) == 0.0


@pytest.mark.slow
def test_two_layer_transformer_learns_to_copy():
    """Vocabulary 8, strings up to 8: >= 90% string accuracy after a few seconds of CPU training."""
    torch.manual_seed(0)
    model = build_model("transformer", d_vocab=TASK.vocab.size, d_model=64, n_layers=2, n_heads=4, n_ctx=64)
    train(model, TASK, TrainConfig(steps=600, lr=3e-3, warmup_steps=20, eval_every=600), progress=False)
    df = evaluate(model, TASK, lengths=[2, 4, 6, 8], n_examples=128)
    assert df.string_acc.mean() >= 0.9, df
    greedy = evaluate(model, TASK, lengths=[8], n_examples=64, modes=("greedy",))
    assert greedy.string_acc.item() >= 0.8, greedy


def test_checkpoint_roundtrip_and_metrics(tmp_path):
    model = tiny()
    result = train(
        model, TASK, TrainConfig(steps=6, eval_every=3, device="cpu"), out_dir=tmp_path, progress=False
    )
    assert [m["step"] for m in result.metrics] == [3, 6]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [".lock", "checkpoints", "config.json", "metrics.jsonl"]  # run folder layout: interp.io
    step_files = sorted(p.name for p in (tmp_path / "checkpoints" / "step-6").iterdir())
    assert step_files == ["config.json", "manifest.json", "model.safetensors", "trainer_state.pt"]
    loaded = load(tmp_path)
    tokens = make_batch(TASK, 4).tokens
    torch.testing.assert_close(loaded(tokens), model(tokens))
    assert loaded.checkpoint["task"] == TASK.to_dict() and loaded.checkpoint["step"] == 6


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_resume_continues_exactly(tmp_path, arch):
    full = train(tiny(arch), TASK, TrainConfig(steps=8, eval_every=4, checkpoint_every=4), progress=False)
    first = train(
        tiny(arch),
        TASK,
        TrainConfig(steps=4, eval_every=4, checkpoint_every=4),
        out_dir=tmp_path,
        progress=False,
    )
    assert first.metrics[-1]["step"] == 4
    resumed = train(
        tiny(arch),
        TASK,
        TrainConfig(steps=8, eval_every=4, checkpoint_every=4),
        out_dir=tmp_path,
        resume=True,
        progress=False,
    )
    tokens = make_batch(TASK, 4).tokens
    torch.testing.assert_close(resumed.model(tokens), full.model(tokens), atol=1e-5, rtol=0)
    assert [m["step"] for m in resumed.metrics] == [4, 8]


def test_resume_from_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train(tiny(), TASK, TrainConfig(steps=2), out_dir=tmp_path / "nope", resume=True, progress=False)


def test_corrupt_and_mismatched_checkpoints_are_reported(tmp_path):
    model = tiny()
    save_checkpoint(tmp_path / "ok", model)
    (tmp_path / "ok" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt"):
        load(tmp_path / "ok")

    save_checkpoint(tmp_path / "mismatch", model)
    config = json.loads((tmp_path / "mismatch" / "config.json").read_text())
    config["model"]["d_model"] = 64
    (tmp_path / "mismatch" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"ln1\.weight: checkpoint \(32,\) vs model \(64,\)"):
        load(tmp_path / "mismatch")

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load(tmp_path / "junk")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "absent")


def test_interrupted_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = tiny()
    save_checkpoint(tmp_path, model)
    before = (tmp_path / "model.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("interp.models.loading.save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, tiny(d_model=16))
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


class EchoModel(torch.nn.Module):
    """Predicts the current token again: wrong on copy, and its greedy output feeds back."""

    def __init__(self, d_vocab):
        super().__init__()
        self.d_vocab = d_vocab

    def forward(self, tokens):
        return torch.nn.functional.one_hot(tokens, self.d_vocab).float()


def test_greedy_decoding_feeds_predictions_back():
    batch = make_batch(TASK, 4, length=3)
    preds = greedy_predictions(EchoModel(TASK.vocab.size), batch)
    sep = TASK.vocab.sep
    # echo predicts '|' at the separator; fed back, every later answer prediction is '|' as well
    start = int(batch.answer_start[0]) - 1
    assert (preds[:, start : start + 4] == sep).all()
    teacher = EchoModel(TASK.vocab.size)(batch.tokens).argmax(-1)
    assert not torch.equal(preds[:, start + 1 : start + 4], teacher[:, start + 1 : start + 4])


def test_evaluate_rejects_vocabulary_mismatch():
    model = tiny()
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        evaluate(model, TaskConfig(task="copy", n_letters=20), lengths=[4])


def test_checkpoint_files_are_readable_by_others(tmp_path):
    save_checkpoint(tmp_path, tiny())
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o044 == 0o044
