"""Mamba-1's selective scan (S6) with mamba-ssm's `selective_scan_fn` signature and layout.

For every batch b, channel d and state coordinate n (shapes: u, delta [B, D, L]; A [D, N];
B, C [B, N, L]; D [D]; z [B, D, L]):

    dt_t   = softplus(delta_t + delta_bias)                       (when delta_softplus)
    h_t    = exp(dt_t * A) * h_{t-1} + dt_t * u_t * B_t            h_{-1} = initial_state (0), [B, D, N]
    y_t    = <C_t, h_t> + D * u_t
    out_t  = y_t * silu(z_t)                                       (when z is given)

Three implementations, one result:

- `selective_scan_ref`: a plain loop over positions in float32 (float64 for float64 inputs). Obviously
  correct and slow; every other path is tested against it.
- `selective_scan_chunked`: the fast CPU path (any device, pure PyTorch). The sequence is cut into
  chunks of `chunk_size` positions; per chunk, the discretised decay exp(dt*A) and write dt*u*B are
  built for all positions at once as `[B, chunk, D, N]` tensors, the recurrence runs over the chunk
  with one fused multiply-add per position, and the readout <C, h> is one batched matmul. It never
  exponentiates a positive number (every factor exp(dt*A) lies in [0, 1]), so it is as stable as the
  reference. A custom autograd function keeps memory small: the forward pass saves only its inputs
  and the state entering each chunk (`B*D*N*L/chunk` numbers); the backward pass recomputes a chunk's
  states and runs the adjoint recurrence over it, last chunk first. Peak memory is a few
  `[B, chunk, D, N]` tensors instead of the `[B, D, L, N]` tensors that the Hugging Face and mamba.py
  fallbacks keep for autograd.
- the `mamba-ssm` CUDA kernel, when installed (an optional extra, never needed to import interp).

`impl="auto"` picks the CUDA kernel exactly when `mamba_ssm` imports, the tensors are on a CUDA device,
and nothing asks for per-position states, edits them or sets the state before position 0
(`return_states`, `state_edit`, `write`, `initial_state` are all unset); otherwise it runs the chunked
path.

Two interpretability extras (not in mamba-ssm): `state_edit` replaces chosen entries of h_t *inside*
the recurrence, so every later state and output sees the edit (activation patching of the state), and
`write` replaces the whole write term dt*u*B by a given tensor (patching `hook_ssm_write`).
`initial_state` [B, D, N] is the state before position 0 (zero by default): a scan over [0, P) equals
a scan over [0, t) followed by one over [t, P) started from the state at t - 1, which is how a
patched forward resumes from a recorded state (`interp.analysis.patching.reuse`). The mamba-ssm
kernel takes no initial state.
"""

from __future__ import annotations

import functools
from bisect import bisect_left
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from interp.models.state_edit import StateEdit, as_state_edit

IMPLS = ("auto", "reference", "chunked", "cuda")
_LOG2_E = 1.4426950408889634  # exp(x) = exp2(x * log2(e))
DEFAULT_CHUNK = None  # None: pick from the problem size (see `auto_chunk_size`)


