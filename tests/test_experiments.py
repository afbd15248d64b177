"""The experiment machinery: grids, sweeps (local and Ray), resumption, failures, reports."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from interp.cli import main
from interp.experiments import EXPERIMENTS, RunSpec, execute_run, get_experiment, reproduce, run_sweep
from interp.experiments.capacity import converged
from interp.experiments.copying import sample_efficiency_table
from interp.experiments.report import markdown_summary
from interp.experiments.runner import TRAINED
from interp.experiments.spec import EvalSpec, summarize
from interp.experiments.sweep import connect_ray, import_ray

ROOT = Path(__file__).resolve().parents[1]
TASK = {"task": "copy", "n_letters": 4, "min_len": 1, "max_len": 3}
TRAIN = {
    "steps": 4,
    "batch_size": 4,
    "warmup_steps": 1,
    "eval_every": 2,
    "eval_examples": 8,
    "checkpoint_every": 2,
}
EVALS = [EvalSpec(lengths=[2, 3], examples=8).to_dict()]


def tiny(label: str, seed: int = 0, **model) -> RunSpec:
    arch = "lstm" if label.startswith("lstm") else "transformer"
    options = {"d_model": 8, "n_layers": 1, **({"n_heads": 2} if arch == "transformer" else {}), **model}
    return RunSpec("test", label, arch, options, TASK, TRAIN, seed, EVALS)


def comparable(record: dict) -> dict:
    """A record without what legitimately differs between two executions (timings, host, resumption)."""
    metrics = [{k: v for k, v in m.items() if k != "tokens_per_s"} for m in record["metrics"]]
    evals = [e["rows"] for e in record["evals"]]
    return {"spec": record["spec"], "params": record["params"], "metrics": metrics, "evals": evals}


def test_run_id_changes_with_any_setting():
    a, b = tiny("transformer"), tiny("transformer", d_model=16)
    assert a.run_id.startswith("transformer-seed0-") and a.run_id != b.run_id
    assert tiny("transformer", seed=1).run_id != a.run_id
    assert RunSpec.from_dict(a.to_dict()).run_id == a.run_id


def test_bad_eval_spec_is_refused_before_training():
    with pytest.raises(
        ValueError,
        match="unknown evaluation kind 'bits'; allowed: accuracy, saturation, patching, lookup_heads",
    ):
        RunSpec("test", "x", "lstm", {}, TASK, TRAIN, 0, [{"kind": "bits", "lengths": [2]}])


def test_execute_run_writes_a_checkpoint_folder_and_a_record(tmp_path):
    import interp

    spec = tiny("lstm")
    record = execute_run(spec, tmp_path)
    folder = tmp_path / spec.run_id
    assert json.loads((folder / TRAINED).read_text())["metrics"] == record["metrics"]
    assert [m["step"] for m in record["metrics"]] == [2, 4]
    assert [m["examples_seen"] for m in record["metrics"]] == [8, 16]
    assert [r["length"] for r in record["evals"][0]["rows"]] == [2, 3]
    assert interp.load(folder).num_params() == record["params"]  # a normal checkpoint folder
    assert execute_run(spec, tmp_path) == record  # finished: read back, not retrained


def test_a_second_experiment_on_the_same_training_reuses_it(tmp_path):
    first = tiny("lstm")
    execute_run(first, tmp_path)
    trained = (tmp_path / first.run_id / TRAINED).stat().st_mtime_ns
    more = RunSpec.from_dict(
        {**first.to_dict(), "evals": [EvalSpec(lengths=[4], mode="greedy", examples=8).to_dict()]}
    )
    assert more.run_id == first.run_id  # keyed by training, not by evaluations
    record = execute_run(more, tmp_path)
    assert (tmp_path / first.run_id / TRAINED).stat().st_mtime_ns == trained  # not retrained
    assert [r["length"] for r in record["evals"][0]["rows"]] == [4] and record["evals"][0]["rows"][0][
        "mode"
    ] == "greedy"
    other = RunSpec.from_dict({**first.to_dict(), "train": {**TRAIN, "lr": 1e-2}})
    assert other.run_id != first.run_id


@pytest.mark.slow
def test_sweep_reports_a_failing_run_finishes_the_others_and_resumes(tmp_path):
    good = [tiny("transformer"), tiny("lstm"), tiny("transformer", seed=1)]
    bad = tiny("transformer bad", n_heads=3)  # d_model 8 is not divisible by 3 heads: fails at build
    sweep = run_sweep([good[0], bad, *good[1:]], tmp_path, workers=2, progress=False)
    assert (sweep.ran, sweep.skipped, len(sweep.failed)) == (3, 0, 1)
    assert sweep.failed[0][0].run_id == bad.run_id
    assert "not divisible by n_heads=3" in sweep.failed[0][1]
    assert [r["run_id"] for r in sweep.records] == [s.run_id for s in good]

    again = run_sweep([good[0], bad, *good[1:]], tmp_path, workers=2, progress=False)
    assert (again.ran, again.skipped, len(again.failed)) == (0, 3, 1)
    assert [comparable(r) for r in again.records] == [comparable(r) for r in sweep.records]


@pytest.mark.slow
def test_killed_sweep_resumes_runs_from_their_checkpoint(tmp_path):
    """Kill the sweep once a run has checkpointed; the rerun continues that run instead of restarting."""
    spec = RunSpec("test", "lstm slow", "lstm", {"d_model": 8, "n_layers": 1}, TASK,
                   {**TRAIN, "steps": 4000, "checkpoint_every": 20, "eval_every": 1000}, 0, EVALS)  # fmt: skip
    script = (
        "import sys, json; from interp.experiments import RunSpec, run_sweep\n"
        "if __name__ == '__main__':\n"
        f"    run_sweep([RunSpec.from_dict(json.loads(sys.argv[1]))], {str(tmp_path)!r}, workers=1, progress=False)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(spec.to_dict())], env=env, start_new_session=True
    )
    folder = tmp_path / spec.run_id
    deadline = time.monotonic() + 120
    from interp.io import checkpoint_step

    while time.monotonic() < deadline and not (folder.exists() and (checkpoint_step(folder) or 0) >= 40):
        time.sleep(0.2)
    proc.terminate()  # SIGTERM to the sweep alone, mid-run: it must stop its worker, not orphan it
    proc.wait(timeout=60)
    holder = int((folder / ".lock").read_text().split()[1])  # "pid N on host H": the worker
    while time.monotonic() < deadline and _alive(holder):
        time.sleep(0.1)
    assert not _alive(holder)
    step = checkpoint_step(folder)
    assert step is not None and 40 <= step < 4000 and not (folder / TRAINED).exists()
    record = execute_run(spec, tmp_path)
    assert record["resumed"] is True and record["metrics"][-1]["step"] == 4000


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited (and closed its files) but is not yet reaped


@pytest.mark.slow
def test_ray_and_local_executors_give_identical_results(tmp_path):
    grid = [tiny("transformer"), tiny("lstm")]
    local = run_sweep(grid, tmp_path / "local", workers=2, progress=False)
    ray = import_ray()
    try:
        remote = run_sweep(grid, tmp_path / "ray", executor="ray", workers=2, progress=False)
    finally:
        ray.shutdown()
    assert remote.complete and local.complete
    assert [comparable(r) for r in remote.records] == [comparable(r) for r in local.records]


def test_missing_ray_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'interp\[sweep\]'"):
        import_ray()


def test_unreachable_ray_address_fails_fast():
    class FakeRay:  # never reached: the address check comes first
        def is_initialized(self):
            return False

        def init(self, **kwargs):
            raise AssertionError("ray.init must not be called for an unreachable address")

    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="cannot reach a Ray cluster at '127.0.0.1:9'"):
        connect_ray(FakeRay(), "127.0.0.1:9", None, timeout=2)
    assert time.monotonic() - t0 < 30  # fails on the connection refusal, not after ray's own long retries
    with pytest.raises(ValueError, match="--address must be auto, HOST:PORT or ray://HOST:PORT"):
        connect_ray(FakeRay(), "nowhere", None)


def test_unknown_experiment_executor_and_scale_list_the_allowed_ones(tmp_path, capsys):
    with pytest.raises(
        ValueError, match="unknown experiment 'copying'; allowed: sample-efficiency, length-gen"
    ):
        get_experiment("copying")
    with pytest.raises(ValueError, match="has no scale 'laptop'; allowed: smoke, demo, cpu, gpu"):
        reproduce("lookup", scale="laptop", out=tmp_path)
    with pytest.raises(ValueError, match="unknown executor 'slurm'; allowed: local, ray"):
        run_sweep([tiny("lstm")], tmp_path, executor="slurm")
    assert main(["reproduce", "copying"]) == 2
    assert "unknown experiment 'copying'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["reproduce", "lookup", "--scale", "gpu", "--out", str(tmp_path)]) == 2
        assert "asks one GPU per run, but this machine has no CUDA GPU" in capsys.readouterr().err


def test_list_names_every_experiment_and_preset(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in [*EXPERIMENTS, "--scale cpu", "--scale gpu"]:
        assert name in out


def test_summary_is_mean_sd_and_count_over_seeds():
    table = pd.DataFrame({"model": ["a", "a", "a", "b"], "seed": [0, 1, 2, 0], "acc": [0.2, 0.4, 0.6, 1.0]})
    s = summarize(table, ["model"], ["acc"]).set_index("model")
    assert s.loc["a", "acc_mean"] == pytest.approx(0.4) and s.loc["a", "acc_sd"] == pytest.approx(0.2)
    assert s.loc["a", "acc_n"] == 3 and s.loc["b", "acc_n"] == 1 and math.isnan(s.loc["b", "acc_sd"])


def test_examples_to_accuracy_and_convergence_read_the_learning_curve():
    curve = [(100, 0.1), (200, 0.6), (300, 0.95), (400, 0.93)]
    metrics = [{"examples_seen": e, "string_acc": a, "step": i} for i, (e, a) in enumerate(curve)]
    never = [{"examples_seen": e, "string_acc": 0.0, "step": i} for i, (e, _) in enumerate(curve)]
    records = [{"spec": {"label": "m", "seed": 0, "columns": {"max_len": 4}}, "metrics": metrics},
               {"spec": {"label": "n", "seed": 0, "columns": {"max_len": 4}}, "metrics": never}]  # fmt: skip
    t = sample_efficiency_table(records).set_index("model")
    assert t.loc["m", "examples_to_50"] == 200 and t.loc["m", "examples_to_90"] == 300
    assert math.isnan(t.loc["n", "examples_to_90"]) and t.loc["n", "examples_budget"] == 400
    assert converged(metrics[-3:] + [{"string_acc": 0.94}]) and not converged(metrics)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n != "hybrid"])  # hybrid: its own test below
def test_reproduce_smoke_preset_writes_csv_figure_and_report(name, tmp_path, capsys):
    args = [
        "reproduce",
        name,
        "--scale",
        "smoke",
        "--out",
        str(tmp_path / "runs"),
        "--workers",
        "2",
        "--quiet",
    ]
    assert main([*args, "--report-dir", str(tmp_path / "docs")]) == 0
    stem = f"{name}-smoke"
    report = (tmp_path / "docs" / f"{stem}.md").read_text()
    table = pd.read_csv(tmp_path / "docs" / f"{stem}.csv")
    assert (tmp_path / "docs" / f"{stem}.png").stat().st_size > 10_000
    assert (tmp_path / "runs" / "smoke" / name / "results.csv").is_file()
    experiment = get_experiment(name)
    summary = summarize(table, experiment.group_by, experiment.values)
    assert markdown_summary(summary, experiment.group_by, experiment.values) in report  # the CSV's numbers
    assert f"interp reproduce {name} --scale smoke" in report and "commit" in report
    assert "runs finished now, 0 were finished before, 0 failed" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_trains_three_families_and_writes_the_sample_efficiency_report(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "20", "--workers", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    for model in ("transformer rope", "mamba", "lstm"):
        assert f"  {model} " in out
    assert "L=2:" in out and "L=10:" in out
    assert (tmp_path / "sample-efficiency-demo.png").stat().st_size > 10_000
    table = pd.read_csv(tmp_path / "sample-efficiency-demo.csv")
    assert sorted(table["model"]) == ["lstm", "mamba", "transformer rope"]
    assert (table["examples_budget"] == 20 * 32).all()  # 20 steps of 32 examples
    assert main(["demo", "--archs", "gru", "--out", str(tmp_path)]) == 2
    assert (
        "unknown demo architecture(s) ['gru']; allowed: transformer, mamba, lstm" in capsys.readouterr().err
    )


@pytest.mark.parametrize("scale", ["smoke", "demo", "cpu", "gpu"])
def test_every_preset_builds_valid_runs_that_fit_the_context(scale):
    from interp.models import model_class
    from interp.tasks import TaskConfig
    from interp.training import TrainConfig

    for experiment in EXPERIMENTS.values():
        specs = experiment.preset(scale).runs()
        assert len({s.run_id for s in specs}) == len(specs)
        seeds = {s.seed for s in specs}
        assert len(seeds) >= (3 if scale in ("cpu", "gpu") else 1)
        for spec in specs:
            task = TaskConfig.from_dict(spec.task)
            cfg = model_class(spec.arch).config_class.from_dict({"d_vocab": task.vocab.size, **spec.model})
            TrainConfig.from_dict(spec.train)
            n_ctx = getattr(cfg, "n_ctx", None)
            for ev in map(EvalSpec.from_dict, spec.evals):
                longest = TaskConfig.from_dict({**spec.task, **ev.task}).sequence_length(max(ev.lengths))
                assert n_ctx is None or longest <= n_ctx, (spec.label, longest, n_ctx)


def test_seeds_option_keeps_every_distinct_run():
    from interp.experiments.paper import with_seeds

    for experiment in EXPERIMENTS.values():
        specs = experiment.preset("cpu").runs()
        seeds = sorted({s.seed for s in specs})
        assert {s.run_id for s in with_seeds(specs, seeds)} == {s.run_id for s in specs}
        assert len(with_seeds(specs, [7])) == len(specs) // len(seeds)


@pytest.mark.parametrize("scale", ["smoke", "cpu", "gpu"])
def test_length_generalization_evaluates_the_sample_efficiency_models(scale):
    lengths = {s.run_id for s in get_experiment("length-generalization").preset(scale).runs()}
    assert lengths <= {s.run_id for s in get_experiment("sample-efficiency").preset(scale).runs()}


def test_evaluations_from_an_older_evaluation_code_are_redone(tmp_path):
    from interp.experiments.runner import eval_path, read_result

    spec = tiny("lstm")
    record = execute_run(spec, tmp_path)
    path = eval_path(tmp_path / spec.run_id, EvalSpec.from_dict(spec.evals[0]))
    stale = {k: v for k, v in json.loads(path.read_text()).items() if k != "schema"}
    path.write_text(json.dumps(stale))
    assert read_result(tmp_path, spec) is None  # not finished: the rows may lack columns added since
    assert execute_run(spec, tmp_path)["evals"][0]["rows"] == record["evals"][0]["rows"]


@pytest.mark.slow
def test_a_killed_worker_fails_its_run_only(tmp_path):
    """SIGKILL one run's process (as the out-of-memory killer would): the others still finish."""
    slow = RunSpec("test", "lstm slow", "lstm", {"d_model": 8, "n_layers": 1}, TASK,
                   {**TRAIN, "steps": 100000, "checkpoint_every": 50, "eval_every": 50000}, 0, EVALS)  # fmt: skip
    grid = [slow, tiny("transformer"), tiny("lstm")]
    script = (
        "import sys, json; from interp.experiments import RunSpec, run_sweep\n"
        "if __name__ == '__main__':\n"
        "    grid = [RunSpec.from_dict(d) for d in json.loads(sys.argv[1])]\n"
        f"    r = run_sweep(grid, {str(tmp_path)!r}, workers=2, progress=False)\n"
        "    print(json.dumps({'ran': r.ran, 'failed': [(s.run_id, e) for s, e in r.failed]}))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    grid_json = json.dumps([s.to_dict() for s in grid])
    proc = subprocess.Popen(
        [sys.executable, "-c", script, grid_json], env=env, stdout=subprocess.PIPE, text=True
    )
    lock = tmp_path / slow.run_id / ".lock"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (lock.is_file() and lock.read_text().strip()):
        time.sleep(0.2)
    assert lock.is_file(), "the slow run never started"
    os.kill(int(lock.read_text().split()[1]), 9)
    out, _ = proc.communicate(timeout=300)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["ran"] == 2
    assert [run_id for run_id, _ in result["failed"]] == [slow.run_id]
    assert "process died (exit code -9" in result["failed"][0][1]


# ---- the hybrid experiment and its "where" evaluations ---------------------------------------------------
def test_where_evaluations_find_the_planted_lookup_head_of_the_hash_copy_model():
    """The hand-built copy circuit: its lookup head (layer 1) is what the detector ranks first and what
    noising finds necessary, at the answer positions (not the string's)."""
    from interp.experiments.where import lookup_rows, patching_rows
    from interp.models.hash_copy import build_hash_copy, planted_heads
    from interp.tasks import TaskConfig

    model = build_hash_copy(8, 3, n_ctx=128)
    task = TaskConfig(task="copy", n_letters=8, max_len=40, unique_ngrams=True, ngram=3)
    heads = pd.DataFrame(lookup_rows(model, task, 10, 8, seed=0))
    top = heads[heads["score"] == "lookup"].sort_values("value").iloc[-1]
    assert (top["layer"], top["head"]) == planted_heads(3)["lookup"][0] and top["value"] > 0.9
    patch = pd.DataFrame(patching_rows(model, task, 10, 8, seed=0))
    whole = patch[(patch["region"] == "all") & patch["head"].isna()].set_index("layer")["effect"]
    assert whole[1] > 0.9  # without layer 1's attention nothing is copied
    head = patch[patch["head"].notna()].sort_values("effect").iloc[-1]
    assert (head["layer"], head["head"]) == planted_heads(3)["lookup"][0]
    by_region = patch[(patch["layer"] == 1) & patch["pos"].notna()].groupby("region")["effect"].sum()
    assert by_region["answer"] > 0.9 and abs(by_region["string"]) < 0.05


def test_suffix_lookup_targets_point_at_the_answer_after_the_key():
    from interp.experiments.where import suffix_lookup_targets
    from interp.tasks import TaskConfig, make_batch

    task = TaskConfig(task="suffix_lookup", n_letters=10, min_len=4, max_len=12, ngram=2, answer_len=2)
    batch = make_batch(task, 64, torch.Generator().manual_seed(0), length=9)
    targets = suffix_lookup_targets(batch, ngram=2)
    rows, queries = (targets >= 0).nonzero(as_tuple=True)
    assert len(rows) == 64 * 2  # both answer tokens, not the end token
    source = targets[rows, queries]
    assert (batch.tokens[rows, source] == batch.tokens[rows, queries + 1]).all()  # the token to produce
    first = queries == batch.answer_start[rows] - 1
    key = batch.tokens[rows[first], 11:13]  # `$ s(9) |` then the key
    before = torch.stack(
        [batch.tokens[rows[first], source[first] - 2], batch.tokens[rows[first], source[first] - 1]], 1
    )
    assert (before == key).all() and (source[first] <= 9).all()
    with pytest.raises(ValueError, match="needs a suffix_lookup batch, not 'copy'"):
        suffix_lookup_targets(make_batch(TaskConfig(task="copy"), 2, length=4), ngram=2)


@pytest.mark.slow
def test_hybrid_smoke_preset_end_to_end(tmp_path):
    """Every run of the smoke grid trained and evaluated (in this process), then the report: one row per
    run with accuracies in [0, 1], the patching, lookup and saturation columns filled, the CSV's numbers
    in the Markdown, and a cached second pass."""
    from interp.experiments.report import write_report
    from interp.experiments.sweep import SweepResult

    experiment = get_experiment("hybrid")
    specs = experiment.preset("smoke").runs()
    assert len(specs) == 10  # 5 models x 2 tasks x 1 seed
    records = [execute_run(s, tmp_path / "runs") for s in specs]
    for rec in records:
        assert [e["spec"]["kind"] for e in rec["evals"]] == [
            "accuracy",
            "patching",
            "lookup_heads",
            "saturation",
        ]
    report = write_report(experiment, "smoke", records, tmp_path / "out", tmp_path / "docs", "test",
                          SweepResult(records, ran=len(records)), 1.0)  # fmt: skip
    table = report.table
    assert len(table) == len(specs)
    assert sorted(zip(table["task"], table["model"])) == sorted((s.columns["task"], s.label) for s in specs)
    for col in ("half_len_acc", "max_len_acc", "double_len_acc", "string_fill"):
        assert table[col].between(0, 1).all(), col
    assert table[[f"patch_L{i}" for i in range(3)] + [f"lookup_L{i}" for i in range(3)]].notna().all().all()
    assert (table["info_bits"] >= 0).all() and table["lookup_L0"].between(0, 2).all()
    text = (tmp_path / "docs" / "hybrid-smoke.md").read_text()
    assert markdown_summary(report.summary, experiment.group_by, experiment.values) in text
    assert "Best hybrid" in text and (tmp_path / "docs" / "hybrid-smoke.png").stat().st_size > 10_000
    assert execute_run(specs[0], tmp_path / "runs") == records[0]  # cached: read back, not redone
