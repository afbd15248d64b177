"""Mamba-1 in plain PyTorch, weight-compatible with Hugging Face `MambaForCausalLM` and mamba-ssm.

Forward: tokens [B, P] -> embedding -> n_layers x (x + Mixer(RMSNorm(x))) -> RMSNorm -> lm_head
-> logits [B, P, d_vocab]. The mixer is Mamba-1's (Gu & Dao, 2023):

    in_proj -> [x | z]                      x, z: [B, P, D_inner]
    u = SiLU(causal depthwise conv1d(x))    [B, P, D_inner]
    x_proj(u) -> [dt_low | B | C]           dt_low: [B, P, dt_rank], B, C: [B, P, N]
    delta = dt_proj(dt_low)                 [B, P, D_inner], softplus inside the scan
    y = selective_scan(u, delta, A, B, C, D) * SiLU(z)   (see interp/models/scan.py)
    out_proj(y)                             [B, P, d_model]

Hook names follow TransformerLens 4's `TransformerBridge` for Hugging Face Mamba wherever it hooks the
same quantity, with the same layout, so caches move between the two (a test checks names and values
against the bridge). Each hook declares its axes and what it holds where it is made (`Hook("batch
channel pos state", note=...)` in `MambaMixer` and `MambaBlock` below); `interp.hooks.axes_table(model)`
prints them as a table (the README's). Not in the bridge: `hook_gate`, `hook_ssm_in`, `hook_B`, `hook_C`,
`hook_scan_out`. `hook_conv` keeps the bridge's layout [B, D_inner, P + d_conv - 1] (before the causal trim).

`hook_ssm_write` and `hook_ssm_state` hold `B * D_inner * P * N` numbers each; they are computed only
when a hook function or a cache asks for them (otherwise the fast scan never materialises them).

Patching semantics differ from the bridge on purpose. In the bridge, editing `hook_ssm_state` at
position t changes only the readout y_t. Here the state hook sits *inside* the recurrence: whatever
the hook function returns at position t is the state that position t reads out and that t + 1
builds on, so patching h_t changes the outputs at t and every later position, and never earlier
ones. Entries the hook leaves unchanged keep their computed (recurrent) value; in-place edits count
too. Editing `hook_ssm_write` likewise re-runs the recurrence with the new write terms (as in the
bridge).

Parameter names: the module tree is named for the hooks (`blocks.{l}.mixer...`, `ln_final`, `embed`),
because TransformerLens derives hook names from module paths. `state_dict()` and `load_state_dict()`
translate to and from Hugging Face `MambaForCausalLM` names (`backbone.layers.{l}.mixer...`,
`backbone.norm_f`, `backbone.embeddings`), so checkpoints are interchangeable with Hugging Face and
mamba-ssm; see `HF_PREFIXES`. `named_parameters()` keeps the module-tree names.

Recurrent mode: `init_cache(batch)` and `step(token, cache)` run one token at a time with O(1) memory
(conv window + SSM state per layer); `generate_greedy` uses them. Hooks do not fire in step mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from interp.config import Config
from interp.hooks import call_keeping_input, version
from interp.models.base import Hook, HookedModel, StateSize
from interp.models.conv import depthwise_conv
from interp.models.scan import IMPLS, selective_scan, uses_cuda_kernel
from interp.models.state_edit import StateEdit

# module-tree prefix -> Hugging Face MambaForCausalLM prefix (state_dict keys)
HF_PREFIXES = (
    ("embed.", "backbone.embeddings."),
    ("blocks.", "backbone.layers."),
    ("ln_final.", "backbone.norm_f."),
    ("lm_head.", "lm_head."),
)
MAMBA_SSM_ALIASES = {"backbone.embedding.weight": "backbone.embeddings.weight"}  # mamba-ssm -> HF


def to_hf_name(name: str) -> str:
    """Module-tree parameter name -> Hugging Face name (`blocks.0.norm.weight` -> `backbone.layers.0.norm.weight`)."""
    for ours, hf in HF_PREFIXES:
        if name.startswith(ours):
            return hf + name[len(ours) :]
    return name


def from_hf_name(name: str) -> str:
    """Hugging Face (or mamba-ssm) parameter name -> module-tree name."""
    name = MAMBA_SSM_ALIASES.get(name, name)
    for ours, hf in HF_PREFIXES:
        if name.startswith(hf):
            return ours + name[len(hf) :]
    return name


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------
@dataclass
class MambaConfig(Config):
    d_vocab: int = 30  # tokens; 26 letters + 4 symbols for the paper's tasks
    d_model: int = 256
    n_layers: int = 2
    d_state: int = 16  # N: state size per channel; the SSM state is d_inner * d_state numbers per layer
    d_conv: int = 4  # causal depthwise convolution width
    expand: int = 2  # d_inner = expand * d_model
    dt_rank: int | str = "auto"  # "auto" -> ceil(d_model / 16)
    conv_bias: bool = True
    bias: bool = False  # bias in in_proj and out_proj
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = True
    n_ctx: int | None = None  # no positional limit; set to guard against overlong inputs
    scan: str = "auto"  # "auto" | "reference" | "chunked" | "cuda" (interp.models.scan)
    chunk_size: int | None = None  # chunked scan: positions per chunk; None picks from the sizes
    # initialisation from scratch, as mamba-ssm does it
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    init_std: float = 0.02  # embedding
    rescale_prenorm_residual: bool = True  # out_proj weights / sqrt(n_layers)

    def __post_init__(self):
        for name in ("d_vocab", "d_model", "n_layers", "d_state", "d_conv", "expand"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.dt_rank != "auto" and (not isinstance(self.dt_rank, int) or self.dt_rank < 1):
            raise ValueError(f"dt_rank must be 'auto' or a positive integer, got {self.dt_rank!r}")
        if self.scan not in IMPLS:
            raise ValueError(f"unknown scan {self.scan!r}; allowed: {', '.join(IMPLS)}")
        if self.chunk_size is not None and (not isinstance(self.chunk_size, int) or self.chunk_size < 1):
            raise ValueError(f"chunk_size must be None or a positive integer, got {self.chunk_size!r}")
        if self.n_ctx is not None and self.n_ctx < 1:
            raise ValueError(f"n_ctx must be None or positive, got {self.n_ctx}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    normalization_type = "RMS"  # what TransformerLens's utilities read (see TransformerConfig)
    n_heads = None  # no attention; transformer_lens.patching reads the field for every activation
    n_key_value_heads = None
    attn_only = False

    @property
    def rank(self) -> int:
        """dt_rank with "auto" resolved."""
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)


@dataclass
class MambaCache:
    """Recurrent state for `HookedMamba.step`: everything the model remembers about the past.

    conv: [n_layers, B, D_inner, d_conv - 1], the last d_conv - 1 inputs of each layer's convolution.
    ssm:  [n_layers, B, D_inner, d_state], the SSM state h after the last token.
    n_tokens: tokens consumed so far (checked against n_ctx).
    """

    conv: Tensor
    ssm: Tensor
    n_tokens: int = 0


@dataclass
class MambaResume:
    """What `HookedMamba.forward_from` (and Mamba-2's) restarts from: one recorded forward of B sequences."""

    logits: Tensor  # [B, P, d_vocab]
    resid: list[Tensor]  # per layer: blocks.{l}.hook_resid_pre [B, P, d_model]
    conv_in: list[Tensor]  # per layer: the conv inputs, K - 1 zeros in front, [B, C, K - 1 + P]
    ssm: list[Tensor]  # per layer: the state after each position, Mamba-1 [B, D_inner, P, N],
    # Mamba-2 [B, H, P, head_dim, N] (the scan's compute dtype)
    mask: Tensor | None  # [B, P] 1 = token, 0 = padding (the model's dtype); None: no padding
    # per layer: what hook_ssm_state received, before any user hook (the same tensor as `ssm` when none
    # replaced it; None where one edited it in place): a resumed pass's input to that hook
    seen: list[Tensor | None]


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps
        self.hook_scale = Hook("batch pos one", note="RMS of the input (+eps), [B, P, 1]")
        self.hook_normalized = Hook("batch pos d_model", note="normalised, before the weight")

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        scale = self.hook_scale((xf.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.weight * self.hook_normalized((xf / scale).to(x.dtype))


class MambaMixer(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.cfg = cfg
        d, di, n, r, k = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.rank, cfg.d_conv
        self.in_proj = nn.Linear(d, 2 * di, bias=cfg.bias)
        self.conv1d = nn.Conv1d(di, di, kernel_size=k, groups=di, padding=k - 1, bias=cfg.conv_bias)
        self.x_proj = nn.Linear(di, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, di, bias=True)
        A = torch.arange(1, n + 1, dtype=torch.float32).repeat(di, 1)  # S4D-real: A[d, n] = -(n + 1)
        self.A_log = nn.Parameter(torch.log(A))  # [Di, N]
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, d, bias=cfg.bias)
        self.A_log._no_weight_decay = True  # mamba-ssm's marker for parameters to keep out of weight decay
        self.D._no_weight_decay = True

        self.hook_in_proj = Hook("batch pos d_in_proj", note="[x, z], 2 * D_inner")
        self.hook_gate = Hook("batch pos channel", note="z, before SiLU (interp only)")
        self.hook_conv = Hook(
            "batch channel pos",
            note="conv1d output before trim and SiLU: P + d_conv - 1 positions (bridge layout)",
        )
        self.hook_ssm_in = Hook("batch pos channel", note="u = SiLU(conv), the scan input (interp only)")
        self.hook_x_proj = Hook("batch pos d_x_proj", note="[dt_low, B, C], dt_rank + 2N")
        self.hook_B = Hook("batch pos state", note="input-dependent B (interp only)")
        self.hook_C = Hook("batch pos state", note="input-dependent C (interp only)")
        self.hook_ssm_dt = Hook("batch pos channel", note="dt_proj output incl. bias, before softplus")
        self.hook_ssm_write = Hook(
            "batch channel pos state", patch="recurrence", note="dt u B, what each step adds to the state"
        )
        self.hook_ssm_state = Hook(  # inside the recurrence: a patch at t feeds every later state
            "batch channel pos state",
            state=True,
            patch="recurrence",
            grad_via="hook_ssm_write",
            note="the state h_t after each position",
        )
        self.hook_scan_out = Hook(
            "batch pos channel", note="(y + D u) SiLU(z), before out_proj (interp only)"
        )
        self.hook_ssm_out = Hook("batch pos d_model", note="out_proj output (the bridge's name)")

    def conv_input(self, in_proj: Tensor, mask: Tensor | None) -> Tensor:
        """The convolution's input [B, P, D_inner] from `hook_in_proj`'s activation: x of [x | z], zero at
        padding (what `resume` windows hold)."""
        xs = in_proj[..., : self.cfg.d_inner]
        return xs if mask is None else xs * mask[..., None]

    def forward(
        self,
        x: Tensor,
        cache_out: list | None = None,
        mask: Tensor | None = None,
        resume: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """x: [B, P, d_model] (normalised) -> [B, P, d_model]. Appends (conv, ssm) state to cache_out.

        mask [B, P] (1 = token, 0 = padding): padding enters the convolution and the scan as zeros, so
        the state stays exactly zero through left padding (as Hugging Face's `attention_mask` does).

        resume (`HookedMamba.forward_from`): (window [B, D_inner, K - 1], h [B, D_inner, N]), the masked
        conv inputs of the K - 1 positions before x's first and the state after the one before it: x
        continues that sequence, and the hooks see what the whole sequence's forward shows from x's
        first position on (`hook_conv`: its last P + K - 1 positions). Both None: x starts the sequence.
        A third entry, states [B, D_inner, P, N]: what hook_ssm_state receives, known from a recording
        (the scan then runs once, after the hook, instead of once for it and again with its edits).
        """
        p = x.shape[1]
        n, r, k = self.cfg.d_state, self.cfg.rank, self.cfg.d_conv
        xz = self.hook_in_proj(self.in_proj(x))  # [B, P, 2 * Di]
        xs, z = xz.chunk(2, dim=-1)  # [B, P, Di] each
        z = self.hook_gate(z)
        if mask is not None:
            xs = xs * mask[..., None]
        # [B, Di, P + K - 1]; a resumed forward's window replaces the left zero padding
        conv = depthwise_conv(xs, self.conv1d.weight, self.conv1d.bias, None if resume is None else resume[0])
        conv = self.hook_conv(conv.contiguous() if self.hook_conv.active else conv)  # a hook may .view it
        u = F.silu(conv.transpose(1, 2)[:, :p])  # [B, P, Di], sliced in this order (see Mamba-2's mixer)
        if mask is not None:  # u = 0 makes B = 0 and the write dt * u * B = 0: no state change
            u = u * mask[..., None]
        u = self.hook_ssm_in(u)  # [B, P, Di]
        x_dbl = self.hook_x_proj(self.x_proj(u))  # [B, P, R + 2N]
        dt_low, Bm, Cm = x_dbl.split([r, n, n], dim=-1)
        Bm, Cm = self.hook_B(Bm), self.hook_C(Cm)  # [B, P, N]
        delta = self.hook_ssm_dt(self.dt_proj(dt_low))  # [B, P, Di]
        A = -torch.exp(self.A_log.float())  # [Di, N]

        # mamba-ssm layout: channels before positions
        scan_in = dict(
            u=u.transpose(1, 2),  # [B, Di, P]
            delta=delta.transpose(1, 2),  # [B, Di, P]
            A=A,
            B=Bm.transpose(1, 2),  # [B, N, P]
            C=Cm.transpose(1, 2),  # [B, N, P]
            D=self.D.float(),
            z=z.transpose(1, 2),  # [B, Di, P]
            delta_softplus=True,
            impl=self.cfg.scan,
            chunk_size=self.cfg.chunk_size,
        )
        if self.hook_ssm_write.active:
            dt = F.softplus(delta.float()).transpose(1, 2)  # [B, Di, P]
            dtu = dt * u.float().transpose(1, 2)  # [B, Di, P]
            write = dtu[..., None] * Bm.float()[:, None]  # [B, Di, P, N]
            scan_in["write"] = self.hook_ssm_write(write)
        scan = _Scan(scan_in, None if resume is None else resume[1])
        known = resume[2] if resume is not None and len(resume) > 2 else None
        if self.hook_ssm_state.active:
            y, last = self._run_state_hook(
                scan, *((None, known) if known is not None else scan(return_states=True))
            )
        elif cache_out is not None:
            y, last = scan(return_last_state=True)
        else:
            y = scan()
        if cache_out is not None:
            window = F.pad(xs.transpose(1, 2), (k - 1, 0))[..., p:]  # last K - 1 conv inputs, [B, Di, K - 1]
            cache_out.append((window, last if last is not None else A.new_zeros(y.shape[0], *A.shape)))
        y = self.hook_scan_out(y.transpose(1, 2))  # [B, P, Di]
        return self.hook_ssm_out(self.out_proj(y))

    def _run_state_hook(self, scan: _Scan, y: Tensor | None, states: Tensor) -> tuple[Tensor, Tensor | None]:
        """Run `hook_ssm_state` on the scan's y [B, Di, P] and states [B, Di, P, N]; where it changed
        them, re-run the scan with the changes inside the recurrence, from the first changed position on
        -> (y, the last state; None when P = 0). y None: the scan has not run, the states are known
        (`forward`'s resume); it then runs once, from the start."""
        new, states = call_keeping_input(self.hook_ssm_state, states, lambda: scan(return_states=True)[1])
        if new is not states:
            edit = StateEdit.changes(states, new, dim=2)  # the positions the hook changed, only
            if len(edit):
                t0 = edit.positions()[0] if y is not None else 0  # before it nothing changed
                rest = scan.suffix(t0, states[:, :, t0 - 1]) if t0 else scan
                tail, last = rest(return_last_state=True, state_edit=edit.shifted(-t0))
                return (torch.cat([y[..., :t0], tail], -1) if t0 else tail), last
        if y is None:
            return scan(return_last_state=True)
        return y, (states[:, :, -1] if states.shape[2] else None)


class _Scan:
    """`selective_scan` of one mixer's inputs, optionally continuing from a state h0 [B, Di, N] (the
    scan's `initial_state`, so state edits see exactly the recurrence). The mamba-ssm CUDA kernel takes
    no initial state: where it would run, the scan starts from zero and h0's part is added in closed
    form (the recurrence is linear in h0), which keeps the kernel. Calls take selective_scan's keyword
    arguments (return_states, return_last_state, state_edit [B, Di, P, N])."""

    def __init__(self, scan_in: dict, h0: Tensor | None):
        self.scan_in, self.h0 = scan_in, h0

    def suffix(self, t0: int, h: Tensor) -> _Scan:
        """The scan of positions t0.. only, continuing from h [B, Di, N], the state after t0 - 1."""
        si = {k: v[..., t0:] if k in ("u", "delta", "B", "C", "z") else v for k, v in self.scan_in.items()}
        if si.get("write") is not None:
            si["write"] = si["write"][:, :, t0:]  # [B, Di, P, N]
        return _Scan(si, h)

    def __call__(self, **kw):
        si = self.scan_in
        state_kw = {k: kw.get(k) for k in ("return_states", "state_edit")}
        if self.h0 is not None and uses_cuda_kernel(si["u"], si["impl"], write=si.get("write"), **state_kw):
            return self._carry_h0(selective_scan(**si, **kw), **kw)
        return selective_scan(**si, initial_state=self.h0, **kw)

    def _carry_h0(self, out, return_last_state: bool = False):
        """Add h0's part to a plain scan from zero: h_t += exp(A * sum_{s<=t} dt_s) h0, y_t += <C_t,
        that> * silu(z_t) (the D u term and the write do not involve h0)."""
        si, h0 = self.scan_in, self.h0
        y, extra = out if isinstance(out, tuple) else (out, None)
        f = h0.dtype
        dt = F.softplus(si["delta"].to(f))  # [B, Di, P]
        carried = torch.exp(si["A"].to(f)[None, :, None, :] * dt.cumsum(-1)[..., None]) * h0[:, :, None]
        read = torch.einsum("bdln,bnl->bdl", carried, si["C"].to(f)) * F.silu(si["z"].to(f))
        y = (y.to(f) + read).to(y.dtype)
        if return_last_state:
            return y, extra + carried[:, :, -1]
        return y


class MambaBlock(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.mixer = MambaMixer(cfg)
        self.hook_resid_pre = Hook("batch pos d_model", note="residual stream")
        self.hook_mixer_in = Hook(
            "batch pos d_model", note="normalised input of the mixer (after the weight)"
        )
        self.hook_mixer_out = Hook("batch pos d_model", note="mixer output, block-level name")
        self.hook_resid_post = Hook("batch pos d_model", note="residual stream")

    def forward(
        self, x: Tensor, cache_out: list | None = None, mask: Tensor | None = None, resume=None
    ) -> Tensor:
        """resume: see `MambaMixer.forward` (a forward continued from a recorded state)."""
        x = self.hook_resid_pre(x)
        out = self.hook_mixer_out(self.mixer(self.hook_mixer_in(self.norm(x)), cache_out, mask, resume))
        return self.hook_resid_post(x + out)

    def step(self, x: Tensor, conv: Tensor, ssm: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One position: x [B, d_model], conv [B, D_inner, K - 1], ssm [B, D_inner, N] -> (x after this
        block, new conv, new ssm). Same arithmetic as `forward` at one position; no hooks. Used by
        `HookedMamba.step` and by the hybrids' decoding."""
        mixer = self.mixer
        n, r = mixer.cfg.d_state, mixer.cfg.rank
        xs, z = mixer.in_proj(self.norm(x)).chunk(2, dim=-1)  # [B, Di] each
        window = torch.cat([conv, xs[..., None]], dim=-1)  # [B, Di, K]
        c = (window * mixer.conv1d.weight[:, 0]).sum(-1)  # depthwise conv at the newest position
        if mixer.conv1d.bias is not None:
            c = c + mixer.conv1d.bias
        u = F.silu(c)  # [B, Di]
        dt_low, Bm, Cm = mixer.x_proj(u).split([r, n, n], dim=-1)  # [B, R], [B, N], [B, N]
        dt = F.softplus(mixer.dt_proj(dt_low).float())  # [B, Di]
        A = -torch.exp(mixer.A_log.float())  # [Di, N]
        write = (dt * u.float())[..., None] * Bm.float()[:, None]  # [B, Di, N]
        h = torch.exp(dt[..., None] * A) * ssm + write
        y = (h * Cm.float()[:, None]).sum(-1) + mixer.D.float() * u.float()  # [B, Di]
        y = (y * F.silu(z.float())).to(x.dtype)
        return x + mixer.out_proj(y), window[..., 1:], h


# Resuming a forward (the capability `interp.analysis.patching.reuse` asks for), shared by Mamba-1 and
# Mamba-2: a patch at layer l, position p cannot change layers < l or positions < p, so the patched
# forward restarts block l at p from the recorded residual stream, the conv inputs of positions
# p-K+1..p-1 and the SSM state after p - 1; every later block likewise from its own.

# Hooks past the scan's state (or only in its readout): a patch at position p changes position p only.
POSITION_LOCAL = frozenset(
    {"mixer.hook_gate", "mixer.hook_C", "mixer.hook_scan_out", "mixer.hook_inner_norm", "mixer.hook_ssm_out"}
    | {"hook_mixer_out", "hook_resid_post"}
)


def ssm_recorders(mixer, name: str, mask: Tensor | None, conv_in: dict, ssm: dict, key) -> list:
    """Hooks that record, under `key`, an SSM mixer's (`blocks.{l}.mixer`: name) conv inputs with K - 1
    zeros in front [B, C, K - 1 + P] and its state after each position, for `resume_ssm`."""
    k = mixer.cfg.d_conv

    def padded(act: Tensor, hook) -> None:
        conv_in[key] = F.pad(mixer.conv_input(act, mask).transpose(1, 2), (k - 1, 0))

    return [
        (f"{name}.hook_in_proj", padded),
        (f"{name}.hook_ssm_state", lambda act, hook: ssm.__setitem__(key, act)),
    ]


def seen_recorder(name: str, seen: dict, key) -> tuple:
    """A `hooks_first` hook recording, under `key`, what an SSM mixer's (`blocks.{l}.mixer`: name)
    hook_ssm_state receives; `seen_states` reads it back."""
    return (f"{name}.hook_ssm_state", lambda act, hook: seen.__setitem__(key, (act, version(act))))


def seen_states(seen: dict, key) -> Tensor | None:
    """The states `seen_recorder` recorded under `key`; None if a later hook edited them in place."""
    if key not in seen:
        return None
    act, recorded = seen[key]
    return act if recorded is not None and version(act) == recorded else None  # inference: unknown


def record_resume(model, tokens: Tensor, attention_mask: Tensor | None) -> MambaResume:
    """One forward of tokens [B, P] recording what `resume_ssm` restarts from: a copy of each block's input
    before any user hook edits it, in place or not (a resumed pass sends it through the hook again), the
    conv inputs and states after (it reads them as they are)."""
    mask = None if attention_mask is None else attention_mask.to(model.embed.weight.dtype)
    resid, conv_in, states, seen = {}, {}, {}, {}
    inputs, hooks = [], []
    for i, block in enumerate(model.blocks):
        inputs.append(
            (f"blocks.{i}.hook_resid_pre", lambda act, hook, i=i: resid.__setitem__(i, act.clone()))
        )
        inputs.append(seen_recorder(f"blocks.{i}.mixer", seen, i))
        hooks += ssm_recorders(block.mixer, f"blocks.{i}.mixer", mask, conv_in, states, i)
    with torch.no_grad(), model.hooks_first(inputs):
        logits = model.run_with_hooks(tokens, attention_mask, fwd_hooks=hooks)
    layers = range(len(model.blocks))
    return MambaResume(
        logits,
        [resid[i] for i in layers],
        [conv_in[i] for i in layers],
        [states[i] for i in layers],
        mask,
        [seen_states(seen, i) for i in layers],
    )


def resume_ssm(
    model,
    state,
    layer: int,
    pos: int,
    copies: int = 1,
    single: bool = False,
    run_block=None,
    patched_hooks: frozenset[str] = frozenset(),
) -> Tensor:
    """Logits [copies * B, P - pos, d_vocab] of the recorded forward resumed at block `layer`, position
    `pos`: blocks < layer do not run; each block >= layer continues from its recorded conv window and
    SSM state before `pos` (its mixer's `resume`). Hooks of blocks >= layer fire with P - pos positions,
    on `copies` repeats of the batch (copy-major, as `tokens.repeat(copies, 1)`).

    single: block `layer` runs on position `pos` alone and the later positions of its output are the
    recorded ones; right for a patch of a `POSITION_LOCAL` hook, which changes nothing else there.
    patched_hooks: the hooks the caller patches. When that is block `layer`'s hook_ssm_state alone, its
    input there is the recorded one (block `layer` runs on the recorded input), so the mixer takes it from
    the recording (`MambaResume.seen`) instead of scanning for it.
    run_block(i, x, end, seen) -> block i's output on positions pos..end-1, given the states its
    hook_ssm_state receives or None (default: an SSM block resumed from its recording; the hybrid passes
    one for each kind of layer)."""
    b, n, _ = state.resid[0].shape
    if not (0 <= layer < len(model.blocks) and 0 <= pos < n):
        raise ValueError(
            f"cannot resume at layer {layer}, position {pos}: layers 0..{len(model.blocks) - 1}, "
            f"positions 0..{n - 1}"
        )
    rep = lambda t: repeat_copies(t, copies)  # noqa: E731
    if run_block is None:
        run_block = lambda i, x, end, seen: resume_block(  # noqa: E731
            model.blocks[i], state.conv_in[i], state.ssm[i], state.mask, x, pos, end, copies, seen
        )
    head = lambda x: model.lm_head(model.ln_final(x).to(model.lm_head.weight.dtype)).float()  # noqa: E731
    first = layer
    if single:
        x = run_block(layer, rep(state.resid[layer][:, pos : pos + 1]), pos + 1, None)  # [K*B, 1, d_model]
        if layer == len(model.blocks) - 1:  # only position pos of the output changed
            return torch.cat([head(x), rep(state.logits[:, pos + 1 :])], 1)
        x = torch.cat([x, rep(state.resid[layer + 1][:, pos + 1 :])], 1)
        first = layer + 1
    else:
        x = rep(state.resid[layer][:, pos:])
    known = not single and patched_hooks == {f"blocks.{layer}.mixer.hook_ssm_state"}
    for i in range(first, len(model.blocks)):
        x = run_block(i, x, n, state.seen[i] if known and i == layer else None)
    return head(x)


def repeat_copies(t: Tensor, copies: int) -> Tensor:
    """t [B, ...] -> [copies * B, ...], copy-major (as tokens.repeat(copies, 1)), in t's memory layout: the
    recorded Mamba-1 states are a [B, D, P, N] view of a position-major buffer, and a repeat into the
    default layout read them 6x slower (and made every later pass over them slower too)."""
    order = sorted(range(t.ndim), key=lambda d: -t.stride(d))  # outermost in memory first
    reps = [copies if d == 0 else 1 for d in order]
    return t.permute(order).repeat(*reps).permute([order.index(d) for d in range(t.ndim)])


def resume_block(
    block, conv_in: Tensor, ssm: Tensor, mask, x: Tensor, pos: int, end: int, copies: int, seen=None
):
    """An SSM block (Mamba-1 or Mamba-2) on x [copies * B, end - pos, d_model], positions pos..end-1,
    continuing from its recorded conv inputs [B, C, K - 1 + P] and states (`ssm_recorders`). seen: the
    recorded input of its hook_ssm_state (`MambaResume.seen`), valid when x is the recorded input, or None."""
    rep = lambda t: repeat_copies(t, copies)  # noqa: E731
    k = block.mixer.cfg.d_conv
    resume = (rep(conv_in[..., pos : pos + k - 1]), rep(ssm[:, :, pos - 1])) if pos else None
    if seen is not None:
        resume = (*(resume or (None, None)), rep(seen[:, :, pos:end]))
    return block(x, None, None if mask is None else rep(mask[:, pos:end]), resume)


@torch.no_grad()
def init_mamba_mixer(mixer: MambaMixer, cfg: MambaConfig) -> None:
    """mamba-ssm's Mamba-1 initialisation of one mixer (MambaLMHeadModel with its defaults): zero biases,
    dt_proj weights uniform in +-dt_rank^-0.5 * dt_scale, dt = softplus(dt_proj.bias) log-uniform in
    [dt_min, dt_max], out_proj / sqrt(n_layers) (rescale_prenorm_residual). `HookedMamba` and the
    hybrids' Mamba layers both use it."""
    for linear in (mixer.in_proj, mixer.out_proj):
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)
    dt_std = cfg.rank**-0.5 * cfg.dt_scale
    nn.init.uniform_(mixer.dt_proj.weight, -dt_std, dt_std)
    # dt = softplus(bias) log-uniform in [dt_min, dt_max]; bias = softplus^-1(dt)
    lo, hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
    dt = torch.exp(torch.rand(cfg.d_inner) * (hi - lo) + lo).clamp(min=cfg.dt_init_floor)
    mixer.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
    nn.init.kaiming_uniform_(mixer.out_proj.weight, a=math.sqrt(5))
    if cfg.rescale_prenorm_residual:
        mixer.out_proj.weight /= math.sqrt(cfg.n_layers)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
class ResumesSSM:
    """What `interp.analysis.patching.reuse` asks of a model, for the pure SSM models (`HookedMamba`,
    `HookedMamba2`): record one forward, name the position-local hooks (`HookedModel.position_local` reads
    them), resume from the recording (`resume_ssm`)."""

    POSITION_LOCAL: ClassVar[frozenset[str]] = POSITION_LOCAL

    def resume_state(self, tokens: Tensor, attention_mask: Tensor | None = None) -> MambaResume:
        """One forward of tokens [B, P] recording what `forward_from` restarts from."""
        return record_resume(self, tokens, attention_mask)

    def forward_from(
        self,
        state: MambaResume,
        layer: int,
        pos: int,
        copies: int = 1,
        single: bool = False,
        patched_hooks: frozenset[str] = frozenset(),
    ) -> Tensor:
        """Logits [copies * B, P - pos, d_vocab] of the recorded forward resumed at block `layer`,
        position `pos` (see `resume_ssm`); single: block `layer` runs on position `pos` alone;
        patched_hooks: the hooks the caller patches (see `resume_ssm`)."""
        return resume_ssm(self, state, layer, pos, copies, single, patched_hooks=patched_hooks)


class HookedMamba(ResumesSSM, HookedModel):
    """Mamba-1 language model with TransformerLens hooks; see the module docstring for hook names,
    the state-patching semantics and the Hugging Face parameter names."""

    arch: ClassVar[str] = "mamba"
    config_class: ClassVar[type] = MambaConfig

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.hook_embed = Hook("batch pos d_model", note="token embeddings")
        self.blocks = nn.ModuleList([MambaBlock(cfg) for _ in range(cfg.n_layers)])
        self.ln_final = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False)
        self._init_weights()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self._register_state_dict_hook(_state_dict_to_hf_names)
        self.setup()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """mamba-ssm's initialisation (MambaLMHeadModel with its defaults)."""
        cfg = self.cfg
        nn.init.normal_(self.embed.weight, std=cfg.init_std)
        for block in self.blocks:
            init_mamba_mixer(block.mixer, cfg)

    # ---- full-sequence forward ------------------------------------------------------------------
    def forward(
        self,
        tokens: Tensor,
        attention_mask: Tensor | None = None,
        return_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> Tensor | tuple[Tensor, MambaCache]:
        """tokens [B, P] -> logits [B, P, d_vocab] (and, with return_cache, the state after the last token).

        logits_to_keep > 0: logits of the last `logits_to_keep` positions only (as Hugging Face's).

        attention_mask [B, P] (1 = token, 0 = left padding), as in Hugging Face: the state stays zero
        through the padding, so each sequence's real positions get the logits it gets alone.
        """
        return ssm_lm_forward(self, tokens, attention_mask, return_cache, logits_to_keep, MambaCache)

    # ---- recurrent mode -------------------------------------------------------------------------
    def init_cache(self, batch: int) -> MambaCache:
        """The state before any token: zeros, conv [n_layers, B, D_inner, d_conv - 1], ssm [n_layers, B, D_inner, N]."""
        cfg, p = self.cfg, next(self.parameters())
        conv = torch.zeros(cfg.n_layers, batch, cfg.d_inner, cfg.d_conv - 1, dtype=p.dtype, device=p.device)
        ssm = torch.zeros(cfg.n_layers, batch, cfg.d_inner, cfg.d_state, dtype=torch.float32, device=p.device)
        return MambaCache(conv=conv, ssm=ssm)

    def step(self, token: Tensor, cache: MambaCache) -> tuple[Tensor, MambaCache]:
        """One token per sequence: token [B] -> logits [B, d_vocab] and the new cache (the old one is kept).

        Same arithmetic as `forward` at one position, with O(1) memory per token. Hooks do not fire.
        """
        if not isinstance(token, Tensor) or token.ndim != 1:
            shape = tuple(token.shape) if isinstance(token, Tensor) else type(token).__name__
            raise ValueError(f"step takes one token per sequence, an integer tensor [batch]; got {shape}")
        if cache.ssm.shape[1] != token.shape[0]:
            raise ValueError(
                f"cache holds {cache.ssm.shape[1]} sequences but {token.shape[0]} tokens were given"
            )
        if self.cfg.n_ctx is not None and cache.n_tokens >= self.cfg.n_ctx:
            raise ValueError(
                f"the cache already holds n_ctx={self.cfg.n_ctx} tokens; the model's context is full"
            )
        self.check_tokens(token[:, None])
        x = self.embed(token)  # [B, d_model]
        convs, ssms = [], []
        for layer, block in enumerate(self.blocks):
            x, conv, h = block.step(x, cache.conv[layer], cache.ssm[layer])
            convs.append(conv)
            ssms.append(h)
        logits = self.lm_head(self.ln_final(x)).float()
        return logits, MambaCache(conv=torch.stack(convs), ssm=torch.stack(ssms), n_tokens=cache.n_tokens + 1)

    def prefill(self, prompt: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, MambaCache]:
        """For `generate_greedy`: the prompt in one pass -> (last logits [B, d_vocab], recurrent state)."""
        logits, cache = self(prompt, attention_mask, return_cache=True, logits_to_keep=1)
        return logits[:, -1], cache

    def decode_step(self, token: Tensor, cache: MambaCache) -> tuple[Tensor, MambaCache]:
        """For `generate_greedy`: one token per sequence in step mode (O(1) memory, no hooks)."""
        return self.step(token, cache)

    # ---- memory and checkpoints --------------------------------------------------------------
    def state_size(self) -> StateSize:
        cfg = self.cfg
        per_layer = cfg.d_inner * cfg.d_state + cfg.d_inner * (cfg.d_conv - 1)  # SSM state + conv cache
        return StateSize(tuple(per_layer for _ in range(cfg.n_layers)))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load Hugging Face `MambaForCausalLM` (or mamba-ssm `MambaLMHeadModel`) names.

        Raises ValueError naming every missing, unexpected or wrongly shaped key. A tied checkpoint
        may omit `lm_head.weight`.
        """
        sd = {MAMBA_SSM_ALIASES.get(k, k): v for k, v in state_dict.items()}
        expected = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        if self.cfg.tie_embeddings and "backbone.embeddings.weight" in sd:
            emb = sd["backbone.embeddings.weight"]
            head = sd.setdefault("lm_head.weight", emb)
            if head is not emb and head.shape == emb.shape and not torch.equal(head, emb):
                raise ValueError(
                    "checkpoint has different lm_head.weight and backbone.embeddings.weight, but this model "
                    "ties them (tie_embeddings=True); build it with tie_embeddings=False"
                )
        problems = []
        shapes = [
            f"{k} is {tuple(sd[k].shape)} in the checkpoint but {shape} in the model"
            for k, shape in expected.items()
            if k in sd and tuple(sd[k].shape) != shape
        ]
        if shapes:
            problems.append("wrong shapes: " + "; ".join(shapes))
        missing = [k for k in expected if k not in sd]
        unexpected = [k for k in sd if k not in expected]
        if strict and missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        if problems:
            cfg = self.cfg
            raise ValueError(
                f"checkpoint does not fit HookedMamba(d_vocab={cfg.d_vocab}, d_model={cfg.d_model}, "
                f"n_layers={cfg.n_layers}, d_state={cfg.d_state}, d_conv={cfg.d_conv}, expand={cfg.expand}): "
                + "; ".join(problems)
                + " (keys use Hugging Face MambaForCausalLM names, e.g. backbone.layers.0.mixer.in_proj.weight)"
            )
        internal = {from_hf_name(k): v for k, v in sd.items() if k in expected}
        super().load_state_dict(internal, strict=False, assign=assign)
        if self.cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight  # `assign=True` would otherwise untie them
        return nn.modules.module._IncompatibleKeys(missing, unexpected)


def _state_dict_to_hf_names(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    """state_dict hook: rename this model's keys to Hugging Face names, in place and in order."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        state_dict[prefix + to_hf_name(key[len(prefix) :])] = state_dict.pop(key)


def __getattr__(name: str):
    """Hugging Face / mamba-ssm conversion moved to `interp.models.hf.mamba`; old imports keep working."""
    if name in ("load_hf_mamba", "mamba_config_from_dict", "RUNTIME_OPTIONS"):
        from interp.models.hf import mamba as hf

        return getattr(hf, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def ssm_lm_forward(model, tokens: Tensor, attention_mask, return_cache: bool, logits_to_keep: int, cache_cls):
    """The forward HookedMamba and HookedMamba2 share: tokens [B, P] (attention_mask [B, P], 1 = token,
    0 = left padding) -> logits [B, P or logits_to_keep, d_vocab], and with return_cache the model's
    `cache_cls` (conv [n_layers, B, conv channels, d_conv - 1], ssm states stacked per layer)."""
    model.check_tokens(tokens)
    model.check_logits_to_keep(logits_to_keep)
    if return_cache:
        model.check_left_padding(attention_mask)
    mask = None
    model.check_attention_mask(tokens, attention_mask)
    if attention_mask is not None:
        mask = attention_mask.to(model.embed.weight.dtype)
    x = model.hook_embed(model.embed(tokens))  # [B, P, d_model]
    layer_states: list | None = [] if return_cache else None
    for block in model.blocks:
        x = block(x, layer_states, mask)
    if logits_to_keep:
        x = x[:, -logits_to_keep:]
    logits = model.lm_head(model.ln_final(x).to(model.lm_head.weight.dtype)).float()
    if not return_cache:
        return logits
    conv = torch.stack([c for c, _ in layer_states])
    ssm = torch.stack([s.float() for _, s in layer_states])
    return logits, cache_cls(conv=conv, ssm=ssm, n_tokens=tokens.shape[1])
