"""Mamba-2's SSD scan (state-space duality, Dao & Gu 2024), in the layout of mamba-ssm's
`mamba_chunk_scan_combined` (positions before heads).

For every batch b, head h (of H, in G groups of H/G heads that share B and C), head channel p and state
coordinate n (shapes: x [B, L, H, P]; dt [B, L, H]; A [H]; B, C [B, L, G, N]; D [H]):

    dt_t  = clamp(softplus(dt_t + dt_bias), *dt_limit)         (softplus when dt_softplus)
    h_t   = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T          h_0 = initial_state or 0, h: [B, H, P, N]
    y_t   = h_t C_t + D * x_t                                   y: [B, L, H, P]

The decay exp(dt_t * A[h]) is one scalar per head and position (Mamba-1 has one per channel and state
coordinate). That is what makes the sequence map y = M x exact and cheap to write down (`ssd_attention`):

    M[b, h, t, s] = (C_t . B_s) exp(A[h] (cum_t - cum_s)) dt_s      for s <= t,  cum_t = dt_1 + ... + dt_t

Three implementations, one result:

- `ssd_scan_ref`: a plain loop over positions in float32 (float64 for float64 inputs). Obviously correct
  and slow; every other path is tested against it, in outputs, states and gradients.
- `ssd_scan_chunked`: the fast pure-PyTorch path. Without hooks (training, evaluation) it is the SSD
  chunked form: positions are cut into chunks of `chunk_size` (`auto_chunk_size`: about 64, evened out
  over the length); inside a chunk the output is the masked matrix product `(C B^T * decay) (dt x)`
  (an attention-like [Q, Q] matrix per head: batched matmuls, no time loop), and only the state at each
  chunk boundary is carried over by a short loop over chunks. B and C are multiplied once per *group*,
  not once per head (Hugging Face's fallback repeats them for every head first). This form is one
  autograd node (`_ChunkedScan`) with a hand-written backward that keeps only the inputs, the chunk
  boundary states, the entering states' share of y, X scaled to the chunk end and the [Q, Q] decays;
  autograd through the same steps kept several [B, H, L, Q] tensors a layer and spent most of its time
  building them. When
  per-position states are asked for or edited (`return_states`, `state_edit`, `write`: the hooks
  `hook_ssm_state` / `hook_ssm_write`) it builds the [B, H, L, P, N] states chunk by chunk with the same
  decay matrices (autograd through them), and from an edited position on runs one position at a time,
  so an edit at t is the state that t + 1 builds on (and earlier positions are untouched).
- `ssd_scan_mamba_ssm`: mamba-ssm's fused Triton kernel `mamba_chunk_scan_combined`, which `impl="auto"`
  picks on CUDA when mamba-ssm is installed and no per-position states are needed.

Interpretability extras, as in `interp.models.scan`: `state_edit` [B, H, L, P, N] (NaN = keep) replaces
entries of h_t *inside* the recurrence, `write` [B, H, L, P, N] replaces the write term dt * x B^T.
"""

from __future__ import annotations

from bisect import bisect_left

import torch
import torch.nn.functional as F
from torch import Tensor

from interp.models.state_edit import StateEdit, as_state_edit

IMPLS = ("auto", "reference", "chunked", "mamba_ssm")
MAMBA_SSM_CHUNK = 256  # mamba-ssm's Mamba2 default chunk_size
DEFAULT_CHUNK = (
    64  # target positions per chunk on CPU (benchmarks/mamba2_scan.py: 32 and 64 tie, 128 is slower)
)


