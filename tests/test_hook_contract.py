"""The hook contract: interp's analyses on models interp did not build, and TransformerLens's tools on
interp's models.

- a TransformerLens 4 `TransformerBridge` booted from a tiny local GPT-NeoX folder and `interp.load` of the
  same folder give the same `patch_grid` over heads, `probe_lags` and `head_scores` (atol 1e-4);
- the same for a tiny Hugging Face Mamba folder, for the hooks the bridge has; patching the SSM state
  differs on purpose (bridge: the readout only; interp: the recurrence) and the results say which;
- a user's own `HookedRootModule` (a tiny planted recurrence) runs through probes and patching;
- `transformer_lens.patching` on interp's transformer equals interp's batched patching.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

import interp
from interp.analysis.heads import head_scores
from interp.analysis.patching import (
    Metric,
    PatchSpec,
    activation_patching,
    attribution_patching,
    patch_grid,
    patch_specs,
    path_patching,
)
from interp.analysis.probing import gather_activations, probe_lags
from interp.analysis.saturation import default_state_hooks
from interp.hooks import (
    ROLES,
    STANDARD_HOOKS,
    UnknownAxesError,
    axes_table,
    components,
    hook_info,
    per_layer_name,
)
from interp.models import build_model
from interp.tasks import TaskConfig, make_batch
from interp.testing import make_tokenizer, save_mamba, save_pythia

ATOL = 1e-4


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    tok = make_tokenizer()
    save_pythia(root / "pythia", tok)
    hf = save_mamba(root / "mamba", tok)
    with torch.no_grad():  # a state that remembers (slow decay) and matters (large out_proj)
        for block in hf.backbone.layers:
            block.mixer.A_log.copy_(torch.log(0.05 + 0.1 * torch.rand_like(block.mixer.A_log)))
            block.mixer.out_proj.weight.mul_(8.0)
    hf.save_pretrained(root / "mamba")
    return root


def boot(folder):
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(str(folder), device="cpu").eval()


@pytest.fixture(scope="module")
def pythia_pair(folders):
    return boot(folders / "pythia"), interp.load(folders / "pythia")


@pytest.fixture(scope="module")
def mamba_pair(folders):
    bridge = boot(folders / "mamba")
    for block in bridge.blocks:
        block.mixer.eager_scan = True  # the bridge fires its SSM hooks only on its eager scan
    return bridge, interp.load(folders / "mamba")


def pair_tokens(n=6, p=10, vocab=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, vocab, (n, p), generator=g)
    corrupt = clean.clone()
    corrupt[:, 2:6] = torch.randint(0, vocab, (n, 4), generator=g)  # same prefix and suffix
    return clean, corrupt


def logit_diff(clean, corrupt):
    mask = torch.ones_like(clean, dtype=torch.bool)
    mask[:, -1] = False
    return Metric("logit_diff", clean.roll(-1, 1), mask, corrupt.roll(-1, 1))


def copy_batch(n=64, length=5, seed=0):
    return make_batch(
        TaskConfig(task="copy", min_len=2, max_len=8), n, torch.Generator().manual_seed(seed), length=length
    )


def assert_frames_close(a, b, columns=("metric", "effect")):
    assert list(a["label"]) == list(b["label"])
    for c in columns:
        torch.testing.assert_close(torch.tensor(a[c].values), torch.tensor(b[c].values), atol=ATOL, rtol=0)


# ---- TransformerLens 4 bridge, GPT-NeoX -----------------------------------------------------------------
def test_bridge_pythia_same_patch_grid_over_heads(pythia_pair):
    bridge, ours = pythia_pair
    clean, corrupt = pair_tokens()
    metric = logit_diff(clean, corrupt)
    theirs = patch_grid(bridge, clean, corrupt, metric, "z", heads=True)
    mine = patch_grid(ours, clean, corrupt, metric, "z", heads=True)
    assert len(mine) == 2 * 4 and mine["effect"].abs().max() > 0.01  # a real signal, not all zeros
    assert_frames_close(theirs, mine)
    assert theirs.attrs["clean_metric"] == pytest.approx(mine.attrs["clean_metric"], abs=ATOL)


def test_bridge_pythia_same_attribution_and_path_patching(pythia_pair):
    """The bridge's `attn.hook_z` is an alias of another hook point: results are keyed by the name asked for."""
    bridge, ours = pythia_pair
    clean, corrupt = pair_tokens()
    metric = logit_diff(clean, corrupt)
    specs = patch_specs(ours, "z", heads=True)
    assert_frames_close(
        attribution_patching(bridge, clean, corrupt, metric, specs),
        attribution_patching(ours, clean, corrupt, metric, specs),
    )
    theirs, mine = path_patching(bridge, clean, corrupt, metric), path_patching(ours, clean, corrupt, metric)
    assert len(mine) == 8 + 4 * 4 * 3 and mine["effect"].abs().max() > 0.01
    torch.testing.assert_close(
        torch.tensor(theirs["metric"].values), torch.tensor(mine["metric"].values), atol=ATOL, rtol=0
    )