@functools.cache
def cuda_selective_scan_fn() -> Callable | None:
    """mamba-ssm's fused CUDA `selective_scan_fn`, or None when mamba-ssm is not installed/usable."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except (ImportError, OSError):  # OSError: installed, but its CUDA libraries do not load
        return None
    return selective_scan_fn


def auto_chunk_size(batch: int, d_inner: int, d_state: int) -> int:
    """Chunk length whose `[chunk, B, N, D]` working tensors hold about 2**19 numbers (2 MiB in fp32).

    Longer chunks mean fewer Python-level tensor operations; shorter ones keep the working set in
    the CPU caches. Measured on CPU: 8 positions at batch 16, d_inner 256, d_state 16 (chunks of 4
    to 16 are within 20% of each other); tiny models get long chunks.
    """
    per_position = max(1, batch * d_inner * d_state)
    return int(min(256, max(4, 2**19 // per_position)))


# ---------------------------------------------------------------------------------------------
# Argument checks and the shared pre/post-processing
# ---------------------------------------------------------------------------------------------
def _check_shapes(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D, z, state_edit, write, initial_state=None
) -> None:
    if u.ndim != 3:
        raise ValueError(f"u must be [batch, d_inner, length], got shape {tuple(u.shape)}")
    b, d, length = u.shape
    if A.ndim != 2 or A.shape[0] != d:
        raise ValueError(f"A must be [d_inner={d}, d_state], got shape {tuple(A.shape)}")
    n = A.shape[1]
    expected = {
        "delta": (delta, (b, d, length)),
        "B": (B, (b, n, length)),
        "C": (C, (b, n, length)),
        "D": (D, (d,)),
        "z": (z, (b, d, length)),
        "write": (write, (b, d, length, n)),
        "initial_state": (initial_state, (b, d, n)),
    }
    if isinstance(state_edit, StateEdit):
        state_edit.check("state_edit", (b, d, length, n))
    else:
        expected["state_edit"] = (state_edit, (b, d, length, n))
    for name, (t, shape) in expected.items():
        if t is not None and tuple(t.shape) != shape:
            note = " (only input-dependent B and C of shape [batch, d_state, length] are supported)"
            raise ValueError(
                f"{name} must have shape {list(shape)} to match u {list(u.shape)} and A {list(A.shape)}, "
                f"got {list(t.shape)}{note if name in ('B', 'C') else ''}"
            )


def _compute_dtype(u: Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _discretize_dt(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool, dtype) -> Tensor:
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    return F.softplus(dt) if delta_softplus else dt


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """y [B, D, L] (compute dtype) -> (y + D*u) * silu(z), in u's dtype."""
    if D is not None:
        y = y + u.to(y.dtype) * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(u.dtype)


# ---------------------------------------------------------------------------------------------
# Reference: one position at a time
# ---------------------------------------------------------------------------------------------
def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
    return_last_state: bool = False,
    return_states: bool = False,
    state_edit: Tensor | None = None,
    write: Tensor | None = None,
    initial_state: Tensor | None = None,
):
    """The recurrence as a loop over positions, in float32 (float64 for float64 inputs).

    Same arguments and returns as `selective_scan`. `state_edit` [B, D, L, N] holds replacement
    values for h_t, NaN where h_t keeps its computed value (or a `StateEdit`); `write` [B, D, L, N]
    replaces dt*u*B; `initial_state` [B, D, N] is h_{-1}.
    """
    _check_shapes(u, delta, A, B, C, D, z, state_edit, write, initial_state)
    if isinstance(state_edit, StateEdit):
        state_edit = state_edit.dense(u.shape[-1])
    f = _compute_dtype(u)
    dt = _discretize_dt(delta, delta_bias, delta_softplus, f)  # [B, D, L]
    uf, Af, Bf, Cf = u.to(f), A.to(f), B.to(f), C.to(f)
    b, d, length = u.shape
    h = uf.new_zeros(b, d, A.shape[1]) if initial_state is None else initial_state.to(f)  # [B, D, N]
    ys, states = [], []
    for t in range(length):
        decay = torch.exp(dt[:, :, t, None] * Af)  # [B, D, N]
        if write is not None:
            w = write[:, :, t].to(f)
        else:
            w = dt[:, :, t, None] * uf[:, :, t, None] * Bf[:, None, :, t]
        h = decay * h + w
        if state_edit is not None:
            e = state_edit[:, :, t].to(f)
            h = torch.where(torch.isnan(e), h, e)
        states.append(h)
        ys.append((h * Cf[:, None, :, t]).sum(-1))  # [B, D]
    y = torch.stack(ys, dim=-1) if length else uf.new_zeros(b, d, 0)
    out = _finish(y, u, D, z)
    if return_states:
        return out, (torch.stack(states, dim=2) if length else uf.new_zeros(b, d, 0, A.shape[1]))
    if return_last_state:
        return out, h
    return out


# ---------------------------------------------------------------------------------------------
# Chunked CPU path
# ---------------------------------------------------------------------------------------------
def _edits_in(times: list[int], s0: int, s1: int, device) -> tuple[slice, Tensor | None]:
    """The edits (at ascending `times`) among positions [s0, s1): their slice of the edit list and their
    positions within the chunk (None when there are none)."""
    e0, e1 = bisect_left(times, s0), bisect_left(times, s1)
    return slice(e0, e1), (torch.tensor(times[e0:e1], device=device) - s0 if e1 > e0 else None)