def auto_chunk_size(length: int, target: int = DEFAULT_CHUNK) -> int:
    """Positions per chunk for an input of `length`: about `target`, evened out over the chunks so that
    the padding is less than one position per chunk (100 positions: 2 chunks of 50, not 2 of 64)."""
    chunks = max(1, -(-length // target))
    return max(1, -(-length // chunks))


# ---------------------------------------------------------------------------------------------
# Argument checks and the shared pre-processing
# ---------------------------------------------------------------------------------------------
def _check_shapes(x, dt, A, B, C, D, dt_bias, initial_state, state_edit, write) -> None:
    if x.ndim != 4:
        raise ValueError(f"x must be [batch, length, n_heads, head_dim], got shape {tuple(x.shape)}")
    b, length, h, p = x.shape
    if B.ndim != 4 or B.shape[:2] != (b, length):
        raise ValueError(f"B must be [batch={b}, length={length}, n_groups, d_state], got {tuple(B.shape)}")
    g, n = B.shape[2:]
    if h % g:
        raise ValueError(f"n_heads={h} is not divisible by n_groups={g} (B has shape {tuple(B.shape)})")
    expected = {
        "dt": (dt, (b, length, h)),
        "A": (A, (h,)),
        "C": (C, (b, length, g, n)),
        "D": (D, (h,)),
        "dt_bias": (dt_bias, (h,)),
        "initial_state": (initial_state, (b, h, p, n)),
        "write": (write, (b, h, length, p, n)),
    }
    if isinstance(state_edit, StateEdit):
        state_edit.check("state_edit", (b, h, length, p, n))
    else:
        expected["state_edit"] = (state_edit, (b, h, length, p, n))
    for name, (t, shape) in expected.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(
                f"{name} must have shape {list(shape)} to match x {list(x.shape)} and B {list(B.shape)}, "
                f"got {list(t.shape)}"
            )


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def discretize_dt(
    dt: Tensor, dt_bias: Tensor | None, dt_softplus: bool, dt_limit: tuple[float, float | None], dtype
) -> Tensor:
    """dt [B, L, H] -> clamp(softplus(dt + dt_bias), *dt_limit) in `dtype` (limit None = no upper bound)."""
    out = dt.to(dtype)
    if dt_bias is not None:
        out = out + dt_bias.to(dtype)
    if dt_softplus:
        out = F.softplus(out)
    lo, hi = dt_limit
    if lo > 0.0 or hi is not None:
        out = out.clamp(min=lo, max=hi)
    return out


def _heads(t: Tensor, n_heads: int) -> Tensor:
    """[B, L, G, N] -> [B, L, H, N]: head h uses group h // (H / G), as mamba-ssm and Hugging Face do."""
    return t.repeat_interleave(n_heads // t.shape[2], dim=2)


def _exp(t: Tensor) -> Tensor:
    """exp of log decays, clamped to [-80, 80]: exp of very negative numbers (underflow to 0) takes a slow
    path in PyTorch's CPU kernels (5-15x slower, measured); below e^-80 ~ 2e-35 a decay is 0 for every
    purpose, and above e^80 the entry is masked to 0 or would overflow float32 anyway."""
    return t.clamp(-80.0, 80.0).exp()


def _causal_decay(cum: Tensor, inplace: bool = False) -> Tensor:
    """cum [..., Q] (within-chunk cumulative dt*A) -> exp(cum_t - cum_s) for s <= t, else 0: [..., Q, Q].

    inplace: one buffer for every step (only where no autograd graph is built: in `_ChunkedScan`).
    """
    q = cum.shape[-1]
    causal = torch.ones(q, q, dtype=cum.dtype, device=cum.device).tril()
    diff = cum[..., :, None] - cum[..., None, :]
    if inplace:
        return diff.clamp_(-80.0, 80.0).exp_().mul_(causal)
    return _exp(diff) * causal


# ---------------------------------------------------------------------------------------------
# Reference: one position at a time
# ---------------------------------------------------------------------------------------------
def ssd_scan_ref(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = True,
    dt_limit: tuple[float, float | None] = (0.0, None),
    initial_state: Tensor | None = None,
    return_last_state: bool = False,
    return_states: bool = False,
    state_edit: Tensor | None = None,
    write: Tensor | None = None,
):
    """The recurrence as a loop over positions, in float32 (float64 for float64 inputs).

    Same arguments and returns as `ssd_scan`.
    """
    _check_shapes(x, dt, A, B, C, D, dt_bias, initial_state, state_edit, write)
    if isinstance(state_edit, StateEdit):
        state_edit = state_edit.dense(x.shape[1])
    f = _compute_dtype(x)
    b, length, h, p = x.shape
    n = B.shape[-1]
    dtf = discretize_dt(dt, dt_bias, dt_softplus, dt_limit, f)  # [B, L, H]
    xf, Af = x.to(f), A.to(f)
    Bh, Ch = _heads(B.to(f), h), _heads(C.to(f), h)  # [B, L, H, N]
    state = initial_state.to(f) if initial_state is not None else xf.new_zeros(b, h, p, n)  # [B, H, P, N]
    ys, states = [], []
    for t in range(length):
        decay = torch.exp(dtf[:, t] * Af)[..., None, None]  # [B, H, 1, 1]
        if write is not None:
            w = write[:, :, t].to(f)
        else:
            w = (dtf[:, t, :, None] * xf[:, t])[..., None] * Bh[:, t, :, None, :]  # [B, H, P, N]
        state = decay * state + w
        if state_edit is not None:
            e = state_edit[:, :, t].to(f)
            state = torch.where(torch.isnan(e), state, e)
        states.append(state)
        ys.append((state * Ch[:, t, :, None, :]).sum(-1))  # [B, H, P]
    y = torch.stack(ys, dim=1) if length else xf.new_zeros(b, 0, h, p)
    if D is not None:
        y = y + xf * D.to(f)[:, None]
    y = y.to(x.dtype)
    if return_states:
        return y, (torch.stack(states, dim=2) if length else xf.new_zeros(b, h, 0, p, n))
    if return_last_state:
        return y, state
    return y


# ---------------------------------------------------------------------------------------------
# Chunked path
# ---------------------------------------------------------------------------------------------
class _ChunkedScan(torch.autograd.Function):
    """The SSD chunked form as one autograd node with a hand-written backward: one [B, c, H, Q, Q] tensor
    (the decays) is kept and the rest of the intra-chunk matrices recomputed (autograd through the same
    steps kept several of them a layer), and no intermediate tensors of autograd's between the steps.

    forward(x [B, L, H, P], dt [B, L, H] (discretised), A [H], B, C [B, L, G, N], D [H] or None,
    h0 [B, H, P, N], q) -> (y = <C_t, h_t> + D x_t [B, L, H, P], h_L [B, H, P, N]). Positions are padded
    to c * q with dt = 0 (decay 1, write 0). Per chunk, group g and head j (J heads a group; the (j, p)
    columns are folded into one matmul wherever the other operand is the group's B or C):

        X = dt x,  cum = within-chunk cumsum of dt A
        M = (C B^T) * exp(cum_t - cum_s) [s <= t]      y_t = (M X)_t + exp(cum_t) C_t . start + D x_t
        write = sum_s exp(cum_end - cum_s) X_s B_s^T    start_{k+1} = exp(cum_end) start_k + write_k

    Saved for backward: X (head-major and, scaled to the chunk end, group-major), x, dt, B, C, the [Q, Q]
    decays, the states entering each chunk [B, c, H, P, N] and the entering states' contribution to y
    [B, L, H, P] (recomputing them cost more time than their memory). Explicit copies put matmul
    operands in their layout (matmul's own copies of strided operands were 2x slower); elementwise steps
    run in place or write straight into the layout the next step needs.
    """

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, h0, q):
        ctx.set_materialize_grads(False)  # an unused h_L's gradient stays None, not a tensor of zeros
        b, length, h, p = x.shape
        g, n = B.shape[2:]
        j = h // g
        pad = (-length) % q
        if pad:
            x, dt = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(dt, (0, 0, 0, pad))
            B, C = F.pad(B, (0, 0, 0, 0, 0, pad)), F.pad(C, (0, 0, 0, 0, 0, pad))
        c = (length + pad) // q
        cum = (dt * A).view(b, c, q, h).transpose(2, 3).cumsum(-1)  # [b, c, H, Q]
        Xh = x.new_empty(b, c, h, q, p)  # dt x, head-major
        torch.mul(x.view(b, c, q, h, p).transpose(2, 3), dt.view(b, c, q, h, 1).transpose(2, 3), out=Xh)
        Bg = B.view(b, c, q, g, n).transpose(2, 3).contiguous()  # [b, c, G, Q, N]
        Cg = C.view(b, c, q, g, n).transpose(2, 3).contiguous()
        S = (Cg @ Bg.transpose(-1, -2))[:, :, :, None]  # C B^T once per group: [b, c, G, 1, Q, Q]
        decay = _causal_decay(cum, inplace=True)  # [b, c, H, Q, Q], saved: rebuilding it cost more
        y_intra = (decay.view(b, c, g, j, q, q) * S).view(b, c, h, q, q) @ Xh  # [b, c, H, Q, P]
        # each chunk's write to the state at its end, for all the group's heads at once: [J*P, Q] @ [Q, N]
        Xw = _scaled_group_major(Xh, _exp(cum[..., -1:] - cum), g)  # [b, c, G, Q, J*P], saved
        writes = Xw.transpose(-1, -2) @ Bg
        writes = writes.view(b, c, h, p, n)
        chunk_decay = _exp(cum[..., -1])[..., None, None]  # [b, c, H, 1, 1]
        starts = torch.empty_like(writes)  # the state entering each chunk
        if h0 is None:  # no initial state: zeros
            starts[:, 0] = 0
        else:
            starts[:, 0] = h0
        for k in range(c - 1):
            torch.addcmul(writes[:, k], starts[:, k], chunk_decay[:, k], out=starts[:, k + 1])
        last = torch.addcmul(writes[:, -1], starts[:, -1], chunk_decay[:, -1])
        del writes
        # the entering state's contribution exp(cum_t) C_t . start: [Q, N] @ [N, J*P] per group
        y_in = (Cg @ starts.view(b, c, g, j * p, n).transpose(-1, -2)).view(b, c, g, q, j, p)
        y_in = y_in.mul_(_exp(cum).view(b, c, g, j, q).transpose(3, 4)[..., None])
        y_in = y_in.transpose(2, 3).reshape(b, c * q, h, p)  # a view when G = 1
        y = y_in + y_intra.transpose(2, 3).reshape(b, c * q, h, p)
        if D is not None:
            y.addcmul_(x, D[:, None])
        ctx.save_for_backward(Xh, x, dt, A, B, C, D, starts, y_in, decay, Xw)
        ctx.length, ctx.q = length, q
        return (y[:, :length] if pad else y), last

    @staticmethod
    def backward(ctx, dy, dlast):
        Xh, x, dt, A, B, C, D, starts, y_in, decay, Xw = ctx.saved_tensors
        length, q = ctx.length, ctx.q
        b, c, h = Xh.shape[:3]
        p, g, n = Xh.shape[-1], B.shape[2], B.shape[3]
        j = h // g
        if dy is None:  # only h_L was used
            dy = x.new_zeros(b, length, h, p)
        dy = dy.contiguous() if dy.shape[1] == c * q else F.pad(dy, (0, 0, 0, 0, 0, c * q - dy.shape[1]))
        dyh = dy.view(b, c, q, h, p).transpose(2, 3).contiguous()  # [b, c, H, Q, P]
        cum = (dt * A).view(b, c, q, h).transpose(2, 3).cumsum(-1)
        Bg = B.view(b, c, q, g, n).transpose(2, 3).contiguous()
        Cg = C.view(b, c, q, g, n).transpose(2, 3).contiguous()
        # intra-chunk y = M X with M = decay * S
        decay = decay.view(b, c, g, j, q, q)
        S = (Cg @ Bg.transpose(-1, -2))[:, :, :, None]
        dM = (dyh @ Xh.transpose(-1, -2)).view(b, c, g, j, q, q)
        dS = (dM * decay).sum(3)  # [b, c, G, Q, Q]
        M = decay * S
        dXh = M.view(b, c, h, q, q).transpose(-1, -2) @ dyh  # [b, c, H, Q, P]
        R = dM.mul_(M).view(b, c, h, q, q)  # d/d(cum_t - cum_s) of every M entry
        dcum = R.sum(-1) - R.sum(-2)
        del decay, M, dM, R
        dC = dS @ Bg  # [b, c, G, Q, N]
        dB = dS.transpose(-1, -2) @ Cg
        # the entering state's contribution y_in = exp(cum_t) C_t . start
        dcum += (dy * y_in).sum(-1).view(b, c, q, h).transpose(2, 3)
        dyin = dy.new_empty(b, c, g, q, j, p)  # dy exp(cum_t), group-major
        e = _exp(cum).view(b, c, g, j, q).transpose(3, 4)[..., None]
        dyin = torch.mul(dy.view(b, c, q, g, j, p).transpose(2, 3), e, out=dyin).view(b, c, g, q, j * p)
        dC += dyin @ starts.view(b, c, g, j * p, n)  # [Q, J*P] @ [J*P, N]
        dstarts = (dyin.transpose(-1, -2) @ Cg).view(b, c, h, p, n)  # [b, c, G, J*P, N]
        del dyin, dyh
        # start_{k+1} = exp(cum_end_k) start_k + write_k, backwards: dW_k = dL/d write_k = dL/d start_{k+1}
        chunk_decay = _exp(cum[..., -1])[..., None, None]  # [b, c, H, 1, 1]
        dW = torch.empty_like(starts)
        dW[:, -1] = 0 if dlast is None else dlast
        for k in range(c - 1, 0, -1):
            torch.addcmul(dstarts[:, k], dW[:, k], chunk_decay[:, k], out=dW[:, k - 1])
        dh0 = dstarts[:, 0].addcmul_(dW[:, 0], chunk_decay[:, 0]) if ctx.needs_input_grad[6] else None
        del dstarts
        flat = (b * c * h, 1, p * n)
        dot = (dW.view(flat) @ starts.view(flat).transpose(-1, -2)).view(b, c, h)  # <dW_k, start_k>
        dcum[..., -1] += dot * chunk_decay[..., 0, 0]
        # writes = Xw^T B with Xw = X * exp(cum_end - cum_s)
        dW = dW.view(b, c, g, j * p, n)
        to_end = _exp(cum[..., -1:] - cum)[..., None]  # [b, c, H, Q, 1]
        dB += Xw @ dW
        dXw = Bg @ dW.transpose(-1, -2)  # dL/dXw [b, c, G, Q, J*P]
        dw = (dXw * Xw).view(b, c, g, q, j, p).sum(-1).transpose(3, 4).reshape(b, c, h, q)  # dL/d(-cum_s)
        dXh.view(b, c, g, j, q, p).addcmul_(
            dXw.view(b, c, g, q, j, p).transpose(3, 4), to_end.view(b, c, g, j, q, 1)
        )
        dcum -= dw
        dcum[..., -1] += dw.sum(-1)
        # X = dt x and y += D x
        xh = x.view(b, c, q, h, p).transpose(2, 3)
        ddt = (dXh * xh).sum(-1).transpose(2, 3).reshape(b, c * q, h)
        dx = x.new_empty(b, c * q, h, p)
        torch.mul(dXh.transpose(2, 3), dt.view(b, c, q, h, 1), out=dx.view(b, c, q, h, p))
        dD = None
        if D is not None:
            dx.addcmul_(dy, D[:, None])
            dD = (dy * x).sum((0, 1, 3))
        # cum = cumsum(dt A) within each chunk
        da = dcum.flip(-1).cumsum(-1).flip(-1).transpose(2, 3).reshape(b, c * q, h)
        ddt += da * A
        dA = (da * dt).sum((0, 1))
        dB, dC = dB.transpose(2, 3).reshape(b, c * q, g, n), dC.transpose(2, 3).reshape(b, c * q, g, n)
        cut = lambda t: t[:, :length]  # noqa: E731
        return cut(dx), cut(ddt), dA, cut(dB), cut(dC), dD, dh0, None


def _scaled_group_major(t: Tensor, scale: Tensor, g: int) -> Tensor:
    """t [b, c, H, Q, P] * scale [b, c, H, Q] -> [b, c, G, Q, J*P]: a group's heads side by side as matmul
    columns, the product written straight into that layout (a product and then a copy was two passes)."""
    b, c, h, q, p = t.shape
    j = h // g
    out = t.new_empty(b, c, g, q, j, p)
    torch.mul(t.view(b, c, g, j, q, p).transpose(3, 4), scale.view(b, c, g, j, q, 1).transpose(3, 4), out=out)
    return out.view(b, c, g, q, j * p)


def _chunked_factored(xf, dtf, Af, Bf, Cf, Df, h0, q: int) -> tuple[Tensor, Tensor]:
    """The SSD chunked form: (y [B, L, H, P] with the D term, h_L [B, H, P, N]), no per-position states."""
    return _ChunkedScan.apply(xf, dtf, Af, Bf, Cf, Df, h0, q)  # h0 None = zeros


def _chunked_states(xf, dtf, Af, Bf, Cf, h0, q: int, write, edit: StateEdit | None) -> tuple[Tensor, Tensor]:
    """Every state h_t [B, H, L, P, N] and <C_t, h_t> [B, L, H, P], chunk by chunk.

    Within a chunk: h_t = exp(cum_t) h_start + sum_{s <= t} exp(cum_t - cum_s) w_s, one batched matmul.
    From the first edited position of a chunk on it runs position by position, so the edited h_t is
    what h_{t+1} builds on. `write` [B, H, L, P, N] replaces w = dt x B^T; `edit` (time axis 2) the edits.
    """
    b, length, h, p = xf.shape
    n = Bf.shape[-1]
    Bh, Ch = _heads(Bf, h), _heads(Cf, h)  # [B, L, H, N]
    if write is None:  # materialise w_t = dt_t x_t B_t^T: the states are this big anyway
        write = torch.einsum("blhp,blhn->bhlpn", xf * dtf[..., None], Bh)
    a = (dtf * Af).transpose(1, 2)  # [B, H, L]
    state = h0
    chunks = []
    times = edit.positions() if edit is not None else []
    slot = {t: e for e, t in enumerate(times)}  # position -> its index in the edit
    for s0 in range(0, length, q):
        s1 = min(s0 + q, length)
        w = write[:, :, s0:s1]  # [B, H, S, P, N]
        cum = a[:, :, s0:s1].cumsum(-1)  # [B, H, S]
        hs = torch.einsum("bhts,bhspn->bhtpn", _causal_decay(cum), w)
        hs = hs + torch.exp(cum)[..., None, None] * state[:, :, None]
        edited = times[bisect_left(times, s0) : bisect_left(times, s1)]
        if edited:
            # from the first edit on, one position at a time; the positions before it keep the values
            # computed above, bit for bit the unedited run's (so a patch never changes an earlier output)
            first = edited[0] - s0
            state = hs[:, :, first - 1] if first else state
            seq = []
            for t in range(s0 + first, s1):
                state = torch.exp(a[:, :, t])[..., None, None] * state + write[:, :, t]
                if t in slot:
                    e = slot[t]
                    state = torch.where(edit.mask[:, :, e], edit.values[:, :, e], state)
                seq.append(state)
            hs = torch.cat([hs[:, :, :first], torch.stack(seq, dim=2)], dim=2)
        chunks.append(hs)
        state = hs[:, :, -1]
    states = torch.cat(chunks, dim=2) if chunks else xf.new_zeros(b, h, 0, p, n)
    y = torch.einsum("bhlpn,blhn->blhp", states, Ch)
    return y, states


def ssd_scan_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = True,
    dt_limit: tuple[float, float | None] = (0.0, None),
    initial_state: Tensor | None = None,
    return_last_state: bool = False,
    return_states: bool = False,
    state_edit: Tensor | None = None,
    write: Tensor | None = None,
    chunk_size: int | None = None,
):
    """The fast pure-PyTorch path (see the module docstring); same arguments as `ssd_scan`."""
    _check_shapes(x, dt, A, B, C, D, dt_bias, initial_state, state_edit, write)
    q = chunk_size if chunk_size is not None else auto_chunk_size(x.shape[1])
    if not isinstance(q, int) or q < 1:
        raise ValueError(f"chunk_size must be a positive number of positions, got {chunk_size!r}")
    f = _compute_dtype(x)
    b, length, h, p = x.shape
    n = B.shape[-1]
    dtf = discretize_dt(dt, dt_bias, dt_softplus, dt_limit, f)
    xf, Af, Bf, Cf = x.to(f), A.to(f), B.to(f), C.to(f)
    h0 = initial_state.to(f) if initial_state is not None else xf.new_zeros(b, h, p, n)
    if return_states or state_edit is not None or write is not None:
        edit = as_state_edit(state_edit, dim=2)
        wf = write.to(f) if write is not None else None
        y, states = _chunked_states(xf, dtf, Af, Bf, Cf, h0, q, wf, None if edit is None else edit.to(f))
        last = states[:, :, -1] if length else h0
    elif length:  # the fast path: D's term is added inside
        h_in = initial_state.to(f) if initial_state is not None else None
        y, last = _chunked_factored(xf, dtf, Af, Bf, Cf, D.to(f) if D is not None else None, h_in, q)
        return (y.to(x.dtype), last) if return_last_state else y.to(x.dtype)
    else:
        y, last, states = xf.new_zeros(b, 0, h, p), h0, None
    if D is not None:
        y = y + xf * D.to(f)[:, None]
    y = y.to(x.dtype)
    if return_states:
        return y, states
    if return_last_state:
        return y, last
    return y


# ---------------------------------------------------------------------------------------------
# Dispatch and the hidden attention matrix
# ---------------------------------------------------------------------------------------------
def ssd_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = True,
    dt_limit: tuple[float, float | None] = (0.0, None),
    initial_state: Tensor | None = None,
    return_last_state: bool = False,
    return_states: bool = False,
    state_edit: Tensor | None = None,
    write: Tensor | None = None,
    impl: str = "auto",
    chunk_size: int | None = None,
):
    """Mamba-2 SSD scan.

    x: [B, L, H, P]; dt: [B, L, H] (before dt_bias and softplus); A: [H] (negative, = -exp(A_log));
    B, C: [B, L, G, N] with G dividing H; D, dt_bias: [H]; dt_limit: (min, max or None) after softplus;
    initial_state: [B, H, P, N] (default zeros).
    return_last_state: also return h_L [B, H, P, N].
    return_states: also return every state h_t as [B, H, L, P, N] (instead of the last one).
    state_edit: [B, H, L, P, N], NaN except where h_t is replaced; later positions see the edit. Or a
        `StateEdit` (the edited positions only: what the mixer passes, much cheaper for a few).
    write: [B, H, L, P, N] used instead of the write term dt * x B^T.
    impl: "reference" | "chunked" | "mamba_ssm" (mamba-ssm's Triton kernel `mamba_chunk_scan_combined`:
    CUDA tensors, mamba-ssm installed, no per-position states or edits) | "auto" (= "mamba_ssm" where it
    applies, else "chunked"). Returns y [B, L, H, P] in x's dtype, or (y, last) / (y, states).
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown SSD scan impl {impl!r}; allowed: {', '.join(IMPLS)}")
    args = (x, dt, A, B, C, D, dt_bias, dt_softplus, dt_limit, initial_state)
    extras = dict(
        return_last_state=return_last_state, return_states=return_states, state_edit=state_edit, write=write
    )
    per_position = return_states or state_edit is not None or write is not None
    if impl == "mamba_ssm" or (impl == "auto" and x.is_cuda and not per_position and _mamba_ssm_kernel()):
        if per_position:
            raise ValueError(
                "impl='mamba_ssm' returns no per-position states and takes no state edits or writes "
                "(return_states / state_edit / write); use impl='chunked' or 'auto' for those"
            )
        _check_shapes(x, dt, A, B, C, D, dt_bias, initial_state, None, None)
        return ssd_scan_mamba_ssm(*args, return_last_state=return_last_state, chunk_size=chunk_size)
    if impl == "reference":
        return ssd_scan_ref(*args, **extras)
    return ssd_scan_chunked(*args, **extras, chunk_size=chunk_size)


def _mamba_ssm_kernel():
    """mamba-ssm's `mamba_chunk_scan_combined`, or None when mamba-ssm (or its Triton) is not installed."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError:
        return None
    return mamba_chunk_scan_combined


def ssd_scan_mamba_ssm(
    x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=True, dt_limit=(0.0, None), initial_state=None,
    return_last_state=False, chunk_size=None,
):  # fmt: skip
    """The scan by mamba-ssm's fused Triton kernel (forward and backward), the layout of `ssd_scan`.

    Only on CUDA with mamba-ssm installed; it has no per-position states, so the state hooks use the
    chunked path. Measured against the reference only where a GPU is available (tests/test_mamba2.py).
    """
    kernel = _mamba_ssm_kernel()
    if kernel is None or not x.is_cuda:
        raise ValueError(
            "impl='mamba_ssm' needs CUDA tensors and mamba-ssm installed (pip install mamba-ssm); got "
            f"{x.device} tensors, mamba-ssm {'installed' if kernel else 'not installed'}; "
            f"allowed elsewhere: {', '.join(i for i in IMPLS if i != 'mamba_ssm')}"
        )
    lo, hi = dt_limit
    out = kernel(
        x, dt, A, B, C, chunk_size or MAMBA_SSM_CHUNK, D=D, dt_bias=dt_bias, initial_states=initial_state,
        dt_softplus=dt_softplus, dt_limit=(lo, float("inf") if hi is None else hi),
        return_final_states=return_last_state,
    )  # fmt: skip
    return tuple(out) if return_last_state else out


def ssd_attention(dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """The SSD sequence map M [B, H, L(t), L(s)] with y_t = sum_s M[t, s] x_s + D x_t (module docstring).

    dt: [B, L, H] *discretised* (after dt_bias, softplus and clamping); A: [H]; B, C: [B, L, G, N].
    Entries with s > t are 0. Exact: Mamba-2's decay is a scalar per head, so M is the whole layer map
    from the scan input x to its output, for every head channel p alike. Memory: B*H*L*L numbers.
    """
    f = _compute_dtype(dt)
    h = dt.shape[-1]
    dtf = dt.to(f)
    cum = (dtf * A.to(f)).cumsum(1).transpose(1, 2)  # [B, H, L]
    scores = torch.einsum("btgn,bsgn->bgts", C.to(f), B.to(f))  # [B, G, L, L]
    scores = scores.repeat_interleave(h // B.shape[2], dim=1)  # [B, H, L, L]
    return scores * _causal_decay(cum) * dtf.transpose(1, 2)[:, :, None, :]


@torch.no_grad()
def layer_attention(model, tokens: Tensor, layers) -> dict[int, Tensor]:
    """{layer: M [B, H, P(t), P(s)]}: `ssd_attention` of the Mamba-2 mixers `model.blocks[layer].mixer`,
    from one forward that caches their `hook_ssm_dt`, `hook_B` and `hook_C` (HookedMamba2 and
    HookedHybrid's `ssm_attention`). y_t = sum_s M[t, s] x_s + D x_t for each head's scan input x
    (`hook_ssm_in`) and output y (`hook_scan_out`); rows are not normalised."""
    layers = list(layers)
    names = [f"blocks.{layer}.mixer.hook_{h}" for layer in layers for h in ("ssm_dt", "B", "C")]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    out = {}
    for layer in layers:
        mixer, pre = model.blocks[layer].mixer, f"blocks.{layer}.mixer.hook_"
        dt = discretize_dt(cache[pre + "ssm_dt"], None, True, mixer.cfg.dt_limit, torch.float32)
        out[layer] = ssd_attention(dt, -torch.exp(mixer.A_log.float()), cache[pre + "B"], cache[pre + "C"])
    return out
