"""The demo's analysis: which models a run kept (typed :class:`ModelPoint` identities), the
language tiers of the cascade, held-out MLM scores of every model, and training speed and loss
curves from metrics.jsonl."""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Any, Callable

from mmbert.errors import MmbertError
from mmbert.evaluate.learning import TRUNK, ModelPoint, RunModels
from mmbert.train import checkpoint as ckpt
from mmbert.train.records import branch_label, read_trainer_record, run_steps

EVAL_TOKENS_PER_LANG = 512  # held-out tokens scored per language and model (fixed seed)
TIERS = ("phase 1", "added in phase 2", "decay only")
CLOZE_LANGUAGES = 8  # fill-mask examples: the largest phase-1 languages


def _branches(rec: Any) -> list[tuple[str, Any]]:
    """(name, phase settings) of each trunk phase and each decay variant of the last phase,
    named as in the results: ``phase`` or ``phase/variant``."""
    last = rec.phases[-1]
    return [(p.name, p) for p in rec.trunk] + [(branch_label(last.name, v.name),
                                                 last.variant(v.name)) for v in last.variants]


def phase_languages(rec: Any, shards: Path) -> dict[str, list[str]]:
    """Each trunk phase's and each decay variant's language list, as the trainer resolves it."""
    from mmbert.data.sampler import select_languages
    from mmbert.data.shards import ShardSet

    ss = ShardSet(shards, split="train")
    return {name: select_languages(ss, ph.languages) for name, ph in _branches(rec)}


def language_tiers(langs: dict[str, list[str]], trunk: list[str]) -> dict[str, str]:
    """Tier of each language: seen from phase 1, added in phase 2, or only in the decay."""
    tier: dict[str, str] = {}
    for lang in langs[trunk[0]]:
        tier[lang] = TIERS[0]
    for name in trunk[1:]:
        for lang in langs[name]:
            tier.setdefault(lang, TIERS[1])
    for name, ls in langs.items():
        for lang in ls:
            tier.setdefault(lang, TIERS[2])
    return tier


def run_models(rec: Any, result: Any, run_dir: Path, merged: Path) -> list[ModelPoint]:
    """Every model of the run to score, in training order: the baselines, the trunk's kept
    checkpoints and phase ends, each decay variant's kept checkpoints and end, the merge (a
    rolling checkpoint at a phase's last step is the phase end, listed once)."""
    first = str(result.phases[0].export)
    pts = [ModelPoint.baseline("random", first), ModelPoint.baseline("unigram", first)]
    phase_tokens = {p.name: p.tokens for p in rec.phases}

    def branch(root: Path, name: str, ends: dict[str, Callable[[int], ModelPoint]]) -> None:
        for c in ckpt.list_checkpoints(root):
            t = read_trainer_record(c)
            if t.phase_end and t.label in ends:
                pts.append(ends[t.label](t.state.tokens))
            elif not t.phase_end and t.state.phase_tokens < phase_tokens[t.phase]:
                pts.append(ModelPoint.checkpoint(t.label, str(c / "model"), t.state.tokens,
                                                 name))

    branch(run_dir / "checkpoints", TRUNK,
           {p.name: partial(ModelPoint.trunk_end, p.name, str(p.export))
            for p in result.phases})
    for name, v in sorted(result.variants.items()):
        branch(run_dir / "variants" / name / "checkpoints", name,
               {v.name: partial(ModelPoint.variant_end, name, str(v.export))})
    pts.append(ModelPoint.merge(str(merged), max(v.tokens for v in result.variants.values())))
    names = [p.name for p in pts]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise MmbertError(f"{run_dir}: two kept models would share the report name {dup[0]!r}; "
                          "expected checkpoints at least 10k tokens apart")
    return pts


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _eval_model(job: tuple[Any, str, list[str], int]) -> tuple[str, dict[str, Any]]:
    """Held-out MLM scores per language of one :class:`~mmbert.evaluate.learning.ModelPoint`
    (a model, a seeded random initialisation or the per-language unigram baseline)."""
    import torch

    from mmbert.evaluate.mlm import HeldoutMlm, check_shards_tokenizer
    from mmbert.hf import read_config
    from mmbert.model import MaskedLM

    point, shards, langs, eval_tokens = job
    config = read_config(point.path)[0]
    check_shards_tokenizer(shards, config, Path(shards).parent / "tokenizer")
    held = HeldoutMlm(shards, config, languages=langs, max_tokens=eval_tokens, seed=0)
    if point.kind == "unigram":
        scores = held.score_unigram()
    else:
        torch.manual_seed(0)
        m = MaskedLM.from_pretrained(point.path) if point.kind == "model" else MaskedLM(config)
        scores = held.score(m)
    return point.name, {lang: s.to_dict() for lang, s in scores.items()}


