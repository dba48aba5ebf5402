"""A whole recipe's data plan, before any training: per phase, each language's sampling share,
the tokens drawn from it and how many times its text is repeated (epochs).

Epochs add up along the line of phases a model sees: the trunk's phases in order, then each
decay variant on top of the trunk. A language whose total goes above the recipe's
``epoch_cap`` (default 5, what the mmBERT paper aims at) is flagged: its text would be
memorised rather than learned from. Shares follow the sampler exactly
(:func:`mmbert.data.sampler.phase_probs`: tau over the phase's languages, and a fixed share for
its replay languages), so the plan is
what ``mmbert pretrain`` will draw, up to packing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmbert.data.sampler import epochs, phase_probs, select_languages


@dataclass(frozen=True)
class LanguageShare:
    lang: str
    tokens: int  # on disk (the split's shards)
    share: float  # p(lang) in this phase
    drawn: float  # tokens drawn from it in this phase
    epochs: float  # repetitions of its text in this phase
    total_epochs: float  # summed over this phase and the ones before it on the same line


@dataclass(frozen=True)
class PhasePlan:
    phase: str
    variant: str | None  # a decay variant's name; None on the trunk
    tokens: int
    tau: float
    languages: tuple[LanguageShare, ...]

    @property
    def label(self) -> str:
        return f"{self.phase}/{self.variant}" if self.variant else self.phase


@dataclass(frozen=True)
class RecipePlan:
    recipe: str
    split: str
    epoch_cap: float
    phases: tuple[PhasePlan, ...]

    def over_cap(self) -> list[tuple[str, LanguageShare]]:
        """(phase label, language) wherever the summed epochs pass the cap."""
        return [(p.label, s) for p in self.phases for s in p.languages
                if s.total_epochs > self.epoch_cap]


def _phase_plan(ss, phase, variant: str | None, before: dict[str, float]) -> PhasePlan:
    langs = select_languages(ss, phase.languages)
    replay = [lang for lang in (select_languages(ss, phase.replay_languages)
                                if phase.replay_languages is not None else [])
              if lang not in set(langs)]
    counts = {lang: ss.num_tokens(lang) for lang in langs + replay}
    p = phase_probs(counts, phase.tau, replay, phase.replay_share)
    ep = epochs(counts, p, phase.tokens)
    shares = tuple(LanguageShare(lang, counts[lang], p[lang], phase.tokens * p[lang], ep[lang],
                                 before.get(lang, 0.0) + ep[lang]) for lang in counts)
    return PhasePlan(phase.name, variant, phase.tokens, phase.tau, shares)


def plan_recipe(recipe, split: str = "train") -> RecipePlan:
    """The plan of every trunk phase and every decay variant of ``recipe`` over its shards."""
    from mmbert.data.shards import ShardSet

    ss = ShardSet(recipe.shards, split)
    phases: list[PhasePlan] = []
    seen: dict[str, float] = {}
    for phase in recipe.trunk:
        phases.append(_phase_plan(ss, phase, None, seen))
        seen = {**seen, **{s.lang: s.total_epochs for s in phases[-1].languages}}
    last = recipe.phases[-1]
    for name in recipe.variant_names:
        phases.append(_phase_plan(ss, last.variant(name), name, seen))
    return RecipePlan(recipe.name, split, recipe.epoch_cap, tuple(phases))


def format_recipe_plan(plan: RecipePlan, limit: int = 40) -> str:
    """A table per phase (largest and smallest languages when there are more than ``limit``),
    then the languages over the epoch cap."""
    out: list[str] = []
    for ph in plan.phases:
        rows = ph.languages
        out.append(f"\n{ph.label}: {ph.tokens:,} tokens, {len(rows)} languages, tau {ph.tau:g}")
        out.append(f"  {'language':<12} {'tokens':>12} {'share':>8} {'drawn':>12} "
                   f"{'epochs':>8} {'total':>8}")
        cut = limit > 0 and len(rows) > limit
        shown = rows[:limit // 2] + rows[-limit // 2:] if cut else rows
        for i, s in enumerate(shown):
            if cut and i == limit // 2:
                out.append(f"  ... {len(rows) - limit} more ...")
            flag = "  over cap" if s.total_epochs > plan.epoch_cap else ""
            out.append(f"  {s.lang:<12} {s.tokens:>12,} {s.share:>8.4f} {s.drawn:>12,.0f} "
                       f"{s.epochs:>8.2f} {s.total_epochs:>8.2f}{flag}")
    over = plan.over_cap()
    worst: dict[str, tuple[str, float]] = {}
    for label, s in over:
        if s.total_epochs > worst.get(s.lang, ("", -1.0))[1]:
            worst[s.lang] = (label, s.total_epochs)
    if worst:
        out.append(f"\n{len(worst)} language(s) over the epoch cap {plan.epoch_cap:g}: "
                   + ", ".join(f"{lang} {ep:.1f} ({label})"
                               for lang, (label, ep) in sorted(worst.items(),
                                                                key=lambda kv: -kv[1][1])))
    else:
        out.append(f"\nno language over the epoch cap {plan.epoch_cap:g}")
    return "\n".join(out).lstrip("\n")


def plot_recipe_plan(plan: RecipePlan, path: str | Path) -> Path:
    """Summed epochs per language (by size rank) for every phase, with the cap as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmbert.outputs import atomic_file

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for ph in plan.phases:
        ax.plot(range(1, len(ph.languages) + 1), [s.total_epochs for s in ph.languages],
                marker=".", linewidth=1, label=ph.label)
    ax.axhline(plan.epoch_cap, color="red", linestyle="--", label=f"cap {plan.epoch_cap:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("language rank by tokens on disk")
    ax.set_ylabel("epochs summed over the phases seen")
    ax.set_title(f"{plan.recipe}: repetition per language ({plan.split} split)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
