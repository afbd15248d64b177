"""Reading and writing model folders: interp checkpoints and Hugging Face GPT-NeoX/Pythia and Mamba.

An interp model folder (what `save_checkpoint` writes) is flat:

    config.json          {"interp_version", "arch", "model": {...}, "task": {...}, "weights_sha256", ...}
    model.safetensors    the weights (safetensors: loading never unpickles anything)

A run folder (what `interp train` writes) keeps its checkpoints in `checkpoints/step-<N>/`, each one
published as a unit (see `interp.io`). `load_checkpoint` reads both, and flat folders written before
step directories existed. Weights holding NaN or infinity are refused unless `allow_nonfinite=True`.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from safetensors.torch import save_file
from torch import nn

from interp.io import (
    CHECKPOINTS,
    CONFIG,
    WEIGHTS,
    Checkpoint,
    atomic_write,
    atomic_write_text,
    parse_config,
    read_checkpoint,
    sha256,
)
from interp.models import HookedModel, model_class
from interp.models.hf.gpt_neox import (
    from_hf_gpt_neox,
    gpt_neox_state_to_interp,
    transformer_config_from_gpt_neox,
)
from interp.models.hf.mamba import hf_mamba_config, hf_mamba_from_folder, load_hf_mamba

INTERP_VERSION = "0.1.0"
# atomic_write and atomic_write_text live in interp.io, the Hugging Face conversions in interp.models.hf;
# importing them from here keeps working
__all__ = [
    "atomic_write",
    "atomic_write_text",
    "from_hf_gpt_neox",
    "gpt_neox_state_to_interp",
    "hf_mamba_config",
    "hf_mamba_from_folder",
    "language_model",
    "load",
    "load_checkpoint",
    "save_checkpoint",
    "transformer_config_from_gpt_neox",
]


def weights_state(model: HookedModel) -> dict[str, torch.Tensor]:
    """The model's weights for safetensors, on the CPU (tied copies left out; `load_state` restores the tie)."""
    # clone: safetensors refuses tensors that share memory (tied embeddings)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    if getattr(model.cfg, "tie_embeddings", False):
        state = {k: v for k, v in state.items() if k not in _tied_keys(model)}
    return state


def weights_bytes(model: HookedModel) -> bytes:
    """`weights_state(model)` as the bytes of a safetensors file."""
    return save_safetensors(weights_state(model))


def checkpoint_config(model: HookedModel, **sections: Any) -> dict:
    return {"interp_version": INTERP_VERSION, "arch": model.arch, "model": model.cfg.to_dict(), **sections}


def save_checkpoint(folder: str | Path, model: HookedModel, **sections: Any) -> Path:
    """Write `model` to the flat model folder `folder` (config.json + model.safetensors); extra sections go
    into config.json.

    `save_checkpoint("runs/copy", model, task=task_cfg.to_dict(), train=train_cfg.to_dict())`

    Weights first, then config.json with their checksum: an interrupted save leaves the old pair, or new
    weights that the old config.json does not vouch for, which loading then refuses (never a silent mix).
    Training writes run folders instead, whose checkpoints are published as a unit (`interp.io`).
    """
    folder = Path(folder)
    digest = {}

    def write(tmp: str) -> None:
        save_file(weights_state(model), tmp)
        digest["sha256"] = sha256(Path(tmp).read_bytes())

    atomic_write(folder / WEIGHTS, write)
    config = checkpoint_config(model, **sections, weights_sha256=digest["sha256"])
    atomic_write_text(folder / CONFIG, json.dumps(config, indent=2))
    return folder


