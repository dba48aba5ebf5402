"""mmbert: massively multilingual ModernBERT encoders trained with annealed language learning.

The model classes are exported lazily (``from mmbert import MaskedLM`` imports torch only
then), so ``mmbert --help`` and light modules stay fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ModelConfig": "mmbert.config",
    "MmbertError": "mmbert.errors",
    "Encoder": "mmbert.model",
    "MaskedLM": "mmbert.model",
    "SequenceClassifier": "mmbert.model",
    "TokenClassifier": "mmbert.model",
    "SentenceEmbedder": "mmbert.model",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mmbert' has no attribute {name!r}")
