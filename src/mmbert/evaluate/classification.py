"""Cross-lingual classification: which gettext catalogue (domain) a string comes from.

Task. The ``n_domains`` catalogues translated into the most languages are the classes (country
names, language names, GTK widgets, GLib messages, ...). A catalogue whose English msgids are
mostly those of an already chosen one (``iso_3166`` vs ``iso_3166-1``) is skipped, and a msgid
in two chosen catalogues is dropped, so labels are unambiguous. Train on English ``train``-split
strings (balanced, at most ``train_per_class`` each), test on every other language's
``heldout``-split strings of those catalogues: zero-shot cross-lingual transfer, as XNLI does.

Probe. Multinomial logistic regression on frozen sentence embeddings (standardised with the
training statistics, L2-regularised, full-batch L-BFGS): cheap, deterministic, and it measures
what the embeddings already separate rather than what a fine-tune could learn.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from mmbert.evaluate.corpus import ENGLISH, Corpus, _messages
from mmbert.scores import accuracy, macro_f1


@dataclass
class DomainTask:
    domains: list[str]
    train: list[tuple[str, int]]  # English (text, label)
    test: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # lang -> examples


def pick_domains(corpus: Corpus, n_domains: int = 6, *, min_train: int = 30,
                 overlap: float = 0.5) -> list[str]:
    """Catalogues translated into the most languages among those with at least ``min_train``
    English training strings, one per family: Debian ships the same iso-codes catalogues under
    old and new names (``iso_639-3`` / ``iso_639_3``, ``iso_3166`` / ``iso_3166-1``), so names
    equal up to a ``-N``/``_N`` suffix count once, as do catalogues whose msgid sets, pooled
    over all languages, overlap by more than ``overlap``."""
    msgs = _messages(corpus)
    langs: dict[str, set[str]] = defaultdict(set)
    keys: dict[str, set[str]] = defaultdict(set)
    en_train: Counter = Counter()
    for lang, table in msgs.items():
        for (dom, key), m in table.items():
            langs[dom].add(lang)
            keys[dom].add(key)
            if lang == ENGLISH and m.split == "train":
                en_train[dom] += 1
    chosen: list[str] = []
    family = lambda d: re.sub(r"[-_]\d+$", "", d)  # noqa: E731
    for dom in sorted(langs, key=lambda d: (-len(langs[d]), -en_train[d], d)):
        if en_train[dom] < min_train or family(dom) in {family(c) for c in chosen}:
            continue
        if any(len(keys[dom] & keys[c]) > overlap * min(len(keys[dom]), len(keys[c]))
               for c in chosen):
            continue
        chosen.append(dom)
        if len(chosen) == n_domains:
            break
    return sorted(chosen)


def domain_task(corpus: Corpus, languages: Sequence[str], *, n_domains: int = 6,
                train_per_class: int = 100, test_per_language: int = 240, seed: int = 0,
                train_languages: Sequence[str] = (ENGLISH,)) -> DomainTask:
    """The task for ``languages`` (English is always a test language too). Training strings
    come from ``train_languages`` (default English only: zero-shot cross-lingual transfer),
    at most ``train_per_class`` per class and language."""
    msgs = _messages(corpus)
    domains = pick_domains(corpus, n_domains)
    label = {d: i for i, d in enumerate(domains)}
    owner: dict[str, set[str]] = defaultdict(set)  # msgid key -> chosen catalogues using it
    for table in msgs.values():
        for (d, key) in table:
            if d in label:
                owner[key].add(d)
    def rows(lang: str, split: str, per_class: int | None, total: int | None):
        rng = np.random.default_rng([seed, zlib.crc32(f"{lang}/{split}".encode())])
        by: dict[int, list[str]] = defaultdict(list)
        seen: set[str] = set()
        for (d, key), m in sorted(msgs.get(lang, {}).items()):
            if d in label and m.split == split and len(owner[key]) == 1 and m.text not in seen:
                seen.add(m.text)
                by[label[d]].append(m.text)
        out = []
        for y, texts in sorted(by.items()):
            idx = rng.permutation(len(texts))
            out += [(texts[i], y) for i in idx[:per_class]]
        if total is not None and len(out) > total:
            out = [out[i] for i in sorted(rng.permutation(len(out))[:total])]
        return out

    task = DomainTask(domains, [r for l in train_languages
                                for r in rows(l, "train", train_per_class, None)])
    for lang in [ENGLISH, *languages]:
        task.test[lang] = rows(lang, "heldout", None, test_per_language)
    return task


# ---------------------------------------------------------------------------------------------
# Logistic-regression probe
# ---------------------------------------------------------------------------------------------

@dataclass
class Probe:
    mean: np.ndarray
    std: np.ndarray
    weight: torch.Tensor
    bias: torch.Tensor

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(((x - self.mean) / self.std).astype(np.float32))
        return (z @ self.weight.T + self.bias).argmax(-1).numpy()


def train_probe(x: np.ndarray, y: Sequence[int], num_classes: int, *, l2: float = 1e-2,
                max_iter: int = 100, seed: int = 0) -> Probe:
    """Multinomial logistic regression (standardised features, L2 on the weights, L-BFGS).

    Runs on one thread: the ops are tiny, and OpenMP barriers across threads cost more than
    the work (50x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_probe(x, y, num_classes, l2=l2, max_iter=max_iter, seed=seed)
    finally:
        torch.set_num_threads(threads)


def _train_probe(x: np.ndarray, y: Sequence[int], num_classes: int, *, l2: float,
                 max_iter: int, seed: int) -> Probe:
    torch.manual_seed(seed)
    mean = x.mean(0)
    std = x.std(0) + 1e-6
    z = torch.from_numpy(((x - mean) / std).astype(np.float32))
    t = torch.as_tensor(np.asarray(y), dtype=torch.long)
    w = torch.zeros(num_classes, x.shape[1], requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w.T + b, t) + l2 * (w * w).sum() / 2
        loss.backward()
        return loss

    opt.step(closure)
    return Probe(mean, std, w.detach(), b.detach())


def classification_probe(system, task: DomainTask, seed: int = 0) -> dict[str, Any]:
    """Train on English, report accuracy / macro-F1 per test language (English included as
    the in-language reference; ``mean`` averages the other languages)."""
    texts = [t for t, _ in task.train] + [t for rows in task.test.values() for t, _ in rows]
    system.embed(texts)  # one length-sorted pass, cached
    probe = train_probe(system.embed([t for t, _ in task.train]), [y for _, y in task.train],
                        len(task.domains), seed=seed)
    per: dict[str, dict[str, Any]] = {}
    for lang, rows in task.test.items():
        if not rows:
            continue
        gold = [y for _, y in rows]
        pred = probe.predict(system.embed([t for t, _ in rows])).tolist()
        per[lang] = {"accuracy": accuracy(pred, gold),
                     "macro_f1": macro_f1(pred, gold, len(task.domains)), "n": len(rows)}
    others = [v["accuracy"] for k, v in per.items() if k != ENGLISH]
    majority = [Counter(y for _, y in rows).most_common(1)[0][1] / len(rows)
                for k, rows in task.test.items() if rows and k != ENGLISH]
    return {"per_language": per, "mean": float(np.mean(others)) if others else float("nan"),
            "english": per.get(ENGLISH, {}).get("accuracy", float("nan")),
            "chance": float(np.mean(majority)) if majority else float("nan"),
            "domains": task.domains, "train_examples": len(task.train)}
