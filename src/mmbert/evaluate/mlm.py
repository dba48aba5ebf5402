"""Held-out masked-LM scores per language: accuracy and loss where the input holds the mask.

Each language's held-out documents (token shards' ``heldout`` split, or the corpus'
``heldout/<lang>.txt`` tokenised with the model's tokenizer) are cut into ``[CLS] ... [SEP]``
windows of at most ``seq_len`` tokens, up to ``max_tokens`` tokens per language. A fixed share
(15% by default) of the non-special tokens is *selected* from a generator seeded by (seed,
language), so a language's score does not depend on which other languages are evaluated.

The headline metric (:class:`MlmScore` ``accuracy`` / ``loss``) replaces **every** selected
position by the mask token: under pre-training's 80/10/10 rule the 10% of selected positions
left unchanged are answered by copying the input, which inflates the accuracy of a weak model
several-fold. That 80/10/10 score stays available as ``accuracy_801010`` (``corrupted=True``),
on the same selected positions, and is never the headline.

Baselines on the same positions: :meth:`HeldoutMlm.score_unigram` (always predict the language's most
frequent *training* token; its loss is the add-one smoothed training unigram distribution) and
a random initialisation (any model).
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from mmbert.config import IGNORE_INDEX
from mmbert.data.masking import Masker
from mmbert.errors import MmbertError
from mmbert.text import length_batches, load_text_tokenizer, pack

DEFAULT_MASK_RATIO = 0.15


@dataclass(frozen=True)
class MlmScore:
    """One language's held-out masked-LM score (see the module docstring)."""

    accuracy: float  # argmax == original, input holds the mask token at every selected position
    loss: float  # mean cross-entropy (nats) over the same positions
    masked: int  # selected positions scored
    tokens: int  # held-out tokens in the windows (specials excluded)
    accuracy_801010: float | None = None  # same positions, 80/10/10 corruption (copyable)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MaskedWindows:
    """One language's evaluation windows: the original ids and the selected positions."""

    ids: list[np.ndarray]
    selected: list[np.ndarray]

    @property
    def tokens(self) -> int:
        return sum(len(w) - 2 for w in self.ids)

    @property
    def labels(self) -> np.ndarray:
        """The original ids at every selected position, in window order."""
        return np.concatenate([w[s] for w, s in zip(self.ids, self.selected)]) if self.ids \
            else np.zeros(0, dtype=np.int64)


def _rng(seed: int, lang: str, stream: int = 0) -> np.random.Generator:
    key = [seed, zlib.crc32(lang.encode("utf-8"))] + ([stream] if stream else [])
    return np.random.default_rng(key)


def windows(docs: Sequence[Sequence[int]], seq_len: int, cls_id: int, sep_id: int,
            max_tokens: int | None) -> list[list[int]]:
    """Frame each document ``[CLS] ... [SEP]``, splitting long ones into ``seq_len`` windows."""
    body = seq_len - 2
    out: list[list[int]] = []
    total = 0
    for d in docs:
        d = [int(t) for t in d]
        for i in range(0, max(len(d), 1), body):
            piece = d[i:i + body]
            if not piece:
                continue
            if max_tokens is not None and total + len(piece) > max_tokens:
                piece = piece[:max_tokens - total]
                if len(piece) < 8:
                    return out
            out.append([cls_id, *piece, sep_id])
            total += len(piece)
            if max_tokens is not None and total >= max_tokens:
                return out
    return out


def _load(model_or_dir):
    """(MaskedLM, model dir or None)."""
    from mmbert.model import MaskedLM

    if isinstance(model_or_dir, (str, Path)):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return MaskedLM.from_pretrained(model_or_dir), Path(model_or_dir)
    if isinstance(model_or_dir, MaskedLM):
        return model_or_dir, None
    raise MmbertError("mlm_accuracy_per_language: expected a model directory or a MaskedLM")


def heldout_documents(data: str | Path, languages: Sequence[str] | None, split: str,
                      tokenizer=None) -> dict[str, list[np.ndarray]]:
    """Token documents per language: from a shards directory (``manifest.json``) or a corpus
    directory (``corpus.json``; text tokenised with ``tokenizer``)."""
    p = Path(data)
    from mmbert.data.shards import MANIFEST, ShardSet

    if (p / MANIFEST).is_file():
        ss = ShardSet(p, split=split)
        langs = list(languages) if languages is not None else list(ss.languages)
        return {l: [ss.doc(l, i) for i in range(ss.num_docs(l))] for l in langs
                if l in ss.languages}
    if (p / "corpus.json").is_file():
        if tokenizer is None:
            raise MmbertError(f"{p}: a corpus directory needs the model's tokenizer")
        from mmbert.evaluate.corpus import Corpus

        c = Corpus.open(p)
        langs = list(languages) if languages is not None else c.languages
        out = {}
        for l in langs:
            docs = c.documents(l, split)
            if docs:
                out[l] = [np.asarray(x, dtype=np.int64) for x in tokenizer.ids_batch(docs)]
        return out
    raise MmbertError(f"{p}: neither a shards directory (manifest.json) nor a corpus directory "
                      "(corpus.json)")


