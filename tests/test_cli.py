import json
import subprocess
import sys

import pandas as pd
import pytest

from interp.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "demo", "info"):
        assert command in out


def test_train_eval_info_resume_from_the_shell(tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--task", "copy", "--n-letters", "6", "--max-len", "5", "--d-model", "32", "--n-heads", "2"]
    assert main(["train", "--out", str(run), "--steps", "4", "--eval-every", "2", "--quiet", *common]) == 0
    assert json.loads((run / "config.json").read_text())["task"]["n_letters"] == 6
    assert main(["train", "--out", str(run), "--resume", "--steps", "6", "--quiet"]) == 0
    assert json.loads((run / "config.json").read_text())["step"] == 6

    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    code = main(
        ["eval", str(run), "--lengths", "2,5", "--mode", "both", "--examples", "8", "--json", str(out_json),
         "--csv", str(out_csv)]
    )  # fmt: skip
    assert code == 0
    table = pd.read_csv(out_csv)
    assert sorted(zip(table.length, table["mode"])) == [
        (2, "greedy"),
        (2, "teacher"),
        (5, "greedy"),
        (5, "teacher"),
    ]
    assert table.string_acc.between(0, 1).all() and len(json.loads(out_json.read_text())) == 4

    assert main(["info", str(run)]) == 0
    assert "parameters" in capsys.readouterr().out


def test_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "missing"), "--resume"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "x"), "--n-letters", "30", "--steps", "1"]) == 2
    assert "2..26" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "y"), "--positional", "learned", "--steps", "1"]) == 2
    assert "hard_alibi" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "interp.cli", "eval", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "--lengths" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint-every", "0"], "checkpoint_every must be >= 1, got 0"),
        (["--d-model", "0"], "d_model must be >= 1, got 0"),
        (["--arch", "lstm", "--d-model", "0"], "LSTMConfig.d_model must be >= 1, got 0"),
        (["--eval-every", "-1"], "eval_every must be >= 0, got -1"),
        (["--warmup-steps", "-5"], "warmup_steps must be >= 0, got -5"),
        (["--device", "tpu"], "device 'tpu' is not allowed"),
        (["--steps", "many"], "invalid int value: 'many'"),
        (["--model-opt", "n_layers=true"], "n_layers must be int, got True"),
    ],
)
def test_bad_numbers_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    try:
        code = main(["train", "--out", str(out), "--steps", "1", "--quiet", *args])
    except SystemExit as e:  # argparse's own checks (a number that is no number)
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()  # refused before the run folder was made


def test_wrongly_typed_config_json_and_bad_eval_numbers_are_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--n-letters", "6", "--max-len", "5", "--d-model", "16", "--n-heads", "2", "--quiet"]
    assert main(["train", "--out", str(run), "--steps", "2", *common]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--examples", "0"]) == 2
    assert capsys.readouterr().err.strip() == "interp eval: error: --examples must be >= 1, got 0"
    assert main(["eval", str(run), "--device", "tpu"]) == 2
    assert "device 'tpu' is not allowed" in capsys.readouterr().err

    flat = tmp_path / "flat"
    from interp import load, save_checkpoint

    save_checkpoint(flat, load(run))
    config = json.loads((flat / "config.json").read_text())
    config["model"]["d_model"] = "wide"
    (flat / "config.json").write_text(json.dumps(config))
    assert main(["info", str(flat)]) == 2
    err = capsys.readouterr().err
    assert "TransformerConfig.d_model must be int, got 'wide' (str)" in err and err.count("\n") == 1

    config["model"]["d_model"], config["task"] = 16, ["not", "a", "dict"]
    (flat / "config.json").write_text(json.dumps(config))
    (flat / "trainer_state.pt").write_bytes(
        (run / "checkpoints" / "step-2" / "trainer_state.pt").read_bytes()
    )
    assert main(["train", "--out", str(flat), "--resume", "--steps", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'task' must be a JSON object" in err and err.count("\n") == 1


def test_fresh_train_into_a_used_folder_names_both_flags(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--steps", "2", "--d-model", "16", "--n-heads", "2", "--quiet"]
    assert main(args) == 0
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and str(run) in err
    assert main([*args, "--overwrite"]) == 0
