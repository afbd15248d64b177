"""Attribution patching: every patch estimated at once from one forward and one backward pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch import Tensor

from interp.analysis.patching.activation import frame, prepare
from interp.analysis.patching.metrics import Metric
from interp.analysis.patching.spec import PatchSpec
from interp.hooks import HookInfo, check_hook_name, declare_axes


def attribution_patching(
    model,
    clean_tokens: Tensor,
    corrupt_tokens: Tensor,
    metric: Metric | Callable[[Tensor], Tensor],
    specs: Sequence[PatchSpec],
    mode: str = "denoise",
    axes: dict[str, str] | None = None,
) -> pd.DataFrame:
    """First-order estimate of every patch in `specs` from one forward and one backward pass.

    metric(patched) ~ metric(base) + sum over the patched entries of dM/da * (a_source - a_base),
    with the gradient taken on the base run. Returns the same columns as `activation_patching`
    (`metric` is the estimate). A hook that declares `grad_via` (interp's `hook_ssm_state`) takes its
    gradient from that sibling hook: h_t = decay_t * h_{t-1} + write_t, so dM/dh_t = dM/dwrite_t,
    including every later position that h_t feeds through the recurrence, which is what a patch of h_t
    changes there. Where a state patch changes only the readout (the bridge) the state's own gradient is
    the right one.
    """
    declare_axes(model, axes)
    run = prepare(model, clean_tokens, corrupt_tokens, metric, specs, mode)
    b = run.base.shape[0]
    hooks = sorted({s.hook for s in specs})
    grad_hook = {name: _grad_hook(name, run.infos[name]) for name in hooks}
    for name in set(grad_hook.values()):
        check_hook_name(model, name)
    acts: dict[str, Tensor] = {}

    # keyed by the name asked for, not `hook.name`: a bridge's alias (`attn.hook_z`) names another point
    def keep(name: str) -> Callable:
        def hook_fn(act: Tensor, hook) -> Tensor:
            if name in grad_hook.values():
                if not act.requires_grad:  # frozen parameters: make the activation a leaf to differentiate
                    act = act.detach().requires_grad_(True)
                act.retain_grad()
            acts[name] = act
            return act

        return hook_fn

    names = sorted(set(hooks) | set(grad_hook.values()))
    with torch.enable_grad():
        logits = model.run_with_hooks(run.base, fwd_hooks=[(n, keep(n)) for n in names])
        metric(logits).mean().backward()
    values = []
    for spec in specs:
        grad = acts[grad_hook[spec.hook]].grad
        if grad is None:
            raise RuntimeError(f"the metric does not depend on {spec.hook!r}; nothing to attribute")
        idx = spec.index(run.infos[spec.hook])
        diff = run.source_cache[spec.hook] - acts[spec.hook].detach()
        # the metric is a mean over examples that do not interact: B * dMean/da_b = dm_b/da_b
        values.append((grad[idx] * diff[idx]).flatten(1).sum(1) * b)  # [B]
    model.zero_grad(set_to_none=True)
    base_v = run.base_values
    return frame(specs, torch.stack(values).detach() + base_v, run)


def _grad_hook(name: str, info: HookInfo) -> str:
    """The hook whose gradient stands for `name`'s: itself, or its `grad_via` sibling."""
    if info.grad_via is None:
        return name
    return name.rsplit(".", 1)[0] + "." + info.grad_via if "." in name else info.grad_via
