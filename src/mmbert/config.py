"""The model configuration: ``ModelConfig``, its validation, presets and config.json I/O.
Training recipes (phases, schedules, optimizer) live in :mod:`mmbert.recipe`.

``ModelConfig`` mirrors the transformers ``ModernBertConfig`` field names so that a config.json
written by either side reads in the other (see :func:`ModelConfig.to_hf_dict`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mmbert.errors import MmbertError

# the label value every loss ignores (not predicted), as in transformers
IGNORE_INDEX = -100
_POOLINGS = ("cls", "mean")
SPECIAL_ID_FIELDS = ("pad_token_id", "cls_token_id", "sep_token_id", "bos_token_id",
                     "eos_token_id", "mask_token_id")
_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "relu")


@dataclass(frozen=True)
class ModelConfig:
    """ModernBERT / mmBERT encoder hyper-parameters (names as in transformers' ModernBertConfig)."""

    vocab_size: int = 256000
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    max_position_embeddings: int = 8192
    global_attn_every_n_layers: int = 3
    local_attention: int = 128  # window width; token i sees j iff |i - j| <= local_attention // 2
    global_rope_theta: float = 160000.0
    local_rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    decoder_bias: bool = True
    hidden_activation: str = "gelu"
    classifier_activation: str = "gelu"
    classifier_pooling: str = "mean"
    classifier_bias: bool = False
    embedding_dropout: float = 0.0
    attention_dropout: float = 0.0
    mlp_dropout: float = 0.0
    classifier_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_cutoff_factor: float = 2.0
    tie_word_embeddings: bool = True
    # Gemma 2 vocabulary ids (the mmBERT tokenizer): pad 0, eos 1, bos 2, mask 4.
    pad_token_id: int = 0
    eos_token_id: int = 1
    bos_token_id: int = 2
    cls_token_id: int = 2
    sep_token_id: int = 1
    mask_token_id: int = 4

    def __post_init__(self) -> None:
        self.validate()

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> None:
        def need(ok: bool, field: str, expected: str) -> None:
            if not ok:
                raise MmbertError(
                    f"model config field '{field}' = {getattr(self, field)!r}: expected {expected}"
                )

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "max_position_embeddings",
                     "global_attn_every_n_layers", "local_attention"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) > 0, name,
                 "a positive integer")
        need(self.hidden_size % self.num_attention_heads == 0, "hidden_size",
             f"a multiple of num_attention_heads ({self.num_attention_heads})")
        need((self.hidden_size // self.num_attention_heads) % 2 == 0, "num_attention_heads",
             "a value giving an even head dimension (RoPE rotates pairs)")
        need(self.local_attention % 2 == 0, "local_attention", "an even window width")
        def number(name: str) -> float:
            try:  # NaN (fails every check) for a list, a non-numeric string, a huge int
                return float(getattr(self, name))
            except (TypeError, ValueError, OverflowError):
                return float("nan")

        for name in ("global_rope_theta", "local_rope_theta", "norm_eps", "initializer_range"):
            need(number(name) > 0, name, "a positive number")
        for name in ("embedding_dropout", "attention_dropout", "mlp_dropout", "classifier_dropout"):
            need(0.0 <= number(name) < 1.0, name, "a probability in [0, 1)")
        need(self.classifier_pooling in _POOLINGS, "classifier_pooling", f"one of {_POOLINGS}")
        need(self.hidden_activation in _ACTIVATIONS, "hidden_activation", f"one of {_ACTIVATIONS}")
        need(self.classifier_activation in _ACTIVATIONS, "classifier_activation",
             f"one of {_ACTIVATIONS}")
        # Special ids outside the vocabulary are metadata, as in transformers (its defaults
        # 50281/50282 sit in every config whose author changed only vocab_size); whatever needs
        # one asks via token_id(). The pad id names the embedding's padding row: it must exist.
        for name in SPECIAL_ID_FIELDS:
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 0, name,
                 "a non-negative integer token id")
        need(self.pad_token_id < self.vocab_size, "pad_token_id",
             f"a token id in [0, vocab_size={self.vocab_size}) (the embedding's padding row)")

    # -- special token ids --------------------------------------------------------------------
    def ids_outside_vocab(self) -> dict[str, int]:
        """``{field: id}`` of the special ids that name no row of the embedding matrix."""
        return {f: getattr(self, f) for f in SPECIAL_ID_FIELDS
                if getattr(self, f) >= self.vocab_size}

    def token_id(self, field: str, needed_for: str) -> int:
        """The special id ``field`` (e.g. ``"cls_token_id"``); MmbertError when it lies outside
        the vocabulary, saying what needs it and where a usable id comes from."""
        v = getattr(self, field)
        if v >= self.vocab_size:
            raise MmbertError(
                f"model config field '{field}' = {v} lies outside the vocabulary (vocab_size="
                f"{self.vocab_size}): {needed_for} needs a usable id; expected a tokenizer.json "
                f"(with that special token) next to config.json, or '{field}' set in config.json")
        return v

    # -- derived ------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def is_global_layer(self, layer: int) -> bool:
        """Layers 0, n, 2n, ... use global attention; the rest use the sliding window."""
        return layer % self.global_attn_every_n_layers == 0

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # -- parameter counts ---------------------------------------------------------------------
    def num_parameters(self) -> dict[str, int]:
        """Exact parameter counts.

        ``total`` / ``non_embedding`` count the encoder (transformers' ModernBertModel), which is
        how the paper reports sizes (307M / 110M for base); ``mlm_head`` is what MaskedLM adds
        (dense + norm + decoder bias; the decoder weight is tied to the embeddings).
        """
        h, i, L, v = self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.vocab_size
        nb = 1 if self.norm_bias else 0
        ln = h * (1 + nb)
        ab = 1 if self.attention_bias else 0
        mb = 1 if self.mlp_bias else 0
        attn = h * 3 * h + ab * 3 * h + h * h + ab * h
        mlp = h * 2 * i + mb * 2 * i + i * h + mb * h
        layers = L * (attn + mlp + 2 * ln) - ln  # layer 0 has no attention norm
        embeddings = v * h + ln  # token embeddings + embedding norm
        total = embeddings + layers + ln  # + final norm
        head = h * h + (h if self.classifier_bias else 0) + ln
        decoder = (v if self.decoder_bias else 0) + (0 if self.tie_word_embeddings else v * h)
        return {"total": total, "embedding": v * h, "non_embedding": total - v * h,
                "mlm_head": head + decoder}

    # -- transformers config.json -------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json dict that transformers (4.48+ and 5.x) reads as ModernBertConfig."""
        d = dataclasses.asdict(self)
        d.update(
            model_type="modernbert",
            # 5.x reads these two (4.48 keeps them as unused attributes); the flat fields above
            # (global_attn_every_n_layers, *_rope_theta) are what 4.48 reads. Both agree.
            layer_types=["full_attention" if self.is_global_layer(i) else "sliding_attention"
                         for i in range(self.num_hidden_layers)],
            rope_parameters={
                "full_attention": {"rope_theta": self.global_rope_theta, "rope_type": "default"},
                "sliding_attention": {"rope_theta": self.local_rope_theta, "rope_type": "default"},
            },
            architectures=["ModernBertForMaskedLM"],
            sparse_prediction=False,
            sparse_pred_ignore_index=IGNORE_INDEX,
            deterministic_flash_attn=False,
            reference_compile=False,
            repad_logits_with_grad=False,
        )
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json",
                     tokenizer_ids: dict[str, int] | None = None) -> "ModelConfig":
        """Build from a transformers config.json dict (4.48 or 5.x style); unknown keys are ignored.

        Keys a config.json leaves out take transformers' ModernBertConfig defaults (not ours),
        so a directory means the same model here as in transformers. Special token ids outside
        the vocabulary load as metadata, with one warning naming them; ``tokenizer_ids`` (the
        special ids of the directory's tokenizer, as ModelConfig fields) replace those and the
        ids the file leaves out (see :func:`_resolve_special_ids`)."""
        mt = d.get("model_type")
        if mt != "modernbert":
            raise MmbertError(
                f"{source}: model_type is {mt!r}; expected 'modernbert' (a ModernBERT/mmBERT model)"
            )
        names = {f.name for f in fields(cls)}
        kw = dict(_HF_DEFAULTS)
        kw.update({k: v for k, v in d.items() if k in names and v is not None})
        # transformers 5.x stores rope thetas in `rope_parameters` keyed by layer type; it wins
        # over the flat 4.48 fields, as in 5.x.
        rp = d.get("rope_parameters")
        if isinstance(rp, dict):
            for key, field in (("full_attention", "global_rope_theta"),
                               ("sliding_attention", "local_rope_theta")):
                sub = rp.get(key)
                if not isinstance(sub, dict):
                    continue
                if sub.get("rope_type", "default") != "default":
                    raise MmbertError(f"{source}: rope_parameters.{key}.rope_type is "
                                      f"{sub['rope_type']!r}; expected 'default' (plain RoPE)")
                if "rope_theta" in sub:
                    kw[field] = sub["rope_theta"]
        if "local_attention" not in d and isinstance(d.get("sliding_window"), int):
            kw["local_attention"] = 2 * d["sliding_window"]
        # 5.x: `layer_types` is authoritative; we support the periodic pattern it derives from
        lt = d.get("layer_types")
        if isinstance(lt, list) and lt:
            glob = [i for i, t in enumerate(lt) if t == "full_attention"]
            n = glob[1] if len(glob) > 1 else len(lt)
            expected = ["sliding_attention" if i % n else "full_attention" for i in range(len(lt))]
            if lt != expected:
                raise MmbertError(f"{source}: layer_types {lt} is not periodic; expected full "
                                  f"attention on layers 0, n, 2n, ... and sliding elsewhere")
            if "global_attn_every_n_layers" not in d or len(glob) > 1:
                kw["global_attn_every_n_layers"] = n
        for k in ("global_rope_theta", "local_rope_theta", "norm_eps", "initializer_range",
                  "initializer_cutoff_factor"):
            if k in kw:
                try:
                    kw[k] = float(kw[k])
                except (TypeError, ValueError, OverflowError):
                    raise MmbertError(f"{source}: {k} is {str(kw[k])[:40]!r}; expected a "
                                      f"number") from None
        if isinstance(kw.get("eos_token_id"), list) and kw["eos_token_id"]:
            kw["eos_token_id"] = kw["eos_token_id"][0]
        replaced = _resolve_special_ids(d, kw, tokenizer_ids or {})
        try:
            config = cls(**kw)
        except (TypeError, MmbertError) as e:
            raise MmbertError(f"{source}: {e}") from None
        _warn_ids_outside_vocab(config, replaced)
        return config

    @classmethod
    def load_json(cls, path: str | Path,
                  tokenizer_ids: dict[str, int] | None = None) -> "ModelConfig":
        from mmbert.outputs import read_json

        d = read_json(path, "a transformers config.json")
        return cls.from_hf_dict(d, source=str(path), tokenizer_ids=tokenizer_ids)


