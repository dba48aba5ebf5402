"""Composer / FlexBERT training checkpoints (``.pt``) as transformers ModernBERT directories.

ModernBERT and mmBERT were trained with MosaicML Composer on the FlexBERT model code; their raw
checkpoints (e.g. mmBERT's pre-decay checkpoint and its three decay variants) are pickles. A
pickle can run any code when loaded, so this module never calls plain ``pickle.load``: it reads
with torch's restricted unpickler (``weights_only=True``), which builds only tensors, numbers,
strings and plain containers (numpy arrays, which Composer's RNG state holds, are allowed as
data). A pickle that asks for anything else, such as ``os.system`` or a training-code class, is
refused with one line naming what it asked for, before anything from it runs.

The weights are renamed from FlexBERT's layout to transformers' (``bert.encoder.layers.i`` ->
``model.layers.i`` and so on) and the FlexBERT ``model_config`` (from the training YAML, or a
JSON file) is mapped to a ModernBERT ``config.json``, including FlexBERT's
``local_attn_rotary_emb_base: -1`` meaning "the same theta as the global layers". Only the
FlexBERT variant that ModernBERT and mmBERT were released with is accepted (pre-norm layers,
RoPE attention, GLU MLP, LayerNorm, no position embeddings, first layer without pre-norm);
another variant is refused naming the field. Sharded (FSDP) Composer checkpoints are not read.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmbert.errors import MmbertError

_UNSUPPORTED = re.compile(r"GLOBAL ([\w.]+)")

# FlexBERT (Composer's ``model.`` wrapper removed) -> transformers ModernBertForMaskedLM
_RENAMES = ((re.compile(r"^bert\.embeddings\.(tok_embeddings|norm)\."), r"model.embeddings.\1."),
            (re.compile(r"^bert\.encoder\.layers\.(\d+)\."), r"model.layers.\1."),
            (re.compile(r"^bert\.final_norm\."), "model.final_norm."),
            (re.compile(r"^(head|decoder)\."), r"\1."))
_WRAPPERS = ("model.", "module.", "_orig_mod.")

# The FlexBERT variant ModernBERT/mmBERT use; transformers' ModernBERT has only this one.
_REQUIRED = {"bert_layer": "prenorm", "attention_layer": "rope", "mlp_layer": "glu",
             "normalization": "layernorm", "embedding_layer": "sans_pos", "embed_norm": True,
             "final_norm": True, "skip_first_prenorm": True, "head_pred_norm": True,
             "rotary_emb_dim": None, "local_attn_rotary_emb_dim": None}
# FlexBertConfig's defaults for those fields (and transformers BertConfig's for the sizes)
_FLEX_DEFAULTS = {"bert_layer": "prenorm", "attention_layer": "base", "mlp_layer": "mlp",
                  "normalization": "rmsnorm", "embedding_layer": "absolute_pos",
                  "embed_norm": True, "final_norm": False, "skip_first_prenorm": False,
                  "head_pred_norm": True, "rotary_emb_dim": None,
                  "local_attn_rotary_emb_dim": None, "vocab_size": 30522, "hidden_size": 768,
                  "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "max_position_embeddings": 512, "hidden_act": "gelu", "head_pred_act": "silu",
                  "rotary_emb_base": 10000.0, "local_attn_rotary_emb_base": -1,
                  "sliding_window": -1, "global_attn_every_n_layers": -1, "attn_qkv_bias": False,
                  "attn_out_bias": False, "mlp_in_bias": False, "mlp_out_bias": False,
                  "head_pred_bias": False, "decoder_bias": True, "pad_token_id": 0,
                  "init_std": 0.02, "init_cutoff_factor": 2.0}


@dataclass(frozen=True)
class ComposerWeights:
    """The model weights of a Composer checkpoint, in transformers' ModernBERT names."""

    path: Path
    tensors: dict[str, torch.Tensor]
    has_optimizer: bool


def safe_load(path: str | Path) -> Any:
    """Unpickle a torch/Composer file allowing only tensors, numbers, strings, containers and
    numpy arrays; anything else is refused (one line naming it) before it can run."""
    p = Path(path)
    if not p.is_file():
        raise MmbertError(f"{p}: no such file; expected a Composer/torch checkpoint (.pt)")
    try:
        with torch.serialization.safe_globals(_numpy_data_types()):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = _UNSUPPORTED.search(str(e))
        what = m.group(1) if m else str(e).splitlines()[0]
        raise MmbertError(f"{p}: refused: the pickle asks for {what}, which is not a tensor, "
                          "number, string or plain container; nothing from it was run "
                          "(expected a checkpoint holding only weights and plain data)") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MmbertError(f"{p}: not a readable torch checkpoint ({first}); expected a file "
                          "written by torch.save or Composer (truncated or foreign?)") from None