def test_bridge_pythia_same_probes_and_head_scores(pythia_pair):
    bridge, ours = pythia_pair
    batch = copy_batch()
    read = torch.arange(4, batch.tokens.shape[1])
    for hook in ("blocks.1.hook_resid_post", "blocks.0.attn.hook_z"):
        torch.testing.assert_close(
            gather_activations(bridge, batch.tokens, hook, read),
            gather_activations(ours, batch.tokens, hook, read),
            atol=ATOL,
            rtol=0,
        )
    theirs = probe_lags(bridge, batch.tokens, "blocks.1.hook_resid_post", read, max_lag=3)
    mine = probe_lags(ours, batch.tokens, "blocks.1.hook_resid_post", read, max_lag=3)
    for c in ("accuracy", "control_accuracy", "ce_bits"):
        torch.testing.assert_close(
            torch.tensor(theirs[c].values), torch.tensor(mine[c].values), atol=ATOL, rtol=0
        )
    assert mine["accuracy"].iloc[0] > 0.5  # lag 0 (the token itself) is decodable from a random model
    s_theirs, s_mine = head_scores(bridge, batch[:8]), head_scores(ours, batch[:8])
    assert list(s_theirs["score"]) == list(s_mine["score"]) and len(s_mine) == 2 * 4 * 3
    for c in ("value", "activity"):
        torch.testing.assert_close(
            torch.tensor(s_theirs[c].values), torch.tensor(s_mine[c].values), atol=ATOL, rtol=0
        )


# ---- TransformerLens 4 bridge, Mamba -----------------------------------------------------------------
def test_bridge_mamba_same_numbers_where_the_hooks_agree(mamba_pair):
    bridge, ours = mamba_pair
    clean, corrupt = pair_tokens(p=8)
    metric = logit_diff(clean, corrupt)
    for component in ("resid_pre", "mixer_out"):
        assert_frames_close(
            patch_grid(bridge, clean, corrupt, metric, component, positions=True),
            patch_grid(ours, clean, corrupt, metric, component, positions=True),
        )
    batch = copy_batch(n=48)
    read = torch.arange(4, batch.tokens.shape[1])
    for hook in ("blocks.1.hook_resid_post", "blocks.0.mixer.hook_ssm_state"):
        torch.testing.assert_close(
            gather_activations(bridge, batch.tokens, hook, read),
            gather_activations(ours, batch.tokens, hook, read),
            atol=ATOL,
            rtol=0,
        )
    theirs = probe_lags(bridge, batch.tokens, "blocks.1.hook_resid_post", read, max_lag=2)
    mine = probe_lags(ours, batch.tokens, "blocks.1.hook_resid_post", read, max_lag=2)
    torch.testing.assert_close(
        torch.tensor(theirs["accuracy"].values), torch.tensor(mine["accuracy"].values), atol=ATOL, rtol=0
    )
    assert (
        default_state_hooks(bridge)
        == default_state_hooks(ours)
        == [f"blocks.{i}.mixer.hook_ssm_state" for i in range(2)]
    )
    # the bridge has no hook_B / hook_C: the detectors split them from hook_x_proj
    s_theirs, s_mine = head_scores(bridge, batch[:8]), head_scores(ours, batch[:8])
    torch.testing.assert_close(
        torch.tensor(s_theirs["value"].values), torch.tensor(s_mine["value"].values), atol=ATOL, rtol=0
    )


