"""Units of tokenisation work, tokenised anywhere, merged into the same shards.

``mmbert data prepare --executor datatrove-local|slurm|ray`` splits the work finer than one
language: a *unit* is one input of one language (a ``<lang>.txt`` file, one JSONL file's
records of that language, one parquet file, one MDS shard). A task tokenises its units into
part files under ``OUT/.parts/<lang>/``: ``<unit>.<split>.bin`` / ``.idx`` in the shard format
and ``<unit>.json`` (counts), each written under a temp name and renamed, so a task killed
half-way leaves nothing that looks finished. Merge tasks (one language each at a time) then
concatenate each language's parts in unit order into ``OUT/<split>/<lang>.bin`` / ``.idx`` and
save its manifest entry; a last step writes ``manifest.json`` and only then removes
``OUT/.parts``.

A language's units are its inputs in the order the local path reads them, and documents keep
their order inside a unit, so the shards and the manifest are byte-identical to
``--executor local`` whatever the executor and the number of tasks. Tasks get units by size
and merge tasks get languages (by input bytes), which only decides who does the work.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mmbert.data.shards import (SPLITS, LanguageEntry, Manifest, SplitEntry, SplitWriter,
                                tokenize_inputs, worker_tokenizer)
from mmbert.data.sources import Input
from mmbert.errors import MmbertError
from mmbert.faults import kill_point
from mmbert.outputs import atomic_file, read_json, write_json

PARTS = ".parts"
COPY_BYTES = 1 << 23  # read size when concatenating part files
TASK_BYTES = 256 << 20  # default: one task per this much input (about 2 CPU-minutes of Gemma 2)
MAX_TASKS = 1000  # default task count cap: datatrove's Slurm job arrays hold up to 1001 tasks


@dataclass(frozen=True)
class Unit:
    """One input of one language: the smallest piece of tokenisation work."""

    lang: str
    number: int  # position among the language's inputs: the order of its parts in the shard
    input: Input
    size: int    # bytes of the input file (scheduling only)

    @property
    def stem(self) -> str:
        return f"{PARTS}/{self.lang}/{self.number:06d}"


@dataclass(frozen=True)
class UnitPlan:
    """Everything a task needs (pickled to the engine's workers): where the shards go, how to
    tokenise, the units and how many tasks share them."""

    tokenizer: str
    out: str
    heldout_fraction: float
    errors: str
    units: tuple[Unit, ...]
    tasks: int
    # lang -> split -> {source: documents} of the corpus' corpus.json (as the local path)
    sources: dict[str, dict[str, dict[str, int]]]

    @classmethod
    def build(cls, inputs: dict[str, list[Input]], tasks: int | None, min_tasks: int = 1,
              **fields: Any) -> "UnitPlan":
        """The units of ``inputs`` shared by ``tasks`` tasks, never more than there are units.
        ``tasks=None``: one per :data:`TASK_BYTES` of input, at least ``min_tasks`` (so every
        worker has several), at most :data:`MAX_TASKS`."""
        if tasks is not None and tasks < 1:
            raise MmbertError(f"--tasks {tasks}: expected at least 1")
        units = tuple(Unit(lang, k, inp, inp.size())
                      for lang in sorted(inputs) for k, inp in enumerate(inputs[lang]))
        if tasks is None:
            by_bytes = -(-sum(u.size for u in units) // TASK_BYTES)
            tasks = min(max(by_bytes, min_tasks), MAX_TASKS)
        return cls(units=units, tasks=max(1, min(tasks, len(units))), **fields)

    def units_of(self, rank: int) -> list[Unit]:
        """Tokenize task ``rank``'s units (:func:`balanced` by size)."""
        keyed = {(u.lang, u.number): u for u in self.units}
        return [keyed[k] for k in balanced({k: u.size for k, u in keyed.items()}, self.tasks,
                                           rank)]

    def languages(self) -> dict[str, int]:
        """``{lang: number of units}`` in language order."""
        counts: dict[str, int] = {}
        for u in self.units:
            counts[u.lang] = counts.get(u.lang, 0) + 1
        return counts

    @property
    def merge_tasks(self) -> int:
        return min(self.tasks, len(self.languages()))

    def languages_of(self, rank: int) -> list[str]:
        """Merge task ``rank``'s languages (:func:`balanced` by their input bytes)."""
        size: dict[str, int] = {}
        for u in self.units:
            size[u.lang] = size.get(u.lang, 0) + u.size
        return sorted(balanced(size, self.merge_tasks, rank))

    def fingerprint(self) -> str:
        """Names the engine's task records: a changed plan never reuses another's completions."""
        key = [self.tokenizer, self.heldout_fraction, self.errors, self.tasks,
               [(u.lang, u.number, u.input.kind, u.input.path, u.input.shard, u.input.split,
                 u.size)
                for u in self.units]]
        return hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:12]


def balanced(sizes: dict[Any, int], tasks: int, rank: int) -> list[Any]:
    """The keys task ``rank`` of ``tasks`` gets: largest first, each to the least-loaded task
    (ties: lowest rank; keys in order). Only decides who does the work, never the result."""
    heap = [(0, t) for t in range(tasks)]  # (load, task): already a valid heap
    mine = []
    for key in sorted(sizes, key=lambda k: (-sizes[k], k)):
        load, t = heapq.heappop(heap)
        heapq.heappush(heap, (load + sizes[key] + 1, t))
        if t == rank:
            mine.append(key)
    return mine


# ---------------------------------------------------------------------------------------------
# Tokenising one unit into part files
# ---------------------------------------------------------------------------------------------

