"""`interp.language_model`: the checkpoints `interp.load` reads, in nnsight, and the phone-book patch both ways.

Tiny random Pythia-style and Mamba folders (`make_folders`), all offline (HF_HUB_OFFLINE=1). Each test runs
in well under 2 s once the module's folders exist (building them and importing transformers takes a few).
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

import interp
from interp.analysis.pretrained_evals import encode, phonebook_prompts
from interp.testing import make_folders

pytest.importorskip("nnsight")

ATOL = 1e-4


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing here may touch the network: huggingface_hub read HF_HUB_OFFLINE at import, so set both."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_folders(tmp_path_factory.mktemp("nnsight"))


@pytest.fixture(scope="module")
def mamba_ssm_folder(folders):
    """The tiny Mamba saved as mamba-ssm saves it: its own config keys, pytorch_model.bin, no tokenizer.

    vocab_size 317 is padded to the embedding's 320 rows (pad_vocab_size_multiple=8), as mamba-ssm does.
    """
    model = interp.load(folders["mamba"])
    cfg, folder = model.cfg, folders["mamba"].parent / "mamba-ssm"
    assert cfg.d_vocab % 8 == 0, "the tiny tokenizer's vocabulary is no longer a multiple of 8"
    folder.mkdir()
    config = {
        "d_model": cfg.d_model,
        "d_intermediate": 0,
        "n_layer": cfg.n_layers,
        "vocab_size": cfg.d_vocab - 3,
        "ssm_cfg": {"d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand},
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8,
        "tie_embeddings": True,
    }
    (folder / "config.json").write_text(json.dumps(config))
    rename = {"backbone.embeddings.weight": "backbone.embedding.weight"}  # mamba-ssm's name
    torch.save({rename.get(k, k): v for k, v in model.state_dict().items()}, folder / "pytorch_model.bin")
    return folder


def tokens(model, text="James Smith: 609-323-7777\nMary Johnson:"):
    return torch.tensor([encode(model.tokenizer, text)])


# ---- the same checkpoints -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pythia", "mamba", "mamba-ssm"])
def test_language_model_logits_equal_interp_load(folders, mamba_ssm_folder, kind):
    folder = mamba_ssm_folder if kind == "mamba-ssm" else folders[kind]
    tok = folders["mamba"] if kind == "mamba-ssm" else None  # mamba-ssm folders ship without a tokenizer
    ours = interp.load(folder, tokenizer=tok)
    lm = interp.language_model(folder, tokenizer=tok)
    assert lm.tokenizer is not None and lm.tokenizer.encode("Paris is") == ours.tokenizer.encode("Paris is")
    ids = tokens(ours)
    with lm.trace(ids):
        logits = lm.output.logits.save()
    expected = ours(ids)
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)


def test_language_model_is_float32_like_load(folders, tmp_path):
    """Pythia's hub weights are float16; both loaders give float32 unless told otherwise."""
    from transformers import GPTNeoXForCausalLM

    half = tmp_path / "pythia-fp16"
    GPTNeoXForCausalLM.from_pretrained(folders["pythia"]).half().save_pretrained(half)
    interp.load(folders["pythia"]).tokenizer.save_pretrained(half)
    ours, lm = interp.load(half), interp.language_model(half)
    ids = tokens(ours)
    with lm.trace(ids):
        logits = lm.output.logits.save()
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, ours(ids), atol=ATOL, rtol=0)
    lm16 = interp.language_model(half, dtype=torch.float16)
    assert next(lm16.gpt_neox.parameters()).dtype == torch.float16


def test_language_model_rejects_what_it_cannot_read(folders, tmp_path):
    checkpoint = interp.save_checkpoint(tmp_path / "ckpt", interp.build_model("transformer"))
    with pytest.raises(ValueError, match=r"interp checkpoint.*nnsight\.NNsight\(interp\.load"):
        interp.language_model(checkpoint)
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="'llama'.*GPT-NeoX"):
        interp.language_model(tmp_path / "llama")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        interp.language_model(tmp_path / "no" / "such" / "folder")
    with pytest.raises(ValueError, match="remote=True.*not a Hugging Face hub name"):
        interp.language_model(folders["pythia"], remote=True)


def test_language_model_needs_a_tokenizer(mamba_ssm_folder):
    with pytest.raises(ValueError, match="no tokenizer files; pass tokenizer="):
        interp.language_model(mamba_ssm_folder)


