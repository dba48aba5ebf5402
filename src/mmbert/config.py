"""Configuration: frozen dataclasses, presets, YAML loading, dotted overrides and validation.

``ModelConfig`` mirrors the transformers ``ModernBertConfig`` field names so that a config.json
written by either side reads in the other (see :func:`ModelConfig.to_hf_dict`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mmbert.errors import MmbertError

# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

_POOLINGS = ("cls", "mean")
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
        for name in ("global_rope_theta", "local_rope_theta", "norm_eps", "initializer_range"):
            need(float(getattr(self, name)) > 0, name, "a positive number")
        for name in ("embedding_dropout", "attention_dropout", "mlp_dropout", "classifier_dropout"):
            need(0.0 <= float(getattr(self, name)) < 1.0, name, "a probability in [0, 1)")
        need(self.classifier_pooling in _POOLINGS, "classifier_pooling", f"one of {_POOLINGS}")
        need(self.hidden_activation in _ACTIVATIONS, "hidden_activation", f"one of {_ACTIVATIONS}")
        need(self.classifier_activation in _ACTIVATIONS, "classifier_activation",
             f"one of {_ACTIVATIONS}")
        for name in ("pad_token_id", "eos_token_id", "bos_token_id", "cls_token_id",
                     "sep_token_id", "mask_token_id"):
            v = getattr(self, name)
            need(isinstance(v, int) and 0 <= v < self.vocab_size, name,
                 f"a token id in [0, vocab_size={self.vocab_size})")

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
            architectures=["ModernBertForMaskedLM"],
            sparse_prediction=False,
            sparse_pred_ignore_index=-100,
            deterministic_flash_attn=False,
            reference_compile=False,
            repad_logits_with_grad=False,
        )
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        """Build from a transformers config.json dict; unknown keys are ignored."""
        mt = d.get("model_type")
        if mt != "modernbert":
            raise MmbertError(
                f"{source}: model_type is {mt!r}; expected 'modernbert' (a ModernBERT/mmBERT model)"
            )
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names and v is not None}
        # transformers 5.x may store rope thetas in `rope_parameters` keyed by layer type.
        rp = d.get("rope_parameters")
        if isinstance(rp, dict):
            if isinstance(rp.get("full_attention"), dict) and "rope_theta" in rp["full_attention"]:
                kw.setdefault("global_rope_theta", rp["full_attention"]["rope_theta"])
            if isinstance(rp.get("sliding_attention"), dict) and "rope_theta" in rp["sliding_attention"]:
                kw.setdefault("local_rope_theta", rp["sliding_attention"]["rope_theta"])
        if "local_attention" not in kw and isinstance(d.get("sliding_window"), int):
            kw["local_attention"] = 2 * d["sliding_window"]
        for k in ("global_rope_theta", "local_rope_theta", "norm_eps", "initializer_range",
                  "initializer_cutoff_factor"):
            if k in kw:
                kw[k] = float(kw[k])
        try:
            return cls(**kw)
        except TypeError as e:  # pragma: no cover - defensive
            raise MmbertError(f"{source}: {e}") from None

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_hf_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load_json(cls, path: str | Path) -> "ModelConfig":
        p = Path(path)
        if not p.is_file():
            raise MmbertError(f"{p}: no such file; expected a transformers config.json")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MmbertError(f"{p}: not valid JSON ({e}); expected a transformers config.json") from None
        if not isinstance(d, dict):
            raise MmbertError(f"{p}: expected a JSON object")
        return cls.from_hf_dict(d, source=str(p))


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


# ---------------------------------------------------------------------------------------------
# Recipes (phases, training) — below this line
# ---------------------------------------------------------------------------------------------