def _numpy_data_types() -> list[Any]:
    """numpy's array reconstruction and dtype classes (Composer's saved RNG state): they build
    plain arrays and run no other code."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [_reconstruct, np.ndarray, np.dtype, *dtypes]


def _model_state(obj: Any, source: Path) -> tuple[dict[str, Any], bool]:
    """The model state dict inside a Composer checkpoint ({"state": {"model": ...}}), a
    {"model": ...} dict or a bare state dict; and whether optimizer state is present."""
    state = obj.get("state", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise MmbertError(f"{source}: holds a {type(obj).__name__}; expected a Composer "
                          "checkpoint (a dict with state.model) or a state dict")
    model = state.get("model", state)
    if not isinstance(model, dict) or not model:
        raise MmbertError(f"{source}: no model weights found; expected state.model in a "
                          "Composer checkpoint")
    return model, bool(state.get("optimizers"))


def hf_name(name: str) -> str | None:
    """A FlexBERT parameter name in transformers' ModernBertForMaskedLM layout (None: unknown)."""
    for prefix in _WRAPPERS:
        name = name.removeprefix(prefix)
    for pattern, repl in _RENAMES:
        if pattern.match(name):
            return pattern.sub(repl, name, count=1)
    return None


def read_composer_weights(path: str | Path) -> ComposerWeights:
    """The weights of a Composer/FlexBERT checkpoint under transformers' names."""
    p = Path(path)
    model, has_opt = _model_state(safe_load(p), p)
    out: dict[str, torch.Tensor] = {}
    for name, t in model.items():
        if not isinstance(t, torch.Tensor):
            raise MmbertError(f"{p}: state.model[{name!r}] is a {type(t).__name__}; expected "
                              "a tensor")
        target = hf_name(name)
        if target is None:
            raise MmbertError(f"{p}: weight {name!r} has no ModernBERT counterpart; expected "
                              "FlexBERT names (bert.embeddings.*, bert.encoder.layers.N.*, "
                              "bert.final_norm.*, head.*, decoder.*)")
        out[target] = t
    return ComposerWeights(path=p, tensors=out, has_optimizer=has_opt)


def flexbert_model_config(raw: Any, source: str) -> dict[str, Any]:
    """The FlexBERT ``model_config`` of a training YAML ({model: {model_config: ...}}), a
    ``{model_config: ...}`` dict or a flat one; ``max_seq_len`` at the top is kept."""
    if not isinstance(raw, dict):
        raise MmbertError(f"{source}: expected a mapping (a FlexBERT training YAML or its "
                          "model_config)")
    cfg = raw
    if isinstance(raw.get("model"), dict):
        cfg = raw["model"]
    cfg = cfg.get("model_config", cfg) if isinstance(cfg, dict) else cfg
    if not isinstance(cfg, dict):
        raise MmbertError(f"{source}: model.model_config is not a mapping")
    cfg = dict(cfg)
    if "max_position_embeddings" not in cfg and isinstance(raw.get("max_seq_len"), int):
        cfg["max_position_embeddings"] = raw["max_seq_len"]
    return cfg


