"""Activation patching: which activations carry the copy? Noising, denoising, attribution and paths.

Two runs of the same model on batches of the same shape: a *clean* one (the behaviour we want to
explain, e.g. copying string s) and a *corrupted* one (the same template with a different string s').
A patch replaces one activation (one hook, optionally one position, one head, or a group of channels)
in one run by its value in the other run, and a metric on the logits says how much that changed.

- denoising (`mode="denoise"`): run the corrupted input, patch in clean activations. A large effect
  means the component is *sufficient* to restore the clean behaviour.
- noising (`mode="noise"`): run the clean input, patch in corrupted activations. A large effect means
  the component is *necessary* for it.

Effects are reported as a fraction of the clean-corrupt gap of the metric, so 1 means "this one
component moves the metric all the way" in both modes:

    denoise: effect = (m_patched - m_corrupt) / (m_clean - m_corrupt)
    noise:   effect = (m_clean - m_patched) / (m_clean - m_corrupt)

A patch is described as data, `PatchSpec(hook, pos=None, head=None, channels=None)`; grids of specs
(layer x position, layer x head, layer x head x position, Mamba state channel groups) come from
`patch_specs`. `activation_patching` never recomputes what a patch cannot change where the model offers
it (`method="reuse"`, `patching.reuse`: a patch at layer l, position p restarts the forward there from
one recorded base forward); otherwise it repeats the base batch K times and patches a different
component in each copy (`method="batched"`); `method="loop"` is the plain reference with one forward
per patch. All give the same numbers (tested to 1e-5). The copies per forward come from the activation
sizes and `max_memory=` (`patching.memory`). Every result keeps per-example effects with a standard
error and a bootstrap interval over examples (`patching.stats`).

Which axis of an activation is the position, the head or the channel comes from the hook's declared
axes (`interp.hooks`: declared by interp's models, TransformerLens's standard names for a bridge or a
user's `HookedRootModule`, `axes=` for anything else), so every engine runs on any model of the hook
contract. What a patch changes can differ between implementations of one hook: in interp a patch of
`hook_ssm_state` at position t is fed back into the recurrence (h_{t+1} is built from the patched h_t, so
the outputs at t and every later position change); in TransformerLens's bridge it changes only the
readout at t. Every result records which in `df.attrs["patch_semantics"]`.

`attribution_patching` approximates every patch at once from one forward and one backward pass
(gradient of the metric times the activation difference, Nanda 2023); `path_patching` measures the
effect of sender heads on receiver heads' queries, keys or values, and on the logits directly
(Wang et al. 2022), for the circuit diagrams in `interp.analysis.circuits`. `edge_attribution_patching`
(EAP, EAP-IG) scores every edge between heads, MLPs, Mamba mixers, the embedding and the logits from two
forwards and one backward (`patching.edges`); `edge_patching` measures each edge exactly, and
`circuit_faithfulness` runs a circuit alone, every other edge patched to its corrupted value.
"""

from interp.analysis.patching.activation import MODES, activation_patching, patch_grid
from interp.analysis.patching.attribution import attribution_patching
from interp.analysis.patching.edges import (
    circuit_faithfulness,
    edge_attribution_patching,
    edge_graph,
    edge_patching,
)
from interp.analysis.patching.metrics import METRICS, Metric, make_metric
from interp.analysis.patching.path import head_name, path_patching
from interp.analysis.patching.spec import PatchSpec, patch_specs
from interp.hooks import component_hook, components
from interp.tasks.pairs import check_pair, paired_batches

__all__ = [
    "METRICS",
    "MODES",
    "Metric",
    "PatchSpec",
    "activation_patching",
    "attribution_patching",
    "check_pair",
    "circuit_faithfulness",
    "component_hook",
    "components",
    "edge_attribution_patching",
    "edge_graph",
    "edge_patching",
    "head_name",
    "make_metric",
    "paired_batches",
    "patch_grid",
    "patch_specs",
    "path_patching",
]
