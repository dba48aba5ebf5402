"""MLM masking (BERT's 80/10/10) with a per-phase ratio.

Each non-special token is selected with probability ``ratio`` (mmBERT: 30 % pre-training, 15 %
mid-training, 5 % decay). Of the selected tokens 80 % become ``[mask]``, 10 % a random
non-special token, 10 % stay unchanged. Labels hold the original id at selected positions and
-100 elsewhere. Special tokens (pad, bos, eos, unk, mask) are never selected.
"""

from __future__ import annotations

import numpy as np

from mmbert.config import IGNORE_INDEX
from mmbert.errors import MmbertError


class Masker:
    def __init__(self, vocab_size: int, special_ids: frozenset[int] | set[int], mask_id: int,
                 mask_prob: float = 0.8, random_prob: float = 0.1) -> None:
        if not (mask_prob >= 0 and random_prob >= 0 and mask_prob + random_prob <= 1):  # NaN too
            raise MmbertError(f"masking: mask {mask_prob} + random {random_prob}: expected "
                              f"non-negative shares summing to at most 1")
        self.vocab_size = vocab_size
        self.mask_id = mask_id
        self.mask_prob, self.random_prob = mask_prob, random_prob
        self._special = np.zeros(vocab_size, dtype=bool)
        self._special[[i for i in special_ids if 0 <= i < vocab_size]] = True
        self._allowed = np.flatnonzero(~self._special).astype(np.int64)

    def select(self, ids: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
        """Positions chosen for prediction: each non-special token with probability ``ratio``."""
        if not 0.0 <= ratio <= 1.0:
            raise MmbertError(f"mask ratio {ratio}: expected a value in [0, 1]")
        ids = np.asarray(ids, dtype=np.int64)
        u = rng.random(len(ids), dtype=np.float32)
        return (u < ratio) & ~self._special[ids]

    def corrupt(self, ids: np.ndarray, selected: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(input ids, labels) for the ``selected`` positions under this masker's mask / random /
        keep shares."""
        ids = np.asarray(ids, dtype=np.int64)
        labels = np.where(selected, ids, IGNORE_INDEX)
        out = ids.copy()
        idx = np.flatnonzero(selected)
        r = rng.random(len(idx), dtype=np.float32)
        out[idx[r < self.mask_prob]] = self.mask_id
        rand = idx[(r >= self.mask_prob) & (r < self.mask_prob + self.random_prob)]
        out[rand] = self._allowed[rng.integers(0, len(self._allowed), size=len(rand))]
        return out, labels

    def is_special(self, ids: np.ndarray) -> np.ndarray:
        return self._special[np.asarray(ids, dtype=np.int64)]

    def __call__(self, ids: np.ndarray, ratio: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Returns (masked input ids, labels), both int64 like ``ids``."""
        return self.corrupt(ids, self.select(ids, ratio, rng), rng)