def _tied_keys(model: nn.Module) -> dict[str, str]:
    """State-dict keys that alias an earlier parameter (tied unembedding) -> that parameter's key."""
    seen, tied = {}, {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            tied[name] = seen[id(tensor)]
        seen.setdefault(id(tensor), name)
    return tied


def read_config(folder: str | Path) -> dict:
    """config.json of a model folder, or of a run folder's latest checkpoint."""
    folder = Path(folder)
    path = folder / CONFIG
    if not path.is_file():
        if (folder / CHECKPOINTS).is_dir():
            found = read_checkpoint(folder)
            if found is not None:
                return found.config
        raise FileNotFoundError(f"no {CONFIG} in {folder}: not a model folder")
    return parse_config(path.read_bytes(), path)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """`load_state_dict` with an error that names every missing, unexpected or misshapen key; a tied
    weight (`lm_head.weight` tied to the embedding) may be absent, or present and equal to its twin."""
    expected = model.state_dict()
    tied = _tied_keys(model)
    missing = sorted(k for k in expected if k not in state and k not in tied)
    unexpected = sorted(k for k in state if k not in expected)
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(state)  # safetensors returns keys in no fixed order; errors should not vary
        if k in expected and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
        if shapes:
            parts.append("shape mismatches: " + "; ".join(shapes[:10]))
        raise ValueError(f"weights in {source} do not match the model: " + "; ".join(parts))
    for key, first in tied.items():  # a checkpoint may hold both copies of a tied weight: they must agree
        if key in state and first in state and not torch.equal(state[key], state[first]):
            raise ValueError(f"weights in {source} have different {key} and {first}, but the model ties them")
    model.load_state_dict({k: v for k, v in state.items() if k not in tied}, strict=False)


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or infinity, naming the first such tensor (they evaluate silently as 0%)."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"weights in {source} are not finite: {name} holds {bad} NaN or infinite values of "
                f"{tensor.numel()}; pass allow_nonfinite=True to load them anyway"
            )


def load_checkpoint(
    folder: str | Path, device: str | torch.device = "cpu", allow_nonfinite: bool = False
) -> HookedModel:
    """An interp checkpoint (a run folder's latest verified checkpoint, or a flat model folder) -> model.

    Its config is `model.cfg`; the rest of config.json (task, train, step) is in `model.checkpoint`.
    """
    folder = Path(folder)
    found = read_checkpoint(folder)
    if found is None:
        if (folder / CHECKPOINTS).is_dir():
            raise FileNotFoundError(
                f"no complete checkpoint in {folder / CHECKPOINTS}; the run saved none yet"
            )
        if (folder / CONFIG).is_file():
            raise FileNotFoundError(f"no {WEIGHTS} in {folder}; the checkpoint is incomplete")
        raise FileNotFoundError(f"no {CONFIG} in {folder}: not a model folder")
    return model_from_checkpoint(found, device, allow_nonfinite)


def model_from_checkpoint(
    found: Checkpoint, device: str | torch.device = "cpu", allow_nonfinite: bool = False
) -> HookedModel:
    """Build the model a read `Checkpoint` holds, from the very bytes that were verified."""
    config, source = found.config, found.path / CONFIG
    for key in ("arch", "model"):
        if key not in config:
            raise ValueError(f"{source} has no {key!r} entry; not an interp checkpoint")
    if WEIGHTS not in found.files:
        raise FileNotFoundError(f"no {WEIGHTS} in {found.path}; the checkpoint is incomplete")
    data, weights = found.files[WEIGHTS], found.path / WEIGHTS
    if "weights_sha256" in config and sha256(data) != config["weights_sha256"]:
        raise ValueError(
            f"{weights} is not the file {source} was saved with (an interrupted save?); the checkpoint is corrupt"
        )
    cls = model_class(config["arch"])
    model = cls(cls.config_class.from_dict(config["model"]))
    try:
        state = load_safetensors(data)
    except Exception as e:  # safetensors raises its own error types for truncated or garbage files
        raise ValueError(f"cannot read {weights}: {e}; the checkpoint is corrupt") from e
    if not allow_nonfinite:
        check_finite(state, str(weights))
    load_state(model, state, str(weights))
    model.checkpoint = {k: v for k, v in config.items() if k not in ("model", "weights_sha256")}
    if found.step is not None:
        model.checkpoint["step"] = found.step
    return model.to(device).eval()


