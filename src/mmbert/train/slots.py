"""Data slots: the global micro-batches of a step, and which rank runs which.

A phase's step starting at ``t`` (tokens the phase has consumed) is made of
``S(t) = step_slots(phase, t)`` micro-batches (:mod:`mmbert.train.schedule`: the target batch in
whole micro-batches, growing during batch warmup up to ``S = phase_slots(phase)``). Micro-batch
``s`` of every step comes from *data slot* ``s``: an ``MLMLoader(rank=s, world_size=S)`` of its
own, a stream that depends on the recipe and ``s`` alone. So the data of every step, and the
position of every slot's stream after it, are the same whatever the number of ranks.

Ranks hold slots round-robin: rank ``r`` of ``W`` owns slots ``r, r + W, r + 2W, ...`` and in a
step runs those below ``S(t)``, in that order. Every rank makes the same number of passes,
``ceil(S(t) / W)`` (DDP's all-reduce and FSDP2's all-gathers are collectives: each pass has to
happen on every rank); a rank with no slot left for a pass runs a *padding pass*
(:meth:`~mmbert.data.loader.MLMLoader.padding_batch`: no label, so nothing is added to the loss
or the gradients). Padding passes occur only during batch warmup, in steps whose ``S(t)`` is not
a multiple of ``W``.

A checkpoint keeps every slot's loader state (``trainer.json`` ``data``: ``{slot: state}``,
gathered from all ranks), not a rank's: a launch on another number of ranks hands the slots out
anew and each continues its stream where it stopped.

Refused (:func:`check_world_size`, one line, before any work): a world size that does not divide
the full-size step ``S`` of every phase. The ranks would then hold different numbers of slots and
every step would carry padding passes, leaving part of the machines idle for the whole phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from mmbert.errors import MmbertError
from mmbert.recipe import PhaseConfig
from mmbert.train.schedule import phase_slots, step_slots


@dataclass(frozen=True)
class StepSlots:
    """One rank's share of one step."""

    total: int  # slots (global micro-batches) of the step
    passes: int  # forward/backward passes every rank makes: ceil(total / world size)
    mine: tuple[int, ...]  # this rank's slots in the step, in pass order (may be fewer)

    @property
    def padding(self) -> int:
        """Padding passes this rank makes after its slots."""
        return self.passes - len(self.mine)


def rank_slots(phase: PhaseConfig, world_size: int, rank: int) -> list[int]:
    """The data slots rank ``rank`` of ``world_size`` holds for ``phase``."""
    return list(range(rank, phase_slots(phase), world_size))


def step_assignment(phase: PhaseConfig, t: float, world_size: int, rank: int) -> StepSlots:
    """Rank ``rank``'s slots for the step starting at phase position ``t``."""
    total = step_slots(phase, t)
    return StepSlots(total, -(-total // world_size), tuple(range(rank, total, world_size)))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_world_size(phases: Sequence[tuple[str, PhaseConfig]], world_size: int) -> None:
    """MmbertError unless ``world_size`` divides every phase's full-size step; ``phases`` are
    (where, phase) pairs, ``where`` naming the phase in the message."""
    for where, phase in phases:
        s = phase_slots(phase)
        if s % world_size:
            raise MmbertError(
                f"{where}: {s} micro-batches per step (batch_tokens {phase.batch_tokens} / "
                f"micro_batch_tokens {phase.micro_batch_tokens}) do not divide among "
                f"{world_size} ranks; expected a number of ranks dividing {s} "
                f"({', '.join(map(str, _divisors(s)))}) or a micro_batch_tokens that makes the "
                f"micro-batches a multiple of {world_size}")


def check_states(states: Mapping[str, Any], phase: PhaseConfig, where: str) -> None:
    """MmbertError unless ``states`` (a checkpoint's ``data``) has one loader state per slot of
    ``phase``."""
    want = [str(s) for s in range(phase_slots(phase))]
    if sorted(states, key=lambda k: (len(k), k)) != want:
        raise MmbertError(f"{where}: data states for {len(states)} slot(s) "
                          f"({', '.join(sorted(states, key=lambda k: (len(k), k))[:4])}"
                          f"{', ...' if len(states) > 4 else ''}); expected one per slot "
                          f"0..{len(want) - 1} of phase {phase.name!r} (batch_tokens / "
                          f"micro_batch_tokens), as the trainer writes them")
