"""Sequence packing: documents ``[bos] doc [eos]`` concatenated into full rows of ``seq_len``.

Every slot of every row holds a real token (no padding). A document that does not fit the rest
of a row is split: its remainder starts the next row (and the next batch, via the carry-over).
Each row is cut into segments, one per document piece; ``cu_seqlens`` marks the segments so the
encoder never attends across documents or rows, and positions restart at 0 in each segment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

# A document source: returns (key, lang index, token ids without specials). ``key`` is any
# JSON-able value from which ``fetch(key)`` gives the same document back (for resuming).
DocSource = Callable[[], tuple[Any, int, np.ndarray]]


@dataclass
class Packed:
    input_ids: np.ndarray     # [N] int64, N = num_rows * seq_len
    cu_seqlens: np.ndarray    # [S + 1] int32
    position_ids: np.ndarray  # [N] int64
    lang_ids: np.ndarray      # [N] int64
    max_seqlen: int
    num_rows: int


class Packer:
    """Stateful packer: ``pack(source, num_rows)`` fills rows; a split document carries over."""

    def __init__(self, seq_len: int, bos_id: int, eos_id: int) -> None:
        self.seq_len = seq_len
        self.bos_id, self.eos_id = bos_id, eos_id
        # carry-over: (key, lang, wrapped tokens, offset of the next unused token)
        self._carry: tuple[Any, int, np.ndarray, int] | None = None

    def wrap(self, doc: np.ndarray) -> np.ndarray:
        w = np.empty(len(doc) + 2, dtype=np.int64)
        w[0], w[-1] = self.bos_id, self.eos_id
        w[1:-1] = doc
        return w

    def pack(self, source: DocSource, num_rows: int) -> Packed:
        seq_len = self.seq_len
        pieces: list[np.ndarray] = []
        seg_lens: list[int] = []
        seg_langs: list[int] = []
        for _ in range(num_rows):
            room = seq_len
            while room:
                if self._carry is None:
                    key, lang, doc = source()
                    self._carry = (key, lang, self.wrap(doc), 0)
                key, lang, w, off = self._carry
                take = min(room, len(w) - off)
                pieces.append(w[off:off + take])
                seg_lens.append(take)
                seg_langs.append(lang)
                room -= take
                off += take
                self._carry = None if off == len(w) else (key, lang, w, off)
        lens = np.asarray(seg_lens, dtype=np.int64)
        cu = np.zeros(len(lens) + 1, dtype=np.int32)
        np.cumsum(lens, out=cu[1:])
        ids = np.concatenate(pieces)
        starts = np.repeat(cu[:-1].astype(np.int64), lens)
        pos = np.arange(len(ids), dtype=np.int64) - starts
        langs = np.repeat(np.asarray(seg_langs, dtype=np.int64), lens)
        return Packed(ids, cu, pos, langs, int(lens.max()), num_rows)

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any] | None:
        if self._carry is None:
            return None
        key, lang, _, off = self._carry
        return {"key": key, "lang": lang, "offset": off}

    def load_state_dict(self, state: dict[str, Any] | None,
                        fetch: Callable[[Any], np.ndarray]) -> None:
        if state is None:
            self._carry = None
            return
        w = self.wrap(fetch(state["key"]))
        self._carry = (state["key"], int(state["lang"]), w, int(state["offset"]))