HUB_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",  # mamba-ssm checkpoints; read with torch.load(weights_only=True)
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
TOKENIZER_PATTERNS = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def load_tokenizer(folder: str | Path, tokenizer_source: str | Path | None = None):
    """The tokenizer saved in `folder` (`AutoTokenizer.from_pretrained`), or None if it has none.

    `tokenizer_source`: another folder to read it from (mamba-ssm checkpoints ship without one; their
    tokenizer is EleutherAI/gpt-neox-20b's). Only tokenizer files are read; no code is executed.
    """
    source = Path(tokenizer_source) if tokenizer_source is not None else Path(folder)
    if not any((source / name).is_file() for name in TOKENIZER_FILES):
        if tokenizer_source is not None:
            raise FileNotFoundError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {source}")
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)


def download_from_hub(name: str, tokenizer_only: bool = False) -> Path:
    """A Hugging Face hub name -> the local snapshot folder (config, weights, tokenizer files only).

    `tokenizer_only`: fetch config and tokenizer files but no weights (for `tokenizer=` sources such
    as EleutherAI/gpt-neox-20b, whose weights are 40 GB). Honors HF_HUB_OFFLINE (then only the local
    cache is used). Raises FileNotFoundError with what to do when the model is neither cached nor
    downloadable.
    """
    try:
        from huggingface_hub import snapshot_download

        if tokenizer_only:
            patterns = ["config.json", *TOKENIZER_PATTERNS]
            return Path(snapshot_download(name, allow_patterns=patterns, local_files_only=_offline()))
        # safetensors first; pytorch_model.bin only for repositories that have no safetensors (mamba-ssm)
        safe = [p for p in HUB_PATTERNS if p != "pytorch_model.bin"]
        folder = Path(snapshot_download(name, allow_patterns=safe, local_files_only=_offline()))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(name, allow_patterns=HUB_PATTERNS, local_files_only=_offline()))
        return folder
    except Exception as e:  # offline, not cached, no network, unknown repository, ...
        mode = "HF_HUB_OFFLINE is set and it is not in the local cache" if _offline() else "download failed"
        raise FileNotFoundError(
            f"{name} does not exist as a local folder and the Hugging Face hub model {name!r} is not available "
            f"({mode}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). To use it offline, "
            f"download it where there is network (`hf download {name} --local-dir DIR`) and pass "
            f"the folder DIR to interp.load; a folder needs config.json, weights (*.safetensors or "
            f"pytorch_model.bin) and, for text evaluations, tokenizer files"
        ) from e


def resolve_folder(path: str | Path) -> Path:
    """A model argument -> a local folder: an existing path, or a hub name fetched by `download_from_hub`."""
    folder = Path(path)
    if not folder.exists():
        if isinstance(path, str) and _HUB_ID.match(path):
            folder = download_from_hub(path)
        else:
            raise FileNotFoundError(
                f"{path} does not exist; pass a checkpoint folder written by `interp train`, a local Hugging "
                f"Face model folder, or a Hugging Face hub name such as EleutherAI/pythia-160m"
            )
    if not folder.is_dir():
        raise ValueError(f"{path} is a file; a model is a folder with config.json and weights")
    return folder


def tokenizer_for(folder: Path | None, tokenizer: str | Path | None = None):
    """The tokenizer of the model in `folder`, or the one in `tokenizer` (a folder or a hub name) if given.

    A hub name fetches tokenizer files only. None when neither `tokenizer` is given nor `folder` has one.
    """
    if tokenizer is None:
        return None if folder is None else load_tokenizer(folder)
    source = Path(tokenizer)
    if not source.exists() and isinstance(tokenizer, str) and _HUB_ID.match(tokenizer):
        source = download_from_hub(tokenizer, tokenizer_only=True)
    return load_tokenizer(folder, tokenizer_source=source)


