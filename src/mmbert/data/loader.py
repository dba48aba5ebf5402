"""``MLMLoader``: an infinite, resumable stream of packed, masked MLM batches.

sample (language per document, p ∝ tokens ** tau) -> pack (full rows, cu_seqlens) -> mask.

Determinism without hidden state: every random choice comes from a counter-based generator,
``numpy.random.default_rng([seed, ...counters])``:

- language draws: block ``b`` of 4096 draws of rank ``r`` uses ``[seed, r, b, 1]``;
- document order: epoch ``e`` of language ``L`` is a permutation from ``[seed, crc32(L), e, 2]``,
  the same on every rank; rank ``r`` of ``world_size`` reads every ``world_size``-th document
  from position ``r`` (disjoint per epoch); a language whose documents run out starts the next
  epoch (a new shuffle);
- masking of batch ``i`` on rank ``r`` uses ``[seed, r, i, 3]``.

So the whole state is a few counters plus the packer's carry-over (which document, how far):
``state_dict()`` is a small JSON-able dict and ``load_state_dict`` continues with exactly the
batches an uninterrupted loader would have produced.

The trainer passes a *data slot* as ``rank`` and the slots of a full step as ``world_size``
(:mod:`mmbert.train.slots`), not its process rank: the streams do not depend on how many
processes share them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmbert.config import IGNORE_INDEX
from mmbert.data.masking import Masker
from mmbert.data.packing import Packer
from mmbert.data.sampler import document_probs, phase_probs, select_languages
from mmbert.data.shards import ShardSet
from mmbert.errors import MmbertError

_BLOCK = 4096


@dataclass
class Batch:
    """One packed MLM batch (torch tensors). ``N = num_rows * seq_len`` tokens."""

    input_ids: Any     # [N] long, masked
    labels: Any        # [N] long, -100 where not masked
    position_ids: Any  # [N] long, restart at 0 per segment
    cu_seqlens: Any    # [S + 1] int32
    max_seqlen: int
    lang_ids: Any      # [N] long, index into loader.languages
    num_rows: int

    def to(self, device: Any, non_blocking: bool = False) -> "Batch":
        mv = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(mv(self.input_ids), mv(self.labels), mv(self.position_ids),
                     mv(self.cu_seqlens), self.max_seqlen, mv(self.lang_ids), self.num_rows)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())


class MLMLoader:
    """Infinite iterator of :class:`Batch` over the train split of a shard directory.

    ``languages``: ``"all"``, top-k int, or a list of codes; ``tau``: sampling exponent;
    ``seq_len``: row length; ``batch_tokens``: tokens per batch (``batch_tokens // seq_len``
    full rows); ``mask_ratio``: MLM ratio of the phase; ``replay``: those of ``languages`` that
    get ``replay_share`` of the tokens (:func:`~mmbert.data.sampler.phase_probs`). ``rank``/``world_size``: this process'
    share of the data.
    """

    def __init__(self, shards_dir: str | Path, *, languages: str | int | Sequence[str] = "all",
                 tau: float = 0.7, seq_len: int = 1024, batch_tokens: int = 8192,
                 mask_ratio: float = 0.3, seed: int = 0, rank: int = 0, world_size: int = 1,
                 split: str = "train", as_torch: bool = True, replay: Sequence[str] = (),
                 replay_share: float = 0.0) -> None:
        if seq_len < 4:
            raise MmbertError(f"seq_len {seq_len}: expected at least 4")
        if batch_tokens < seq_len:
            raise MmbertError(f"batch_tokens {batch_tokens}: expected at least seq_len "
                              f"({seq_len}); a batch holds batch_tokens // seq_len full rows")
        if not 0 <= rank < world_size:
            raise MmbertError(f"rank {rank} of world_size {world_size}: expected 0 <= rank < "
                              f"world_size")
        if not 0.0 <= mask_ratio <= 1.0:
            raise MmbertError(f"mask_ratio {mask_ratio}: expected a value in [0, 1]")
        self.shards = ShardSet(shards_dir, split)
        self.languages: list[str] = select_languages(self.shards, languages)
        counts = {lang: self.shards.num_tokens(lang) for lang in self.languages}
        self.probs = phase_probs(counts, tau, replay, replay_share)
        mean_len = {lang: counts[lang] / self.shards.num_docs(lang) + 2 for lang in self.languages}
        q = document_probs(self.probs, mean_len)
        self._cdf = np.cumsum([q[lang] for lang in self.languages])
        self._cdf[-1] = 1.0
        self.tau, self.seq_len, self.mask_ratio = tau, seq_len, mask_ratio
        self.num_rows = batch_tokens // seq_len
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.as_torch = as_torch
        self._crc = [zlib.crc32(lang.encode()) for lang in self.languages]
        self._ndocs = [self.shards.num_docs(lang) for lang in self.languages]
        self._offsets = [self.shards.offsets(lang) for lang in self.languages]
        self._tokens = [self.shards.tokens(lang) for lang in self.languages]
        self.packer = Packer(seq_len, self.shards.bos_id, self.shards.eos_id)
        self.masker = Masker(self.shards.vocab_size, self.shards.special_ids, self.shards.mask_id)
        self._reset()

    # -- streams ------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.batch_index = 0
        self._block, self._block_pos = 0, 0
        self._choices = self._draw_block(0)
        self._epoch = [0] * len(self.languages)
        self._pos = [0] * len(self.languages)
        self._order: dict[int, tuple[int, np.ndarray]] = {}
        self.packer.load_state_dict(None, self._fetch)

    def _draw_block(self, block: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.rank, block, 1])
        return np.searchsorted(self._cdf, rng.random(_BLOCK), side="right").astype(np.int64)

    def _rank_order(self, li: int, epoch: int) -> np.ndarray:
        """This rank's documents of language ``li`` in epoch ``epoch``."""
        cached = self._order.get(li)
        if cached is not None and cached[0] == epoch:
            return cached[1]
        n = self._ndocs[li]
        perm = np.random.default_rng([self.seed, self._crc[li], epoch, 2]).permutation(n)
        if n >= self.world_size:
            mine = perm[self.rank::self.world_size]
        else:  # fewer documents than ranks: every rank reads all, starting at a different one
            mine = np.roll(perm, -(self.rank % n))
        self._order[li] = (epoch, mine)
        return mine

    def _next_language(self) -> int:
        if self._block_pos == _BLOCK:
            self._block += 1
            self._block_pos = 0
            self._choices = self._draw_block(self._block)
        li = int(self._choices[self._block_pos])
        self._block_pos += 1
        return li

    def _doc_tokens(self, li: int, d: int) -> np.ndarray:
        off = self._offsets[li]
        return self._tokens[li][off[d]:off[d + 1]]

    def _next_doc(self) -> tuple[Any, int, np.ndarray]:
        li = self._next_language()
        order = self._rank_order(li, self._epoch[li])
        d = int(order[self._pos[li]])
        self._pos[li] += 1
        if self._pos[li] == len(order):
            self._epoch[li] += 1
            self._pos[li] = 0
        return [li, d], li, self._doc_tokens(li, d)

    def _fetch(self, key: Any) -> np.ndarray:
        li, d = key
        return self._doc_tokens(int(li), int(d))

    # -- iteration ----------------------------------------------------------------------------
    def __iter__(self) -> "MLMLoader":
        return self

    def __next__(self) -> Batch:
        packed = self.packer.pack(self._next_doc, self.num_rows)
        rng = np.random.default_rng([self.seed, self.rank, self.batch_index, 3])
        ids, labels = self.masker(packed.input_ids, self.mask_ratio, rng)
        self.batch_index += 1
        arrays = (ids, labels, packed.position_ids, packed.cu_seqlens, packed.lang_ids)
        if self.as_torch:
            import torch

            arrays = tuple(torch.from_numpy(a) for a in arrays)
        return Batch(arrays[0], arrays[1], arrays[2], arrays[3], packed.max_seqlen, arrays[4],
                     packed.num_rows)

    def padding_batch(self) -> Batch:
        """A batch that trains nothing: one segment ``[bos, eos]`` without labels. A trainer rank
        with no data slot left in a step runs it, so that every rank makes the same number of
        forward/backward passes; it does not touch the stream."""
        ids = np.array([self.shards.bos_id, self.shards.eos_id], dtype=np.int64)
        arrays = (ids, np.full(2, IGNORE_INDEX, dtype=np.int64), np.arange(2, dtype=np.int64),
                  np.array([0, 2], dtype=np.int32), np.zeros(2, dtype=np.int64))
        if self.as_torch:
            import torch

            arrays = tuple(torch.from_numpy(a) for a in arrays)
        return Batch(arrays[0], arrays[1], arrays[2], arrays[3], 2, arrays[4], 1)

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A small JSON-serialisable dict; ``load_state_dict`` resumes exactly."""
        return {
            "version": 1, "seed": self.seed, "rank": self.rank, "world_size": self.world_size,
            "languages": list(self.languages), "seq_len": self.seq_len,
            "batch_index": self.batch_index, "block": self._block, "block_pos": self._block_pos,
            "streams": {lang: [self._epoch[i], self._pos[i]]
                        for i, lang in enumerate(self.languages)},
            "carry": self.packer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            if state.get("version") != 1:
                raise KeyError("version")
            for k in ("seed", "rank", "world_size", "seq_len"):
                if state[k] != getattr(self, k):
                    raise MmbertError(f"loader state: {k} is {state[k]}; this loader has "
                                      f"{getattr(self, k)} (expected the same settings)")
            if list(state["languages"]) != self.languages:
                raise MmbertError("loader state: saved for other languages; expected the same "
                                  "phase languages and shards")
            self.batch_index = int(state["batch_index"])
            self._block, self._block_pos = int(state["block"]), int(state["block_pos"])
            self._choices = self._draw_block(self._block)
            for i, lang in enumerate(self.languages):
                self._epoch[i], self._pos[i] = (int(x) for x in state["streams"][lang])
            self._order = {}
            self.packer.load_state_dict(state["carry"], self._fetch)
        except (KeyError, TypeError, ValueError) as e:
            raise MmbertError(f"loader state: missing or bad field {e}; expected a dict from "
                              f"MLMLoader.state_dict()") from None
