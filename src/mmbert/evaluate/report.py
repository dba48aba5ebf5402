"""Writing an evaluation: ``results.json``, ``report.md`` and PNG plots.

Every file is written to a temporary name and renamed, so a crash never leaves half a report.
Plots: one grouped bar chart per task (languages x systems) and the "world-scale" curve: MLM
accuracy of every language against its training tokens (log scale), languages sorted by size,
with a running median, which shows how accuracy falls off towards low-resource languages.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mmbert.outputs import atomic_file, write_json, write_text

TASK_TITLES = {
    "mlm": "Held-out MLM accuracy (mask token at every scored position)",
    "udhr_retrieval": "UDHR retrieval acc@1 (X<->English, mean of both directions)",
    "gettext_retrieval": "gettext retrieval acc@1 (X<->English, mean of both directions)",
    "classification": "Cross-lingual domain classification (probe trained on English), accuracy",
    "tagging": "Code-switched word language tagging (probe), word accuracy",
}


def _clean(x: Any) -> Any:
    """NaN -> None so results.json is strict JSON."""
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        return _clean(x.item())
    return x


def write_results(out: Path, results: dict[str, Any]) -> None:
    write_json(out / "results.json", _clean(results))


def _score(task_result: dict[str, Any] | None, lang: str) -> float | None:
    if not task_result:
        return None
    v = task_result.get("per_language", {}).get(lang)
    if v is None:
        return None
    if isinstance(v, dict):
        v = v.get("mean", v.get("accuracy"))
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------

def markdown(results: dict[str, Any]) -> str:
    systems = results["systems"]
    names = list(systems)
    tasks = [t for t in TASK_TITLES if any(t in s["tasks"] for s in systems.values())]
    lines = [f"# Evaluation: {results['model']}", "",
             f"Suite `{results['suite']}`, corpus `{results['corpus']}`, seed {results['seed']}, "
             f"{len(results['languages'])} evaluation languages besides English "
             f"(MLM on {len(systems[names[0]]['tasks'].get('mlm', {}).get('per_language', {}))} "
             f"languages). Time: {results.get('seconds', 0):.0f} s.", "",
             "## Summary (mean over languages)", "",
             "| task | chance / majority / unigram | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for t in tasks:
        chance = next((s["tasks"][t].get("chance") for s in systems.values() if t in s["tasks"]),
                      None)
        row = [_fmt(systems[n]["tasks"].get(t, {}).get("mean")) for n in names]
        lines.append(f"| {TASK_TITLES[t]} | {_fmt(chance)} | " + " | ".join(row) + " |")
    mlm = systems[names[0]]["tasks"].get("mlm")
    if mlm:
        won, n = mlm["beats_unigram"]
        lines += ["", f"MLM: {names[0]} beats the per-language unigram baseline (its most frequent "
                  f"training token; the baseline column) in {won} of {n} languages; masked-token "
                  f"loss {mlm['loss']:.3f} nats; with the pre-training 80/10/10 input instead "
                  f"of the mask token (copyable, not the headline) {_fmt(mlm['mean_801010'])}."]
    cls = next((s["tasks"]["classification"] for s in systems.values()
                if "classification" in s["tasks"]), None)
    if cls:
        lines += ["", f"Classification: domains {', '.join(cls['domains'])}; "
                  f"{cls['train_examples']} English training strings. In-language English "
                  "accuracy: " + ", ".join(
                      f"{n} {_fmt(systems[n]['tasks'].get('classification', {}).get('english'))}"
                      for n in names) + "."]
    lines += ["", "Systems: " + "; ".join(f"**{n}**: {systems[n]['description']}" for n in names)
              + ".", "", "## Per language", ""]
    cols = [(n, t) for t in tasks for n in names if t in systems[n]["tasks"]]
    short = {"mlm": "mlm", "udhr_retrieval": "udhr", "gettext_retrieval": "gettext",
             "classification": "cls", "tagging": "tag"}
    lines.append("| language | train tokens | " + " | ".join(f"{short[t]} {n}" for n, t in cols)
                 + " |")
    lines.append("|---|---|" + "---|" * len(cols))
    tokens = results.get("training_tokens", {})
    for lang in ["eng_Latn", *results["languages"]]:
        row = [_fmt(_score(systems[n]["tasks"].get(t), lang)) for n, t in cols]
        lines.append(f"| {lang} | {tokens.get(lang, '–')} | " + " | ".join(row) + " |")
    lines += ["", f"Training sizes: {results.get('token_source', '')}.", "",
              "Plots: " + ", ".join(f"`{p}`" for p in results.get("plots", [])), ""]
    for p in results.get("plots", []):
        lines += [f"![{p}]({p})", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------

def _save(fig, path: Path) -> None:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")


def bar_plot(path: Path, task: str, results: dict[str, Any]) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = {n: s["tasks"][task] for n, s in results["systems"].items() if task in s["tasks"]}
    if not systems:
        return False
    langs = [l for l in ["eng_Latn", *results["languages"]]
             if any(_score(r, l) is not None for r in systems.values())]
    if not langs:
        return False
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 0.3 * len(langs) * len(systems))), 3.8))
    w = 0.8 / len(systems)
    x = np.arange(len(langs))
    for i, (name, r) in enumerate(systems.items()):
        ys = [_score(r, l) or 0.0 for l in langs]
        ax.bar(x + i * w - 0.4 + w / 2, ys, w, label=name)
    chance = next((r.get("chance") for r in systems.values() if r.get("chance") is not None),
                  None)
    if chance:
        ax.axhline(chance, color="grey", ls="--", lw=1,
                   label=("chance (1/n)" if "retrieval" in task else
                          "unigram baseline" if task == "mlm" else "majority class"))
    ax.set_xticks(x)
    ax.set_xticklabels(langs, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(TASK_TITLES[task], fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return True


def world_plot(path: Path, results: dict[str, Any], system: str = "model") -> bool:
    """MLM accuracy vs training tokens of every language, sorted by size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mlm = results["systems"].get(system, {}).get("tasks", {}).get("mlm")
    tokens = results.get("training_tokens", {})
    if not mlm:
        return False
    pts = sorted((tokens.get(l, 0), _score(mlm, l), l) for l in mlm["per_language"])
    pts = [(t, a, l) for t, a, l in pts if a is not None and t > 0]
    if len(pts) < 2:
        return False
    t = np.array([p[0] for p in pts], dtype=float)
    a = np.array([p[1] for p in pts])
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.scatter(t, a, s=8, alpha=0.5, label=f"{len(pts)} languages")
    k = max(3, len(pts) // 15)
    med = [np.median(a[max(0, i - k // 2): i + k // 2 + 1]) for i in range(len(a))]
    ax.plot(t, med, color="C1", lw=2, label=f"running median ({k} languages)")
    for tt, aa, l in sorted(pts, key=lambda p: -p[1])[:3]:  # the best-scored languages
        ax.annotate(l, (tt, aa), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(f"training {results.get('token_unit', 'tokens')} per language (log)")
    ax.set_ylabel("held-out MLM accuracy")
    ax.set_title("MLM accuracy vs training data per language (sorted by size)", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return True


def write_report(out: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Plots, then results.json and report.md (which list the plots)."""
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    for task in TASK_TITLES:
        name = f"{task}_per_language.png"
        if bar_plot(out / name, task, results):
            plots.append(name)
    if world_plot(out / "mlm_vs_training_tokens.png", results):
        plots.append("mlm_vs_training_tokens.png")
    results["plots"] = plots
    write_results(out, results)
    write_text(out / "report.md", markdown(results))
    return results
