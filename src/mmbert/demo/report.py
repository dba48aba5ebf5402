"""The demo's ``report.md``, ``results.json`` and PNG plots, from the results of
:func:`mmbert.demo.analysis.evaluate_demo` (a JSON-able dict: the report can be rewritten from a
saved results.json)."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from mmbert.demo.analysis import TIERS
from mmbert.evaluate.learning import RunModels
from mmbert.outputs import write_text


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
    from mmbert.evaluate.learning import beats

    tier, tm, tl, mlm = r["tiers"], r["tier_means"], r["tier_loss"], r["mlm"]
    uni = mlm[RunModels.from_json(r["models"]).baseline("unigram").name]
    # languages with held-out and training text (the unigram's): the ones in every mean
    head = " | ".join(f"{t} ({sum(tier[l] == t for l in uni)})" for t in TIERS)
    lines = ["## Held-out MLM accuracy (%) per tier, baselines first", "",
             "Mean over the languages of each tier; in brackets how many of them beat their own "
             "unigram baseline. Loss: masked-token cross-entropy (nats), mean over languages.", "",
             f"| model | tokens seen | {head} | all | loss (all) |",
             "|---|---:|" + "---:|" * (len(TIERS) + 2)]
    for p in RunModels.from_json(r["models"]).points:
        k = p.name
        b = beats(mlm[k], uni, tier, TIERS) if p.kind != "unigram" else None
        cells = [_fmt(tm[k][t]) + (f" ({b[t][0]})" if b else "") for t in (*TIERS, "all")]
        lines.append(f"| {k} | {p.tokens:,} | " + " | ".join(cells)
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


@contextmanager
def figure(path: Path, figsize: tuple[float, float], ncols: int = 1) -> Iterator[Any]:
    """A figure with ``ncols`` axes (one: the axes itself), saved to ``path`` at the end."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=figsize)
    yield axes
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def titles(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)


def _curve_plot(path: Path, r: dict[str, Any]) -> None:
    """Held-out accuracy against tokens seen, one panel per tier, baselines drawn in."""
    tm, models = r["tier_means"], RunModels.from_json(r["models"])
    trunk = models.trunk
    with figure(path, (13, 4), len(TIERS)) as axes:
        for ax, t in zip(axes, TIERS):
            ax.plot([p.tokens for p in trunk], [tm[p.name][t] for p in trunk], "o-",
                    color="k", label="trunk (pre/mid-training)")
            for v in sorted(models.variants):
                seq = trunk[-1:] + [p for p in models.points if p.branch == v]
                ax.plot([p.tokens for p in seq], [tm[p.name][t] for p in seq], ".-",
                        label=f"decay {v}")
            p = models.merged
            ax.plot([p.tokens], [tm[p.name][t]], "*", ms=14, color="tab:red", label="TIES merge")
            ax.axhline(tm[models.baseline("unigram").name][t], ls="--", color="grey",
                       label="unigram baseline")
            ax.axhline(tm[models.baseline("random").name][t], ls=":", color="grey",
                       label="random init")
            ax.set_title(t)
            ax.set_xlabel("training tokens seen")
        axes[0].set_ylabel("held-out MLM accuracy (mask token)")
        axes[-1].legend(fontsize=7)


def _loss_plot(path: Path, curves: dict[str, list]) -> None:
    with figure(path, (8, 4.5)) as ax:
        for name, pts in curves.items():
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, _smooth(list(ys)), label=name, lw=1.2)
        titles(ax, "tokens seen", "MLM loss (running mean of 9 steps)",
                "Training loss per phase (each phase has its own mask ratio)")


def _sampling_plot(path: Path, sampling: dict[str, dict[str, float]]) -> None:
    with figure(path, (8, 4.5)) as ax:
        for name, probs in sampling.items():
            ps = sorted(probs.values(), reverse=True)
            ax.plot(range(1, len(ps) + 1), ps, label=f"{name} ({len(ps)} langs)", lw=1.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        titles(ax, "language rank (by corpus size)", "sampling probability  p ∝ n^tau",
                "Language sampling per phase: cascade and temperature annealing")


def _per_language_plot(path: Path, r: dict[str, Any]) -> None:
    """Accuracy per language (sorted by size) at each phase end, the merge and both baselines."""
    mlm, sizes, tier = r["mlm"], r["train_tokens"], r["tiers"]
    models = RunModels.from_json(r["models"])
    order = sorted(sizes, key=lambda lang: -sizes[lang])
    shown = [models.baseline("random"), models.baseline("unigram"), *models.trunk_ends,
             models.merged]
    with figure(path, (10, 4.8)) as ax:
        for p in shown:
            ys = [mlm[p.name].get(lang, {}).get("accuracy", math.nan) for lang in order]
            ax.plot(range(len(order)), _smooth(ys, 15), label=p.name, lw=1.3,
                    ls="--" if p.kind == "unigram" else "-")
        for i, lang in enumerate(order):
            if tier[lang] == TIERS[2]:
                ax.axvspan(i - 0.5, i + 0.5, color="tab:red", alpha=0.05, lw=0)
        titles(ax, "languages sorted by training tokens (shaded: seen only in the decay phase)",
                "held-out MLM accuracy (mask token)",
                "Held-out MLM accuracy per language (running mean of 15)")


def _decay_gain_lines(r: dict[str, Any]) -> list[str]:
    """Decay-only languages: the largest gains from the last trunk phase to the merge."""
    mlm, tier, models = r["mlm"], r["tiers"], RunModels.from_json(r["models"])
    before = mlm[r["merge"]["base"]]
    after = mlm[models.merged.name]
    gains = sorted(((after[l]["accuracy"] - before[l]["accuracy"], l) for l in tier
                    if tier[l] == TIERS[2] and l in before and l in after), reverse=True)
    if not gains:
        return []
    lines = [f"## Languages seen only in the decay phase ({len(gains)})", "",
             f"{sum(g > 0 for g, _ in gains)} of {len(gains)} improved from "
             f"{r['merge']['base']} to the merged model. Largest gains:", "",
             "| language | train tokens | before decay | merged | unigram | gain |",
             "|---|---:|---:|---:|---:|---:|"]
    uni = mlm[models.baseline("unigram").name]
    for g, l in gains[:10]:
        lines.append(f"| {l} | {r['train_tokens'][l]} | {_fmt(before[l]['accuracy'])} | "
                     f"{_fmt(after[l]['accuracy'])} | {_fmt(uni.get(l, {}).get('accuracy'))} | "
                     f"{100 * g:+.1f} |")
    return lines + [""]


def write_demo_report(out: Path, r: dict[str, Any]) -> Path:
    """``report.md`` + ``results.json`` + PNG plots under ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    _curve_plot(plots / "learning_curve.png", r)
    _loss_plot(plots / "loss.png", r["loss_curves"])
    _sampling_plot(plots / "sampling.png", r["sampling"])
    _per_language_plot(plots / "mlm_per_language.png", r)
    tier = r["tiers"]
    scored = r["mlm"][RunModels.from_json(r["models"]).baseline("unigram").name]
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
