"""Reading the demo corpus for evaluation (layout: :mod:`mmbert.data.demo`).

``DIR/heldout/<lang>.txt`` (blank-line separated documents), ``DIR/parallel/udhr.jsonl`` and
``DIR/parallel/gettext.jsonl`` (records ``lang, key, text, split, source``) and
``DIR/corpus.json`` (per-language sizes). Only the ``heldout`` split is used for scores; the
probes of the classification and tagging tasks train on ``train``-split strings (labels never
reach pre-training, only the text does).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from mmbert.errors import MmbertError

ENGLISH = "eng_Latn"


@dataclass
class Corpus:
    root: Path

    @classmethod
    def open(cls, path: str | Path) -> "Corpus":
        p = Path(path)
        if not (p / "corpus.json").is_file():
            raise MmbertError(f"{p}: no corpus.json; expected a corpus directory from "
                              "`mmbert data fetch-demo`")
        return cls(p)

    @cached_property
    def summary(self) -> dict:
        try:
            return json.loads((self.root / "corpus.json").read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise MmbertError(f"{self.root / 'corpus.json'}: not valid JSON ({e})") from None

    @property
    def languages(self) -> list[str]:
        return sorted(self.summary.get("languages", {}))

    def train_chars(self, lang: str) -> int:
        return int(self.summary["languages"].get(lang, {}).get("train", {}).get("chars", 0))

    def documents(self, lang: str, split: str = "heldout") -> list[str]:
        f = self.root / split / f"{lang}.txt"
        if not f.is_file():
            return []
        return [d.strip() for d in f.read_text(encoding="utf-8").split("\n\n") if d.strip()]

    def _parallel(self, name: str) -> list[dict]:
        f = self.root / "parallel" / f"{name}.jsonl"
        if not f.is_file():
            raise MmbertError(f"{f}: missing; expected the demo corpus' parallel/{name}.jsonl")
        with f.open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    @cached_property
    def udhr(self) -> list[dict]:
        """Primary translation of each language only (one version per language)."""
        return [r for r in self._parallel("udhr") if r.get("primary", True)]

    @cached_property
    def gettext(self) -> list[dict]:
        return self._parallel("gettext")


# ---------------------------------------------------------------------------------------------
# Aligned units
# ---------------------------------------------------------------------------------------------

def udhr_units(corpus: Corpus, lang: str, split: str = "heldout") -> list[tuple[str, str]]:
    """Aligned (English, lang) paragraphs of the split's articles.

    An article whose paragraph count matches English is aligned paragraph by paragraph;
    otherwise (translations sometimes merge or split paragraphs) the whole article is one unit
    on both sides, so every article counts and no pair is misaligned.
    """
    by: dict[str, dict[str, str]] = defaultdict(dict)
    for r in corpus.udhr:
        if r["split"] == split and r["lang"] in (lang, ENGLISH):
            by[r["lang"]][r["key"]] = r["text"]
    out = []
    for key in sorted(set(by[ENGLISH]) & set(by[lang]), key=lambda k: (len(k), k)):
        e, x = by[ENGLISH][key].split("\n"), by[lang][key].split("\n")
        if len(e) == len(x):
            out.extend((a.strip(), b.strip()) for a, b in zip(e, x) if a.strip() and b.strip())
        else:
            out.append((" ".join(e).strip(), " ".join(x).strip()))
    return out


@dataclass(frozen=True)
class Message:
    lang: str
    key: str
    source: str
    text: str
    split: str


def gettext_messages(corpus: Corpus) -> dict[str, dict[tuple[str, str], Message]]:
    """lang -> {(catalogue, msgid key): Message}."""
    out: dict[str, dict[tuple[str, str], Message]] = defaultdict(dict)
    for r in corpus.gettext:
        out[r["lang"]][(r["source"], r["key"])] = Message(r["lang"], r["key"], r["source"],
                                                          r["text"], r["split"])
    return out


def gettext_pairs(corpus: Corpus, lang: str, split: str = "heldout",
                  cap: int | None = None) -> list[tuple[str, str]]:
    """Aligned (English, lang) strings by msgid, one per msgid (texts deduplicated on both
    sides so that a retrieval target is never ambiguous); capped by a stable order."""
    msgs = _messages(corpus)
    eng, x = msgs.get(ENGLISH, {}), msgs.get(lang, {})
    seen_keys: set[str] = set()
    seen_e: set[str] = set()
    seen_x: set[str] = set()
    out = []
    for dk in sorted(set(eng) & set(x), key=lambda dk: (dk[1], dk[0])):
        m, n = eng[dk], x[dk]
        if m.split != split or dk[1] in seen_keys or m.text in seen_e or n.text in seen_x:
            continue
        seen_keys.add(dk[1])
        seen_e.add(m.text)
        seen_x.add(n.text)
        out.append((m.text, n.text))
        if cap is not None and len(out) >= cap:
            break
    return out


_CACHE: dict[tuple, dict] = {}


def _messages(corpus: Corpus) -> dict[str, dict[tuple[str, str], Message]]:
    """gettext_messages, cached for the last corpus (keyed by path and file mtime)."""
    f = corpus.root / "parallel" / "gettext.jsonl"
    key = (corpus.root.resolve(), f.stat().st_mtime_ns if f.is_file() else 0)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = gettext_messages(corpus)
    return _CACHE[key]


def eval_languages(corpus: Corpus, sizes: dict[str, int], max_languages: int | None,
                   min_strings: int = 30) -> list[str]:
    """Languages (besides English) with held-out UDHR articles and at least ``min_strings``
    held-out gettext strings aligned with English, spread over the size range: sorted by
    training size, then evenly spaced picks (the largest always included), so that smaller
    languages are scored too, not only the top ones."""
    udhr = {r["lang"] for r in corpus.udhr if r["split"] == "heldout"}
    msgs = _messages(corpus)
    eng_held = {dk for dk, m in msgs.get(ENGLISH, {}).items() if m.split == "heldout"}
    cands = [l for l in msgs if l != ENGLISH and l in udhr
             and len(eng_held & set(msgs[l])) >= min_strings]
    cands.sort(key=lambda l: (-sizes.get(l, 0), l))
    if max_languages is None or len(cands) <= max_languages:
        return cands
    if max_languages <= 0:
        return []
    if max_languages == 1:
        return cands[:1]
    step = (len(cands) - 1) / (max_languages - 1)
    return [cands[round(i * step)] for i in range(max_languages)]