# SSM + attention hybrids Hugging Face implements that interp has no conversion for (see interp.models.hf.nemotron_h
# for why Nemotron-H is the one it has)
UNSUPPORTED_HYBRIDS = ("bamba", "falcon_h1", "granitemoehybrid", "jamba", "zamba", "zamba2")


def load_hf_folder(folder: Path, device: str | torch.device = "cpu") -> HookedModel:
    """A local Hugging Face folder (config.json with model_type gpt_neox, mamba, mamba2, nemotron_h) -> hooked model.

    Weights are read from safetensors, or from pytorch_model.bin with torch.load(weights_only=True)
    (never unpickling arbitrary objects). `model.tokenizer` is the folder's tokenizer, or None.
    """
    config = read_config(folder)
    model_type = config.get("model_type")
    if model_type == "gpt_neox":
        from transformers import GPTNeoXForCausalLM

        hf = GPTNeoXForCausalLM.from_pretrained(folder, weights_only=True, trust_remote_code=False)
        model = from_hf_gpt_neox(hf).to(device)
    elif model_type == "mamba" or "ssm_cfg" in config:
        model = load_hf_mamba(folder).to(device).eval()
    elif model_type == "mamba2":
        from interp.models.hf.mamba2 import load_hf_mamba2

        model = load_hf_mamba2(folder).to(device).eval()
    elif model_type == "nemotron_h":
        from interp.models.hf.nemotron_h import load_hf_nemotron_h

        model = load_hf_nemotron_h(folder).to(device).eval()
    elif model_type in UNSUPPORTED_HYBRIDS:
        raise ValueError(
            f"{folder} holds a {model_type!r} hybrid, which interp does not load; the supported hybrid family is "
            "nemotron_h (Nemotron-H), and the other Hugging Face types gpt_neox, mamba, mamba2"
        )
    else:
        raise ValueError(
            f"{folder} holds a Hugging Face model of type {model_type!r}; interp loads gpt_neox (Pythia), mamba, "
            "mamba2 and the hybrid nemotron_h"
        )
    model.tokenizer = load_tokenizer(folder)
    return model


def load(
    path: str | Path,
    device: str | torch.device = "cpu",
    tokenizer: str | Path | None = None,
    allow_nonfinite: bool = False,
) -> HookedModel:
    """Load a model: an interp checkpoint folder, a Hugging Face GPT-NeoX/Pythia or Mamba folder, or a hub name.

    A string that is not an existing path but looks like a hub name ("EleutherAI/pythia-410m",
    "state-spaces/mamba-130m-hf") is fetched with `huggingface_hub.snapshot_download` (config, weights
    and tokenizer files only; HF_HUB_OFFLINE=1 uses the local cache only). The model's config is
    `model.cfg`; Hugging Face models carry their tokenizer in `model.tokenizer` (None if the folder has
    none); for interp checkpoints the task and training settings are in `model.checkpoint`.

    `tokenizer`: a folder or hub name to take the tokenizer from instead, for checkpoints that ship
    without one (mamba-ssm's `state-spaces/mamba-*` use "EleutherAI/gpt-neox-20b"); a hub name fetches
    its tokenizer files only.

    Weights holding NaN or infinity are refused, naming the tensor, unless `allow_nonfinite=True`.
    """
    folder = resolve_folder(path)
    if (folder / CHECKPOINTS).is_dir() or "arch" in read_config(folder):
        return load_checkpoint(folder, device, allow_nonfinite)
    model = load_hf_folder(folder, device)
    if not allow_nonfinite:
        check_finite(model.state_dict(), str(folder))
    if tokenizer is not None:
        model.tokenizer = tokenizer_for(folder, tokenizer)
    return model


# ---- nnsight ----------------------------------------------------------------------------------------


def _nnsight_causal_lm():
    """(class, extra keyword arguments) of nnsight's causal language model wrapper, or a clear ImportError."""
    try:
        import nnsight
    except ImportError as e:
        raise ImportError(
            "interp.language_model needs nnsight, which interp does not install by default: "
            "pip install nnsight (or pip install -e '.[dev]')"
        ) from e
    # nnsight >= 0.8: TransformersModel(..., task="text-generation"); LanguageModel is its deprecated alias
    model_cls = getattr(nnsight, "TransformersModel", None)
    if model_cls is not None and "task" in inspect.signature(model_cls.__init__).parameters:
        return model_cls, {"task": "text-generation"}
    return nnsight.LanguageModel, {}