def test_language_model_resolves_hub_names_like_load(monkeypatch, tmp_path):
    """Hub names go through the same download/offline code as interp.load: offline and not cached -> clear error."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(FileNotFoundError, match="not available.*HF_HUB_OFFLINE.*local-dir"):
        interp.language_model("EleutherAI/pythia-70m-does-not-exist")


@pytest.fixture
def hub_cache(monkeypatch, tmp_path, folders):
    """A local Hugging Face cache holding the tiny Pythia as the hub model "tiny-org/pythia-tiny" (offline)."""
    import shutil

    import huggingface_hub

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--tiny-org--pythia-tiny"
    shutil.copytree(folders["pythia"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return repo / "snapshots" / commit


def test_language_model_hub_name_from_the_cache(hub_cache, folders):
    """A hub name goes through download_from_hub (offline: the local cache), as in interp.load."""
    lm = interp.language_model("tiny-org/pythia-tiny")
    assert lm.repo_id == str(hub_cache) and lm.dispatched
    ours = interp.load("tiny-org/pythia-tiny")
    ids = tokens(ours)
    with lm.trace(ids):
        logits = lm.output.logits.save()
    torch.testing.assert_close(logits, ours(ids), atol=ATOL, rtol=0)


def test_language_model_remote_builds_without_weights(hub_cache):
    """remote=True keeps the hub name (NDIF's key for the model) and loads no weights locally."""
    lm = interp.language_model("tiny-org/pythia-tiny", remote=True)
    assert lm.repo_id == "tiny-org/pythia-tiny" and not lm.dispatched and lm.tokenizer is not None
    assert next(lm.gpt_neox.parameters()).is_meta


def test_tokenizer_hub_name_fetches_tokenizer_files_only(monkeypatch, folders):
    """`tokenizer="EleutherAI/gpt-neox-20b"` must not download that model's 40 GB of weights."""
    import huggingface_hub

    calls = []

    def fake_snapshot_download(name, allow_patterns, local_files_only):
        calls.append((name, allow_patterns))
        return str(folders["mamba"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = interp.load(folders["mamba"], tokenizer="EleutherAI/gpt-neox-tokenizer-only")
    assert model.tokenizer is not None
    ((name, patterns),) = calls
    assert name == "EleutherAI/gpt-neox-tokenizer-only" and "tokenizer.json" in patterns
    assert not any("safetensors" in p or ".bin" in p for p in patterns)


def test_missing_nnsight_gives_install_hint(monkeypatch, folders):
    monkeypatch.setitem(sys.modules, "nnsight", None)  # `import nnsight` raises ImportError
    with pytest.raises(ImportError, match="pip install nnsight"):
        interp.language_model(folders["pythia"])


# ---- the phone-book patch written both ways ----------------------------------------------------------


def first_number_token(tokenizer, number):
    """(whitespace tokens before the number, the number's first token): ([' '], '609') for a byte-level BPE
    that splits the space off, ([], ' 609') for GPT-NeoX's tokenizer."""
    ids = encode(tokenizer, " " + number)
    k = next(i for i, t in enumerate(ids) if any(ch.isdigit() for ch in tokenizer.decode([t])))
    return ids[:k], ids[k]


def phonebook_pair(tokenizer, size=12, seed=0):
    """(clean, corrupt, clean_answer, corrupt_answer): one book queried for two names, equal token lengths.

    Both prompts end with any whitespace token the tokenizer puts before a number, so the last position
    predicts the numbers' first tokens, which differ. Tries books seed, seed + 1, ... until two names fit."""
    for book_seed in range(seed, seed + 50):
        (prompt,) = phonebook_prompts(tokenizer, [size], n_per_size=1, seed=book_seed)
        text = tokenizer.decode(prompt.prompt_ids)
        book, shots = text.split("\n\n")
        shots, query = shots.rsplit("\n", 1)  # query: "Name Surname:"
        lead, clean_answer = first_number_token(tokenizer, prompt.answers[0])
        for line in book.split("\n"):
            name, number = line.split(": ")
            if name in shots or f"{name}:" == query:
                continue
            ids = encode(tokenizer, text.removesuffix(query) + f"{name}:")
            lead_other, other = first_number_token(tokenizer, number)
            if len(ids) == len(prompt.prompt_ids) and lead_other == lead and other != clean_answer:
                clean = torch.tensor([prompt.prompt_ids + lead])
                return clean, torch.tensor([ids + lead]), clean_answer, other
    raise RuntimeError("no two names give prompts of the same token length")


def logit_diff(logits, clean_answer, corrupt_answer):
    """Last position: logit of the clean answer's first token minus the corrupted answer's."""
    return (logits[0, -1, clean_answer] - logits[0, -1, corrupt_answer]).item()


@pytest.fixture(scope="module")
def pythia_pair(folders):
    model = interp.load(folders["pythia"])
    return model, phonebook_pair(model.tokenizer, size=6)


def test_phonebook_pair(pythia_pair):
    model, (clean, corrupt, a, b) = pythia_pair
    assert clean.shape == corrupt.shape and not torch.equal(clean, corrupt) and a != b
    book_clean, query_clean = model.tokenizer.decode(clean[0]).rsplit("\n", 1)
    book_corrupt, query_corrupt = model.tokenizer.decode(corrupt[0]).rsplit("\n", 1)
    assert book_clean == book_corrupt and query_clean != query_corrupt  # only the queried name differs


def head_patch_interp(model, clean, corrupt, layer, head):
    """Corrupted-run logits with head (layer, head)'s output at the last position taken from the clean run."""
    hook = f"blocks.{layer}.attn.hook_z"  # [batch, pos, head, d_head]
    _, cache = model.run_with_cache(clean, names_filter=hook)

    def patch_head(z, hook):
        z[:, -1, head] = cache[hook.name][:, -1, head]
        return z

    return model.run_with_hooks(corrupt, fwd_hooks=[(hook, patch_head)])


def head_patch_nnsight(lm, clean, corrupt, layer, head, remote=False):
    """The same patch in nnsight: the heads' outputs, concatenated [batch, pos, head * d_head], are the
    input of attention.dense."""
    config = lm.config
    d_head = config.hidden_size // config.num_attention_heads
    heads = slice(head * d_head, (head + 1) * d_head)
    dense = lm.gpt_neox.layers[layer].attention.dense
    with lm.trace(clean, remote=remote):
        z_clean = dense.input[:, -1, heads].save()
    with lm.trace(corrupt, remote=remote):
        dense.input[:, -1, heads] = z_clean
        logits = lm.output.logits.save()
    return logits


def mixer_patch_interp(model, clean, corrupt, layer):
    """Corrupted-run logits with Mamba layer `layer`'s mixer output at the last position from the clean run."""
    hook = f"blocks.{layer}.hook_mixer_out"  # [batch, pos, d_model]
    _, cache = model.run_with_cache(clean, names_filter=hook)

    def patch_mixer(out, hook):
        out[:, -1] = cache[hook.name][:, -1]
        return out

    return model.run_with_hooks(corrupt, fwd_hooks=[(hook, patch_mixer)])


def mixer_patch_nnsight(lm, clean, corrupt, layer, remote=False):
    mixer = lm.backbone.layers[layer].mixer
    with lm.trace(clean, remote=remote):
        out_clean = mixer.output[:, -1].save()
    with lm.trace(corrupt, remote=remote):
        mixer.output[:, -1] = out_clean
        logits = lm.output.logits.save()
    return logits


def check_agree(ours: torch.Tensor, theirs: torch.Tensor, unpatched: float) -> None:
    """Patched logit differences (one per patch) agree both ways, and the patches change them.

    The tiny random models' effects are small (~1e-3), so beyond atol the two ways must agree to 1% of
    the largest effect: patching the wrong head or position would miss that."""
    effect = (ours - unpatched).abs().max().item()
    assert effect > 3 * ATOL, f"the patches barely change the logit difference ({effect:.2e})"
    torch.testing.assert_close(theirs, ours, atol=min(ATOL, 0.01 * effect), rtol=0)


@pytest.mark.parametrize("remote", [False, "local"])
def test_head_patch_run_with_hooks_equals_nnsight(folders, pythia_pair, remote):
    """Every head's output, clean -> corrupted at the last position, written both ways.

    remote="local" is nnsight's serverless dry run of remote execution: each trace is serialized and
    deserialized as NDIF would do it, then run here."""
    model, (clean, corrupt, answer, other) = pythia_pair
    lm = interp.language_model(folders["pythia"])
    heads = [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]
    if remote:
        heads = heads[-2:]  # the dry run is slower; two heads exercise it
    ours, theirs = [], []
    for layer, head in heads:
        ours.append(logit_diff(head_patch_interp(model, clean, corrupt, layer, head), answer, other))
        logits = head_patch_nnsight(lm, clean, corrupt, layer, head, remote=remote)
        theirs.append(logit_diff(logits, answer, other))
    check_agree(torch.tensor(ours), torch.tensor(theirs), unpatched=logit_diff(model(corrupt), answer, other))


def test_head_patch_in_one_session_equals_run_with_hooks(folders, pythia_pair):
    """The README's remote form: both traces in one `session` (one NDIF request), dry-run with remote="local"."""
    model, (clean, corrupt, answer, other) = pythia_pair
    lm = interp.language_model(folders["pythia"])
    layer, head = model.cfg.n_layers - 1, 1
    d_head = lm.config.hidden_size // lm.config.num_attention_heads
    heads = slice(head * d_head, (head + 1) * d_head)
    dense = lm.gpt_neox.layers[layer].attention.dense
    with lm.session(remote="local"):
        with lm.trace(clean):
            z_clean = dense.input[:, -1, heads]
        with lm.trace(corrupt):
            dense.input[:, -1, heads] = z_clean
            logits = lm.output.logits.save()
    ours = logit_diff(head_patch_interp(model, clean, corrupt, layer, head), answer, other)
    assert logit_diff(logits, answer, other) == pytest.approx(ours, abs=1e-6)


def test_mamba_patch_run_with_hooks_equals_nnsight(folders, pythia_pair):
    """Mamba: each layer's mixer output, clean -> corrupted at the last position, written both ways."""
    _, (clean, corrupt, answer, other) = pythia_pair  # both tiny models share one tokenizer
    model = interp.load(folders["mamba"])
    lm = interp.language_model(folders["mamba"])
    ours, theirs = [], []
    for layer in range(model.cfg.n_layers):
        ours.append(logit_diff(mixer_patch_interp(model, clean, corrupt, layer), answer, other))
        theirs.append(logit_diff(mixer_patch_nnsight(lm, clean, corrupt, layer), answer, other))
    check_agree(torch.tensor(ours), torch.tensor(theirs), unpatched=logit_diff(model(corrupt), answer, other))
