"""Where a trained model copies: the evaluation kinds `patching` and `lookup_heads` of `EvalSpec`.

Both work on any model of the hook contract, layer by layer (a transformer's attention layers, a
hybrid's attention and SSM layers, a pure Mamba's SSM layers), for the copy and the suffix-key
lookup tasks:

- `patching_rows`: noising (`mode="noise"`, clean run, corrupted activations, logit difference of the
  clean vs the corrupted answer): each layer's mixer output (`hook_mixer_out` of an SSM layer,
  `hook_attn_out` of an attention layer) at every position at once, then at one position at a time
  (each row says the position's `region`: string, key, answer or other), then every attention head's
  `hook_z`. An effect near 1 says the answer cannot be produced without that layer (head, position).
- `lookup_rows`: the lookup detector of `interp.analysis.heads` on every head (attention heads, Mamba-2
  heads' and Mamba-1 channel-mean hidden attention): attention mass, at the queries that predict an
  answer token, on the key that holds the token being copied (`lookup`) and on the one after it
  (`lookup_next`, read through a previous-token or convolution feature). For suffix-key lookup the
  source is the string letter right after the key's occurrence (`suffix_lookup_targets`). Also each
  head's previous-token score (`offset_1`, over every real query), the first half of an n-gram match.
"""

from __future__ import annotations

import torch
from torch import Tensor

from interp.analysis.heads import (
    attention_layers,
    attention_patterns,
    head_activity,
    lookup_targets,
    offset_score,
    scan_layers,
    ssm_patterns,
    target_score,
)
from interp.analysis.patching import PatchSpec, activation_patching, make_metric, paired_batches
from interp.hooks import check_model
from interp.tasks import Batch, TaskConfig, make_batch

WHERE_TASKS = ("copy", "suffix_lookup")
MIXER_OUT = ("blocks.{layer}.hook_mixer_out", "blocks.{layer}.hook_attn_out")


def _unpacked(task: TaskConfig, kind: str) -> TaskConfig:
    """The task with one example per row (a run trained on packed rows is evaluated on single examples)."""
    if task.task not in WHERE_TASKS:
        raise ValueError(f"the {kind} evaluation is defined for {', '.join(WHERE_TASKS)}, not {task.task!r}")
    return TaskConfig.from_dict({**task.to_dict(), "pack_context": None})


def mixer_hooks(model) -> dict[int, str]:
    """{layer: the hook of that layer's mixer output}: an SSM layer's `hook_mixer_out`, an attention
    layer's `hook_attn_out` (the first of them the layer has; layers with neither are left out)."""
    check_model(model, "n_layers")
    out = {}
    for layer in range(model.cfg.n_layers):
        names = [t.format(layer=layer) for t in MIXER_OUT if t.format(layer=layer) in model.hook_dict]
        if names:
            out[layer] = names[0]
    return out


def layer_kinds(model) -> dict[int, str]:
    """{layer: "attention" | "mamba" | "mamba2"} from the hooks each layer has."""
    kinds = {layer: "attention" for layer in attention_layers(model)}
    return {**kinds, **scan_layers(model)}


def patching_rows(model, task: TaskConfig, length: int, n_examples: int, seed: int) -> list[dict]:
    """Noising effects of each layer's mixer output and of each attention head (module docstring)."""
    task = _unpacked(task, "patching")
    clean, corrupt = paired_batches(task, n_examples, length, seed=seed)
    device = next(model.parameters()).device
    clean, corrupt = clean.to(device), corrupt.to(device)
    metric = make_metric("logit_diff", clean, corrupt)
    kinds = layer_kinds(model)
    hooks = mixer_hooks(model).values()
    n_pos = clean.tokens.shape[1]
    specs = [PatchSpec(hook) for hook in hooks]
    specs += [PatchSpec(hook, pos=p) for hook in hooks for p in range(n_pos)]  # layer x position
    specs += [
        PatchSpec(f"blocks.{layer}.attn.hook_z", head=h)
        for layer in attention_layers(model)
        for h in range(model.cfg.n_heads)
    ]
    with torch.no_grad():
        df = activation_patching(model, clean.tokens, corrupt.tokens, metric, specs, mode="noise")
    region = position_regions(clean, task)
    missing = lambda v: v is None or v != v  # noqa: E731  (None or NaN in the frame)
    return [
        {
            "length": length,
            "layer": int(r.layer),
            "layer_kind": kinds.get(int(r.layer), "other"),
            "head": None if missing(r.head) else int(r.head),
            "pos": None if missing(r.pos) else int(r.pos),
            "region": "all" if missing(r.pos) else region[int(r.pos)],
            "hook": r.hook,
            "effect": float(r.effect),
            "effect_se": float(r.effect_se),
            "clean_metric": float(df.attrs["clean_metric"]),
            "corrupt_metric": float(df.attrs["corrupt_metric"]),
        }
        for r in df.itertuples()
    ]


