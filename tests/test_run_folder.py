"""Run folders that cannot be corrupted: one writer, checkpoints as a unit, early and clean failures."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from io import BytesIO

import pytest
import torch

import interp.io
import interp.training
from interp import load
from interp.cli import main
from interp.io import RunFolderError, RunLock, checkpoint_step, run_is_complete
from interp.models import build_model
from interp.models.loading import load_checkpoint, save_checkpoint
from interp.tasks import TaskConfig, make_batch
from interp.training import TrainConfig, TrainingInterrupted, examples_in, train

TASK = TaskConfig(task="copy", n_letters=6, min_len=1, max_len=5)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny():
    torch.manual_seed(0)
    return build_model("transformer", d_vocab=TASK.vocab.size, d_model=16, n_heads=2, n_layers=1, n_ctx=32)


def cfg(**kw):
    return TrainConfig(
        **{"steps": 4, "batch_size": 8, "eval_every": 2, "checkpoint_every": 2, "device": "cpu", **kw}
    )


def run(out, resume=False, **kw):
    return train(tiny(), TASK, cfg(**kw), out_dir=out, resume=resume, progress=False)


def state_digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def python(code: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)


# ---- one writer ---------------------------------------------------------------------------------------


def test_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    with RunLock(tmp_path):  # flock conflicts between two opens of the file, in one process too
        with pytest.raises(
            RunFolderError, match=rf"{tmp_path} is being written by pid {os.getpid()} on host"
        ):
            run(tmp_path)
        assert main(["train", "--out", str(tmp_path), "--steps", "1", "--quiet"]) == 2
        assert "is being written by pid" in capsys.readouterr().err
    assert run(tmp_path).metrics[-1]["step"] == 4


@pytest.mark.slow
def test_second_writer_is_refused_naming_the_holder_and_a_killed_holder_frees_the_lock(tmp_path):
    holder = python(
        f"import time; from interp.io import RunLock\nwith RunLock({str(tmp_path)!r}):\n print('locked', flush=True); time.sleep(60)"
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=rf"being written by pid {holder.pid} on host"):
            run(tmp_path)
        assert main(["train", "--out", str(tmp_path), "--steps", "1", "--quiet"]) == 2
    finally:
        holder.send_signal(signal.SIGKILL)  # dies without releasing anything: the lock file stays, stale
        holder.wait()
    assert (tmp_path / ".lock").read_text().startswith(f"pid {holder.pid}")
    assert run(tmp_path).metrics[-1]["step"] == 4  # the kernel dropped the dead holder's flock
    assert (tmp_path / ".lock").read_text().startswith(f"pid {os.getpid()}")


def test_fresh_run_refuses_a_non_empty_folder_until_resume_or_overwrite(tmp_path):
    run(tmp_path)
    with pytest.raises(ValueError, match=rf"{tmp_path}.*--resume.*--overwrite"):
        run(tmp_path)
    old_metrics = (tmp_path / "metrics.jsonl").read_text()
    result = train(tiny(), TASK, cfg(steps=2), out_dir=tmp_path, overwrite=True, progress=False)
    assert [m["step"] for m in result.metrics] == [2]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2] and old_metrics != (tmp_path / "metrics.jsonl").read_text()
    assert checkpoint_step(tmp_path) == 2 and not (tmp_path / "checkpoints" / "step-4").exists()


def test_resume_with_contradicting_settings_names_them(tmp_path, capsys):
    run(tmp_path)
    with pytest.raises(ValueError, match=r"train\.lr=0\.5 \(saved: 0\.001\)"):
        run(tmp_path, resume=True, steps=6, lr=0.5)
    assert (
        main(["train", "--out", str(tmp_path), "--resume", "--d-model", "32", "--seed", "3", "--quiet"]) == 2
    )
    err = capsys.readouterr().err
    assert "model.d_model=32 (saved: 16)" in err and "train.seed=3 (saved: 0)" in err
    assert run(tmp_path, resume=True, steps=6, eval_every=3).metrics[-1]["step"] == 6  # allowed changes


def test_unwritable_out_fails_before_training(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(interp.training, "batch_for_step", lambda *a: pytest.fail("trained before failing"))
    with pytest.raises(RunFolderError, match="is a file"):
        run(tmp_path / "file" / "run")
    assert main(["train", "--out", str(tmp_path / "file" / "run"), "--quiet"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# ---- checkpoints as a unit ----------------------------------------------------------------------------


def test_failure_between_the_files_of_a_checkpoint_leaves_the_previous_one(tmp_path, monkeypatch):
    reference = train(tiny(), TASK, cfg(steps=4), progress=False).model
    real_write = interp.io._write_file

    def write(path, data):
        if path.name == "trainer_state.pt" and ".tmp-4-" in str(path):  # weights of step 4 already written
            raise OSError("disk full")
        real_write(path, data)

    monkeypatch.setattr(interp.io, "_write_file", write)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path)
    monkeypatch.undo()
    assert checkpoint_step(tmp_path) == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2"]  # no temp dir left
    assert load(tmp_path).checkpoint["step"] == 2
    resumed = run(tmp_path, resume=True)
    assert state_digest(resumed.model) == state_digest(reference)  # step-2 weights with step-2 optimizer


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_one(tmp_path):
    run(tmp_path)
    (tmp_path / "checkpoints" / ".tmp-6-dead").mkdir()
    (tmp_path / "checkpoints" / ".tmp-6-dead" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".metrics.jsonl.abc.tmp").write_text("{")
    assert checkpoint_step(tmp_path) == 4  # readers ignore them
    with RunLock(tmp_path):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".lock",
        "checkpoints",
        "config.json",
        "metrics.jsonl",
    ]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2", "step-4"]


def test_a_damaged_latest_checkpoint_is_skipped_with_a_warning(tmp_path):
    run(tmp_path)
    weights = tmp_path / "checkpoints" / "step-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"garbage!")
    with pytest.warns(UserWarning, match=r"step-4.*checksum"):
        assert checkpoint_step(tmp_path) == 2
    with pytest.warns(UserWarning):
        assert run(tmp_path, resume=True).metrics[-1]["step"] == 4


def test_reader_polling_while_every_step_checkpoints_never_sees_a_mix(tmp_path, monkeypatch):
    """The writer records each step's weights before publishing; whatever a reader loads must be exactly
    the weights of the step its config names, and the trainer state must be of that step too."""
    written = {}
    real_save = interp.training._save

    def save(out, model, task, cfg_, optimizer, schedule, step, examples_seen):
        written[step] = state_digest(model)
        real_save(out, model, task, cfg_, optimizer, schedule, step, examples_seen)

    monkeypatch.setattr(interp.training, "_save", save)
    writer = threading.Thread(
        target=run, args=(tmp_path,), kwargs=dict(steps=40, checkpoint_every=1, eval_every=0)
    )
    writer.start()
    seen = set()
    while writer.is_alive() or not seen:
        if checkpoint_step(tmp_path) is None:
            continue
        found = interp.io.read_checkpoint(tmp_path)
        model = load_checkpoint(tmp_path)
        step = model.checkpoint["step"]
        assert state_digest(model) == written[step], f"weights of another step than {step}"
        state = torch.load(BytesIO(found.files["trainer_state.pt"]), weights_only=True)
        assert state["step"] == found.step == json.loads(found.files["config.json"])["step"]
        seen.add(step)
    writer.join()
    assert len(seen) >= 3, seen  # the reader really raced the writer
    assert run_is_complete(tmp_path) and checkpoint_step(tmp_path) == 40
    assert len(list((tmp_path / "checkpoints").iterdir())) == 2  # the last two are kept


def test_checkpoint_step_and_run_is_complete(tmp_path):
    assert checkpoint_step(tmp_path) is None and not run_is_complete(tmp_path)
    run(tmp_path, steps=2)
    assert checkpoint_step(tmp_path) == 2 and run_is_complete(tmp_path)
    run(tmp_path, resume=True, steps=4, checkpoint_every=100)
    assert checkpoint_step(tmp_path) == 4 and run_is_complete(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["train"]["steps"] = 10  # what the step directory says counts, not the copy at the top
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert run_is_complete(tmp_path)


def test_folders_of_the_previous_layout_load_and_resume(tmp_path):
    """Before step directories: config.json, model.safetensors and trainer_state.pt at the top level."""
    full = run(tmp_path / "full", steps=4)
    two = run(tmp_path / "two", steps=2)
    old = tmp_path / "old"  # the same step-2 run, written as the previous version wrote it
    save_checkpoint(old, two.model, task=TASK.to_dict(), train=cfg(steps=2).to_dict(), step=2)
    config = json.loads((old / "config.json").read_text())
    del config["weights_sha256"]  # the old format had no checksum
    (old / "config.json").write_text(json.dumps(config))
    found = interp.io.read_checkpoint(tmp_path / "two")
    state = torch.load(BytesIO(found.files["trainer_state.pt"]), weights_only=True)
    del state["examples_seen"]  # not saved before: recomputed from the reproducible batches
    torch.save(state, old / "trainer_state.pt")
    (old / "metrics.jsonl").write_text(json.dumps(two.metrics[0]) + "\n")

    assert load(old).checkpoint["step"] == 2 and checkpoint_step(old) == 2
    resumed = run(old, resume=True, steps=4)
    assert state_digest(resumed.model) == state_digest(full.model)
    assert [m["examples_seen"] for m in resumed.metrics] == [m["examples_seen"] for m in full.metrics]
    assert not (old / "model.safetensors").exists() and checkpoint_step(old) == 4  # now the new layout


# ---- metrics ------------------------------------------------------------------------------------------


def test_torn_metrics_line_is_skipped_with_a_warning_naming_the_file(tmp_path, capsys):
    run(tmp_path)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 0.')  # killed mid-write
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: skipping line 3"):
        result = run(tmp_path, resume=True, steps=6)
    assert [m["step"] for m in result.metrics] == [2, 4, 6]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]


def test_examples_seen_counts_examples_also_packed_and_after_resume(tmp_path):
    packed = TaskConfig(task="copy", n_letters=6, min_len=1, max_len=5, pack_context=30)
    batch = make_batch(packed, 4)
    assert examples_in(batch) == int((batch.lengths > 0).sum()) > 4  # several examples per row
    c = cfg(steps=4, eval_every=1)
    full = train(tiny(), packed, c, progress=False)
    expected = [
        sum(examples_in(interp.training.batch_for_step(packed, c, s)) for s in range(n)) for n in (1, 2, 3, 4)
    ]
    assert [m["examples_seen"] for m in full.metrics] == expected
    train(tiny(), packed, cfg(steps=2, eval_every=1), out_dir=tmp_path, progress=False)
    resumed = train(tiny(), packed, c, out_dir=tmp_path, resume=True, progress=False)
    assert [m["examples_seen"] for m in resumed.metrics] == expected
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["examples_seen"] for r in rows] == expected


# ---- loading ------------------------------------------------------------------------------------------


def test_nonfinite_weights_are_refused_naming_the_tensor(tmp_path):
    model = tiny()
    with torch.no_grad():
        model.unembed.weight[0, 0] = float("nan")
    save_checkpoint(tmp_path, model)
    for loader in (load, load_checkpoint):
        with pytest.raises(
            ValueError, match=r"unembed\.weight holds 1 NaN or infinite.*allow_nonfinite=True"
        ):
            loader(tmp_path)
        assert loader(tmp_path, allow_nonfinite=True).unembed.weight.isnan().sum() == 1


def test_a_flat_folder_whose_weights_do_not_match_its_config_is_refused(tmp_path):
    save_checkpoint(tmp_path, tiny())
    config = (tmp_path / "config.json").read_text()
    torch.manual_seed(1)
    save_checkpoint(
        tmp_path,
        build_model("transformer", d_vocab=TASK.vocab.size, d_model=16, n_heads=2, n_layers=1, n_ctx=32),
    )
    (tmp_path / "config.json").write_text(config)  # as if killed between the two files of the save
    with pytest.raises(ValueError, match="not the file .* was saved with"):
        load(tmp_path)


# ---- Ctrl-C -------------------------------------------------------------------------------------------


def test_ctrl_c_saves_a_checkpoint_and_the_cli_says_how_to_resume(tmp_path, monkeypatch, capsys):
    real = interp.training.batch_for_step

    def batch_then_ctrl_c(task, c, step):
        if step == 2:
            signal.raise_signal(signal.SIGINT)
        return real(task, c, step)

    monkeypatch.setattr(interp.training, "batch_for_step", batch_then_ctrl_c)
    with pytest.raises(TrainingInterrupted) as info:
        run(tmp_path / "api", steps=20, checkpoint_every=100)
    assert info.value.step == 3 and checkpoint_step(tmp_path / "api") == 3  # the step in progress finished
    out = tmp_path / "cli"
    code = main(
        [
            "train",
            "--out",
            str(out),
            "--steps",
            "20",
            "--checkpoint-every",
            "100",
            "--d-model",
            "16",
            "--quiet",
        ]
    )
    assert code == 130 and checkpoint_step(out) == 3
    err = capsys.readouterr().err
    assert f"interp train --out {out} --resume" in err and "Traceback" not in err
    monkeypatch.undo()
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0 and run_is_complete(out)


@pytest.mark.slow
def test_ctrl_c_in_a_real_process(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    args = [
        "train",
        "--out",
        str(out),
        "--steps",
        "100000",
        "--checkpoint-every",
        "100000",
        "--eval-every",
        "1",
        "--d-model",
        "16",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "interp.cli", *args, "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().startswith("training")
    while not (out / "metrics.jsonl").exists():  # in the training loop (it evaluates every step)
        assert proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert checkpoint_step(out) > 0
