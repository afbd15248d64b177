"""The Mamba mixers' depthwise convolution, computed in the layout in_proj produces.

Both Mamba generations convolve each channel over the last d_conv positions: mamba-ssm and Hugging Face
use `nn.Conv1d(C, C, K, groups=C, padding=K - 1)` on x.transpose(1, 2), then keep the first P outputs.
On the CPU that transposes [B, P, C] to channels-first and back around a convolution kernel whose
backward is slow for this shape (K = 4, thousands of channels). `depthwise_conv` computes the same
convolution as K shifted multiply-adds along positions of the [B, P, C] tensor, with a hand-written
backward, and returns it in the hook's channels-first layout as a view (the mixers make it contiguous
when `hook_conv` is hooked, so a hook may `.view` it). Elsewhere (CUDA, half precision) it is `F.conv1d`,
the reference it is tested against (tests/test_mamba.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def depthwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None, window: Tensor | None = None) -> Tensor:
    """x [B, P, C], weight [C, 1, K], bias [C] or None -> [B, C, P + K - 1], as nn.Conv1d(C, C, K,
    groups=C, padding=K - 1) of x.transpose(1, 2); window [B, C, K - 1] (the K - 1 inputs before x's first,
    when a forward continues a sequence) replaces the left zero padding."""
    _check_shapes(x, weight, bias, window)
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return reference_conv(x, weight, bias, window)  # CUDA kernels; half precision accumulates in float32
    return _DepthwiseConv.apply(x, weight, bias, window).transpose(1, 2)


def _check_shapes(x: Tensor, weight: Tensor, bias: Tensor | None, window: Tensor | None) -> None:
    c = x.shape[-1] if x.ndim == 3 else None
    k = weight.shape[-1] if weight.ndim == 3 else None
    want = {
        "x": (x, x.ndim == 3, "[B, P, C]"),
        "weight": (weight, k is not None and tuple(weight.shape) == (c, 1, k), f"[C, 1, K] with C = {c}"),
        "bias": (bias, bias is None or tuple(bias.shape) == (c,), f"[C] = [{c}] or None"),
        "window": (
            window,
            window is None or (k is not None and tuple(window.shape) == (x.shape[0], c, k - 1)),
            f"[B, C, K - 1] = [{x.shape[0]}, {c}, {None if k is None else k - 1}] or None",
        ),
    }
    for name, (t, ok, shape) in want.items():
        if not ok:
            raise ValueError(f"depthwise_conv: {name} must be {shape}, got {list(t.shape)}")


def reference_conv(x: Tensor, weight: Tensor, bias: Tensor | None, window: Tensor | None = None) -> Tensor:
    """`depthwise_conv` by `F.conv1d` (channels first)."""
    k = weight.shape[-1]
    seq = x.transpose(1, 2)
    if window is None:
        return F.conv1d(seq, weight, bias, padding=k - 1, groups=weight.shape[0])
    seq = F.pad(torch.cat([window.to(x.dtype), seq], -1), (0, k - 1))
    return F.conv1d(seq, weight, bias, groups=weight.shape[0])


class _DepthwiseConv(torch.autograd.Function):
    """[B, P, C] -> [B, P + K - 1, C]: out[:, t] = bias + sum_j weight[:, 0, j] * padded[:, t + j]."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, window: Tensor | None) -> Tensor:
        b, p, c = x.shape
        k = weight.shape[-1]
        length = p + k - 1
        padded = F.pad(x, (0, 0, k - 1, k - 1))  # [B, P + 2(K - 1), C]
        if window is not None:
            padded[:, : k - 1] = window.transpose(1, 2).to(x.dtype)
        taps = weight[:, 0].t().to(x.dtype)  # [K, C]
        out = x.new_zeros(b, length, c) if bias is None else bias.to(x.dtype).expand(b, length, c).clone()
        for j in range(k):
            out.addcmul_(padded[:, j : j + length], taps[j])
        ctx.save_for_backward(padded, taps)
        ctx.parts = (bias is not None, window is not None, weight.dtype)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        padded, taps = ctx.saved_tensors
        has_bias, has_window, w_dtype = ctx.parts
        k, length = taps.shape[0], grad.shape[1]
        need_x, need_w, need_b, need_window = ctx.needs_input_grad
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = grad_window = None
        if need_x or need_window:
            grad_padded = torch.zeros_like(padded)
            for j in range(k):
                grad_padded[:, j : j + length].addcmul_(grad, taps[j])
            grad_x = grad_padded[:, k - 1 : length]
            grad_window = grad_padded[:, : k - 1].transpose(1, 2) if has_window else None
        if need_w:
            grad_w = torch.stack([(grad * padded[:, j : j + length]).sum((0, 1)) for j in range(k)])
            grad_w = grad_w.t()[:, None, :].to(w_dtype)
        if need_b and has_bias:
            grad_b = grad.sum((0, 1)).to(w_dtype)
        return grad_x, grad_w, grad_b, grad_window