def check_shards_tokenizer(shards: str | Path, config, tokenizer_dir: str | Path | None) -> None:
    """Shards made with another vocabulary would score garbage: refuse them in one line."""
    import warnings

    from mmbert.data.shards import Manifest

    info = Manifest.read(shards).tokenizer
    n = info.vocab_size
    if isinstance(n, int) and n > config.vocab_size:
        raise MmbertError(f"{shards}: shards use a {n}-token vocabulary but the model's "
                          f"vocab_size is {config.vocab_size}; expected shards made with the "
                          "model's tokenizer")
    t = Path(tokenizer_dir) if tokenizer_dir is not None else None
    if t is None or not (t.is_file() or (t / "tokenizer.json").is_file()):
        return  # shards are already tokenised: a bare checkpoint without tokenizer is fine
    tt = load_text_tokenizer(t, config)
    if isinstance(n, int) and n != tt.vocab_size:
        raise MmbertError(f"{shards}: shards were made with a {n}-token tokenizer but the model's "
                          f"tokenizer ({tt.source}) has {tt.vocab_size}; expected the same "
                          "tokenizer")
    from mmbert.tokenizer import load_tokenizer

    fp = info.fingerprint
    if fp and fp != load_tokenizer(tt.source).fingerprint():
        warnings.warn(f"{shards}: tokenizer fingerprint {fp} differs from the model's "
                      f"tokenizer.json; MLM accuracy assumes the same vocabulary", stacklevel=3)


def _special_ids(config) -> set[int]:
    from mmbert.config import SPECIAL_ID_FIELDS

    return {getattr(config, f) for f in SPECIAL_ID_FIELDS}


@dataclass(frozen=True)
class Unigram:
    """A language's training-token counts (``counts[id]``, specials zeroed): predicts its most
    frequent token everywhere."""

    counts: np.ndarray

    @property
    def top(self) -> int:
        return int(self.counts.argmax())

    def log_prob(self, ids: np.ndarray) -> np.ndarray:
        """Add-one smoothed log-probability of each id under the training unigram."""
        c = self.counts.astype(np.float64)
        return np.log((c[np.asarray(ids)] + 1.0) / (c.sum() + len(c)))


