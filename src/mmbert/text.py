"""Text -> model input -> embeddings: the one path used by ``Encoder.encode``, ``mmbert embed``,
fine-tuning and evaluation.

* :class:`TextTokenizer`: an :class:`mmbert.tokenizer.Tokenizer` plus the ids that frame text
  for the encoder, ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]`` (Gemma's bos = cls 2,
  eos = sep 1). :func:`load_text_tokenizer` takes them from a model's config (checked against
  its vocabulary); :meth:`TextTokenizer.from_tokenizer` from the tokenizer's bos/eos.
* :func:`encode_words`: pre-split words tokenised as running text, each token mapped back to
  its word (token classification, word features).
* :func:`length_batches` / :func:`pack`: rows sorted by length and cut into batches, each run
  *packed* (``input_ids [N]`` + ``cu_seqlens``): the encoder computes on real tokens only, so
  sorting matters for the memory bound of a batch, not for padding waste.
* :func:`pool` / :func:`embed_ids`: mean (or first-token) pooling of packed token states,
  L2-normalised, in input order.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mmbert.errors import MmbertError

if TYPE_CHECKING:
    from mmbert.config import ModelConfig
    from mmbert.tokenizer import Tokenizer


# ---------------------------------------------------------------------------------------------
# Tokenizer and framing
# ---------------------------------------------------------------------------------------------

@dataclass
class TextTokenizer:
    """A tokenizer plus the special ids that frame text for the encoder."""

    tokenizer: "Tokenizer"
    cls_id: int
    sep_id: int
    pad_id: int
    source: str  # the tokenizer.json it was loaded from

    @classmethod
    def from_tokenizer(cls, tokenizer: "Tokenizer") -> "TextTokenizer":
        """Framing with the tokenizer's own bos / eos ids."""
        return cls(tokenizer, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id,
                   str(tokenizer.source_file))

    @property
    def tok(self) -> Any:  # tokenizers.Tokenizer
        return self.tokenizer.backend

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def ids(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return self.tokenizer.encode(text)

    def ids_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer.encode_batch(texts)

    def frame(self, a: list[int], b: list[int] | None = None, max_length: int = 512) -> list[int]:
        """``[CLS] a [SEP] (b [SEP])``, truncating the longer side first to ``max_length``."""
        a, b = list(a), (list(b) if b is not None else None)
        budget = max_length - (3 if b is not None else 2)
        if budget < 1:
            raise MmbertError(f"max_length {max_length}: too small; expected at least 4")
        if b is None:
            a = a[:budget]
            return [self.cls_id, *a, self.sep_id]
        while len(a) + len(b) > budget:
            (a if len(a) >= len(b) else b).pop()
        return [self.cls_id, *a, self.sep_id, *b, self.sep_id]

    def frame_texts(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        """``[CLS] text [SEP]`` for each text, cut to ``max_length`` tokens."""
        if not texts:
            return []
        return [self.frame(ids, None, max_length) for ids in self.ids_batch(list(texts))]

    def frame_pairs(self, texts: Sequence[str], pairs: Sequence[str | None],
                    max_length: int) -> list[list[int]]:
        """``[CLS] text [SEP] (pair [SEP])`` per row (a pair of None: a single text)."""
        a = self.ids_batch(list(texts))
        b = iter(self.ids_batch([p for p in pairs if p is not None]))
        return [self.frame(x, next(b) if p is not None else None, max_length)
                for x, p in zip(a, pairs)]


def tokenizer_file(path: str | Path) -> Path:
    """``path/tokenizer.json`` for a directory, else ``path`` itself."""
    p = Path(path)
    return p / "tokenizer.json" if p.is_dir() else p


def load_text_tokenizer(model_dir: str | Path, config: "ModelConfig",
                        tokenizer_path: str | Path | None = None) -> TextTokenizer:
    """The tokenizer stored with a model (``tokenizer.json``), checked against its vocabulary.

    A tokenizer whose vocabulary is larger than the model's embedding matrix would index out of
    range (or silently use the wrong rows): that is an error, said in one line. Framing uses the
    config's cls/sep ids; one outside the vocabulary (transformers' defaults left in a
    config.json with a small vocabulary) is taken from the tokenizer, else an error names it.
    """
    from mmbert.hf import tokenizer_special_ids
    from mmbert.tokenizer import load_tokenizer

    p = Path(tokenizer_path) if tokenizer_path is not None else Path(model_dir)
    f = tokenizer_file(p)
    if not f.is_file():
        raise MmbertError(f"{p}: no tokenizer.json; expected the model's tokenizer next to "
                          "config.json (or pass --tokenizer)")
    tok = load_tokenizer(f)  # encode_special_tokens: "<mask>" in text stays text
    n = tok.vocab_size
    if n > config.vocab_size:
        raise MmbertError(f"{f}: tokenizer has {n} tokens but the model's config.json has "
                          f"vocab_size {config.vocab_size}; expected the tokenizer the model was "
                          "trained with")
    ids = {}
    for field in ("cls_token_id", "sep_token_id"):
        ids[field] = getattr(config, field)
        if ids[field] >= config.vocab_size:
            ids[field] = tokenizer_special_ids(f).get(field)
            if ids[field] is None or ids[field] >= config.vocab_size:
                config.token_id(field, f"framing text as [CLS] ... [SEP] with {f}")  # raises
    return TextTokenizer(tok, ids["cls_token_id"], ids["sep_token_id"], config.pad_token_id,
                         str(f))


def model_text_tokenizer(tokenizer: "Tokenizer", config: "ModelConfig") -> TextTokenizer:
    """Framing with the config's cls/sep ids when they name a row of the vocabulary, else the
    tokenizer's bos/eos (no file checks: the tokenizer is given)."""
    cls = config.cls_token_id if config.cls_token_id < config.vocab_size else tokenizer.bos_id
    sep = config.sep_token_id if config.sep_token_id < config.vocab_size else tokenizer.eos_id
    return TextTokenizer(tokenizer, cls, sep, config.pad_token_id, str(tokenizer.source_file))


# ---------------------------------------------------------------------------------------------
# Words -> tokens
# ---------------------------------------------------------------------------------------------

@dataclass
class WordEncoding:
    ids: list[int]  # [CLS] tokens [SEP]
    word_of_token: list[int]  # per id: index into the words, -1 for specials / no word

    def first_tokens(self, n_words: int) -> list[int]:
        """Position of each word's first token, -1 where the word has none (empty/truncated)."""
        first = [-1] * n_words
        for pos, w in enumerate(self.word_of_token):
            if w >= 0 and first[w] < 0:
                first[w] = pos
        return first


def encode_words(tt: TextTokenizer, words: Sequence[str], max_length: int = 512) -> WordEncoding:
    """Tokenise pre-split words as running text and map every token back to its word.

    The words are joined with single spaces; each token belongs to the first word its
    character span overlaps (a bare word-boundary piece spans only the space: no word). Empty
    words get no token; words cut off by ``max_length`` none either."""
    starts: list[int] = []
    ends: list[int] = []
    index: list[int] = []
    parts: list[str] = []
    pos = 0
    for j, w in enumerate(words):
        if not w or w.isspace():
            continue
        if parts:
            pos += 1  # the joining space
        starts.append(pos)
        ends.append(pos + len(w))
        index.append(j)
        parts.append(w)
        pos += len(w)
    if not parts:
        return WordEncoding([tt.cls_id, tt.sep_id], [-1, -1])
    enc = tt.tok.encode(" ".join(parts), add_special_tokens=False)
    word_of: list[int] = []
    for s, e in enc.offsets:
        k = bisect_right(ends, s)  # first word ending after the token starts
        word_of.append(index[k] if k < len(ends) and starts[k] < max(e, s + 1) else -1)
    keep = max_length - 2
    return WordEncoding([tt.cls_id, *enc.ids[:keep], tt.sep_id], [-1, *word_of[:keep], -1])


def first_token_rows(encs: Sequence[WordEncoding], rows: Sequence[int],
                     n_words: Sequence[int]) -> list[list[int]]:
    """For the sequences ``rows`` packed in this order: the packed position of each word's
    first token (-1 for a word without a token)."""
    out, off = [], 0
    for i in rows:
        out.append([off + f if f >= 0 else -1 for f in encs[i].first_tokens(n_words[i])])
        off += len(encs[i].ids)
    return out


# ---------------------------------------------------------------------------------------------
# Batching and packing
# ---------------------------------------------------------------------------------------------

@dataclass
class Packed:
    input_ids: torch.Tensor  # [N] long
    cu_seqlens: torch.Tensor  # [S+1] int32
    max_seqlen: int

    def kwargs(self) -> dict[str, Any]:
        return {"input_ids": self.input_ids, "cu_seqlens": self.cu_seqlens,
                "max_seqlen": self.max_seqlen}


def pack(seqs: Sequence[Sequence[int]], device: torch.device | str | None = None) -> Packed:
    lens = [len(s) for s in seqs]
    ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long)
    cu = torch.zeros(len(seqs) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lens, dtype=torch.int32), 0)
    if device is not None:
        ids, cu = ids.to(device), cu.to(device)
    return Packed(ids, cu, max(lens))


