"""Schedules inside a phase: learning rate (warmup-stable-decay) and batch-size warmup.

Everything is a function of ``t``, the tokens a phase has consumed, not of the step count:
batch-size warmup changes tokens per step, and token budgets are what recipes (and the paper)
state. A phase's LR is ``phase.lr * lr_factor(phase, t)``:

    warmup  (first ``warmup_tokens``):   linear 0 -> 1
    stable:                              1
    decay   (last ``decay_tokens``):     1 -> final_lr_ratio, shaped by ``decay_shape``

so mmBERT's trapezoid is phase 1 = warmup + stable, phase 2 = stable, phase 3 = decay.
"""

from __future__ import annotations

import math

from mmbert.recipe import PhaseConfig


def decay_curve(shape: str, x: float, final: float) -> float:
    """Decay multiplier at progress ``x`` in [0, 1]: 1 at x=0, ``final`` at x=1.

    linear: straight line. 1-sqrt: ``1 - sqrt(x)`` scaled (drops fast at first, as in
    mmBERT's decay and "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
    Durations"). cosine: half cosine. inverse-sqrt: ``1 / sqrt(1 + c x)`` with c chosen so the
    curve reaches ``final`` at x=1 (needs final > 0).
    """
    x = min(max(x, 0.0), 1.0)
    if shape == "linear":
        return 1.0 - (1.0 - final) * x
    if shape == "1-sqrt":
        return 1.0 - (1.0 - final) * math.sqrt(x)
    if shape == "cosine":
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * x))
    if shape == "inverse-sqrt":
        c = 1.0 / (final * final) - 1.0
        return 1.0 / math.sqrt(1.0 + c * x)
    raise ValueError(f"unknown decay shape {shape!r}")


def lr_factor(phase: PhaseConfig, t: float) -> float:
    """LR multiplier at phase position ``t`` tokens (the trainer uses the step's midpoint)."""
    f = 1.0
    if phase.warmup_tokens > 0 and t < phase.warmup_tokens:
        f = max(t, 0.0) / phase.warmup_tokens
    start = phase.tokens - phase.decay_tokens
    if phase.decay_tokens > 0 and t > start:
        f *= decay_curve(phase.decay_shape, (t - start) / phase.decay_tokens, phase.final_lr_ratio)
    return f


def target_batch_tokens(phase: PhaseConfig, t: float) -> float:
    """Global batch size in tokens at position ``t``: linear growth during batch warmup."""
    if phase.batch_warmup_tokens > 0 and t < phase.batch_warmup_tokens:
        lo, hi = phase.batch_warmup_min_tokens, phase.batch_tokens
        return lo + (hi - lo) * t / phase.batch_warmup_tokens
    return float(phase.batch_tokens)


def step_slots(phase: PhaseConfig, t: float) -> int:
    """Global micro-batches (data slots, :mod:`mmbert.train.slots`) of the step starting at
    ``t``: the target batch rounded to whole micro-batches, at least one. A function of the
    recipe and ``t`` alone, never of the number of ranks."""
    return max(1, round(target_batch_tokens(phase, t) / phase.micro_batch_tokens))


def phase_slots(phase: PhaseConfig) -> int:
    """Data slots of a full-size step (batch warmup only ever grows the batch)."""
    return step_slots(phase, float(phase.tokens))
