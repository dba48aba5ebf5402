"""Read and write the transformers ModernBERT directory layout.

A model directory is ``config.json`` (``model_type: modernbert``) plus ``model.safetensors`` (or
shards listed in ``model.safetensors.index.json``). Parameter names are transformers' own, so the
mapping is 1:1 up to a prefix: task models hold the encoder under ``model.``, a bare
``ModernBertModel`` stores it without one. We accept either, and ignore ``_orig_mod.``
(torch.compile) and a leading ``module.`` (DDP) in stored names.

Loading policy (documented in docs/internals.md):

* missing encoder tensor, or a missing MLM head for :class:`~mmbert.model.MaskedLM` -> error
  naming the tensor; a missing classifier head (starting fine-tuning from a masked-LM
  directory) -> freshly initialised, with a warning;
* a tensor of the wrong shape -> error with name, stored shape and expected shape;
* tensors of other heads (``head.``, ``decoder.``, ``classifier.``) -> ignored silently (an
  Encoder loads from a masked-LM directory); any other unknown tensor -> a warning listing it;
* a stored ``decoder.weight`` while the decoder is tied -> ignored (the embedding is used);
* special token ids outside the vocabulary (transformers' defaults 50281/50282 stay in any
  config.json whose author changed only ``vocab_size``) -> loaded as metadata, as transformers
  does, with one warning naming them; when the directory has a tokenizer, its special ids
  replace them (and the ids config.json leaves out, such as ``mask_token_id``). Whatever needs
  one (framing, masking, fill-mask, evaluation) fails in one line if no usable id exists. A pad
  id outside the vocabulary that no tokenizer replaces stays an error (transformers cannot
  build that embedding either).

Saving writes what transformers writes: the tied decoder weight is not stored (only the
embedding is), tensors are contiguous, metadata ``{"format": "pt"}``. Each file is written to a
temporary name and renamed, so other files in the directory (a tokenizer) are kept.
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from mmbert.config import _HF_DEFAULTS, SPECIAL_ID_FIELDS, ModelConfig
from mmbert.errors import MmbertError
from mmbert.outputs import atomic_file, write_text
from mmbert.safetensors_dir import CONFIG, TOKENIZER_FILES, WEIGHTS, SafetensorsDir, save_file

__all__ = ["CONFIG", "TOKENIZER_FILES", "WEIGHTS", "hf_config_dict", "load_pretrained",
           "read_config", "resolve_dtype", "save_pretrained", "tokenizer_special_ids"]

_OTHER_HEADS = ("head.", "decoder.", "classifier.")

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str:
    """None -> float32; "auto" stays "auto"; names -> torch dtypes."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise MmbertError(f"dtype {dtype!r}: expected one of {sorted(_DTYPES)} or 'auto'")
    return _DTYPES[name]


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def read_config(path: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """Validate a model directory and return (ModelConfig, raw config.json dict)."""
    d = Path(path)
    if not d.is_dir():
        raise MmbertError(f"{d}: no such model directory; expected a directory with config.json "
                          f"and {WEIGHTS}")
    cfg_path = d / CONFIG
    if not cfg_path.is_file():
        raise MmbertError(f"{d}: no {CONFIG}; expected a transformers ModernBERT directory")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # bad UTF-8/JSON, huge integers, deep nesting
        raise MmbertError(f"{cfg_path}: not valid JSON ({e}); expected a transformers "
                          "config.json") from None
    if not isinstance(raw, dict):
        raise MmbertError(f"{cfg_path}: expected a JSON object")
    tok_ids = tokenizer_special_ids(d) if _needs_tokenizer_ids(raw) else None
    return ModelConfig.from_hf_dict(raw, source=str(cfg_path), tokenizer_ids=tok_ids), raw


def _needs_tokenizer_ids(raw: dict[str, Any]) -> bool:
    """Whether config.json leaves out a special id or puts one outside its vocabulary."""
    vocab = raw.get("vocab_size", _HF_DEFAULTS["vocab_size"])
    if not isinstance(vocab, int):
        return False
    return any(not isinstance(raw.get(f), int) or raw[f] >= vocab for f in SPECIAL_ID_FIELDS)


# transformers' names of the special tokens -> the ModelConfig fields they give (first found
# wins): mmBERT frames [CLS] ... [SEP] with Gemma's <bos> ... <eos>, BERT-style ones the reverse.
_ROLE_FIELDS = {"pad_token_id": ("pad",), "mask_token_id": ("mask",),
                "cls_token_id": ("cls", "bos"), "sep_token_id": ("sep", "eos"),
                "bos_token_id": ("bos", "cls"), "eos_token_id": ("eos", "sep")}


def tokenizer_special_ids(path: str | Path) -> dict[str, int]:
    """Special ids of the tokenizer in ``path`` (a directory with tokenizer.json, or that file)
    as ModelConfig fields (``cls_token_id``, ...); ``{}`` without a tokenizer.json.

    Token strings come from tokenizer_config.json / special_tokens_map.json (transformers'
    ``cls_token`` etc.), else mmbert's names (``<pad>``, ``<bos>``, ...); their ids from
    tokenizer.json. A role the tokenizer lacks is left out."""
    from mmbert.tokenizer import SPECIAL_TOKENS

    p = Path(path)
    f = p / "tokenizer.json" if p.is_dir() else p
    if not f.is_file():
        return {}
    names = {role: [tok] for role, tok in SPECIAL_TOKENS.items()}
    for side in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
        for role, tok in _special_token_names(f.parent / side).items():
            names.setdefault(role, []).insert(0, tok)
    st = f.stat()
    vocab = _tokenizer_vocab(str(f), st.st_mtime_ns, st.st_size)
    ids: dict[str, int] = {}
    for field, roles in _ROLE_FIELDS.items():
        found = [vocab[t] for r in roles for t in names.get(r, []) if t in vocab]
        if found:
            ids[field] = found[0]
    return ids


def _special_token_names(path: Path) -> dict[str, str]:
    """``{role: token string}`` from a tokenizer_config.json / special_tokens_map.json."""
    if not path.is_file():
        return {}
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # bad UTF-8/JSON, huge integers, deep nesting
        raise MmbertError(f"{path}: not valid JSON ({e})") from None
    out = {}
    for role in ("pad", "mask", "cls", "sep", "bos", "eos"):
        v = cfg.get(f"{role}_token") if isinstance(cfg, dict) else None
        v = v.get("content") if isinstance(v, dict) else v
        if isinstance(v, str) and v:
            out[role] = v
    return out


@functools.lru_cache(maxsize=8)
def _tokenizer_vocab(f: str, mtime_ns: int, size: int) -> dict[str, int]:
    """Token -> id of a tokenizer.json (model vocabulary plus added tokens); cached per file
    version, as one command reads a model directory's config several times."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(f).get_vocab(with_added_tokens=True)
    except Exception as e:  # tokenizers raises a plain Exception for bad files
        raise MmbertError(f"{f}: not a valid tokenizers JSON file ({str(e)[:200]})") from None


def _clean_name(name: str) -> str:
    name = name.replace("_orig_mod.", "")
    return name.removeprefix("module.")


def _target_name(name: str, targets: dict[str, torch.Tensor]) -> str | None:
    """Map a stored name to one of the model's names (prefix 'model.' added or removed)."""
    for cand in (name, name.removeprefix("model."), "model." + name):
        if cand in targets:
            return cand
    return None


def _missing_error(cls, d: Path, required: list[str], unknown: list[str],
                   unknown_in: Path | None) -> MmbertError:
    """A required tensor is not stored. With unknown names present as well, the likelier cause
    is a renamed tensor: a damaged safetensors header (one flipped byte in a name)."""
    more = f" (and {len(required) - 1} more)" if len(required) > 1 else ""
    if unknown and unknown_in is not None:
        return MmbertError(f"{unknown_in}: tensor {required[0]}{more} missing and unexpected "
                           f"tensor {unknown[0]} present instead (a damaged header, or another "
                           f"model's weights); expected the tensor names of this config.json")
    hint = (f"; {cls.hf_missing_hint}"
            if cls.hf_missing_hint and required[0].startswith(("head.", "decoder.")) else "")
    return MmbertError(f"{d}: tensor {required[0]}{more} missing from the safetensors "
                       f"file(s){hint}")


def load_pretrained(cls, path: str | Path, *, dtype: torch.dtype | str | None = None,
                    device: torch.device | str = "cpu", **kwargs: Any):
    """Build ``cls`` from a transformers ModernBERT directory (see the module docstring)."""
    d = Path(path)
    config, raw = read_config(d)
    want = resolve_dtype(dtype)
    from_config = cls.hf_init_kwargs(raw, d / CONFIG)
    if "num_labels" in kwargs:  # an explicit label count wins over the stored labels
        from_config.pop("labels", None)
    kwargs = {**from_config, **kwargs}

    # build without initialising (no compute), then allocate and fill from the file
    with torch.device("meta"):
        model = cls(config, init=False, **kwargs)
    model.to_empty(device=device)
    model.tie_weights()
    targets = dict(model.state_dict(keep_vars=True))
    tied = getattr(model, "decoder", None) is not None and config.tie_word_embeddings
    if tied:
        targets.pop("decoder.weight", None)

    loaded: set[str] = set()
    unknown: list[str] = []
    unknown_in: Path | None = None  # the file of the first unknown tensor
    stored_dtype: torch.dtype | None = None
    with torch.no_grad():
        for f, name, tensor in SafetensorsDir(d).iter_tensors():
            clean = _clean_name(name)
            target = _target_name(clean, targets)
            if target is None:
                if tied and clean.removeprefix("model.") == "decoder.weight":
                    continue
                if not clean.removeprefix("model.").startswith(_OTHER_HEADS):
                    unknown.append(name)
                    unknown_in = unknown_in or f
                continue
            param = targets[target]
            if tuple(tensor.shape) != tuple(param.shape):
                raise MmbertError(f"{f}: tensor {name} has shape {list(tensor.shape)}; expected "
                                  f"{list(param.shape)} for this config.json")
            if stored_dtype is None and tensor.is_floating_point():
                stored_dtype = tensor.dtype
            param.copy_(tensor)
            loaded.add(target)

    missing = [k for k in targets if k not in loaded]
    required = [k for k in missing if not k.startswith(cls.hf_fresh_prefixes)]
    if required:
        raise _missing_error(cls, d, required, unknown, unknown_in)
    if missing:  # a fresh classifier on top of a pre-trained encoder (+ head)
        warnings.warn(f"{d}: {', '.join(missing)} not stored; initialised freshly", stacklevel=3)
        fresh = cls(config, **kwargs)  # cheap relative to fine-tuning; same init as training
        with torch.no_grad():
            fresh_sd = fresh.state_dict()
            for k in missing:
                targets[k].copy_(fresh_sd[k])
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        warnings.warn(f"{d}: ignored unknown tensors: {shown}", stacklevel=3)

    if want == "auto":
        want = stored_dtype or torch.float32
    return model.to(dtype=want)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def hf_config_dict(model) -> dict[str, Any]:
    """config.json for ``model``: ModelConfig fields in transformers' names (4.48 and 5.x)."""
    d = model.config.to_hf_dict()
    d["architectures"] = [model.hf_architecture]
    dtype = next(model.parameters()).dtype
    d["torch_dtype"] = str(dtype).removeprefix("torch.")
    d.update(model.hf_config_extra())
    return d


def save_pretrained(model, path: str | Path) -> None:
    """Write ``config.json`` and ``model.safetensors`` in transformers' layout."""
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    bare = model.hf_architecture == "ModernBertModel"  # stored without the `model.` prefix
    tensors: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        if name == "decoder.weight" and model.config.tie_word_embeddings:
            continue  # tied: transformers stores only the embedding
        if bare:
            name = name.removeprefix("model.")
        tensors[name] = t.detach().to("cpu").contiguous()
    with atomic_file(d / WEIGHTS) as tmp:
        save_file(tensors, tmp)
    text = json.dumps(hf_config_dict(model), indent=2, sort_keys=True) + "\n"
    write_text(d / CONFIG, text)