def length_batches(lengths: Sequence[int], batch_size: int, *, max_tokens: int | None = None,
                   shuffle: bool = False, seed: int = 0,
                   longest_first: bool = False) -> list[list[int]]:
    """Index batches of similar length: sort by length (ties in input order), cut into batches
    of at most ``batch_size`` rows and ``max_tokens`` tokens (a longer single row gets a batch
    of its own); shuffled batch order for training."""
    sign = -1 if longest_first else 1
    order = sorted(range(len(lengths)), key=lambda i: (sign * lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_tokens = 0
    for i in order:
        if cur and (len(cur) >= batch_size or
                    (max_tokens is not None and cur_tokens + lengths[i] > max_tokens)):
            batches.append(cur)
            cur, cur_tokens = [], 0
        cur.append(i)
        cur_tokens += lengths[i]
    if cur:
        batches.append(cur)
    if shuffle:
        random.Random(seed).shuffle(batches)
    return batches


def token_batches(lengths: Sequence[int], batch_tokens: int,
                  max_batch: int = 256) -> list[list[int]]:
    """Longest first, at most ``batch_tokens`` tokens (and ``max_batch`` rows) per batch: the
    largest batch runs first, so a batch that does not fit fails at once."""
    return length_batches(lengths, max_batch, max_tokens=batch_tokens, longest_first=True)


def random_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """Shuffled fixed-size batches (contrastive training wants mixed, not length-sorted, rows)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def packed_batches(seqs: Sequence[Sequence[int]], batches: Sequence[list[int]],
                   device: torch.device | str | None = None) -> Iterator[tuple[list[int], Packed]]:
    """``(rows, packed rows)`` per batch of row indices."""
    for b in batches:
        yield b, pack([seqs[i] for i in b], device)


# ---------------------------------------------------------------------------------------------
# Pooling and embeddings
# ---------------------------------------------------------------------------------------------

def pool(hidden: torch.Tensor, cu_seqlens: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """[N, H] packed token states -> [S, H]: each sequence's first token (``"cls"``) or the
    mean over its tokens (anything else), in ``hidden``'s dtype."""
    cu = cu_seqlens.long()
    if pooling == "cls":
        return hidden[cu[:-1]]
    seg = torch.repeat_interleave(torch.arange(cu.numel() - 1, device=cu.device), cu.diff(),
                                  output_size=hidden.shape[0])
    sums = hidden.new_zeros(cu.numel() - 1, hidden.shape[-1]).index_add_(0, seg, hidden)
    return sums / cu.diff().clamp(min=1)[:, None].to(hidden.dtype)


def mean_pool(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """[N, H] packed token states -> [S, H] L2-normalised float32 means per sequence."""
    return F.normalize(pool(hidden.float(), cu_seqlens), dim=-1)


def embed_ids(encoder: torch.nn.Module, seqs: Sequence[Sequence[int]],
              batches: Sequence[list[int]], *, pooling: str = "mean", normalize: bool = True,
              progress: bool = False) -> np.ndarray:
    """Embeddings ``[len(seqs), hidden]`` (float32 numpy, input order) of framed id sequences,
    run packed in ``batches`` (of row indices: :func:`length_batches`); pooled in float32."""
    from tqdm import tqdm

    device = next(encoder.parameters()).device
    out = np.zeros((len(seqs), encoder.config.hidden_size), dtype=np.float32)
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        for b, p in tqdm(packed_batches(seqs, batches, device), total=len(batches),
                         desc="embed", unit="batch", disable=not progress):
            h = encoder(**p.kwargs()).last_hidden_state.float()
            pooled = pool(h, p.cu_seqlens, pooling)
            out[b] = (F.normalize(pooled, dim=-1) if normalize else pooled).cpu().numpy()
    encoder.train(was_training)
    return out


def embed_texts(encoder: torch.nn.Module, tt: TextTokenizer, texts: Sequence[str], *,
                batch_size: int = 64, max_length: int = 512,
                max_tokens: int | None = 16384) -> np.ndarray:
    """L2-normalised mean-pooled embeddings ``[len(texts), H]`` of ``[CLS] text [SEP]``,
    batched by length."""
    seqs = tt.frame_texts(texts, max_length)
    return embed_ids(encoder, seqs, length_batches([len(s) for s in seqs], batch_size,
                                                   max_tokens=max_tokens))
