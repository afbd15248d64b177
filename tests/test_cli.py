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