def _is_id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _resolve_special_ids(d: dict[str, Any], kw: dict[str, Any],
                         tokenizer_ids: dict[str, int]) -> dict[str, int]:
    """Special ids in ``kw`` that ``d`` leaves out (or sets null) or puts outside the vocabulary
    take the tokenizer's id when it has one. A left-out pad id without one is ours (Gemma's 0):
    transformers' default 50283 would name no embedding row of a small vocabulary.
    Returns ``{field: value in d}`` of the out-of-vocabulary ids that were replaced."""
    vocab = kw.get("vocab_size")
    if not _is_id(vocab):
        return {}  # validation reports it
    replaced: dict[str, int] = {}
    for f in SPECIAL_ID_FIELDS:
        given, v = d.get(f) is not None, kw.get(f)
        if given and not (_is_id(v) and v >= vocab):
            continue  # usable, or invalid (validation reports it)
        t = tokenizer_ids.get(f)
        if _is_id(t) and t < vocab:
            if given:
                replaced[f] = v
            kw[f] = t
        elif f == "pad_token_id" and not (_is_id(v) and v < vocab) and not given:
            kw[f] = 0
    return replaced


_WARNED: set[str] = set()  # warnings already given in this process (each is given once)


def _warn_ids_outside_vocab(config: ModelConfig, replaced: dict[str, int]) -> None:
    """One warning naming the special ids that lie outside the vocabulary, given once per
    process: a command reads a config.json several times, `merge` several alike."""
    import warnings

    left = config.ids_outside_vocab()
    if not replaced and not left:
        return
    ids = ", ".join(f"{k}={v}" for k, v in {**replaced, **left}.items())
    msg = (f"config.json: {ids} outside the vocabulary (vocab_size={config.vocab_size}) "
           "(transformers' defaults stay so when only vocab_size is changed; the model never "
           "reads them)")
    if replaced:
        msg += "; using the tokenizer's " + ", ".join(f"{k}={getattr(config, k)}"
                                                      for k in replaced)
    if left:
        msg += (f"; {', '.join(left)} kept as metadata: framing, masking, fill-mask and "
                "evaluation take them from a tokenizer.json next to config.json, or fail saying so")
    if msg not in _WARNED:
        _WARNED.add(msg)
        warnings.warn(msg, UserWarning, stacklevel=1)


# transformers' ModernBertConfig defaults where they differ from ours (mmBERT's): a config.json
# that omits a key means transformers' value.
_HF_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50368, "classifier_pooling": "cls", "pad_token_id": 50283,
    "eos_token_id": 50282, "bos_token_id": 50281, "cls_token_id": 50281, "sep_token_id": 50282,
}


PRESETS: dict[str, ModelConfig] = {
    # mmBERT-base: 307M parameters, 110M without embeddings.
    "mmbert-base": ModelConfig(),
    # mmBERT-small: 140M parameters, 42M without embeddings.
    "mmbert-small": ModelConfig(hidden_size=384, intermediate_size=1152, num_attention_heads=6),
    # Tests and the CPU demo: same structure (global every 3rd layer, window shorter than the
    # sequence), tiny sizes. The vocabulary is replaced by the demo tokenizer's size.
    "tiny": ModelConfig(
        vocab_size=8192, hidden_size=128, intermediate_size=192, num_hidden_layers=6,
        num_attention_heads=4, max_position_embeddings=1024, local_attention=32,
    ),
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise MmbertError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]
