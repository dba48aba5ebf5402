"""``mmbert demo --adapt``: teach the demo's model languages it never trained on.

The starting point is the demo's model at the end of its trunk, before any decay phase (like
mmBERT's released pre-decay checkpoint): it has seen only the trunk's languages. The 40 largest
languages outside that set are the new ones. Steps, each skipped when its output exists:

1. ``tokenizer extend``: pieces for the new languages the tokenizer covers worst (highest
   fertility), the model resized (new rows = mean of the old pieces that spell them);
2. ``data prepare``: shards of the old and new languages with the extended tokenizer;
3. ``pretrain`` with ``configs/adapt-decay.yaml`` from the extended model: the new languages,
   plus a replay share of the old ones;
4. held-out MLM (mask token at every scored position, the per-language unigram baseline and a
   random initialisation alongside) and UDHR retrieval, for new and old languages, of the
   extended model before training and of the adapted one, on the same positions and texts.

The gain of each language is paired (same positions before and after); the report gives the
mean gain over languages, its standard error and the ratio of the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mmbert.errors import MmbertError
from mmbert.outputs import read_json, write_json

NEW_LANGUAGES = 40  # the largest languages the starting model never trained on
ADD_PIECES = 256  # tokenizer pieces added for them
WORST = 10  # of the new languages, how many (highest fertility) the pieces are learned for
REPLAY_SHARE = 0.25  # of the adaptation tokens, drawn from the starting model's languages
OLD_DROP_MARGIN = 0.01  # the old languages' mean accuracy may drop by at most this much
EVAL_TOKENS = 512  # held-out tokens scored per language and model


@dataclass(frozen=True)
class AdaptSetup:
    base: Path  # the starting model (end of the demo's trunk)
    old: tuple[str, ...]  # languages the starting model trained on
    new: tuple[str, ...]  # languages it never saw


def adapt_setup(rec: Any, run_dir: Path, shards: Path, new_count: int = NEW_LANGUAGES
                ) -> AdaptSetup:
    """The starting model and the old/new languages of a finished demo run."""
    from mmbert.data.sampler import select_languages
    from mmbert.data.shards import ShardSet

    last = rec.trunk[-1]
    base = run_dir / "export" / last.name
    if not (base / "model.safetensors").is_file():
        raise MmbertError(f"{base}: no exported model; expected a finished demo run (mmbert "
                          "demo) before --adapt")
    ss = ShardSet(shards, "train")
    seen = {lang for ph in rec.trunk for lang in select_languages(ss, ph.languages)}
    unseen = [lang for lang in select_languages(ss, "all") if lang not in seen]
    if len(unseen) < new_count:
        raise MmbertError(f"{shards}: only {len(unseen)} languages outside the trunk's; "
                          f"expected at least {new_count} to adapt to")
    old = tuple(lang for lang in select_languages(ss, "all") if lang in seen)
    return AdaptSetup(base, old, tuple(unseen[:new_count]))


def _extend(setup: AdaptSetup, corpus: Path, out: Path, log: Callable[[str], None]) -> None:
    from mmbert.vocab import extend_tokenizer

    if (out / "model.safetensors").is_file():
        return
    res = extend_tokenizer(setup.base, corpus, ADD_PIECES, out, init_from=setup.base,
                           languages=list(setup.new), worst=WORST, overwrite=True)
    log(f"  added {len(res.extension.pieces)} pieces for {', '.join(res.extension.languages)}")


def _train(setup: AdaptSetup, recipe: Path, ext: Path, shards: Path, run_dir: Path,
           overrides: tuple[str, ...], procs: int, log: Callable[[str], None]) -> Path:
    """The adaptation run; returns its exported model. ``overrides`` come last (the demo
    passes its own precision there)."""
    from mmbert.demo.pipeline import train_recipe
    from mmbert.recipe import load_recipe

    sets = [f"shards={shards}", f"tokenizer={ext}", f"model.init_from={ext}",
            f"phases.0.languages=[{','.join(setup.new)}]",
            f"phases.0.replay_languages=[{','.join(setup.old)}]",
            f"phases.0.replay_share={REPLAY_SHARE}", *overrides]
    rec = load_recipe(recipe, sets)
    result = train_recipe(rec, recipe, run_dir, sets, procs, log)
    export = result.phases[-1].export
    if export is None:
        raise MmbertError(f"{run_dir}: the adaptation run exported no model")
    return Path(export)


@dataclass(frozen=True)
class PairedGain:
    """Mean over languages of (after - before), its standard error and their ratio."""

    n: int
    before: float
    after: float
    mean: float
    se: float

    @property
    def z(self) -> float:
        if self.se > 0:
            return self.mean / self.se
        return 0.0 if self.mean == 0 else math.copysign(math.inf, self.mean)

    def to_json(self) -> dict[str, float]:
        return {"n": self.n, "before": self.before, "after": self.after, "mean_gain": self.mean,
                "se": self.se, "gain_over_se": self.z}


def paired_gain(before: dict[str, float], after: dict[str, float]) -> PairedGain:
    """Paired over the languages both score (sample standard deviation / sqrt(n))."""
    langs = sorted(set(before) & set(after))
    if len(langs) < 2:
        raise MmbertError(f"paired gain over {len(langs)} language(s); expected at least 2")
    d = [after[lang] - before[lang] for lang in langs]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    return PairedGain(n, sum(before[lang] for lang in langs) / n,
                      sum(after[lang] for lang in langs) / n, mean, sd / math.sqrt(n))


def _mlm_scores(setup: AdaptSetup, ext: Path, adapted: Path, shards: Path) -> dict[str, Any]:
    """Held-out MLM accuracy per language of the random init, the unigram baseline, the
    extended starting model and the adapted one, on the same positions."""
    import torch

    from mmbert.evaluate.mlm import HeldoutMlm, check_shards_tokenizer
    from mmbert.hf import read_config
    from mmbert.model import MaskedLM

    config = read_config(ext)[0]
    check_shards_tokenizer(shards, config, ext)
    held = HeldoutMlm(shards, config, languages=[*setup.old, *setup.new],
                      max_tokens=EVAL_TOKENS, seed=0)
    torch.manual_seed(0)
    scores = {"random init": held.score(MaskedLM(config)), "unigram": held.score_unigram(),
              "start": held.score(MaskedLM.from_pretrained(ext)),
              "adapted": held.score(MaskedLM.from_pretrained(adapted))}
    return {name: {lang: s.accuracy for lang, s in per.items()} for name, per in scores.items()}


def _retrieval(setup: AdaptSetup, ext: Path, adapted: Path, corpus: Path) -> dict[str, Any]:
    """UDHR held-out retrieval (mean of both directions) per language, before and after."""
    from mmbert.evaluate.baselines import MmbertSystem
    from mmbert.evaluate.corpus import ENGLISH, Corpus
    from mmbert.evaluate.retrieval import udhr_retrieval

    c = Corpus.open(corpus)
    langs = [lang for lang in (*setup.old, *setup.new) if lang != ENGLISH]
    out = {}
    for name, path in (("start", ext), ("adapted", adapted)):
        res = udhr_retrieval(MmbertSystem(path, name=name), c, langs)
        out[name] = {lang: r["mean"] for lang, r in res["per_language"].items() if r["n"] > 0}
        out["chance"] = {lang: 1 / r["n"] for lang, r in res["per_language"].items()
                         if r["n"] > 0}
    return out


def _group(scores: dict[str, dict[str, float]], langs: tuple[str, ...]) -> dict[str, float]:
    """Mean over ``langs`` of each model's scores."""
    out = {}
    for name, per in scores.items():
        vals = [per[lang] for lang in langs if lang in per]
        out[name] = sum(vals) / len(vals) if vals else float("nan")
    return out


