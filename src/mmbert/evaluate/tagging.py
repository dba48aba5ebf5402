"""Word-level language tagging of code-switched text (a token-classification task).

Data. Aligned UDHR paragraphs (English, X) are mixed at the word level the way code-switching
tends to run: walk through both translations in parallel and alternate chunks of 2-6 words,
taking each chunk from the same relative position of its side (so the mixed sentence roughly
keeps the content order). Every word is tagged ``eng`` or ``oth``. Train sentences come from
the training articles (1-20, preamble), test sentences from the held-out articles (21-30);
sentences are capped at ``max_words`` words.

Probe. Logistic regression on the frozen hidden state of each word's first subword (the same
alignment as token fine-tuning), trained on all evaluated languages pooled, scored per language
as word accuracy. Chance is the majority tag share (about one half).
"""

from __future__ import annotations

import zlib
from typing import Any, Sequence

import numpy as np

from mmbert.evaluate.classification import train_probe
from mmbert.evaluate.corpus import Corpus, udhr_units
from mmbert.tasks.io import TokenExample

TAGS = ("eng", "oth")


def code_switch(en: str, other: str, rng: np.random.Generator, max_words: int = 40,
                chunk: tuple[int, int] = (2, 6)) -> TokenExample | None:
    """Mix two translations of one text at the word level; None if either side is empty."""
    e, x = en.split(), other.split()
    if not e or not x:
        return None
    words: list[str] = []
    tags: list[str] = []
    pos = 0.0  # relative position in the text, 0..1
    side = int(rng.integers(2))
    while pos < 1.0 and len(words) < max_words:
        src = e if side == 0 else x
        n = int(rng.integers(chunk[0], chunk[1] + 1))
        start = int(round(pos * len(src)))
        piece = src[start:start + n]
        words += piece
        tags += [TAGS[side]] * len(piece)
        pos += max(len(piece), 1) / len(src)
        side = 1 - side
    if len(set(tags)) < 2:
        return None
    return TokenExample(words[:max_words], tags[:max_words])


def codeswitch_examples(corpus: Corpus, lang: str, split: str, *, max_sentences: int = 20,
                        max_words: int = 40, seed: int = 0) -> list[TokenExample]:
    """Code-switched English/``lang`` sentences from the split's aligned UDHR paragraphs."""
    rng = np.random.default_rng([seed, zlib.crc32(f"{lang}/{split}".encode())])
    out = []
    for e, x in udhr_units(corpus, lang, split):
        ex = code_switch(e, x, rng, max_words)
        if ex is not None:
            out.append(ex)
        if len(out) >= max_sentences:
            break
    return out


def tagging_probe(system, corpus: Corpus, languages: Sequence[str], *, train_sentences: int = 12,
                  test_sentences: int = 12, seed: int = 0) -> dict[str, Any]:
    """Word accuracy per language of a probe on first-subword states (pooled training)."""
    train = {l: codeswitch_examples(corpus, l, "train", max_sentences=train_sentences, seed=seed)
             for l in languages}
    test = {l: codeswitch_examples(corpus, l, "heldout", max_sentences=test_sentences, seed=seed)
            for l in languages}
    tr = [ex for l in languages for ex in train[l]]
    if not tr:
        return {"per_language": {}, "mean": float("nan"), "chance": float("nan")}
    feats = system.word_features([ex.words for ex in tr])
    x = np.concatenate(feats)
    y = [TAGS.index(t) for ex in tr for t in ex.labels]
    probe = train_probe(x, y, len(TAGS), seed=seed)
    per: dict[str, dict[str, Any]] = {}
    majority = []
    for lang in languages:
        exs = test[lang]
        if not exs:
            continue
        gold = np.array([TAGS.index(t) for ex in exs for t in ex.labels])
        pred = probe.predict(np.concatenate(system.word_features([ex.words for ex in exs])))
        per[lang] = {"accuracy": float((pred == gold).mean()), "words": int(len(gold))}
        majority.append(max(gold.mean(), 1 - gold.mean()))
    vals = [v["accuracy"] for v in per.values()]
    return {"per_language": per, "mean": float(np.mean(vals)) if vals else float("nan"),
            "chance": float(np.mean(majority)) if majority else float("nan"),
            "train_words": len(y)}
