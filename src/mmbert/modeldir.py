"""Whole model directories: load whichever class a config.json names, check a directory end to
end (the CLI's ``check``), and re-save it canonically (``convert``).

Built on :mod:`mmbert.hf` (config.json and safetensors in transformers' layout) and
:mod:`mmbert.model` (the classes); neither of those imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmbert.errors import MmbertError
from mmbert.hf import read_config
from mmbert.model import Encoder, MaskedLM, SequenceClassifier, TokenClassifier
from mmbert.outputs import OutputDir
from mmbert.safetensors_dir import copy_tokenizer


def model_class_for(raw: dict[str, Any]):
    """Our class for a config.json's ``architectures`` (bare encoder when unknown/absent)."""
    arch = " ".join(a for a in (raw.get("architectures") or []) if isinstance(a, str))
    for key, cls in (("ForMaskedLM", MaskedLM), ("ForSequenceClassification", SequenceClassifier),
                     ("ForTokenClassification", TokenClassifier)):
        if key in arch:
            return cls
    return Encoder


def load_any(path: str | Path, *, dtype: torch.dtype | str | None = None):
    """Load a directory into the class its config.json names (MaskedLM, classifiers, Encoder)."""
    _, raw = read_config(path)
    return model_class_for(raw).from_pretrained(path, dtype=dtype)


def check_model(path: str | Path) -> dict[str, Any]:
    """Load a directory fully and run one tiny forward; returns a summary (raises on problems)."""
    model = load_any(path, dtype="auto").eval()
    cfg = model.config
    # [CLS] a b [SEP]; ids outside the vocabulary are config metadata: any token stands in
    cls, sep = (i if i < cfg.vocab_size else 0 for i in (cfg.cls_token_id, cfg.sep_token_id))
    ids = torch.tensor([[cls, 5 % cfg.vocab_size, 6 % cfg.vocab_size, sep]])
    with torch.no_grad():
        out = model(ids)
    t = out if isinstance(out, torch.Tensor) else (
        out.logits if hasattr(out, "logits") else out.last_hidden_state)
    if not bool(torch.isfinite(t.float()).all()):
        raise MmbertError(f"{path}: the model produces non-finite outputs; the weights are broken")
    return {"class": type(model).__name__, "parameters": model.num_parameters(),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "vocab": cfg.vocab_size}


def convert(src: str | Path, out: str | Path, *, dtype: torch.dtype | str | None = "auto",
            overwrite: bool = False) -> Path:
    """Re-save a ModernBERT directory in our canonical layout (clean names, one safetensors file,
    config.json readable by transformers 4.48 and 5.x), optionally changing the dtype. The
    tokenizer files come along: config.json may now name special ids taken from them. ``out``
    is an output directory (:class:`mmbert.outputs.OutputDir`)."""
    od = OutputDir(out, overwrite=overwrite)
    od.check()
    model = load_any(src, dtype=dtype)
    with od as tmp:
        model.save_pretrained(tmp)
        copy_tokenizer(Path(src), tmp)
    return Path(out)