def adapt_summary(setup: AdaptSetup, mlm: dict[str, Any], retrieval: dict[str, Any]
                  ) -> dict[str, Any]:
    """Group means and the paired gains (start -> adapted) the report states."""
    gains = {}
    for metric, scores in (("mlm", mlm), ("udhr", retrieval)):
        for group, langs in (("new", setup.new), ("old", setup.old)):
            before = {lang: v for lang, v in scores["start"].items() if lang in langs}
            after = {lang: v for lang, v in scores["adapted"].items() if lang in langs}
            gains[f"{metric} {group}"] = paired_gain(before, after).to_json()
    return {"mlm_means": {"new": _group(mlm, setup.new), "old": _group(mlm, setup.old)},
            "udhr_means": {"new": _group(retrieval, setup.new),
                           "old": _group(retrieval, setup.old)},
            "gains": gains,
            "new_gain_over_3se": gains["mlm new"]["gain_over_se"] > 3,
            "old_drop_margin": OLD_DROP_MARGIN,
            "old_within_margin": gains["mlm old"]["mean_gain"] > -OLD_DROP_MARGIN}


def _row(name: str, g: dict[str, float], baselines: list[float]) -> str:
    """A table row: the baselines' means, start, adapted, the paired gain and gain / SE."""
    cols = "".join(f" {b:.2%} |" for b in baselines)
    return (f"| {name} |{cols} {g['before']:.2%} | {g['after']:.2%} | "
            f"{g['mean_gain']:+.2%} ± {g['se']:.2%} | {g['gain_over_se']:.1f} |")


def _fertility_lines(fert: dict[str, Any]) -> list[str]:
    rows = [f for f in fert["languages"].values() if f["chosen"]]
    lines = ["| language | unit | before | after |", "|---|---|---:|---:|"]
    lines += [f"| {f['lang']} | {f['unit']} | {f['fertility_before']:.2f} | "
              f"{f['fertility_after']:.2f} |" for f in rows]
    return lines