class HeldoutMlm:
    """The held-out windows and selected positions of every language, prepared once and scored
    for any number of models (and the unigram baseline) on exactly the same positions."""

    def __init__(self, data: str | Path, config, *, split: str = "heldout",
                 languages: Sequence[str] | None = None,
                 mask_ratio: float = DEFAULT_MASK_RATIO, seed: int = 0, seq_len: int = 256,
                 max_tokens: int | None = 2048, tokenizer=None):
        if not 0 < mask_ratio < 1:
            raise MmbertError(f"mask_ratio {mask_ratio}: expected a value in (0, 1)")
        self.data, self.config, self.seed, self.tokenizer = Path(data), config, seed, tokenizer
        what = "held-out MLM evaluation"
        cls, sep = config.token_id("cls_token_id", what), config.token_id("sep_token_id", what)
        self.mask_id = config.token_id("mask_token_id", what)
        self.masker = Masker(config.vocab_size, frozenset(_special_ids(config)), self.mask_id)
        docs = heldout_documents(data, languages, split, tokenizer)
        self.sets: dict[str, MaskedWindows] = {}
        self._unigrams: dict[str, Unigram] | None = None
        for lang in sorted(docs):
            win = windows(docs[lang], seq_len, cls, sep, max_tokens)
            if win:
                sel = self._select(lang, [np.asarray(w, dtype=np.int64) for w in win],
                                   mask_ratio)
                if len(sel.labels):  # all-special windows leave nothing to score
                    self.sets[lang] = sel

    def _select(self, lang: str, win: list[np.ndarray], ratio: float) -> MaskedWindows:
        rng = _rng(self.seed, lang)
        sel = []
        for w in win:
            s = self.masker.select(w, ratio, rng)
            if not s.any():  # a short window always gets a prediction
                cand = np.flatnonzero(~self.masker.is_special(w))
                if cand.size:
                    s[int(rng.choice(cand))] = True
            sel.append(s)
        return MaskedWindows(win, sel)

    def _inputs(self, lang: str, corrupted: bool) -> list[np.ndarray]:
        m = self.sets[lang]
        if not corrupted:  # the mask token at every selected position
            return [np.where(s, self.mask_id, w) for w, s in zip(m.ids, m.selected)]
        rng = _rng(self.seed, lang, stream=1)
        return [self.masker.corrupt(w, s, rng)[0] for w, s in zip(m.ids, m.selected)]

    def _run(self, model, corrupted: bool,
             batch_tokens: int) -> tuple[dict[str, int], dict[str, float]]:
        """(correct predictions, summed loss) per language for one input variant."""
        seqs, labels, owner = [], [], []
        for lang, m in self.sets.items():
            for x, w, s in zip(self._inputs(lang, corrupted), m.ids, m.selected):
                seqs.append(x)
                labels.append(np.where(s, w, IGNORE_INDEX))
                owner.append(lang)
        correct = dict.fromkeys(self.sets, 0)
        loss = dict.fromkeys(self.sets, 0.0)
        model.eval()
        batches = length_batches([len(s) for s in seqs], 10**9, max_tokens=batch_tokens)
        with torch.no_grad():
            for b in tqdm(batches, desc="mlm eval", unit="batch", leave=False, disable=None):
                res = model(**pack([seqs[i] for i in b]).kwargs(),
                            labels=torch.from_numpy(np.concatenate([labels[i] for i in b])))
                y = np.concatenate([labels[i][labels[i] != IGNORE_INDEX] for i in b])
                hit = res.logits.argmax(-1).numpy() == y
                tl = res.token_loss.float().numpy()
                n = np.array([int((labels[i] != IGNORE_INDEX).sum()) for i in b])
                ends = np.cumsum(n)
                for k, i in enumerate(b):
                    lo, hi = ends[k] - n[k], ends[k]
                    correct[owner[i]] += int(hit[lo:hi].sum())
                    loss[owner[i]] += float(tl[lo:hi].sum())
        return correct, loss

    def score(self, model, *, corrupted: bool = False,
              batch_tokens: int = 8192) -> dict[str, MlmScore]:
        """Per-language scores of ``model`` (a MaskedLM); ``corrupted`` adds the 80/10/10
        column (a second forward pass)."""
        correct, loss = self._run(model, False, batch_tokens)
        extra = self._run(model, True, batch_tokens)[0] if corrupted else None
        out = {}
        for lang, m in self.sets.items():
            n = len(m.labels)  # >= 1 (see __init__)
            out[lang] = MlmScore(accuracy=correct[lang] / n, loss=loss[lang] / n, masked=n,
                                 tokens=m.tokens,
                                 accuracy_801010=extra[lang] / n if extra else None)
        return out

    def unigrams(self) -> dict[str, Unigram]:
        """Per-language token counts of the *training* split of the same data (counted once)."""
        if self._unigrams is None:
            self._unigrams = self._count_train()
        return self._unigrams

    def _count_train(self) -> dict[str, Unigram]:
        docs = heldout_documents(self.data, list(self.sets), "train", self.tokenizer)
        special = [i for i in _special_ids(self.config) if 0 <= i < self.config.vocab_size]
        out = {}
        for lang, ds in docs.items():
            ids = np.concatenate([np.asarray(d, dtype=np.int64) for d in ds]) if ds else []
            counts = np.bincount(ids, minlength=self.config.vocab_size)[:self.config.vocab_size]
            counts[special] = 0
            if counts.any():
                out[lang] = Unigram(counts)
        return out

    def score_unigram(self) -> dict[str, MlmScore]:
        """The per-language unigram baseline on the same positions (languages with training
        text only)."""
        out = {}
        for lang, u in self.unigrams().items():
            m = self.sets[lang]
            y = m.labels
            out[lang] = MlmScore(accuracy=float((y == u.top).mean()),
                                 loss=float(-u.log_prob(y).mean()),
                                 masked=len(y), tokens=m.tokens)
        return out


def heldout_mlm(model_dir_or_model, data: str | Path, split: str = "heldout", *,
                tokenizer_dir: str | Path | None = None, **kwargs: Any):
    """(MaskedLM, :class:`HeldoutMlm`) for a model directory or object and a shards or corpus
    directory; ``kwargs`` go to :class:`HeldoutMlm`."""
    model, mdir = _load(model_dir_or_model)
    tok = None
    from mmbert.data.shards import MANIFEST

    if (Path(data) / MANIFEST).is_file():
        check_shards_tokenizer(data, model.config, tokenizer_dir or mdir)
    elif (Path(data) / "corpus.json").is_file():
        tok = load_text_tokenizer(tokenizer_dir or mdir, model.config)
    return model, HeldoutMlm(data, model.config, split=split, tokenizer=tok, **kwargs)


def mlm_accuracy_per_language(model_dir_or_model, data: str | Path, split: str = "heldout", *,
                              languages: Sequence[str] | None = None,
                              mask_ratio: float = DEFAULT_MASK_RATIO, seed: int = 0,
                              seq_len: int = 256, max_tokens: int = 2048,
                              batch_tokens: int = 8192, tokenizer_dir: str | Path | None = None,
                              details: bool = False, corrupted: bool = False) -> dict[str, Any]:
    """Held-out MLM accuracy per language ``{lang: accuracy}`` (mask token at every selected
    position; cheap: capped per language).

    ``data`` is a shards directory or a demo corpus directory. With ``details=True`` returns
    ``{lang: MlmScore.to_dict()}`` instead. A model object needs ``tokenizer_dir`` when ``data``
    is a corpus. ``corrupted`` also scores the 80/10/10 input (``accuracy_801010``).
    """
    model, held = heldout_mlm(model_dir_or_model, data, split, tokenizer_dir=tokenizer_dir,
                              languages=languages, mask_ratio=mask_ratio, seed=seed,
                              seq_len=seq_len, max_tokens=max_tokens)
    scores = held.score(model, corrupted=corrupted, batch_tokens=batch_tokens)
    return {lang: (s.to_dict() if details else s.accuracy) for lang, s in scores.items()}