def test_bridge_mamba_state_patch_semantics_differ_and_are_recorded(mamba_pair):
    """Patching h_t: the bridge changes only the readout at t; interp feeds it to the recurrence, so
    every later position changes too. At the last position the two coincide."""
    bridge, ours = mamba_pair
    clean, corrupt = pair_tokens(p=8)
    mask = torch.ones_like(clean, dtype=torch.bool)
    mask[:, -1] = False
    metric = Metric("logprob", clean.roll(-1, 1), mask)  # every position scored, also after the patch
    args = (clean, corrupt, metric, "ssm_state")
    theirs = patch_grid(bridge, *args, positions=True, layers=[0])
    mine = patch_grid(ours, *args, positions=True, layers=[0])
    name = "blocks.0.mixer.hook_ssm_state"
    # by channel group at the last scored position, where both semantics coincide; the bridge's cfg has no
    # d_inner, so one forward measures the channel axis
    groups = [patch_grid(m, *args, positions=[6], layers=[0], channel_groups=4) for m in (bridge, ours)]
    assert len(groups[0]) == 4 and list(groups[0]["channels"]) == ["0:16", "16:32", "32:48", "48:64"]
    assert_frames_close(*groups)
    assert (groups[1]["metric"] - groups[1].attrs["corrupt_metric"]).abs().max() > 1e-5
    assert theirs.attrs["patch_semantics"] == {name: "readout"}
    assert mine.attrs["patch_semantics"] == {name: "recurrence"}
    last = len(mine) - 1
    assert abs(theirs["metric"].iloc[last] - mine["metric"].iloc[last]) < ATOL
    gaps = (theirs["metric"] - mine["metric"]).abs().iloc[:last]
    moved = (mine["metric"] - mine.attrs["corrupt_metric"]).abs().max()
    # earlier positions: interp's recurrence carries the patch on to later positions, the bridge's does not
    assert gaps.max() > max(ATOL, 0.2 * moved)
    # the whole state at position 3 of the corrupted run, bridge vs interp: only interp's later logits move
    spec = [PatchSpec(name, pos=3)]
    assert activation_patching(bridge, *args[:3], spec).attrs["patch_semantics"][name] == "readout"


def test_bridge_hooks_that_do_not_fire_are_an_error(folders):
    bridge = boot(folders / "mamba")  # eager_scan left off: hook_ssm_state exists but never fires
    batch = copy_batch(n=8)
    with pytest.raises(ValueError, match="did not fire.*eager_scan"):
        gather_activations(bridge, batch.tokens, "blocks.0.mixer.hook_ssm_state", 3)


# ---- a user's HookedRootModule -------------------------------------------------------------------------
class ShiftBlock(nn.Module):
    """h_t = [x_t | h_{t-1}[:V]] for one-hot x_t: the state holds the current and the previous token."""

    def __init__(self, d_vocab: int):
        super().__init__()
        self.v = d_vocab
        self.hook_h = HookPoint()  # not a TransformerLens name: the user declares its axes
        self.hook_resid_post = HookPoint()  # a standard name: axes from interp.hooks.STANDARD_HOOKS

    def forward(self, x):
        h = x.new_zeros(x.shape[0], 2 * self.v)
        hs = []
        for t in range(x.shape[1]):
            h = torch.cat([x[:, t, : self.v], h[:, : self.v]], dim=-1)
            hs.append(h)
        return self.hook_resid_post(x + self.hook_h(torch.stack(hs, 1)))


class UserRecurrence(HookedRootModule):
    def __init__(self, d_vocab: int = 12):
        super().__init__()
        self.cfg = SimpleNamespace(d_vocab=d_vocab, n_layers=1)
        self.blocks = nn.ModuleList([ShiftBlock(d_vocab)])
        self.unembed = nn.Linear(2 * d_vocab, d_vocab)
        torch.manual_seed(0)
        nn.init.normal_(self.unembed.weight)
        self.setup()

    def forward(self, tokens):
        x = nn.functional.one_hot(tokens, 2 * self.cfg.d_vocab).float()
        for block in self.blocks:
            x = block(x)
        return self.unembed(x)