def tokenize_unit(plan: UnitPlan, unit: Unit) -> LanguageEntry:
    """Tokenise ``unit`` into its part files; returns (and saves as ``<unit>.json``) the part's
    entry: the unit's splits as a manifest entry of their own."""
    out = Path(plan.out)
    (out / PARTS / unit.lang).mkdir(parents=True, exist_ok=True)
    tok = worker_tokenizer(plan.tokenizer)
    writers = {s: SplitWriter(out, f"{unit.stem}.{s}") for s in SPLITS}
    try:
        replaced = tokenize_inputs([unit.input], unit.lang, tok, writers, plan.heldout_fraction,
                                   plan.errors)
        splits = {s: w.publish(None) for s, w in writers.items() if w.handle is not None}
    finally:
        for w in writers.values():
            w.remove_temp()
    part = LanguageEntry(unit.lang, splits, replaced)
    write_json(out / f"{unit.stem}.json", part.to_dict())
    return part


# ---------------------------------------------------------------------------------------------
# Merging parts into shards
# ---------------------------------------------------------------------------------------------

def _read_part(out: Path, lang: str, number: int) -> LanguageEntry:
    p = out / PARTS / lang / f"{number:06d}.json"
    if not p.is_file():
        raise MmbertError(f"{p}: missing; unit {number} of {lang} was not tokenised (a task "
                          f"failed or is still running): rerun the same command")
    return LanguageEntry.from_dict(read_json(p, "a part record written by `mmbert data prepare`"))


def _copy_bins(parts: list[SplitEntry], out: Path, dest: Path) -> str:
    """Concatenate the parts' ``.bin`` files into ``dest``; the sha256 of what was written."""
    h = hashlib.sha256()
    with open(dest, "wb") as f:
        for sp in parts:
            with open(out / sp.bin, "rb") as src:
                while chunk := src.read(COPY_BYTES):
                    f.write(chunk)
                    h.update(chunk)
    return h.hexdigest()


def _join_offsets(parts: list[SplitEntry], out: Path) -> bytes:
    arrays, base = [np.zeros(1, dtype="<u8")], 0
    for sp in parts:
        offs = np.fromfile(out / sp.idx, dtype="<u8")
        arrays.append(offs[1:] + np.uint64(base))
        base += int(offs[-1])
    return np.concatenate(arrays).tobytes()


def _summed_kinds(parts: list[SplitEntry]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for sp in parts:
        for k, n in sp.sources.items():
            kinds[k] = kinds.get(k, 0) + n
    return kinds


def _merge_split(out: Path, stem: str, parts: list[SplitEntry],
                 sources: dict[str, int] | None) -> SplitEntry:
    """``out/<stem>.bin`` / ``.idx`` from the parts (temp names, then renamed)."""
    raw = _join_offsets(parts, out)
    with atomic_file(out / f"{stem}.idx") as tmp_idx:
        tmp_idx.write_bytes(raw)
        with atomic_file(out / f"{stem}.bin") as tmp_bin:
            bin_sha = _copy_bins(parts, out, tmp_bin)
            kill_point(f"shard:{stem}")
    tokens = sum(sp.tokens for sp in parts)
    return SplitEntry(sum(sp.documents for sp in parts), tokens, sum(sp.chars for sp in parts),
                      sources or _summed_kinds(parts), f"{stem}.bin", f"{stem}.idx", 4 * tokens,
                      bin_sha, len(raw), hashlib.sha256(raw).hexdigest())


def merge_language(plan: UnitPlan, lang: str, units: int) -> LanguageEntry:
    out = Path(plan.out)
    parts = [_read_part(out, lang, k) for k in range(units)]
    splits = {}
    for s in SPLITS:
        mine = [p.splits[s] for p in parts if s in p.splits]
        if mine:
            sources = plan.sources.get(lang, {}).get(s)
            splits[s] = _merge_split(out, f"{s}/{lang}", mine, sources)
    return LanguageEntry(lang, splits, sum(p.replacements for p in parts))


def _entry_path(out: Path, lang: str) -> Path:
    return out / PARTS / lang / "entry.json"


def merge_rank(plan: UnitPlan, rank: int) -> Iterator[LanguageEntry]:
    """Merge task ``rank``: its languages' shards, each with its manifest entry saved beside the
    parts (``OUT/.parts/<lang>/entry.json``) for :func:`write_manifest`; yields the entries."""
    out, units = Path(plan.out), plan.languages()
    for lang in plan.languages_of(rank):
        entry = merge_language(plan, lang, units[lang])
        write_json(_entry_path(out, lang), entry.to_dict())
        yield entry


def write_manifest(plan: UnitPlan, manifest: Manifest) -> Manifest:
    """Every merged language into ``manifest`` (totals included), written, then ``OUT/.parts``
    removed: in this order, so a step killed before the manifest is written finds its inputs
    when it is rerun."""
    out = Path(plan.out)
    entries = {}
    for lang in plan.languages():
        p = _entry_path(out, lang)
        if not p.is_file():
            raise MmbertError(f"{p}: missing; {lang} was not merged (a merge task failed or is "
                              f"still running): rerun the same command")
        entries[lang] = LanguageEntry.from_dict(read_json(p, "a merged language's entry"))
    manifest.languages = dict(sorted({**manifest.languages, **entries}.items()))
    manifest.replacements = sum(e.replacements for e in manifest.languages.values())
    manifest.replacements_this_run = sum(e.replacements for e in entries.values())
    manifest.write(out)
    shutil.rmtree(out / PARTS, ignore_errors=True)
    return manifest
