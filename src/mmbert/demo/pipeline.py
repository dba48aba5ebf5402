"""The demo's steps in order: data (corpus, tokenizer, shards), training (torchrun processes,
resumable), the TIES merge, then evaluation (:mod:`mmbert.demo.analysis`) and the report
(:mod:`mmbert.demo.report`); the layout of the output folder is in :mod:`mmbert.demo`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mmbert.demo.analysis import EVAL_TOKENS_PER_LANG, evaluate_demo
from mmbert.demo.report import write_demo_report
from mmbert.errors import MmbertError

DEMO_VOCAB = 8192


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


def train_recipe(rec: Any, recipe_path: Path, run_dir: Path, sets: list[str], procs: int,
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
    result = train_recipe(rec, recipe_path, out / "run", sets, procs, log)
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
