"""State saturation: the planted shift register's capacity is recovered; the probe scripts run end to end."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

import interp
from interp.analysis.saturation import default_state_hooks, state_saturation
from interp.models import build_model
from interp.models.shift_register import ShiftRegister, ShiftRegisterConfig
from interp.tasks import TaskConfig
from interp.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
MEMORY, LETTERS = 4, 8
TASK = TaskConfig(task="copy", n_letters=LETTERS, max_len=12)


@pytest.fixture(scope="module")
def register():
    return ShiftRegister(ShiftRegisterConfig(d_vocab=LETTERS + 4, memory=MEMORY))


def test_planted_capacity_is_m_log_v(register):
    """Read at the last letter: min(L, m) letters are decodable, m * log2|V| bits for every L >= m."""
    lengths = [2, MEMORY, 8, 12]
    result = state_saturation(register, TASK, lengths, n_examples=600, read_offset=-2, copy_examples=16)
    s = result.summary.set_index("length")
    bits = math.log2(LETTERS)
    for length in lengths:
        expected = min(length, MEMORY) * bits
        assert s.loc[length, "info_bits"] == pytest.approx(expected, rel=0.05)
        assert s.loc[length, "decodable_tokens"] == pytest.approx(min(length, MEMORY), abs=0.35)
        assert s.loc[length, "string_bits"] == pytest.approx(length * bits)
    assert (s["state_bits"] == MEMORY * (LETTERS + 4)).all()  # one bit per 0/1 entry
    per = result.per_letter
    assert (per[per["lag"] < MEMORY]["accuracy"] == 1.0).all()


def test_separator_holds_one_letter_fewer(register):
    """At the separator the register's newest slot holds `|`, so only m - 1 letters remain."""
    result = state_saturation(register, TASK, [8], n_examples=400, copy_examples=16)
    expected = (MEMORY - 1) * math.log2(LETTERS)
    assert result.summary["info_bits"].iloc[0] == pytest.approx(expected, rel=0.05)


def test_errors(register):
    with pytest.raises(ValueError, match="task 'mqar' is not allowed"):
        state_saturation(register, TaskConfig(task="mqar", n_letters=8, max_len=4), [2])
    with pytest.raises(ValueError, match="before the string's last letter"):
        state_saturation(register, TASK, [4], n_examples=50, read_offset=-4)
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        state_saturation(register, TaskConfig(task="copy", n_letters=20), [4])


def test_default_state_hooks():
    mamba = build_model("mamba", d_vocab=12, d_model=16, n_layers=2, d_state=4)
    lstm = build_model("lstm", d_vocab=12, d_model=8, n_layers=1)
    transformer = build_model("transformer", d_vocab=12, d_model=16, n_layers=2, n_heads=2)
    assert default_state_hooks(mamba) == [f"blocks.{i}.mixer.hook_ssm_state" for i in range(2)]
    assert default_state_hooks(lstm) == ["blocks.0.hook_hidden", "blocks.0.hook_cell"]
    assert default_state_hooks(transformer) == ["blocks.1.hook_resid_post"]


# ---- the probe scripts, end to end on tiny checkpoints ---------------------------------------------


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "probes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A quickly trained Mamba and a random transformer, saved as interp checkpoints."""
    root = tmp_path_factory.mktemp("ckpt")
    task = TaskConfig(task="copy", n_letters=LETTERS, max_len=6)
    torch.manual_seed(0)
    mamba = build_model("mamba", d_vocab=task.vocab.size, d_model=16, n_layers=1, d_state=4)
    cfg = TrainConfig(steps=3, batch_size=8, warmup_steps=1, eval_examples=8, device="cpu")
    train(mamba, task, cfg, out_dir=root / "mamba", progress=False)
    transformer = build_model("transformer", d_vocab=task.vocab.size, d_model=16, n_layers=1, n_heads=2)
    interp.save_checkpoint(root / "transformer", transformer, task=task.to_dict())
    return [str(root / "mamba"), str(root / "transformer")]


@pytest.mark.parametrize("name", ["token_identity", "state_saturation"])
def test_script_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script(name).parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "checkpoints" in capsys.readouterr().out


def test_token_identity_script(checkpoints, tmp_path):
    out = tmp_path / "ti"
    args = [*checkpoints, "--out", str(out), "--examples", "64", "--max-lag", "3", "--length", "5"]
    assert load_script("token_identity").main(args) == 0
    df = pd.read_csv(out / "token_identity.csv")
    assert set(df["model"]) == {"mamba", "transformer"}
    assert set(df["lag"]) == {0, 1, 2, 3}
    assert (df[(df["hook"] == "hook_embed") & (df["lag"] == 0)]["accuracy"] == 1.0).all()
    assert (out / "token_identity.png").stat().st_size > 0 and (out / "config.json").exists()


def test_state_saturation_script(checkpoints, tmp_path):
    out, figure = tmp_path / "sat", tmp_path / "figures" / "sat.png"
    args = [*checkpoints, "--out", str(out), "--lengths", "2,4", "--examples", "96", "--copy-examples", "8"]
    args += ["--max-features", "32", "--figure", str(figure)]
    assert load_script("state_saturation").main(args) == 0
    summary = pd.read_csv(out / "saturation.csv")
    assert len(summary) == 4 and set(summary["length"]) == {2, 4}
    assert summary["state_bits"].notna().sum() == 2  # the Mamba's bound; the transformer has none
    assert (out / "saturation_per_letter.csv").exists() and figure.stat().st_size > 0
