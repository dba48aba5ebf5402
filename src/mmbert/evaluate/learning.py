"""Does a pre-training run learn its languages? Held-out masked-LM scores of a run's models
(checkpoints along the way, phase ends, decay variants, their merge) next to the baselines, per
language tier, paired over languages; plus a fill-mask table on held-out cloze sentences.

The scores come from :mod:`mmbert.evaluate.mlm` (the mask token at every scored position); the
baselines are a random initialisation and the per-language unigram (the language's most frequent
training token), both on exactly the same positions as every model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

RANDOM, UNIGRAM = "random init", "unigram"
BASELINE_NAMES = (RANDOM, UNIGRAM)
MERGE = "TIES merge"
BASELINE, TRUNK, MERGED = "baseline", "trunk", "merge"  # branches besides the decay variants

Scores = Mapping[str, Mapping[str, Any]]  # model -> language -> MlmScore.to_dict()


@dataclass(frozen=True)
class ModelPoint:
    """One model of a run to score. ``kind``: ``model`` (``path`` is a model directory),
    ``random`` (``path``'s config with seeded random weights) or ``unigram`` (the per-language
    unigram baseline; ``path``'s config gives the special ids). ``tokens`` seen in training;
    ``branch``: ``trunk``, a decay variant's name, ``merge`` or ``baseline``; ``phase_end``: the
    model a phase (or variant) ends with."""

    name: str
    path: str
    tokens: int
    branch: str
    kind: str = "model"
    phase_end: bool = False

    # The constructors below are the one place a model's name (its display label, and its key
    # in score tables and results.json) is made from its identity.
    @classmethod
    def baseline(cls, kind: str, config_path: str) -> "ModelPoint":
        """``kind`` ``random`` or ``unigram``, with the special ids of ``config_path``."""
        return cls(RANDOM if kind == "random" else UNIGRAM, config_path, 0, BASELINE, kind=kind)

    @classmethod
    def checkpoint(cls, label: str, path: str, tokens: int, branch: str) -> "ModelPoint":
        """A rolling checkpoint of phase (or ``phase/variant``) ``label``."""
        return cls(f"{label} @ {tokens / 1e6:.2f}M tokens", path, tokens, branch)

    @classmethod
    def trunk_end(cls, phase: str, path: str, tokens: int) -> "ModelPoint":
        return cls(f"end of {phase}", path, tokens, TRUNK, phase_end=True)

    @classmethod
    def variant_end(cls, variant: str, path: str, tokens: int) -> "ModelPoint":
        return cls(f"variant {variant}", path, tokens, variant, phase_end=True)

    @classmethod
    def merge(cls, path: str, tokens: int) -> "ModelPoint":
        return cls(MERGE, path, tokens, MERGED, phase_end=True)

    @property
    def is_variant(self) -> bool:
        return self.branch not in (BASELINE, TRUNK, MERGED)


@dataclass(frozen=True)
class RunModels:
    """A run's models in training order, looked up by identity (kind, branch, phase end)."""

    points: tuple[ModelPoint, ...]

    @classmethod
    def from_json(cls, rows: Sequence[Mapping[str, Any]]) -> "RunModels":
        """From results.json's ``models`` (``dataclasses.asdict`` of each point)."""
        return cls(tuple(ModelPoint(**r) for r in rows))

    def baseline(self, kind: str) -> ModelPoint:
        return next(p for p in self.points if p.kind == kind)

    @property
    def trunk(self) -> list[ModelPoint]:
        return [p for p in self.points if p.branch == TRUNK]

    @property
    def trunk_ends(self) -> list[ModelPoint]:
        return [p for p in self.trunk if p.phase_end]

    @property
    def variants(self) -> list[str]:
        """The decay variants' names, in order of first appearance."""
        return list(dict.fromkeys(p.branch for p in self.points if p.is_variant))

    @property
    def variant_ends(self) -> list[ModelPoint]:
        return [p for p in self.points if p.is_variant and p.phase_end]

    @property
    def merged(self) -> ModelPoint:
        return next(p for p in self.points if p.branch == MERGED)

    @property
    def trained(self) -> list[ModelPoint]:
        return [p for p in self.points if p.branch != BASELINE]


def tier_means(scores: Mapping[str, Mapping[str, Any]], tier: Mapping[str, str],
               tiers: Sequence[str], key: str = "accuracy") -> dict[str, float | None]:
    """Mean of ``key`` over the languages of each tier and over all (``all``)."""
    out: dict[str, float | None] = {}
    for t in (*tiers, "all"):
        vals = [s[key] for lang, s in scores.items()
                if (t == "all" or tier.get(lang) == t) and s.get(key) is not None]
        out[t] = sum(vals) / len(vals) if vals else None
    return out


def beats(scores: Mapping[str, Mapping[str, Any]], base: Mapping[str, Mapping[str, Any]],
          tier: Mapping[str, str], tiers: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Per tier (and ``all``): (languages whose accuracy is above the baseline's, languages
    compared)."""
    out = {}
    for t in (*tiers, "all"):
        langs = [lang for lang in scores if lang in base and (t == "all" or tier.get(lang) == t)]
        out[t] = (sum(scores[l]["accuracy"] > base[l]["accuracy"] for l in langs), len(langs))
    return out


def compare(scores: Scores, a: str, b: str, langs: Sequence[str],
            key: str = "accuracy") -> dict[str, Any] | None:
    """Model ``a`` -> model ``b`` on ``langs``: means, mean gain with its standard error (paired
    over languages) and how many languages went up / down."""
    pairs = [(scores[a][l][key], scores[b][l][key]) for l in langs
             if l in scores.get(a, {}) and l in scores.get(b, {})]
    if not pairs:
        return None
    gains = [y - x for x, y in pairs]
    n = len(gains)
    mean = sum(gains) / n
    var = sum((g - mean) ** 2 for g in gains) / (n - 1) if n > 1 else 0.0
    return {"from": a, "to": b, "languages": n, "before": sum(x for x, _ in pairs) / n,
            "after": sum(y for _, y in pairs) / n, "gain": mean, "gain_se": math.sqrt(var / n),
            "up": sum(g > 0 for g in gains), "down": sum(g < 0 for g in gains)}


def learning_summary(scores: Scores, tier: Mapping[str, str], tiers: Sequence[str],
                     first: str, last_trunk: str, final: str,
                     variants: Sequence[str]) -> dict[str, Any]:
    """The questions a run must answer, from held-out scores:

    * ``final_vs_first``: every language, the end of the first phase (``first``) against the
      final model;
    * ``random_vs_first``: the same languages, random init against the end of the first phase;
    * ``decay_only``: languages first seen in the decay (``tiers[-1]``), end of the last trunk
      phase (never trained on them) against each decay variant (``variants``: their model
      names) and the final model;
    * ``merge_keeps``: the final model's gain on those languages as a share of the best
      variant's gain.
    """
    every = sorted(tier)
    decay_only = sorted(l for l, t in tier.items() if t == tiers[-1])
    out: dict[str, Any] = {"final_vs_first": compare(scores, first, final, every),
                           "random_vs_first": compare(scores, RANDOM, first, every),
                           "decay_only": {}}
    for name in [*variants, final]:
        if name in scores:
            c = compare(scores, last_trunk, name, decay_only)
            if c is not None:
                out["decay_only"][name] = c
    gains = {k: c["gain"] for k, c in out["decay_only"].items() if k != final}
    if gains and final in out["decay_only"] and max(gains.values()) > 0:
        out["merge_keeps"] = out["decay_only"][final]["gain"] / max(gains.values())
    return out


def targets(scores: Scores, tier: Mapping[str, str], tiers: Sequence[str], final: str,
            summary: Mapping[str, Any]) -> list[tuple[str, bool, str]]:
    """The demo's learning targets: (what, met, measured)."""
    fin, uni = scores[final], scores[UNIGRAM]
    top = {l: s for l, s in fin.items() if tier.get(l) == tiers[0]}
    m_top = tier_means(top, tier, tiers)[tiers[0]] or 0.0
    u_top = tier_means({l: uni[l] for l in top if l in uni}, tier, tiers)[tiers[0]] or 0.0
    m_all = tier_means(fin, tier, tiers)["all"] or 0.0
    u_all = tier_means(uni, tier, tiers)["all"] or 0.0
    won, n = beats(fin, uni, tier, tiers)["all"]
    ratio = m_top / u_top if u_top else math.inf
    out = [(f"{tiers[0]} languages: at least 5x their unigram baseline", m_top >= 5 * u_top,
            f"{100 * m_top:.1f} vs {100 * u_top:.1f} ({ratio:.1f}x)"),
           ("all languages: mean above the unigram baseline's mean", m_all > u_all,
            f"{100 * m_all:.1f} vs {100 * u_all:.1f}"),
           ("all languages: more than half beat their own unigram baseline", 2 * won > n,
            f"{won} of {n}")]
    d = summary.get("decay_only", {})
    best = max((c for k, c in d.items() if k != final), key=lambda c: c["gain"], default=None)
    if best is not None:
        out.append(("decay-only languages gain during the decay by > 3 standard errors",
                    best["gain"] > 3 * best["gain_se"],
                    f"{best['to']}: {100 * best['gain']:+.1f} ± {100 * best['gain_se']:.1f}"))
    keeps = summary.get("merge_keeps")
    out.append(("the merge keeps >= 90% of the best variant's decay-only gain",
                keeps is not None and keeps >= 0.9,
                f"{100 * keeps:.0f}%" if keeps is not None else "no variant gained"))
    fv = summary.get("final_vs_first")
    if fv:
        out.append((f"final model >= 3 points above the end of {tiers[0]}, all languages",
                    fv["gain"] >= 0.03, f"{100 * fv['gain']:+.1f} ± {100 * fv['gain_se']:.1f}"))
    return out


# ---------------------------------------------------------------------------------------------
# Fill-mask on held-out cloze sentences
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cloze:
    """A held-out sentence with one word-like token masked."""

    lang: str
    ids: list[int]  # [CLS] ... [SEP] with the mask id at ``position``
    position: int
    answer: int
    text: str  # the sentence with the mask token's string in place of the answer


def _first_sentence(text: str, max_chars: int = 160) -> str:
    """``text`` up to its first sentence end at or after 20 characters, at most ``max_chars``."""
    ends = [i for i, ch in enumerate(text[:max_chars]) if ch in ".;:!?।。" and i >= 20]
    return text[:ends[0] + 1] if ends else text[:max_chars]


def cloze_sentences(corpus_dir: str | Path, tokenizer, langs: Sequence[str], mask_id: int,
                    mask_text: str) -> list[Cloze]:
    """One cloze per language: the first sentence of its first held-out UDHR paragraph, with the
    longest alphabetic token of its middle half masked (a content word piece, not punctuation:
    deterministic, so every run and model gets the same sentences)."""
    from mmbert.evaluate.corpus import Corpus

    corpus = Corpus.open(corpus_dir)
    by = {r["lang"]: r["text"] for r in reversed(corpus.udhr)
          if r["split"] == "heldout" and r["lang"] in set(langs)}
    out = []
    for lang in langs:
        if lang not in by:
            continue
        sent = _first_sentence(by[lang].split("\n")[0].strip())
        ids = tokenizer.encode(sent)
        pieces = [tokenizer.decode([t]) for t in ids]
        mid = range(len(ids) // 4, max(len(ids) // 4 + 1, 3 * len(ids) // 4))
        cand = [i for i in mid if pieces[i].strip().isalpha()]
        if not cand:
            continue
        pos = max(cand, key=lambda i: (len(pieces[i].strip()), -i))
        text = (tokenizer.decode(ids[:pos]) + ("" if pieces[pos][:1].isalpha() else " ")
                + mask_text + tokenizer.decode(ids[pos + 1:]))
        framed = [tokenizer.bos_id, *ids[:pos], mask_id, *ids[pos + 1:], tokenizer.eos_id]
        out.append(Cloze(lang, framed, pos + 1, int(ids[pos]), text.strip()))
    return out


def fill_cloze(model, tokenizer, clozes: Sequence[Cloze], top_k: int = 3) -> list[dict[str, Any]]:
    """Each cloze with the model's top-k answers (decoded) and whether the first is right."""
    from mmbert.inference import predict_masks

    rows = []
    for c in clozes:
        top = predict_masks(model, c.ids, c.ids[c.position], top_k)[0]
        rows.append({"lang": c.lang, "text": c.text, "answer": tokenizer.decode([c.answer]),
                     "top": [tokenizer.decode([t]) for t, _ in top],
                     "correct": top[0][0] == c.answer,
                     "in_top": any(t == c.answer for t, _ in top)})
    return rows