def write_adapt_report(out: Path, r: dict[str, Any]) -> Path:
    """``out/report.md`` and ``out/adapt_mlm.png`` from the results of :func:`run_adapt`."""
    from mmbert.outputs import write_text

    s, g = r["summary"], r["summary"]["gains"]
    lines = [
        f"# Adapting the demo's model to {len(r['new'])} languages it never trained on", "",
        f"Start: `{r['base']}` (the demo's model before decay, trained on {len(r['old'])} "
        f"languages). Adaptation: `{r['recipe']}`, {r['tokens']:,} tokens, "
        f"{REPLAY_SHARE:.0%} replay of the old languages, {r['train_s']:.0f} s.", "",
        f"New languages: {', '.join(r['new'])}.", "",
        f"## Tokenizer: {r['added']} pieces for the worst-covered new languages", "",
        *_fertility_lines(r["fertility"]), "",
        "## Held-out MLM accuracy (the mask token at every scored position)", "",
        "Same positions for every model; `start` is the extended model before training "
        "(on old-token inputs it equals the starting model exactly). Gain: paired over "
        "languages, ± one standard error.", "",
        "| languages | random init | unigram | start | adapted | gain | gain / SE |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(_row(f"{grp} ({g['mlm ' + grp]['n']})", g["mlm " + grp],
               [s["mlm_means"][grp][b] for b in ("random init", "unigram")])
          for grp in ("new", "old")), "",
        f"- new languages gain by more than 3 standard errors: "
        f"**{'yes' if s['new_gain_over_3se'] else 'no'}**",
        f"- old languages drop by less than {s['old_drop_margin']:.0%} (absolute): "
        f"**{'yes' if s['old_within_margin'] else 'no'}**", "",
        "## UDHR retrieval (held-out articles, mean of both directions)", "",
        "| languages | chance | start | adapted | gain | gain / SE |",
        "|---|---:|---:|---:|---:|---:|",
        *(_row(f"{grp} ({g['udhr ' + grp]['n']})", g["udhr " + grp],
               [s["udhr_means"][grp]["chance"]]) for grp in ("new", "old")), "",
        "![per language](adapt_mlm.png)", ""]
    _scatter(out / "adapt_mlm.png", r)
    return write_text(out / "report.md", "\n".join(lines))


def _scatter(path: Path, r: dict[str, Any]) -> None:
    from mmbert.demo.report import figure, titles

    mlm = r["mlm"]
    with figure(path, (6, 6)) as ax:
        for group, color in (("old", "tab:gray"), ("new", "tab:red")):
            langs = [lang for lang in r[group] if lang in mlm["start"]]
            ax.scatter([mlm["start"][x] for x in langs], [mlm["adapted"][x] for x in langs],
                       s=12, color=color, label=f"{group} ({len(langs)})")
        top = max(max(mlm["adapted"].values()), max(mlm["start"].values()))
        ax.plot([0, top], [0, top], color="black", linewidth=0.8)
        ax.legend()
        titles(ax, "start (held-out MLM accuracy)", "adapted",
                "per language: above the line = gained")


def run_adapt(out: Path, rec: Any, *, recipe: str | Path = "configs/adapt-decay.yaml",
              overrides: tuple[str, ...] = (), procs: int = 1,
              log: Callable[[str], None] = print) -> Path:
    """The adaptation step on the finished demo in ``out`` (``rec``: the demo's recipe, with
    its shards and tokenizer set; ``overrides``: ``--set`` values for the adaptation recipe);
    writes ``out/adapt/report.md`` and returns it."""
    import time

    from mmbert.data.shards import prepare

    recipe = Path(recipe)
    if not recipe.is_file():
        raise MmbertError(f"{recipe}: no such recipe; expected configs/adapt-decay.yaml "
                          "(run from the repository root)")
    setup = adapt_setup(rec, out / "run", out / "shards")
    a = out / "adapt"
    ext, shards = a / "start-extended", a / "shards"
    log(f"== adapt: {len(setup.new)} new languages, from {setup.base}")
    _extend(setup, out / "corpus", ext, log)
    prepare(out / "corpus", ext, shards, languages=[*setup.old, *setup.new])
    t = time.perf_counter()
    adapted = _train(setup, recipe, ext, shards, a / "run",
                     (f"precision={rec.precision}", *overrides), procs, log)
    train_s = time.perf_counter() - t
    log("== adapt: held-out MLM and UDHR retrieval, before and after")
    mlm = _mlm_scores(setup, ext, adapted, shards)
    retrieval = _retrieval(setup, ext, adapted, out / "corpus")
    fert = read_json(ext / "fertility.json", "the tokenizer extension's report")
    results = {"base": str(setup.base), "old": list(setup.old), "new": list(setup.new),
               "recipe": str(recipe), "tokens": _tokens(a / "run"), "train_s": train_s,
               "added": fert.get("added", 0), "fertility": fert, "mlm": mlm,
               "udhr": retrieval, "summary": adapt_summary(setup, mlm, retrieval)}
    write_json(a / "results.json", results)
    report = write_adapt_report(a, results)
    log(f"adapt report: {report}")
    return report


def _tokens(run_dir: Path) -> int:
    from mmbert.train.records import read_steps

    steps = read_steps(run_dir / "metrics.jsonl")
    return steps[-1].tokens if steps else 0
