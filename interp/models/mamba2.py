"""Mamba-2 in plain PyTorch, weight-compatible with Hugging Face `Mamba2ForCausalLM`.

Forward: tokens [B, P] -> embedding -> n_layers x (x + Mixer(RMSNorm(x))) -> RMSNorm -> lm_head
-> logits [B, P, d_vocab]. The mixer is Mamba-2's (Dao & Gu, 2024), with D_inner = expand * d_model
split into H = D_inner / head_dim heads of head_dim channels, and B, C shared by G = n_groups groups:

    in_proj -> [z | xBC | dt]               z: [B, P, D_inner], xBC: [B, P, D_inner + 2GN], dt: [B, P, H]
    xBC = SiLU(causal depthwise conv1d(xBC)) -> x [B, P, H, head_dim], B, C [B, P, G, N]
    y = SSD(x, dt + dt_bias, A, B, C, D)    [B, P, H, head_dim]   (interp/models/ssd.py)
    y = RMSNorm_per_group(y * SiLU(z)) * w  gated RMSNorm, [B, P, D_inner]
    out_proj(y)                             [B, P, d_model]

Hooks use Mamba-1's vocabulary (interp/models/mamba.py) wherever the quantity exists. Per layer `l`:

    blocks.{l}.hook_resid_pre, norm.hook_scale, norm.hook_normalized, hook_mixer_in   as in Mamba-1
    blocks.{l}.mixer.hook_in_proj   [B, P, 2*D_inner + 2GN + H]   [z | xBC | dt]
    blocks.{l}.mixer.hook_gate      [B, P, D_inner]               z, before SiLU
    blocks.{l}.mixer.hook_conv      [B, D_inner + 2GN, P + d_conv - 1]  conv1d output before the causal
                                    trim and SiLU, channel-first (Mamba-1's layout)
    blocks.{l}.mixer.hook_ssm_in    [B, P, H, head_dim]           x, the scan input
    blocks.{l}.mixer.hook_B, hook_C [B, P, G, N]
    blocks.{l}.mixer.hook_ssm_dt    [B, P, H]                     dt + dt_bias, before softplus
    blocks.{l}.mixer.hook_ssm_write [B, H, P, head_dim, N]        dt * x B^T, what each step adds
    blocks.{l}.mixer.hook_ssm_state [B, H, P, head_dim, N]        h_t after each position
    blocks.{l}.mixer.hook_scan_out  [B, P, H, head_dim]           h_t C_t + D x_t, before the gated norm
    blocks.{l}.mixer.hook_inner_norm [B, P, D_inner]              gated RMSNorm output
    blocks.{l}.mixer.hook_ssm_out   [B, P, d_model]               out_proj output
    blocks.{l}.hook_mixer_out, hook_resid_post; hook_embed, ln_final.hook_scale, ln_final.hook_normalized

The state hooks put the head before the position, like Mamba-1's [B, D_inner, P, N] (TransformerLens's
bridge has [B, P, H, head_dim, N]); axes are declared on each hook (`interp.hooks`), so analyses do not
depend on either. As in Mamba-1, `hook_ssm_write` and `hook_ssm_state` (B*H*P*head_dim*N numbers each)
are computed only when a hook function or a cache asks for them, and the state hook sits *inside* the
recurrence: patching h_t changes the outputs at t and every later position, never earlier ones (the
bridge's patch changes only the readout at t).

`ssm_attention(tokens)` is the exact hidden attention matrix of every layer, {layer: M} (SSD's sequence
map, `interp.models.ssd.ssd_attention`), for the head detectors.

Parameter names are Hugging Face's below `blocks.{l}.mixer` (in_proj, conv1d, dt_bias, A_log, D,
norm.weight, out_proj); `interp.models.hf.mamba2` renames the rest (`backbone.layers.{l}` etc.).

Recurrent mode: `init_cache(batch)`, `step(token, cache)`; `prefill`/`decode_step` for
`interp.generation`. Hooks do not fire in step mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from interp.config import Config
from interp.hooks import call_keeping_input
from interp.models.base import Hook, HookedModel, StateSize
from interp.models.conv import depthwise_conv
from interp.models.mamba import (
    ResumesSSM,
    RMSNorm,
    ssm_lm_forward,
)
from interp.models.ssd import IMPLS, discretize_dt, layer_attention, ssd_scan
from interp.models.state_edit import StateEdit


@dataclass
class Mamba2Config(Config):
    d_vocab: int = 30  # tokens; 26 letters + 4 symbols for the paper's tasks
    d_model: int = 128
    n_layers: int = 2
    d_state: int = 64  # N: state size per head channel; the state is D_inner * N numbers per layer
    d_conv: int = 4  # causal depthwise convolution width
    expand: int = 2  # D_inner = expand * d_model
    head_dim: int = 32  # channels per SSM head; n_heads = D_inner / head_dim, one decay per head
    n_groups: int = 1  # B and C are shared by n_heads / n_groups heads (like grouped-query attention)
    conv_bias: bool = True
    bias: bool = False  # bias in in_proj and out_proj
    rms_norm_eps: float = 1e-5  # block norms, final norm and the gated norm
    tie_embeddings: bool = True
    n_ctx: int | None = None  # no positional limit; set to guard against overlong inputs
    scan: str = "auto"  # "auto" | "reference" | "chunked" (interp.models.ssd)
    chunk_size: int | None = None  # chunked scan: positions per chunk; None = ssd.auto_chunk_size(length)
    dt_limit_min: float = 0.0  # dt is clamped to [dt_limit_min, dt_limit_max] after softplus
    dt_limit_max: float | None = None  # None: no upper limit (Hugging Face's inf)
    # initialisation from scratch, as mamba-ssm's Mamba2 does it
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    A_init_min: float = 1.0  # A = -uniform(A_init_min, A_init_max) per head
    A_init_max: float = 16.0
    init_std: float = 0.02  # embedding
    rescale_prenorm_residual: bool = True  # out_proj weights / sqrt(n_layers)

    def __post_init__(self):
        super().__post_init__()  # types and sizes first
        if self.d_inner % self.head_dim:
            raise ValueError(
                f"d_inner = expand * d_model = {self.expand} * {self.d_model} = {self.d_inner} is not divisible "
                f"by head_dim={self.head_dim}; Mamba-2 splits d_inner into heads of head_dim channels"
            )
        if self.n_heads % self.n_groups:
            raise ValueError(
                f"n_heads = d_inner / head_dim = {self.n_heads} is not divisible by n_groups={self.n_groups}"
            )
        if self.scan not in IMPLS:
            raise ValueError(f"unknown scan {self.scan!r}; allowed: {', '.join(IMPLS)}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}")
        if self.dt_limit_min < 0 or (self.dt_limit_max is not None and self.dt_limit_max < self.dt_limit_min):
            raise ValueError(
                f"need 0 <= dt_limit_min <= dt_limit_max, got {self.dt_limit_min}, {self.dt_limit_max}"
            )

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def n_heads(self) -> int:
        """SSM heads (each with one scalar decay); patching by head iterates over these."""
        return self.d_inner // self.head_dim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.n_groups * self.d_state

    @property
    def dt_limit(self) -> tuple[float, float | None]:
        return (self.dt_limit_min, self.dt_limit_max)

    normalization_type = "RMS"  # what TransformerLens's utilities read
    n_key_value_heads = None


@dataclass
class Mamba2Cache:
    """Recurrent state for `HookedMamba2.step`: everything the model remembers about the past.

    conv: [n_layers, B, conv_dim, d_conv - 1], the last d_conv - 1 inputs of each layer's convolution.
    ssm:  [n_layers, B, H, head_dim, N], the SSM state after the last token.
    n_tokens: tokens consumed so far (checked against n_ctx).
    """

    conv: Tensor
    ssm: Tensor
    n_tokens: int = 0


class GatedRMSNorm(nn.Module):
    """RMSNorm(y * SiLU(z)) over groups of D_inner / n_groups channels, times a weight (mamba-ssm's
    `RMSNormGated` with norm_before_gate=False, as Hugging Face's MambaRMSNormGated)."""

    def __init__(self, d: int, n_groups: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.n_groups, self.eps = n_groups, eps

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        """y, z: [..., D_inner] -> [..., D_inner]."""
        g = (y.float() * F.silu(z.float())).unflatten(-1, (self.n_groups, -1))  # [..., G, D_inner / G]
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * g.flatten(-2).to(y.dtype)


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.cfg = cfg
        d, di, h, k = cfg.d_model, cfg.d_inner, cfg.n_heads, cfg.d_conv
        self.in_proj = nn.Linear(d, di + cfg.conv_dim + h, bias=cfg.bias)
        self.conv1d = nn.Conv1d(
            cfg.conv_dim, cfg.conv_dim, kernel_size=k, groups=cfg.conv_dim, padding=k - 1, bias=cfg.conv_bias
        )
        self.dt_bias = nn.Parameter(torch.zeros(h))
        self.A_log = nn.Parameter(torch.zeros(h))  # [H]: one decay rate per head
        self.D = nn.Parameter(torch.ones(h))
        self.norm = GatedRMSNorm(di, cfg.n_groups, cfg.rms_norm_eps)
        self.out_proj = nn.Linear(di, d, bias=cfg.bias)
        for p in (self.A_log, self.D, self.dt_bias):
            p._no_weight_decay = True  # mamba-ssm's marker for parameters to keep out of weight decay

        self.hook_in_proj = Hook("batch pos d_in_proj")  # [batch, pos, 2 * d_inner + 2GN + H]
        self.hook_gate = Hook("batch pos channel")  # [batch, pos, d_inner], z before SiLU
        self.hook_conv = Hook("batch d_xbc pos")  # [batch, conv_dim, pos + d_conv - 1], before trim and SiLU
        self.hook_ssm_in = Hook("batch pos head d_head")  # [batch, pos, head, head_dim]
        self.hook_B = Hook("batch pos group state")  # [batch, pos, n_groups, d_state]
        self.hook_C = Hook("batch pos group state")  # [batch, pos, n_groups, d_state]
        self.hook_ssm_dt = Hook("batch pos head")  # [batch, pos, head], dt + dt_bias before softplus
        self.hook_ssm_write = Hook(
            "batch head pos d_head state", patch="recurrence", note="dt * x B^T"
        )  # [batch, head, pos, head_dim, d_state]
        self.hook_ssm_state = Hook(
            "batch head pos d_head state",
            state=True,
            patch="recurrence",
            grad_via="hook_ssm_write",
            note="h_t",
        )  # [batch, head, pos, head_dim, d_state]
        self.hook_scan_out = Hook("batch pos head d_head")  # [batch, pos, head, head_dim]
        self.hook_inner_norm = Hook("batch pos channel")  # [batch, pos, d_inner]
        self.hook_ssm_out = Hook("batch pos d_model")  # [batch, pos, d_model]

    def _split(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cfg = self.cfg
        return zxbcdt.split([cfg.d_inner, cfg.conv_dim, cfg.n_heads], dim=-1)

    def _split_xbc(self, xbc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[..., conv_dim] -> x [..., H, head_dim], B [..., G, N], C [..., G, N]."""
        cfg = self.cfg
        xs, Bm, Cm = xbc.split([cfg.d_inner, cfg.n_groups * cfg.d_state, cfg.n_groups * cfg.d_state], dim=-1)
        groups = (cfg.n_groups, cfg.d_state)
        return (
            xs.unflatten(-1, (cfg.n_heads, cfg.head_dim)),
            Bm.unflatten(-1, groups),
            Cm.unflatten(-1, groups),
        )

    def conv_input(self, in_proj: Tensor, mask: Tensor | None) -> Tensor:
        """The convolution's input [B, P, conv_dim] from `hook_in_proj`'s activation: xBC of
        [z | xBC | dt] (padding was zeroed before in_proj; what `resume` windows hold)."""
        return in_proj[..., self.cfg.d_inner : self.cfg.d_inner + self.cfg.conv_dim]

    def forward(
        self,
        x: Tensor,
        cache_out: list | None = None,
        mask: Tensor | None = None,
        resume: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """x: [B, P, d_model] (normalised) -> [B, P, d_model]. Appends (conv, ssm) state to cache_out.

        mask [B, P] (1 = token, 0 = padding): padding enters in_proj and the scan as zeros (as Hugging
        Face's `attention_mask` does), so the state stays zero through left padding.

        resume (`HookedMamba2.forward_from`): (window [B, conv_dim, K - 1], h [B, H, head_dim, N]), the
        conv inputs of the K - 1 positions before x's first and the state after the one before it: x
        continues that sequence (the scan starts from h) and the hooks see what the whole sequence's
        forward shows from x's first position on (`hook_conv`: its last P + K - 1 positions). Both None: x
        starts the sequence. A third entry, states [B, H, P, head_dim, N]: what hook_ssm_state receives,
        known from a recording (the scan then runs once, after the hook).
        """
        cfg = self.cfg
        b, p = x.shape[:2]
        if mask is not None:
            x = x * mask[..., None]
        z, xbc, dt = self._split(self.hook_in_proj(self.in_proj(x)))
        z = self.hook_gate(z)
        # [B, conv_dim, P + K - 1]; a resumed forward's window replaces the left zero padding
        conv = depthwise_conv(
            xbc, self.conv1d.weight, self.conv1d.bias, None if resume is None else resume[0]
        )
        conv = self.hook_conv(conv.contiguous() if self.hook_conv.active else conv)  # a hook may .view it
        # sliced in [B, P, C] order: slicing [B, C, P] made its backward allocate the gradient channels-first,
        # which depthwise_conv's backward then had to transpose
        xbc_act = conv.transpose(1, 2)[:, :p]  # [B, P, conv_dim]
        if conv.is_contiguous():  # channels first (F.conv1d, or a hook's): SiLU's backward is 3x faster
            xbc_act = xbc_act.contiguous()  # on [B, P, C] in memory order
        xbc_act = F.silu(xbc_act)
        if mask is not None:
            xbc_act = xbc_act * mask[..., None]
        xs, Bm, Cm = self._split_xbc(xbc_act)
        xs = self.hook_ssm_in(xs)  # [B, P, H, head_dim]
        Bm, Cm = self.hook_B(Bm), self.hook_C(Cm)  # [B, P, G, N]
        dt = self.hook_ssm_dt(dt + self.dt_bias)  # [B, P, H]
        A = -torch.exp(self.A_log.float())  # [H]
        scan_in = dict(
            x=xs, dt=dt, A=A, B=Bm, C=Cm, D=self.D.float(), dt_limit=cfg.dt_limit, impl=cfg.scan,
            chunk_size=cfg.chunk_size,
        )  # fmt: skip
        if resume is not None and resume[1] is not None:
            scan_in["initial_state"] = resume[1]
        known = resume[2] if resume is not None and len(resume) > 2 else None
        if self.hook_ssm_write.active:
            dts = discretize_dt(dt, None, True, cfg.dt_limit, torch.float32)  # [B, P, H]
            Bh = Bm.float().repeat_interleave(cfg.n_heads // cfg.n_groups, dim=2)  # [B, P, H, N]
            write = torch.einsum("blhp,blhn->bhlpn", xs.float() * dts[..., None], Bh)
            scan_in["write"] = self.hook_ssm_write(write)
        last = None
        if self.hook_ssm_state.active:
            known_or_scan = (None, known) if known is not None else ssd_scan(**scan_in, return_states=True)
            y, last = self._run_state_hook(scan_in, *known_or_scan)
        elif cache_out is not None:
            y, last = ssd_scan(**scan_in, return_last_state=True)
        else:
            y = ssd_scan(**scan_in)
        if cache_out is not None:
            k = cfg.d_conv
            window = F.pad(xbc.transpose(1, 2), (k - 1, 0))[..., p:]  # last K - 1 conv inputs
            if last is None:
                last = A.new_zeros(b, cfg.n_heads, cfg.head_dim, cfg.d_state)
            cache_out.append((window, last))
        y = self.hook_scan_out(y)  # [B, P, H, head_dim]
        y = self.hook_inner_norm(self.norm(y.reshape(b, p, cfg.d_inner).to(x.dtype), z))
        return self.hook_ssm_out(self.out_proj(y))

    def _run_state_hook(
        self, scan_in: dict, y: Tensor | None, states: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Run `hook_ssm_state` on the scan's y [B, P, H, head_dim] and states [B, H, P, head_dim, N];
        where it changed them, re-run the scan with the changes inside the recurrence, from the first
        changed position on -> (y, the last state; None when P = 0). y None: the scan has not run, the
        states are known (`forward`'s resume); it then runs once, from the start."""
        unedited = lambda: ssd_scan(**scan_in, return_states=True)[1]  # noqa: E731
        new, states = call_keeping_input(self.hook_ssm_state, states, unedited)
        if new is not states:
            edit = StateEdit.changes(states, new, dim=2)  # the positions the hook changed, only
            if len(edit):
                t0 = edit.positions()[0] if y is not None else 0  # before it nothing changed: scan from there
                rest = dict(scan_in)
                if t0:
                    rest.update({k: scan_in[k][:, t0:] for k in ("x", "dt", "B", "C")})
                    rest["initial_state"] = states[:, :, t0 - 1]
                    if scan_in.get("write") is not None:
                        rest["write"] = scan_in["write"][:, :, t0:]  # [B, H, P, head_dim, N]
                tail, last = ssd_scan(**rest, return_last_state=True, state_edit=edit.shifted(-t0))
                return (torch.cat([y[:, :t0], tail], 1) if t0 else tail), last
        if y is None:
            return ssd_scan(**scan_in, return_last_state=True)
        return y, (states[:, :, -1] if states.shape[2] else None)

    def step(self, x: Tensor, conv: Tensor, ssm: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One position: x [B, d_model] (normalised), conv [B, conv_dim, K - 1], ssm [B, H, head_dim, N]
        -> (out [B, d_model], new conv, new ssm). Same arithmetic as `forward`; no hooks."""
        cfg = self.cfg
        z, xbc, dt = self._split(self.in_proj(x))
        window = torch.cat([conv, xbc[..., None]], dim=-1)  # [B, conv_dim, K]
        c = (window * self.conv1d.weight[:, 0]).sum(-1)  # depthwise conv at the newest position
        if self.conv1d.bias is not None:
            c = c + self.conv1d.bias
        xs, Bm, Cm = self._split_xbc(F.silu(c))  # [B, H, Dh], [B, G, N], [B, G, N]
        rep = cfg.n_heads // cfg.n_groups
        Bh, Ch = (
            Bm.float().repeat_interleave(rep, dim=1),
            Cm.float().repeat_interleave(rep, dim=1),
        )  # [B, H, N]
        dts = discretize_dt(dt + self.dt_bias, None, True, cfg.dt_limit, torch.float32)  # [B, H]
        A = -torch.exp(self.A_log.float())
        xf = xs.float()
        h = torch.exp(dts * A)[..., None, None] * ssm + (dts[..., None] * xf)[..., None] * Bh[:, :, None, :]
        y = (h * Ch[:, :, None, :]).sum(-1) + self.D.float()[:, None] * xf  # [B, H, Dh]
        y = self.norm(y.reshape(x.shape[0], cfg.d_inner).to(x.dtype), z)
        return self.out_proj(y), window[..., 1:], h


class Mamba2Block(nn.Module):
    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.mixer = Mamba2Mixer(cfg)
        self.hook_resid_pre = Hook("batch pos d_model")  # [batch, pos, d_model]
        self.hook_mixer_in = Hook("batch pos d_model")  # [batch, pos, d_model]
        self.hook_mixer_out = Hook("batch pos d_model")  # [batch, pos, d_model]
        self.hook_resid_post = Hook("batch pos d_model")  # [batch, pos, d_model]

    def forward(
        self, x: Tensor, cache_out: list | None = None, mask: Tensor | None = None, resume=None
    ) -> Tensor:
        """resume: see `Mamba2Mixer.forward` (a forward continued from a recorded state)."""
        x = self.hook_resid_pre(x)
        out = self.hook_mixer_out(self.mixer(self.hook_mixer_in(self.norm(x)), cache_out, mask, resume))
        return self.hook_resid_post(x + out)

    def step(self, x: Tensor, conv: Tensor, ssm: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, d_model] -> (x after this block, new conv, new ssm); see `Mamba2Mixer.step`."""
        out, conv, ssm = self.mixer.step(self.norm(x), conv, ssm)
        return x + out, conv, ssm


@torch.no_grad()
def init_mamba2_mixer(mixer: Mamba2Mixer, cfg: Mamba2Config) -> None:
    """mamba-ssm's Mamba2 initialisation: A uniform in [A_init_min, A_init_max] per head, dt = softplus(dt_bias)
    log-uniform in [dt_min, dt_max], D = 1, zero biases, out_proj / sqrt(n_layers) (rescale_prenorm_residual)."""
    h = cfg.n_heads
    lo, hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
    dt = torch.exp(torch.rand(h) * (hi - lo) + lo).clamp(min=cfg.dt_init_floor)
    mixer.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
    mixer.A_log.copy_(torch.log(torch.empty(h).uniform_(cfg.A_init_min, cfg.A_init_max)))
    mixer.D.fill_(1.0)
    for linear in (mixer.in_proj, mixer.out_proj):
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)
    nn.init.kaiming_uniform_(mixer.out_proj.weight, a=math.sqrt(5))
    if cfg.rescale_prenorm_residual:
        mixer.out_proj.weight /= math.sqrt(cfg.n_layers)


class HookedMamba2(ResumesSSM, HookedModel):
    """Mamba-2 language model with TransformerLens hooks; see the module docstring for hook names and
    the state-patching semantics.

    >>> model = HookedMamba2(Mamba2Config(d_model=64, head_dim=16, d_state=32))
    >>> logits, cache = model.run_with_cache(tokens, names_filter="blocks.0.mixer.hook_ssm_state")
    >>> cache["blocks.0.mixer.hook_ssm_state"].shape  # [batch, head, pos, head_dim, d_state]
    """

    arch: ClassVar[str] = "mamba2"
    config_class: ClassVar[type] = Mamba2Config

    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.hook_embed = Hook("batch pos d_model")  # [batch, pos, d_model]
        self.blocks = nn.ModuleList([Mamba2Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_final = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False)
        nn.init.normal_(self.embed.weight, std=cfg.init_std)
        for block in self.blocks:
            init_mamba2_mixer(block.mixer, cfg)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.setup()

    def forward(
        self,
        tokens: Tensor,
        attention_mask: Tensor | None = None,
        return_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> Tensor | tuple[Tensor, Mamba2Cache]:
        """tokens [B, P] -> logits [B, P, d_vocab] (and, with return_cache, the state after the last token).

        logits_to_keep > 0: logits of the last `logits_to_keep` positions only (as Hugging Face's).
        attention_mask [B, P] (1 = token, 0 = left padding): the state stays zero through the padding.
        """
        return ssm_lm_forward(self, tokens, attention_mask, return_cache, logits_to_keep, Mamba2Cache)

    # ---- recurrent mode -------------------------------------------------------------------------
    def init_cache(self, batch: int) -> Mamba2Cache:
        """Zeros: conv [n_layers, B, conv_dim, d_conv - 1], ssm [n_layers, B, H, head_dim, N]."""
        cfg, p = self.cfg, next(self.parameters())
        conv = torch.zeros(cfg.n_layers, batch, cfg.conv_dim, cfg.d_conv - 1, dtype=p.dtype, device=p.device)
        ssm = torch.zeros(
            cfg.n_layers, batch, cfg.n_heads, cfg.head_dim, cfg.d_state, dtype=torch.float32, device=p.device
        )
        return Mamba2Cache(conv=conv, ssm=ssm)

    def step(self, token: Tensor, cache: Mamba2Cache) -> tuple[Tensor, Mamba2Cache]:
        """One token per sequence: token [B] -> logits [B, d_vocab] and the new cache (the old one is kept)."""
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
            x, conv, ssm = block.step(x, cache.conv[layer], cache.ssm[layer])
            convs.append(conv)
            ssms.append(ssm)
        logits = self.lm_head(self.ln_final(x)).float()
        return logits, Mamba2Cache(
            conv=torch.stack(convs), ssm=torch.stack(ssms), n_tokens=cache.n_tokens + 1
        )

    def prefill(self, prompt: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Mamba2Cache]:
        """For `generate_greedy`: the prompt in one pass -> (last logits [B, d_vocab], recurrent state)."""
        logits, cache = self(prompt, attention_mask, return_cache=True, logits_to_keep=1)
        return logits[:, -1], cache

    def decode_step(self, token: Tensor, cache: Mamba2Cache) -> tuple[Tensor, Mamba2Cache]:
        """For `generate_greedy`: one token per sequence in step mode (O(1) memory, no hooks)."""
        return self.step(token, cache)

    # ---- analysis helpers -----------------------------------------------------------------------
    def ssm_attention(self, tokens: Tensor) -> dict[int, Tensor]:
        """The exact hidden attention matrix of every layer, {layer: [B, H, P(t), P(s)]} as the hybrid's
        (`interp.models.ssd.layer_attention`; the head detectors' patterns are |M| / row sum)."""
        return layer_attention(self, tokens, range(self.cfg.n_layers))

    def state_size(self) -> StateSize:
        cfg = self.cfg
        per_layer = cfg.d_inner * cfg.d_state + cfg.conv_dim * (cfg.d_conv - 1)  # SSM state + conv cache
        return StateSize(tuple(per_layer for _ in range(cfg.n_layers)))