def hf_config(flex: dict[str, Any], source: str) -> dict[str, Any]:
    """A transformers ModernBERT config.json dict for a FlexBERT ``model_config``."""
    def get(key: str) -> Any:
        return flex.get(key, _FLEX_DEFAULTS.get(key))

    for key, want in _REQUIRED.items():
        if get(key) != want:
            raise MmbertError(f"{source}: {key} = {get(key)!r}; expected {want!r} (the FlexBERT "
                              "variant ModernBERT/mmBERT use, the only one transformers' "
                              "ModernBERT can represent)")
    for a, b in (("attn_qkv_bias", "attn_out_bias"), ("mlp_in_bias", "mlp_out_bias")):
        if bool(get(a)) != bool(get(b)):
            raise MmbertError(f"{source}: {a} = {get(a)!r} but {b} = {get(b)!r}; expected equal "
                              "(ModernBERT has one bias switch for both)")
    norm = flex.get("norm_kwargs") or {}
    theta = float(get("rotary_emb_base"))
    local_theta = float(get("local_attn_rotary_emb_base"))
    every = int(get("global_attn_every_n_layers"))
    window = int(get("sliding_window"))
    positions = int(get("max_position_embeddings"))
    return {
        "model_type": "modernbert", "architectures": ["ModernBertForMaskedLM"],
        "vocab_size": int(get("vocab_size")), "hidden_size": int(get("hidden_size")),
        "intermediate_size": int(get("intermediate_size")),
        "num_hidden_layers": int(get("num_hidden_layers")),
        "num_attention_heads": int(get("num_attention_heads")),
        "max_position_embeddings": positions,
        # -1: every layer global (no sliding window)
        "global_attn_every_n_layers": every if every > 0 else 1,
        "local_attention": window if window > 0 else positions,
        "global_rope_theta": theta,
        # FlexBERT: -1 means the local layers use the global theta
        "local_rope_theta": local_theta if local_theta > 0 else theta,
        "norm_eps": float(norm.get("eps", 1e-5)), "norm_bias": bool(norm.get("bias", True)),
        "attention_bias": bool(get("attn_qkv_bias")), "mlp_bias": bool(get("mlp_in_bias")),
        "classifier_bias": bool(get("head_pred_bias")), "decoder_bias": bool(get("decoder_bias")),
        "hidden_activation": get("hidden_act"), "classifier_activation": get("head_pred_act"),
        "initializer_range": float(get("init_std")),
        "initializer_cutoff_factor": float(get("init_cutoff_factor")),
        "tie_word_embeddings": bool(flex.get("tie_word_embeddings", True)),
        **{k: flex[k] for k in ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id",
                                "sep_token_id", "mask_token_id") if isinstance(flex.get(k), int)},
    }


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A FlexBERT training YAML or a JSON file -> its model_config mapping."""
    import yaml

    from mmbert.outputs import read_mapping

    what = "a FlexBERT training YAML or a JSON model_config"
    raw = (read_mapping(path, what) if Path(path).suffix == ".json" else
           read_mapping(path, what, fmt="YAML", loads=yaml.safe_load, errors=(yaml.YAMLError,)))
    return flexbert_model_config(raw, str(path))


def composer_model(checkpoint: str | Path, config: str | Path, *,
                   tokenizer: str | Path | None = None):
    """A :class:`mmbert.model.MaskedLM` holding a Composer/FlexBERT checkpoint's weights.
    ``config``: the FlexBERT training YAML (or a JSON model_config); ``tokenizer``: a directory
    whose tokenizer supplies special ids the config leaves out."""
    from mmbert.config import ModelConfig
    from mmbert.hf import tokenizer_special_ids
    from mmbert.model import MaskedLM

    hf = hf_config(read_config_file(config), str(config))
    ids = tokenizer_special_ids(tokenizer) if tokenizer else None
    cfg = ModelConfig.from_hf_dict(hf, source=str(config), tokenizer_ids=ids)
    weights = read_composer_weights(checkpoint)
    model = MaskedLM(cfg)
    _load_strict(model, weights)
    return model


def _load_strict(model: torch.nn.Module, weights: ComposerWeights) -> None:
    """Every model tensor from the checkpoint, with its shape; nothing left over."""
    want = model.state_dict()
    got = dict(weights.tensors)
    emb = got.get("model.embeddings.tok_embeddings.weight")
    if model.config.tie_word_embeddings and emb is not None:
        got.setdefault("decoder.weight", emb)  # tied: a checkpoint may store it once
        if not torch.equal(got["decoder.weight"], emb):
            raise MmbertError(f"{weights.path}: decoder.weight differs from the embeddings, but "
                              "the config ties them; expected tie_word_embeddings: false")
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    if missing or extra:
        what = (f"missing {missing[:3]}" if missing else "") + (
            f"{'; ' if missing else ''}unexpected {extra[:3]}" if extra else "")
        raise MmbertError(f"{weights.path}: weights do not match the config ({what}); expected "
                          "the config of the run that wrote this checkpoint")
    for k, t in want.items():
        if tuple(got[k].shape) != tuple(t.shape):
            raise MmbertError(f"{weights.path}: {k} has shape {tuple(got[k].shape)}; the config "
                              f"gives {tuple(t.shape)} (expected the config of that run)")
    with torch.no_grad():
        for k, t in want.items():
            t.copy_(got[k].to(t.dtype))


def convert_composer(checkpoint: str | Path, config: str | Path, out: str | Path, *,
                     tokenizer: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write a Composer/FlexBERT checkpoint as a transformers ModernBERT directory (fp32 weights
    as trained; the tokenizer's files come along when ``tokenizer`` is given). Optimizer state
    is not carried over."""
    from mmbert.outputs import OutputDir
    from mmbert.safetensors_dir import copy_tokenizer

    od = OutputDir(out, overwrite=overwrite)
    od.check()
    model = composer_model(checkpoint, config, tokenizer=tokenizer)
    with od as tmp:
        model.save_pretrained(tmp)
        if tokenizer:
            copy_tokenizer(Path(tokenizer), tmp)
    return Path(out)
