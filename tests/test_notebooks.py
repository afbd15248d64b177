"""Execute every notebook with small settings (INTERP_NOTEBOOK_QUICK=1), then check what it computed.

Running top to bottom is not enough: after the last cell, `CHECKS[notebook]` runs in the same kernel and
asserts on the notebook's own variables (planted circuits found, planted states read back, the
reference and fast paths agreeing), so a notebook that silently computes nonsense fails.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))

CHECKS = {
    "01_copy_transformer_vs_lstm.ipynb": """
assert set(models) == set(available_archs()) >= {"transformer", "lstm"}
assert len(results) == 2 * len(models) * len(LENGTHS) and results.string_acc.between(0, 1).all()
assert results.char_acc.ge(results.string_acc - 1e-9).all()  # a right string has every letter right
assert pattern.shape == (pattern.shape[0], example.tokens.shape[1], example.tokens.shape[1])
assert abs(float(pattern.sum(-1).mean()) - 1) < 1e-4 and bool((pattern.triu(1) == 0).all())  # causal rows
assert size.bits == 32 * size.numbers > 0
""",
    "02_probing_state_saturation.ipynb": """
acc = dict(zip(df.lag, df.accuracy))
assert all(acc[lag] == 1.0 for lag in range(4)), acc  # the planted register holds the last 4 tokens
assert all(acc[lag] < 0.5 for lag in range(4, 8)), acc  # and nothing older
s = planted.summary.set_index("length")
assert s.loc[2, "decodable_tokens"] > 1.9 and 3.5 < s.loc[8, "decodable_tokens"] < 4.5  # plateau: memory 4
assert s.state_bits.notna().all() and summary.state_bits.notna().all()
assert identity.accuracy.between(0, 1).all() and len(identity) == 9 * 3 * len(models)
""",
    "03_copy_circuit.ipynb": """
top = rank_heads(scores, "lookup", min_activity=0.01).iloc[0]
assert (int(top["layer"]), int(top["head"])) == (1, 4), top  # the planted lookup head
best = noise.sort_values("effect", ascending=False).iloc[0]
assert (int(best["layer"]), int(best["head"])) == (1, 4) and best["effect"] > 0.5
assert (by_pos.metric - loop.metric).abs().max() < 1e-4  # batched engine = one forward per patch
assert by_pos.effect.corr(approx.effect) > 0.5
assert any(e[1] == "L1H4" for e in graph.edge_set()) and "logits" in graph.nodes
assert state.attrs["patch_semantics"] == {f"blocks.{i}.mixer.hook_ssm_state": "recurrence" for i in range(2)}
""",
    "04_pretrained_phonebook.ipynb": """
assert table.exact.isin([0.0, 1.0]).all() and set(table.model) == {"pythia", "mamba"}
assert abs(via_nnsight - via_hooks) < 1e-4
assert probe_table.accuracy.between(0, 1).all()
""",
}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_computes_what_it_says(path, monkeypatch, tmp_path):
    monkeypatch.setenv("INTERP_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CHECKS[path.name]))
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert not errors


def test_there_are_notebooks_and_each_has_checks():
    assert NOTEBOOKS, "notebooks/ is empty"
    assert {p.name for p in NOTEBOOKS} == set(CHECKS), "every notebook needs checks on what it computes"
