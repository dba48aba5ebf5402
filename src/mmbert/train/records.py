"""The trainer's records on disk, each with its writer and its reader side by side.

``trainer.json`` (one per checkpoint, see :mod:`mmbert.train.checkpoint`) is a
:class:`TrainerRecord`: the position in the run (:class:`TrainState`, which is also the LR and
batch schedule state), the phase and decay variant it belongs to, whether it ends that phase,
the world size and data-iterator states it was written with, and the run's tokenizer::

    {"format": 1, "step": .., "tokens": .., "phase_index": .., "phase_tokens": ..,
     "phase_steps": .., "phase_end": .., "phase": .., "variant": .., "world_size": ..,
     "data_slots": .., "data": {slot: loader state}, "tokenizer": ..}

``metrics.jsonl`` (the trunk's in RUN_DIR, each decay variant's in RUN_DIR/variants/<name>/) has
one :class:`StepRecord` per optimizer step, one JSON object per line, flushed per line::

    {"step": .., "phase": .., "variant": .., "tokens": .., "phase_tokens": .., "loss": ..,
     "lr": .., "grad_norm": .., "batch_tokens": .., "masked_tokens": .., "micro_batches": ..,
     "tokens_per_s": .., "lang_loss": {lang: loss}}

plus, only on the steps where the trainer met a non-finite loss or gradient (so the files of
normal runs do not change), ``"nonfinite": "skip"`` (this step's update was skipped; its loss
or grad_norm is null when non-finite) or ``"nonfinite": "rollback", "rolled_back_from": N``
(the first step after the run went back to its newest checkpoint because step N was
non-finite; the records of the discarded steps are dropped, as on resume).

Readers accept lines with fields missing (they read as None): users and tests write partial
records by hand. A line whose ``step`` is not an integer, or whose values do not convert, is not
a step record (a run killed mid-write leaves a torn last line) and is skipped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from mmbert.errors import MmbertError
from mmbert.outputs import read_jsonl, write_jsonl

FORMAT = 1  # trainer.json (and checkpoint manifest) format
TRAINER_JSON = "trainer.json"
METRICS = "metrics.jsonl"


def branch_label(phase: str, variant: str | None) -> str:
    """``phase`` or ``phase/variant``: how a phase or decay variant is named in logs, results
    and plots."""
    return phase + (f"/{variant}" if variant else "")


# ---------------------------------------------------------------------------------------------
# trainer.json
# ---------------------------------------------------------------------------------------------

_POSITION = ("step", "tokens", "phase_index", "phase_tokens", "phase_steps")


@dataclass
class TrainState:
    """Position in the run (it is also the LR/batch schedule state); saved in trainer.json."""

    step: int = 0
    tokens: int = 0  # total, over all phases
    phase_index: int = 0
    phase_tokens: int = 0  # tokens consumed in the current phase
    phase_steps: int = 0

    def to_json(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in _POSITION}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "TrainState":
        return cls(**{k: int(d.get(k, 0)) for k in _POSITION})


@dataclass
class TrainerRecord:
    """A checkpoint's trainer.json (layout in this module's docstring)."""

    state: TrainState
    phase: str = ""
    variant: str | None = None
    phase_end: bool = False  # phase-end checkpoints are never rotated away
    world_size: int | None = None
    data: dict[str, Any] = field(default_factory=dict)  # data slot -> loader state
    tokenizer: str | None = None
    format: int | None = FORMAT

    @property
    def label(self) -> str:
        return branch_label(self.phase, self.variant)

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, **self.state.to_json(), "phase_end": self.phase_end,
                "phase": self.phase, "variant": self.variant, "world_size": self.world_size,
                "data_slots": len(self.data), "data": self.data, "tokenizer": self.tokenizer}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: Path | str) -> "TrainerRecord":
        """The record of ``d``; MmbertError naming ``where`` if a value has the wrong type."""
        try:
            ws, tok = d.get("world_size"), d.get("tokenizer")
            return cls(TrainState.from_json(d), str(d.get("phase", "")), d.get("variant"),
                       bool(d.get("phase_end")), None if ws is None else int(ws),
                       dict(d.get("data") or {}), None if tok is None else str(tok),
                       d.get("format"))
        except (TypeError, ValueError) as e:
            raise MmbertError(f"checkpoint {where}: {TRAINER_JSON} malformed ({e}); expected "
                              "the JSON the trainer writes") from None


def read_trainer_json(path: Path) -> dict[str, Any]:
    """A checkpoint's ``trainer.json`` as JSON; one-line error if missing or unreadable."""
    try:
        d = json.loads((path / TRAINER_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MmbertError(f"checkpoint {path}: {TRAINER_JSON} unreadable ({e}); expected the "
                          "JSON the trainer writes") from None
    if not isinstance(d, dict):
        raise MmbertError(f"checkpoint {path}: {TRAINER_JSON} is not a JSON object")
    return d


def read_trainer_record(path: Path) -> TrainerRecord:
    """The :class:`TrainerRecord` of checkpoint ``path``; one-line error if it is missing,
    unreadable or malformed."""
    return TrainerRecord.from_json(read_trainer_json(path), path)


# ---------------------------------------------------------------------------------------------
# metrics.jsonl
# ---------------------------------------------------------------------------------------------

@dataclass
class StepRecord:
    """One optimizer step in metrics.jsonl (layout in this module's docstring). ``to_json``
    rounds: loss and grad_norm to 6 decimals, tokens_per_s to 1, per-language losses to 5."""

    step: int
    phase: str | None = None
    variant: str | None = None
    tokens: int | None = None  # total tokens seen after this step
    phase_tokens: int | None = None
    loss: float | None = None  # mean over the masked tokens of the global batch
    lr: float | None = None
    grad_norm: float | None = None
    batch_tokens: int | None = None
    masked_tokens: int | None = None
    micro_batches: int | None = None
    tokens_per_s: float | None = None
    lang_loss: dict[str, float] | None = None
    nonfinite: str | None = None  # "skip" | "rollback": written only when set
    rolled_back_from: int | None = None  # with "rollback": the non-finite step

    @property
    def label(self) -> str:
        return branch_label(self.phase or "", self.variant)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "phase": self.phase, "variant": self.variant,
                "tokens": self.tokens, "phase_tokens": self.phase_tokens,
                "loss": _round(self.loss, 6), "lr": self.lr,
                "grad_norm": _round(self.grad_norm, 6), "batch_tokens": self.batch_tokens,
                "masked_tokens": self.masked_tokens, "micro_batches": self.micro_batches,
                "tokens_per_s": _round(self.tokens_per_s, 1),
                "lang_loss": None if self.lang_loss is None
                else {k: round(v, 5) for k, v in self.lang_loss.items() if math.isfinite(v)},
                **({"nonfinite": self.nonfinite} if self.nonfinite else {}),
                **({"rolled_back_from": self.rolled_back_from}
                   if self.rolled_back_from is not None else {})}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "StepRecord | None":
        """The record of one parsed line, or None if it is not a step record."""
        if not _is_step(d):
            return None
        conv = {"tokens": int, "phase_tokens": int, "loss": float, "lr": float,
                "grad_norm": float, "batch_tokens": int, "masked_tokens": int,
                "micro_batches": int, "tokens_per_s": float, "phase": str, "variant": str,
                "nonfinite": str, "rolled_back_from": int,
                "lang_loss": lambda v: {str(k): float(x) for k, x in v.items()}}
        try:
            vals = {k: f(d[k]) for k, f in conv.items() if d.get(k) is not None}
        except (TypeError, ValueError, AttributeError):
            return None
        return cls(step=d["step"], **vals)


def _round(v: float | None, nd: int) -> float | None:
    """``v`` rounded; None for None and for NaN/inf (which strict JSON has no words for)."""
    return None if v is None or not math.isfinite(v) else round(v, nd)


def _is_step(d: Mapping[str, Any]) -> bool:
    return isinstance(d.get("step"), int)


def read_steps(path: Path) -> list[StepRecord]:
    """The step records of one metrics.jsonl (missing file: none)."""
    return [s for s in map(StepRecord.from_json, read_jsonl(path)) if s is not None]


def run_steps(run_dir: Path) -> Iterator[tuple[Path, StepRecord]]:
    """(file, record) for every step record of a run: the trunk's metrics.jsonl, then each
    decay variant's (by name)."""
    files = [run_dir / METRICS, *sorted((run_dir / "variants").glob(f"*/{METRICS}"))]
    for f in files:
        for s in read_steps(f):
            yield f, s


class StepLog:
    """A metrics.jsonl being written (main rank): one line per step, flushed per line. A resumed
    run (``resume_step``) keeps the lines up to that step (dropping later ones and a torn last
    line); a fresh one (``resume_step`` None) starts the file anew."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None and path.exists():
            write_jsonl(path, [r for r in read_jsonl(path)
                               if _is_step(r) and r["step"] <= resume_step])
        elif resume_step is None and path.exists():
            path.unlink()
        self.f = open(path, "a", encoding="utf-8")

    def rewind(self, step: int) -> None:
        """Drop the lines after ``step`` (the run went back to its checkpoint of that step)."""
        self.f.close()
        write_jsonl(self.path, [r for r in read_jsonl(self.path)
                                if _is_step(r) and r["step"] <= step])
        self.f = open(self.path, "a", encoding="utf-8")

    def write(self, rec: StepRecord) -> dict[str, Any]:
        """Append ``rec``; returns the JSON object written."""
        d = rec.to_json()
        self.f.write(json.dumps(d, ensure_ascii=False) + "\n")
        self.f.flush()
        return d

    def close(self) -> None:
        self.f.close()
