"""Language sampling for a training phase: which languages, with which probabilities.

p(lang) = n_lang ** tau / sum_j n_j ** tau over the phase's languages (n = tokens), the XLM-R
form mmBERT uses: tau = 1 follows the data, tau = 0 is uniform; mmBERT anneals 0.7 -> 0.5 -> 0.3.
A phase's languages are ``"all"``, the top-k by tokens (cascading: later phases add smaller
languages), or an explicit list.

The loader draws the language of each *document*; :func:`document_probs` turns token shares p
into document draws (q ∝ p / mean document length) so that the share of tokens, not of
documents, follows p.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmbert.errors import MmbertError

LanguageSpec = str | int | Sequence[str]


def parse_language_spec(spec: LanguageSpec) -> str | int | list[str]:
    """``"all"``, ``20`` / ``"20"`` (top-k) or a list / comma-separated string of codes."""
    if isinstance(spec, int):
        return spec
    if isinstance(spec, str):
        s = spec.strip()
        if s == "all":
            return "all"
        if s.isdigit():
            return int(s)
        return [c.strip() for c in s.split(",") if c.strip()]
    return list(spec)


def select_languages(shardset: Any, spec: LanguageSpec) -> list[str]:
    """The phase's languages from a :class:`~mmbert.data.shards.ShardSet` (sorted by tokens,
    largest first). Unknown codes and languages without tokens are errors."""
    spec = parse_language_spec(spec)
    counts = shardset.token_counts()
    by_size = sorted(counts, key=lambda lang: (-counts[lang], lang))
    if spec == "all":
        langs = by_size
    elif isinstance(spec, int):
        if spec < 1:
            raise MmbertError(f"languages: top-k {spec}; expected a positive number")
        langs = by_size[:spec]
    else:
        if not spec:
            raise MmbertError("languages: empty list; expected 'all', a number or codes")
        for lang in spec:
            if lang not in counts:
                manifest_langs = shardset.record.languages
                why = ("has 0 tokens" if lang in manifest_langs else "is not in the shards")
                raise MmbertError(f"languages: {lang!r} {why} ({shardset.path}, split "
                                  f"{shardset.split}); expected languages with data")
        langs = sorted(dict.fromkeys(spec), key=lambda lang: (-counts[lang], lang))
    for lang in langs:
        if counts[lang] <= 0:
            raise MmbertError(f"languages: {lang!r} has 0 tokens in {shardset.path}; expected "
                              f"every language of a phase to have data")
    if not langs:
        raise MmbertError(f"{shardset.path}: no {shardset.split} data; expected prepared shards")
    return langs


def language_probs(token_counts: dict[str, int], tau: float) -> dict[str, float]:
    """p(lang) ∝ tokens ** tau."""
    if not token_counts:
        raise MmbertError("language_probs: no languages")
    if not 0.0 <= tau <= 1.0:
        raise MmbertError(f"tau {tau}: expected a value in [0, 1]")
    for lang, n in token_counts.items():
        if n <= 0:
            raise MmbertError(f"language {lang!r} has {n} tokens; expected every language of a "
                              f"phase to have data")
    langs = list(token_counts)
    w = np.array([float(token_counts[lang]) for lang in langs]) ** tau
    w /= w.sum()
    return {lang: float(p) for lang, p in zip(langs, w)}


def phase_probs(token_counts: dict[str, int], tau: float, replay: Sequence[str] = (),
                replay_share: float = 0.0) -> dict[str, float]:
    """p(lang) of a phase: tokens ** tau within the phase's languages; with ``replay`` (a subset
    of them), those get ``replay_share`` of the tokens in all, tokens ** tau among themselves."""
    rep = [lang for lang in token_counts if lang in set(replay)]
    if not rep:
        return language_probs(token_counts, tau)
    main = [lang for lang in token_counts if lang not in set(rep)]
    if not main:
        raise MmbertError("replay: every language of the phase is a replay language; expected "
                          "new languages besides them")
    p = language_probs({lang: token_counts[lang] for lang in main}, tau)
    r = language_probs({lang: token_counts[lang] for lang in rep}, tau)
    mixed = {**{k: (1 - replay_share) * v for k, v in p.items()},
             **{k: replay_share * v for k, v in r.items()}}
    return {lang: mixed[lang] for lang in token_counts}


def document_probs(probs: dict[str, float], mean_doc_tokens: dict[str, float]) -> dict[str, float]:
    """Per-document draw probabilities whose expected token shares equal ``probs``."""
    q = {lang: p / max(mean_doc_tokens[lang], 1e-9) for lang, p in probs.items()}
    z = sum(q.values())
    return {lang: v / z for lang, v in q.items()}


def epochs(token_counts: dict[str, int], probs: dict[str, float],
           budget_tokens: float) -> dict[str, float]:
    """How many times each language's data is seen when ``budget_tokens`` are drawn."""
    return {lang: budget_tokens * probs[lang] / token_counts[lang] for lang in probs}


def plan(shards: str | Path, languages: LanguageSpec, tau: float, tokens: float,
         split: str = "train") -> list[dict[str, Any]]:
    """One row per language: tokens on disk, p, tokens drawn for the budget, epochs."""
    from mmbert.data.shards import ShardSet

    if tokens <= 0:
        raise MmbertError(f"--tokens {tokens}: expected a positive token budget")
    ss = ShardSet(shards, split)
    langs = select_languages(ss, languages)
    counts = {lang: ss.num_tokens(lang) for lang in langs}
    p = language_probs(counts, tau)
    ep = epochs(counts, p, tokens)
    return [{"lang": lang, "tokens": counts[lang], "documents": ss.num_docs(lang), "p": p[lang],
             "sampled_tokens": tokens * p[lang], "epochs": ep[lang]} for lang in langs]


def format_plan(rows: list[dict[str, Any]], limit: int = 0) -> str:
    lines = [f"{'language':<12} {'tokens':>12} {'p':>9} {'sampled':>14} {'epochs':>9}"]
    shown = rows if limit <= 0 or len(rows) <= limit else rows[:limit // 2] + rows[-limit // 2:]
    for i, r in enumerate(shown):
        if limit > 0 and len(rows) > limit and i == limit // 2:
            lines.append(f"... {len(rows) - limit} more ...")
        lines.append(f"{r['lang']:<12} {r['tokens']:>12,} {r['p']:>9.5f} "
                     f"{r['sampled_tokens']:>14,.0f} {r['epochs']:>9.2f}")
    tot = sum(r["tokens"] for r in rows)
    eps = [r["epochs"] for r in rows]
    lines.append(f"{len(rows)} languages, {tot:,} tokens; epochs min {min(eps):.2f}, "
                 f"max {max(eps):.2f}")
    return "\n".join(lines)
