"""Scores shared by fine-tuning and the evaluation suite: accuracy, macro-F1, entity F1 of BIO
tag sequences, and retrieval accuracy@1 of embeddings."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def accuracy(pred: Sequence[int], gold: Sequence[int]) -> float:
    if len(gold) == 0:
        return float("nan")
    return float(np.mean(np.asarray(pred) == np.asarray(gold)))


def macro_f1(pred: Sequence[int], gold: Sequence[int], num_labels: int) -> float:
    """Unweighted mean F1 over the classes that occur in ``gold`` or ``pred``."""
    p, g = np.asarray(pred), np.asarray(gold)
    f1s = []
    for c in range(num_labels):
        tp = int(((p == c) & (g == c)).sum())
        fp = int(((p == c) & (g != c)).sum())
        fn = int(((p != c) & (g == c)).sum())
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else float("nan")


def _spans(tags: Sequence[str]) -> set[tuple[int, int, str]]:
    """Entity spans of a BIO/IOB2 sequence (an I- without a matching B- starts a span)."""
    spans, start, kind = set(), None, None
    for i, t in enumerate(list(tags) + ["O"]):
        prefix, _, k = t.partition("-")
        if start is not None and (prefix in ("O", "B", "S") or k != kind or not k):
            spans.add((start, i, kind))
            start, kind = None, None
        if prefix in ("B", "S") or (prefix in ("I", "E") and start is None and k):
            start, kind = i, k
    return spans


def is_bio(labels: Sequence[str]) -> bool:
    return all(l == "O" or (l[:2] in ("B-", "I-", "E-", "S-") and len(l) > 2) for l in labels) \
        and any(l != "O" for l in labels)


def span_f1(pred_tags: Sequence[Sequence[str]], gold_tags: Sequence[Sequence[str]]) -> float:
    """Micro entity F1 (CoNLL-2003 style, exact span and type)."""
    tp = fp = fn = 0
    for p, g in zip(pred_tags, gold_tags):
        ps, gs = _spans(p), _spans(g)
        tp += len(ps & gs)
        fp += len(ps - gs)
        fn += len(gs - ps)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")


def retrieval_at1(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows i of ``a`` whose nearest row of ``b`` (cosine) is row i."""
    if len(a) == 0:
        return float("nan")
    return float(np.mean((a @ b.T).argmax(1) == np.arange(len(a))))