def test_user_hooked_root_module_through_probes_and_patching():
    model = UserRecurrence()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 12, (80, 8), generator=g)
    read = torch.arange(3, 8)
    with pytest.raises(UnknownAxesError, match="axes.*blocks.0.hook_h"):
        probe_lags(model, tokens, "blocks.0.hook_h", read, max_lag=2)
    df = probe_lags(
        model, tokens, "blocks.0.hook_h", read, max_lag=2, axes={"blocks.{layer}.hook_h": "batch pos d_state"}
    )
    assert df["accuracy"].iloc[0] == 1.0 and df["accuracy"].iloc[1] == 1.0  # planted: x_t and x_{t-1}
    assert df["accuracy"].iloc[2] < 0.5  # x_{t-2} is gone
    resid = probe_lags(model, tokens, "blocks.0.hook_resid_post", read, max_lag=1)  # standard name
    assert (resid["accuracy"] == 1.0).all()

    clean, corrupt = tokens[:6], tokens[6:12]
    metric = logit_diff(clean, corrupt)
    assert {"h", "resid_post"} <= set(components(model))
    batched = patch_grid(model, clean, corrupt, metric, "h", positions=True)
    loop = patch_grid(model, clean, corrupt, metric, "h", positions=True, method="loop")
    assert_frames_close(batched, loop)
    # this recurrence does not feed a patched h back (h_t is rebuilt from x), so only position t moves
    assert batched["effect"].abs().sum() > 0
    assert batched.attrs["patch_semantics"] == {"blocks.0.hook_h": "forward"}


# ---- TransformerLens's tools on interp's models -----------------------------------------------------------
def test_transformer_lens_patching_equals_interp_batched():
    from transformer_lens import patching

    torch.manual_seed(0)
    model = build_model("transformer", d_vocab=30, d_model=32, n_layers=2, n_heads=4).eval()
    clean, corrupt = pair_tokens(n=4, p=7, vocab=30)
    metric = logit_diff(clean, corrupt)
    _, clean_cache = model.run_with_cache(clean)
    tl = patching.get_act_patch_attn_head_out_by_pos(
        model, corrupt, clean_cache, lambda logits: metric(logits).mean()
    )
    specs = patch_specs(model, "z", heads=True, positions=True, n_pos=clean.shape[1])
    ours = activation_patching(model, clean, corrupt, metric, specs, mode="denoise")
    assert tl.shape == (2, 7, 4)
    expected = torch.tensor(ours["metric"].values, dtype=tl.dtype).view(2, 4, 7).transpose(1, 2)  # [L, P, H]
    torch.testing.assert_close(tl, expected, atol=1e-5, rtol=0)
    assert (tl - tl.mean()).abs().max() > 1e-3  # patches differ from each other


def test_transformer_lens_resid_patching_on_interp_mamba_equals_interp():
    from transformer_lens import patching

    torch.manual_seed(0)
    model = build_model("mamba", d_vocab=30, d_model=16, n_layers=2).eval()
    clean, corrupt = pair_tokens(n=3, p=6, vocab=30)
    metric = logit_diff(clean, corrupt)
    _, clean_cache = model.run_with_cache(clean)
    tl = patching.get_act_patch_resid_pre(model, corrupt, clean_cache, lambda logits: metric(logits).mean())
    ours = patch_grid(model, clean, corrupt, metric, "resid_pre", positions=True)
    torch.testing.assert_close(
        tl, torch.tensor(ours["metric"].values, dtype=tl.dtype).view(2, 6), atol=1e-5, rtol=0
    )


def test_activation_cache_head_results_add_up_to_the_attention_output():
    """TransformerLens's ActivationCache helpers read W_O (a per-head view of interp's fused weights)."""
    from transformer_lens import ActivationCache

    torch.manual_seed(0)
    model = build_model("transformer", d_vocab=30, d_model=32, n_layers=2, n_heads=4).eval()
    tokens = torch.randint(0, 30, (2, 6))
    _, raw = model.run_with_cache(tokens)
    cache = ActivationCache(raw, model)
    heads = cache.stack_head_results(layer=1)  # [layer * head, B, P, d_model], layer 0's heads
    b_o = model.blocks[0].attn.b_O
    torch.testing.assert_close(heads.sum(0) + b_o, raw["blocks.0.hook_attn_out"], atol=1e-5, rtol=0)
    resid = cache.accumulated_resid()  # embed, after layer 0, after layer 1
    torch.testing.assert_close(resid[-1], raw["blocks.1.hook_resid_post"])
    parts = cache.decompose_resid()  # embed, attn_out / mlp_out of each layer: they sum to the stream
    torch.testing.assert_close(parts.sum(0), raw["blocks.1.hook_resid_post"], atol=1e-5, rtol=0)