def language_model(path: str | Path, tokenizer: str | Path | None = None, *, remote: bool = False, **kwargs):
    """The checkpoint `interp.load(path)` reads, as an nnsight language model (with its tokenizer).

    `path` is resolved exactly as by `interp.load`: a local Hugging Face folder (GPT-NeoX/Pythia, Mamba in
    the Hugging Face format, or mamba-ssm's config.json + pytorch_model.bin, converted to
    `transformers.MambaForCausalLM` since transformers cannot read it), or a hub name fetched with
    `download_from_hub` (HF_HUB_OFFLINE=1: local cache only). `tokenizer`: a folder or hub name to take the
    tokenizer from (needed for mamba-ssm checkpoints, which ship without one). The weights are loaded now,
    in float32 like `interp.load` (Pythia's hub weights are float16) unless `dtype=` says otherwise. Other
    keyword arguments go to nnsight (e.g. `device_map="auto"`).

    The object is nnsight's `TransformersModel(..., task="text-generation")` (called `LanguageModel`
    before nnsight 0.8, where that name became a deprecated subclass); module names are Hugging Face's:
    `model.gpt_neox.layers[l].attention.dense`, `model.backbone.layers[l].mixer`.

    `remote=True`: a model to run on NDIF (`model.trace(..., remote=True)`). `path` must then be a hub name
    that NDIF hosts; nothing but its config and tokenizer is fetched, the weights stay on the server.
    nnsight is not a dependency of interp: `pip install nnsight`.
    """
    model_cls, task = _nnsight_causal_lm()
    if remote:
        if Path(path).exists() or not (isinstance(path, str) and _HUB_ID.match(path)):
            raise ValueError(
                f"remote=True runs the model on NDIF, which only runs hub models it hosts; {str(path)!r} is not "
                "a Hugging Face hub name (such as 'EleutherAI/pythia-12b'). Local folders run locally: "
                "leave remote=False"
            )
        # the tokenizer is loaded here, also because nnsight 0.8.1's lazy (meta) build cannot find it by
        # itself under transformers 5 ("Impossible to guess which tokenizer to use")
        kwargs.setdefault("tokenizer", tokenizer_for(None, path if tokenizer is None else tokenizer))
        return model_cls(path, **task, **kwargs)
    folder = resolve_folder(path)
    config = read_config(folder)
    if "arch" in config:
        raise ValueError(
            f"{path} is an interp checkpoint ({config['arch']}), which transformers cannot read; wrap the "
            "loaded model instead: nnsight.NNsight(interp.load(path))"
        )
    model_type = config.get("model_type")
    mamba_ssm = model_type is None and "d_model" in config and "n_layer" in config
    if model_type not in ("gpt_neox", "mamba") and not mamba_ssm:
        raise ValueError(
            f"{folder} holds a model of type {model_type!r}; interp.language_model reads what interp.load "
            "reads: GPT-NeoX (Pythia) and Mamba (Hugging Face or mamba-ssm format). For other models use "
            "nnsight directly"
        )
    tok = tokenizer_for(folder, tokenizer)
    if tok is None:
        raise ValueError(
            f"{folder} has no tokenizer files; pass tokenizer= (a folder or hub name; mamba-ssm checkpoints "
            "use 'EleutherAI/gpt-neox-20b')"
        )
    dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", torch.float32))
    if mamba_ssm:
        return model_cls(hf_mamba_from_folder(folder, tok).to(dtype), tokenizer=tok, **task, **kwargs)
    kwargs.setdefault("dispatch", True)
    return model_cls(str(folder), tokenizer=tok, dtype=dtype, **task, **kwargs)