def _chunk_terms(dt, u, A2, Bm, s0, s1, edits, write):
    """Decay and write of positions [s0, s1), both [S, B, N, D], from time-major inputs [L, B, ...].

    decay = exp(dt * A) = exp2(dt * A * log2(e)): `A2` holds A * log2(e) as [N, D] (exp2 is several
    times faster than exp on CPU). edits: (times, mask [E, B, N, D], values [E, B, N, D]) or None; an
    edited entry gets decay 0 and write = the edit value, so the recurrence sets h_t to it.
    """
    decay = torch.mul(dt[s0:s1, :, None, :], A2).exp2_()  # [S, B, N, D], every entry in [0, 1]
    if write is not None:
        # a contiguous copy: the scan may run in place on it, and the readout views it as a matrix
        w = write[s0:s1].to(decay.dtype).clone(memory_format=torch.contiguous_format)
    else:
        w = (dt[s0:s1] * u[s0:s1])[:, :, None, :] * Bm[s0:s1, :, :, None]  # [S, B, N, D]
    if edits is not None:
        times, mask, val = edits
        at, idx = _edits_in(times, s0, s1, decay.device)
        if idx is not None:
            decay[idx] = decay[idx].masked_fill_(mask[at], 0.0)
            w[idx] = torch.where(mask[at], val[at].to(w.dtype), w[idx])
    return decay, w


def _run_chunk(decay: Tensor, w: Tensor, h0: Tensor, out: Tensor) -> Tensor:
    """out[k] = decay[k] * out[k-1] + w[k] for k in chunk order (out[-1] := h0); returns out[-1]."""
    if out.data_ptr() != w.data_ptr():
        out.copy_(w)
    h = h0
    for k in range(out.shape[0]):
        out[k].addcmul_(decay[k], h)
        h = out[k]
    return h


def _readout(cm: Tensor, hs: Tensor) -> Tensor:
    """<C_t, h_t> for every (t, b): cm [S, B, N], hs [S, B, N, D] (contiguous) -> [S, B, D]."""
    s, b, n, d = hs.shape
    return torch.bmm(cm.reshape(s * b, 1, n), hs.reshape(s * b, n, d)).view(s, b, d)


