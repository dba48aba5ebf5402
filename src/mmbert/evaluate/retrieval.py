"""Bitext retrieval: find each sentence's translation among all candidates by cosine.

For a language X and aligned units (e_i, x_i): accuracy@1 of X -> English (is e_i the nearest
English unit to x_i?) and English -> X, and their mean. Candidates are all units of that
language pair (UDHR: every paragraph of the held-out articles 21-30; gettext: held-out
strings aligned by msgid), so chance is 1 / n.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from mmbert.evaluate.corpus import Corpus, gettext_pairs, udhr_units
from mmbert.scores import retrieval_at1


def bitext_accuracy(system, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    if not pairs:
        return {"x2en": float("nan"), "en2x": float("nan"), "mean": float("nan"), "n": 0}
    e = system.embed([p[0] for p in pairs])
    x = system.embed([p[1] for p in pairs])
    x2en, en2x = retrieval_at1(x, e), retrieval_at1(e, x)
    return {"x2en": x2en, "en2x": en2x, "mean": (x2en + en2x) / 2, "n": len(pairs)}


def _summary(per: dict[str, dict[str, Any]]) -> dict[str, Any]:
    vals = [v["mean"] for v in per.values() if v["n"] > 0]
    return {"per_language": per, "mean": float(np.mean(vals)) if vals else float("nan"),
            "chance": float(np.mean([1 / v["n"] for v in per.values() if v["n"] > 0]))
            if vals else float("nan")}


def _run(system, units: dict[str, list[tuple[str, str]]], desc: str) -> dict[str, Any]:
    texts = [t for pairs in units.values() for p in pairs for t in p]
    with tqdm(total=len(texts), desc=f"{desc} [{system.name}]", unit="text", leave=False,
              disable=None) as bar:
        system.embed(texts)  # one length-sorted pass over everything; cached per text
        bar.update(len(texts))
    return _summary({lang: bitext_accuracy(system, pairs) for lang, pairs in units.items()})


def udhr_retrieval(system, corpus: Corpus, languages: Sequence[str],
                   max_units: int | None = None) -> dict[str, Any]:
    """UDHR held-out articles, paragraph-aligned with English (see ``udhr_units``)."""
    units = {lang: udhr_units(corpus, lang)[:max_units] for lang in languages}
    return _run(system, units, "udhr retrieval")


def gettext_retrieval(system, corpus: Corpus, languages: Sequence[str],
                      max_strings: int | None = 200) -> dict[str, Any]:
    """gettext held-out strings aligned by msgid (deduplicated, at most ``max_strings``)."""
    units = {lang: gettext_pairs(corpus, lang, cap=max_strings) for lang in languages}
    return _run(system, units, "gettext retrieval")