def position_regions(batch: Batch, task: TaskConfig) -> list[str]:
    """What each position of a one-length batch holds: "string" (the letters to copy or search),
    "key" (suffix lookup's key), "answer" (positions whose next token is scored: the queries), "other"."""
    length = int(batch.lengths[0])
    start = int(batch.answer_start[0])
    regions = []
    for p in range(batch.tokens.shape[1]):
        if 1 <= p <= length:
            regions.append("string")
        elif p >= start - 1:
            regions.append("answer")
        elif task.task == "suffix_lookup" and length + 2 <= p < length + 2 + task.ngram:
            regions.append("key")
        else:
            regions.append("other")
    return regions


def suffix_lookup_targets(batch: Batch, ngram: int) -> Tensor:
    """[B, P] for a suffix-key lookup batch (`$ s | key | answer .`): at each query that predicts an answer
    token, the position in the string of that token (right after the key's occurrence, which is unique);
    -1 elsewhere."""
    if batch.task != "suffix_lookup":
        raise ValueError(f"suffix_lookup_targets needs a suffix_lookup batch, not {batch.task!r}")
    if batch.lengths.ndim != 1 or int(batch.lengths.min()) != int(batch.lengths.max()):
        raise ValueError("suffix_lookup_targets needs unpacked batches of one string length")
    length = int(batch.lengths[0])
    s = batch.tokens[:, 1 : length + 1]  # the string at positions 1..L
    key = batch.tokens[:, length + 2 : length + 2 + ngram]
    match = (s.unfold(1, ngram, 1) == key[:, None, :]).all(-1)  # [B, L - n + 1]
    if not bool((match.sum(1) == 1).all()):
        raise ValueError("every example needs exactly one occurrence of its key in the string")
    source = 1 + match.float().argmax(1) + ngram  # [B] position of the first answer token
    q = torch.arange(batch.tokens.shape[1], device=batch.tokens.device)[None, :]
    k = q - (batch.answer_start[:, None] - 1)  # 0 at the query that predicts the first answer token
    answer_query = batch.score_mask & (k >= 0) & (batch.tokens.roll(-1, 1) != batch.vocab.eos)
    return torch.where(answer_query, source[:, None] + k, torch.full_like(q, -1))


def lookup_rows(model, task: TaskConfig, length: int, n_examples: int, seed: int) -> list[dict]:
    """Lookup-detector scores of every head of every layer (module docstring), with each attention head's
    activity (RMS of its output, relative to the most active head; SSM heads: 1)."""
    task = _unpacked(task, "lookup_heads")
    device = next(model.parameters()).device
    batch = make_batch(task, n_examples, torch.Generator().manual_seed(seed), length=length).to(device)
    if task.task == "copy":
        targets = {"lookup": lookup_targets(batch), "lookup_next": lookup_targets(batch, shift=1)}
    else:
        t = suffix_lookup_targets(batch, task.ngram)
        targets = {"lookup": t, "lookup_next": torch.where(t >= 0, t + 1, t)}
    kinds = layer_kinds(model)
    patterns: dict[int, Tensor] = {}
    activity: dict[int, Tensor] = {}
    with torch.no_grad():
        attn = attention_layers(model)
        if attn:
            stacked, act = attention_patterns(model, batch.tokens), head_activity(model, batch.tokens)
            patterns |= {layer: stacked[i] for i, layer in enumerate(attn)}
            activity |= {layer: act[i] for i, layer in enumerate(attn)}
        if scan_layers(model):
            reduce = "none" if "mamba2" in scan_layers(model).values() else "mean"
            patterns |= ssm_patterns(model, batch.tokens, reduce)
    real = batch.tokens != batch.vocab.pad
    rows = []
    for layer in sorted(patterns):
        scores = {name: target_score(patterns[layer][None], t)[0] for name, t in targets.items()}
        scores["offset_1"] = offset_score(patterns[layer][None], 1, real)[0]  # previous-token heads
        for head in range(patterns[layer].shape[1]):
            act = float(activity[layer][head]) if layer in activity else 1.0
            for name, values in scores.items():
                rows.append(
                    {
                        "length": length,
                        "layer": layer,
                        "layer_kind": kinds[layer],
                        "head": head,
                        "score": name,
                        "value": float(values[head]),
                        "activity": act,
                    }
                )
    return rows
