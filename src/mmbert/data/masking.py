"""MLM masking (BERT's 80/10/10) with a per-phase ratio.

Each non-special token is selected with probability ``ratio`` (mmBERT: 30 % pre-training, 15 %
mid-training, 5 % decay). Of the selected tokens 80 % become ``[mask]``, 10 % a random
non-special token, 10 % stay unchanged. Labels hold the original id at selected positions and
-100 elsewhere. Special tokens (pad, bos, eos, unk, mask) are never selected.
"""

from __future__ import annotations

import numpy as np

from mmbert.errors import MmbertError

IGNORE_INDEX = -100


class Masker:
    def __init__(self, vocab_size: int, special_ids: frozenset[int] | set[int], mask_id: int,
                 mask_prob: float = 0.8, random_prob: float = 0.1) -> None:
        if mask_prob < 0 or random_prob < 0 or mask_prob + random_prob > 1:
            raise MmbertError(f"masking: mask {mask_prob} + random {random_prob}: expected "
                              f"non-negative shares summing to at most 1")
        self.vocab_size = vocab_size
        self.mask_id = mask_id
        self.mask_prob, self.random_prob = mask_prob, random_prob
        self._special = np.zeros(vocab_size, dtype=bool)
        self._special[[i for i in special_ids if 0 <= i < vocab_size]] = True
        self._allowed = np.flatnonzero(~self._special).astype(np.int64)

    def __call__(self, ids: np.ndarray, ratio: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Returns (masked input ids, labels), both int64 like ``ids``."""
        if not 0.0 <= ratio <= 1.0:
            raise MmbertError(f"mask ratio {ratio}: expected a value in [0, 1]")
        ids = np.asarray(ids, dtype=np.int64)
        n = len(ids)
        u = rng.random(n, dtype=np.float32)
        sel = (u < ratio) & ~self._special[ids]
        labels = np.where(sel, ids, IGNORE_INDEX)
        out = ids.copy()
        idx = np.flatnonzero(sel)
        r = rng.random(len(idx), dtype=np.float32)
        out[idx[r < self.mask_prob]] = self.mask_id
        rand = idx[(r >= self.mask_prob) & (r < self.mask_prob + self.random_prob)]
        out[rand] = self._allowed[rng.integers(0, len(self._allowed), size=len(rand))]
        return out, labels


def mask_tokens(ids: np.ndarray, rng: np.random.Generator, *, ratio: float, mask_id: int,
                vocab_size: int, special: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Functional form for evaluation: like :class:`Masker`, but at least one position is
    selected when any token is maskable (a short held-out document always gets a prediction)."""
    m = Masker(vocab_size, frozenset(int(i) for i in np.asarray(special).ravel()), mask_id)
    ids = np.asarray(ids, dtype=np.int64)
    out, labels = m(ids, ratio, rng)
    if not (labels != IGNORE_INDEX).any():
        cand = np.flatnonzero(~m._special[ids])
        if cand.size:
            i = int(rng.choice(cand))
            labels[i] = ids[i]
            r = rng.random()
            if r < m.mask_prob:
                out[i] = mask_id
            elif r < m.mask_prob + m.random_prob:
                out[i] = m._allowed[rng.integers(len(m._allowed))]
    return out, labels