def _cloze_table(out: Path, model_dir: Path, langs: list[str]) -> list[dict[str, Any]]:
    """The final model's top-3 answers on held-out cloze sentences of ``langs``."""
    from mmbert.evaluate.learning import cloze_sentences, fill_cloze
    from mmbert.inference import load_tokenizer_for, mask_token_string
    from mmbert.model import MaskedLM

    tok = load_tokenizer_for(model_dir)
    model = MaskedLM.from_pretrained(model_dir).eval()
    clozes = cloze_sentences(out / "corpus", tok, langs, tok.mask_id,
                             mask_token_string(model_dir, tok.mask_id))
    return fill_cloze(model, tok, clozes)


def _score(points: list[ModelPoint], shards: Path, langs: list[str], eval_tokens: int,
           procs: int) -> dict[str, dict[str, Any]]:
    """Held-out scores of every model, keyed by model name, in ``procs`` processes."""
    jobs = [(p, str(shards), langs, eval_tokens) for p in points]
    if procs <= 1:
        return dict(_eval_model(j) for j in jobs)
    import multiprocessing  # one model per process at a time, one thread each (default_procs)
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_one_thread) as pool:
        return dict(pool.map(_eval_model, jobs))


def evaluate_demo(rec: Any, result: Any, merged: Path, shards: Path, out: Path, *,
                  density: float, eval_tokens: int = EVAL_TOKENS_PER_LANG,
                  procs: int = 1) -> dict[str, Any]:
    """Held-out MLM scores per language for the baselines and every kept model of the run (same
    positions for all), the learning summary and targets, and the fill-mask table."""
    from mmbert.data.sampler import language_probs
    from mmbert.data.shards import ShardSet
    from mmbert.evaluate.learning import learning_summary, targets, tier_means

    langs = phase_languages(rec, shards)
    tier = language_tiers(langs, [p.name for p in rec.trunk])
    all_langs = sorted(tier)
    counts = ShardSet(shards, split="train").token_counts()
    points = run_models(rec, result, out / "run", merged)
    scores = _score(points, shards, all_langs, eval_tokens, procs)
    sampling = {name: language_probs({lang: counts[lang] for lang in langs[name]}, ph.tau)
                for name, ph in _branches(rec)}
    models = RunModels(tuple(points))
    first, base, final = models.trunk_ends[0].name, models.trunk_ends[-1].name, models.merged.name
    summary = learning_summary(scores, tier, TIERS, first, base, final,
                               [p.name for p in models.variant_ends])
    top = sorted((l for l in all_langs if tier[l] == TIERS[0]), key=lambda l: -counts[l])
    # training speed from metrics.jsonl, not from `result`: right also when the training ran in
    # subprocesses or in an earlier (resumed) invocation
    tokens, seconds = training_time(out / "run")
    return {
        "languages": {k: len(v) for k, v in langs.items()},
        "tiers": tier,
        "train_tokens": {lang: int(counts[lang]) for lang in all_langs},
        "sampling": sampling,
        "models": [dataclasses.asdict(p) for p in points],
        "mlm": scores,
        "tier_means": {name: tier_means(s, tier, TIERS) for name, s in scores.items()},
        "tier_loss": {name: tier_means(s, tier, TIERS, "loss") for name, s in scores.items()},
        "learning": summary,
        "targets": targets(scores, tier, TIERS, final, summary),
        "fill_mask": _cloze_table(out, merged, top[:CLOZE_LANGUAGES]),
        "loss_curves": read_metrics(out / "run"),
        "merge": {"method": "ties", "density": density, "base": base,
                  "models": sorted(result.variants)},
        "tokens_per_s": tokens / seconds if seconds else 0.0,
        "train_wall_s": seconds,
        "eval_tokens": eval_tokens,
    }


def training_time(run_dir: Path) -> tuple[int, float]:
    """Tokens trained and seconds spent in training steps (checkpoints, evaluation and start-up
    excluded), summed over the trunk and every variant's metrics.jsonl (last record per step)."""
    steps: dict[tuple[Path, int], tuple[int, float]] = {}
    for f, r in run_steps(run_dir):
        if r.batch_tokens is None or r.tokens_per_s is None:
            continue
        n, rate = r.batch_tokens, r.tokens_per_s
        steps[(f, r.step)] = (n, n / rate if rate > 0 else 0.0)
    return sum(n for n, _ in steps.values()), sum(s for _, s in steps.values())


def read_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-step (tokens, loss) for each phase (and each decay variant) from metrics.jsonl."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for _, r in run_steps(run_dir):
        if r.loss is None or r.tokens is None:
            continue
        curves.setdefault(r.label, []).append((r.tokens, r.loss))
    for k in curves:  # a resumed run may repeat steps: keep the last record per token count
        curves[k] = sorted(dict(curves[k]).items())
    return curves