def test_config_carries_what_transformer_lens_reads():
    t = build_model("transformer", d_model=32, n_heads=4, normalization="none")
    assert (t.cfg.device, t.cfg.n_key_value_heads, t.cfg.d_head, t.cfg.act_fn) == ("cpu", None, 8, "gelu")
    assert t.cfg.normalization_type is None and t.cfg.positional_embedding_type == "rotary"
    assert "device" not in t.cfg.to_dict() and "normalization_type" not in t.cfg.to_dict()  # not saved
    assert build_model("mamba", d_model=16).cfg.normalization_type == "RMS"


# ---- the axes metadata ---------------------------------------------------------------------------------
def roles(axes):
    return tuple(a if a in ROLES else "feature" for a in axes)


@pytest.mark.parametrize("arch", ["transformer", "mamba", "lstm", "shift_register"])
def test_every_interp_hook_declares_axes_that_agree_with_the_standard_table(arch):
    model = build_model(arch, **({} if arch == "shift_register" else {"d_model": 16}))
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 5))
    _, cache = model.run_with_cache(tokens)
    table = axes_table(model)
    for name, point in model.hook_dict.items():
        assert point.info is not None, f"{arch}: {name} declares no axes"
        std = STANDARD_HOOKS.get(per_layer_name(name))
        if std is not None:  # feature axes may be named differently (d_vocab for the shift register's embed)
            assert roles(std.axes) == roles(point.info.axes), name
        if name in cache:
            assert cache[name].ndim == len(point.info.axes), name
        row = name if name == per_layer_name(name) else "blocks.{l}." + per_layer_name(name)
        assert f"| `{row}` | [{', '.join(point.info.axes)}]" in table


def test_unknown_component_and_axes_errors_name_what_is_allowed():
    model = UserRecurrence()
    with pytest.raises(ValueError, match="unknown component 'zz'.*allowed: resid_post"):
        patch_specs(model, "zz")
    with pytest.raises(UnknownAxesError, match="declare_axes"):
        hook_info(model, "blocks.0.hook_h")
    with pytest.raises(TypeError, match="hook contract.*cfg.d_vocab"):
        probe_lags(nn.Linear(2, 2), torch.zeros(2, 2, dtype=torch.long), "x", 0, max_lag=0)


# ---- compatibility -----------------------------------------------------------------------------------
DATA = Path(__file__).parent / "data" / "checkpoints_v0"


@pytest.mark.parametrize("arch", ["transformer", "mamba", "lstm"])
def test_checkpoints_written_before_the_contract_still_load_and_give_the_same_logits(arch):
    """tests/data/checkpoints_v0 was written by the commit before interp.hooks (61345ea)."""
    expected = json.loads((DATA / "expected.json").read_text())
    model = interp.load(DATA / arch)
    assert model.arch == arch and model.cfg.device == "cpu"
    logits = model(torch.tensor(expected["tokens"]))[0, -1]
    torch.testing.assert_close(logits, torch.tensor(expected["last_logits"][arch]), atol=1e-5, rtol=0)
    assert hook_info(model, "blocks.0.hook_resid_pre" if arch != "lstm" else "blocks.0.hook_hidden").pos == 1


def test_attached_hooks_run_in_order_and_leave_the_others():
    """`interp.hooks.attached` (what resumed patching passes use in place of `model.hooks`): its hooks run
    after (or, prepend, before) hooks already on the point, and on exit only they are removed."""
    from interp.hooks import UnknownHookError, attached  # noqa: PLC0415
    from interp.models import build_model  # noqa: PLC0415

    model = build_model("transformer", d_vocab=7, d_model=8, n_layers=1, n_heads=2).eval()
    tokens = torch.tensor([[1, 2, 3]])
    order = []
    name = "blocks.0.hook_resid_pre"
    model.hook_dict[name].add_perma_hook(lambda act, hook: order.append("user"))
    with model.hooks(fwd_hooks=[(name, lambda act, hook: order.append("context"))]):
        last = [(name, lambda act, hook: order.append("last"))]
        first = [(name, lambda act, hook: order.append("first"))]
        with attached(model, last), attached(model, first, prepend=True):
            model(tokens)
        assert order == ["first", "user", "context", "last"]
        order.clear()
        model(tokens)
        assert order == ["user", "context"]
    model.reset_hooks(including_permanent=True)
    with (
        pytest.raises(UnknownHookError, match="blocks.0.hook_resid_pre"),
        attached(model, [("blocks.0.hook_resid", print)]),
    ):
        pass