class _ChunkedScan(torch.autograd.Function):
    """The linear recurrence and its readout, on time-major inputs.

    forward(dt [L,B,D], u [L,B,D], A [D,N], Bm [L,B,N], Cm [L,B,N], mask [E,B,N,D] bool | None,
            val [E,B,N,D] | None, write [L,B,N,D] | None, h0 [B,N,D] | None, chunk, want_states, times)
        -> y [L,B,D] (= <C_t, h_t>), states [L,B,N,D] (empty unless want_states), last state [B,N,D]

    mask/val edit the states at the E ascending positions `times` (a time-major `StateEdit`).

    h0 is the state before position 0 (None: zero); its gradient is the adjoint carried past
    position 0.

    The state is laid out [N, D] (channel innermost) so that every broadcast in the chunk
    arithmetic runs along a contiguous row of d_inner numbers.
    """

    @staticmethod
    def forward(ctx, dt, u, A, Bm, Cm, mask, val, write, h0, chunk: int, want_states: bool, times=()):
        length, b, d = u.shape
        edits = None if mask is None else (times, mask, val)
        n = A.shape[1]
        A2 = (A.T * _LOG2_E).contiguous()  # [N, D]
        h = u.new_zeros(b, n, d) if h0 is None else h0.clone()  # a copy: never return an input
        y = u.new_empty(length, b, d)
        states = u.new_empty(length, b, n, d) if want_states else u.new_empty(0)
        starts = []  # the state entering each chunk, [B, N, D] each
        for s0 in range(0, length, chunk):
            s1 = min(s0 + chunk, length)
            starts.append(h)
            decay, w = _chunk_terms(dt, u, A2, Bm, s0, s1, edits, write)
            hs = states[s0:s1] if want_states else w  # without states, the scan overwrites w in place
            h = _run_chunk(decay, w, h, hs)
            y[s0:s1] = _readout(Cm[s0:s1], hs)
            h = h.clone()  # a copy, so `starts` does not keep this chunk's [S, B, N, D] buffer alive
        starts = torch.stack(starts) if starts else u.new_zeros(0, b, n, d)  # [n_chunks, B, N, D]
        ctx.save_for_backward(dt, u, A, Bm, Cm, mask, val, write, starts)
        ctx.chunk, ctx.times = chunk, times
        ctx.set_materialize_grads(False)  # unused outputs give None, not [L, B, N, D] of zeros
        return y, states, h

    @staticmethod
    def backward(ctx, gy, gstates, glast):
        dt, u, A, Bm, Cm, mask, val, write, starts = ctx.saved_tensors
        chunk, times = ctx.chunk, ctx.times
        edits = None if mask is None else (times, mask, val)
        gy = gy.contiguous() if gy is not None else None  # e.g. a stride-0 gradient from .sum()
        length, b, d = u.shape
        n = A.shape[1]
        need = ctx.needs_input_grad
        A2 = (A.T * _LOG2_E).contiguous()  # [N, D]
        At = A.T.contiguous()  # [N, D]
        g_dt, g_u = torch.zeros_like(dt), torch.zeros_like(u)
        g_At = torch.zeros_like(At)  # [N, D]
        g_B, g_C = torch.zeros_like(Bm), torch.zeros_like(Cm)
        g_val = torch.zeros_like(val) if val is not None and need[6] else None
        g_write = torch.zeros_like(write) if write is not None and need[7] else None
        has_gstates = gstates is not None and gstates.numel() > 0
        # carry = d(loss)/d(h_{s1-1}) through positions >= s1, i.e. decay_{s1} * gh_{s1}
        carry = glast.clone() if glast is not None else u.new_zeros(b, n, d)
        chunk_starts = list(range(0, length, chunk))
        for c in reversed(range(len(chunk_starts))):
            s0 = chunk_starts[c]
            s1 = min(s0 + chunk, length)
            decay, w = _chunk_terms(dt, u, A2, Bm, s0, s1, edits, write)
            hs = torch.empty_like(w)
            _run_chunk(decay, w, starts[c], hs)  # recompute this chunk's states, [S, B, N, D]
            gy_c = gy[s0:s1] if gy is not None else u.new_zeros(s1 - s0, b, d)  # [S, B, D]
            # adjoint recurrence, backwards: gh_t = C_t gy_t (+ gstates_t) + decay_{t+1} gh_{t+1}
            gh = (gy_c[:, :, None, :] * Cm[s0:s1, :, :, None]).contiguous()  # [S, B, N, D]
            if has_gstates:
                gh += gstates[s0:s1]
            gh[-1] += carry
            for k in range(s1 - s0 - 2, -1, -1):
                gh[k].addcmul_(decay[k + 1], gh[k + 1])
            carry = decay[0] * gh[0]
            # readout y_t = <C_t, h_t>:  dC_t[n] = sum_d gy_t[d] h_t[n, d]
            g_C[s0:s1] = torch.linalg.vecdot(hs, gy_c[:, :, None, :])
            # decay: h_t = exp(dt_t A) h_{t-1} + w_t, so d/d(dt_t A) = gh * decay * h_{t-1} = gh * (h_t - w_t)
            x = hs.sub_(w).mul_(gh)  # [S, B, N, D]; zero where edited (there h_t = w_t)
            g_dt[s0:s1] = torch.linalg.vecdot(x, At, dim=-2)  # sum_n x * A
            g_At += (x * dt[s0:s1, :, None, :]).sum((0, 1))
            # write: w_t = dt_t u_t B_t (unless replaced by `write` or an edit)
            at, idx = _edits_in(times, s0, s1, gh.device) if edits else (None, None)
            if idx is not None:
                if g_val is not None:
                    g_val[at] = gh[idx] * mask[at]
                gh[idx] = gh[idx].masked_fill(mask[at], 0.0)
            if write is not None:
                if g_write is not None:
                    g_write[s0:s1] = gh
                continue
            g_dtu = _readout(Bm[s0:s1], gh)  # d(loss)/d(dt_t u_t) = <B_t, gh_t>, [S, B, D]
            g_dt[s0:s1] += g_dtu * u[s0:s1]
            g_u[s0:s1] = g_dtu * dt[s0:s1]
            g_B[s0:s1] = torch.linalg.vecdot(gh, (dt[s0:s1] * u[s0:s1])[:, :, None, :])  # [S, B, N]
        g_h0 = carry if need[8] else None  # d(loss)/d(h_{-1}) = decay_0 * gh_0 (+ glast when L = 0)
        return g_dt, g_u, g_At.T, g_B, g_C, None, g_val, g_write, g_h0, None, None, None


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
    return_last_state: bool = False,
    return_states: bool = False,
    state_edit: Tensor | None = None,
    write: Tensor | None = None,
    chunk_size: int | None = DEFAULT_CHUNK,
    initial_state: Tensor | None = None,
):
    """The fast pure-PyTorch path (see the module docstring); same arguments as `selective_scan`."""
    _check_shapes(u, delta, A, B, C, D, z, state_edit, write, initial_state)
    f = _compute_dtype(u)
    b, d, length = u.shape
    n = A.shape[1]
    chunk = chunk_size or auto_chunk_size(b, d, n)
    if chunk < 1:
        raise ValueError(f"chunk_size must be a positive number of positions, got {chunk_size}")
    # time-major copies: [L, B, D] and [L, B, N] (small: no d_state factor)
    dt = _discretize_dt(delta, delta_bias, delta_softplus, f).permute(2, 0, 1).contiguous()
    ut = u.to(f).permute(2, 0, 1).contiguous()
    Bt, Ct = B.to(f).permute(2, 0, 1).contiguous(), C.to(f).permute(2, 0, 1).contiguous()
    mask = val = None
    times = []
    if state_edit is not None:  # only the edited positions, time-major: [E, B, N, D] views
        edit = as_state_edit(state_edit, dim=2).moved(2, 0, 3, 1)
        times, mask, val = edit.positions(), edit.mask, edit.values
    wt = write.permute(2, 0, 3, 1) if write is not None else None  # [L, B, N, D] view
    h0 = initial_state.to(f).transpose(1, 2) if initial_state is not None else None  # [B, N, D] view
    y, states, last = _ChunkedScan.apply(
        dt, ut, A.to(f), Bt, Ct, mask, val, wt, h0, chunk, return_states, times
    )
    out = _finish(y.permute(1, 2, 0), u, D, z)
    if return_states:
        return out, states.permute(1, 3, 0, 2)  # [B, D, L, N] view of the time-major buffer
    if return_last_state:
        return out, last.transpose(1, 2)  # [B, D, N]
    return out


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------
def uses_cuda_kernel(
    u: Tensor, impl: str = "auto", return_states=False, state_edit=None, write=None, initial_state=None
) -> bool:
    """Whether `selective_scan` with these arguments runs the mamba-ssm kernel (which can return only
    the last state, and takes no edits and no initial state)."""
    plain = not return_states and state_edit is None and write is None and initial_state is None
    return impl in ("auto", "cuda") and u.is_cuda and plain and cuda_selective_scan_fn() is not None


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
    return_last_state: bool = False,
    return_states: bool = False,
    impl: str = "auto",
    state_edit: Tensor | None = None,
    write: Tensor | None = None,
    chunk_size: int | None = DEFAULT_CHUNK,
    initial_state: Tensor | None = None,
):
    """Mamba-1 selective scan (layout of mamba-ssm's `selective_scan_fn`).

    u, delta: [B, D, L]; A: [D, N] (negative, = -exp(A_log)); B, C: [B, N, L]; D: [D]; z: [B, D, L];
    delta_bias: [D].
    return_last_state: also return h_L [B, D, N] (as mamba-ssm does).
    return_states: also return every state h_t as [B, D, L, N] (instead of the last one).
    state_edit: [B, D, L, N], NaN except where h_t is to be replaced; later positions see the edit. Or
        a `StateEdit` (the edited positions only: what the mixers pass, much cheaper for a few).
    write: [B, D, L, N] used instead of the write term dt*u*B.
    initial_state: [B, D, N], the state before position 0 (default zero); differentiable.
    impl: "auto" | "reference" | "chunked" | "cuda" (see the module docstring for what auto picks).
    Returns out [B, D, L] in u's dtype, or (out, last_state) / (out, states).
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown selective-scan impl {impl!r}; allowed: {', '.join(IMPLS)}")
    kernel = uses_cuda_kernel(u, impl, return_states, state_edit, write, initial_state)
    if impl == "cuda" and not kernel:
        why = (
            "mamba-ssm is not installed (pip install 'interp[cuda]')"
            if cuda_selective_scan_fn() is None
            else "the tensors are not on a CUDA device"
            if not u.is_cuda
            else "the CUDA kernel cannot return per-position states, apply state/write edits or start "
            "from an initial state"
        )
        raise ValueError(f"impl='cuda' is not possible here: {why}; use impl='auto' or 'chunked'")
    if kernel:
        return cuda_selective_scan_fn()(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
        )
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    extras = dict(
        return_last_state=return_last_state,
        return_states=return_states,
        state_edit=state_edit,
        write=write,
        initial_state=initial_state,
    )
    if impl == "reference":
        return selective_scan_ref(*args, **extras)
    return selective_scan_chunked(*args, **extras, chunk_size=chunk_size)
