"""Token shards: tokenised corpora on disk, one pair of files per language and split.

Layout of ``SHARDS`` (``mmbert data prepare``)::

    SHARDS/manifest.json
    SHARDS/<split>/<lang>.bin   uint32 little-endian token ids of all documents, concatenated
    SHARDS/<split>/<lang>.idx   uint64 little-endian offsets, documents + 1 entries (0 first)

Documents are stored without special tokens (the packer adds ``[bos] doc [eos]``). Splits are
``train`` and ``heldout``. ``manifest.json`` records the tokenizer (fingerprint, vocab size,
special ids) and, per language and split: code, documents, tokens, chars, source(s), and the
byte size and sha256 of both files.

Corruption: opening a language's shard (:meth:`ShardSet.offsets` / :meth:`ShardSet.tokens`)
runs the quick check (:func:`check_split`): both files exist, their sizes match the manifest,
the ``.idx`` (read whole anyway) matches its sha256, starts at 0, never decreases and ends at the
``.bin``'s token count. The ``.bin`` is memory-mapped and read sparsely, so its sha256 is only
checked by ``mmbert data verify`` (:func:`verify_shards`), which also adds the checksums an
older manifest lacks (``--fix-checksums``).

Crash safety: each language is written to temp names and renamed, then the manifest is
rewritten atomically (temp + rename). A rerun skips languages the manifest lists; files of an
interrupted language are never visible under their final names.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmbert.data.sources import (DecodeStats, Document, Input, heldout_by_hash, iter_input,
                                 only_languages, scan_corpus)
from mmbert.errors import MmbertError
from mmbert.faults import kill_point
from mmbert.outputs import read_json, sha256_file, sibling, write_json

SPLITS = ("train", "heldout")
MANIFEST = "manifest.json"
FORMAT = "mmbert-shards"
SPECIAL_ROLES = ("pad", "eos", "bos", "unk", "mask")
CHECKSUM_FIELDS = ("bin_bytes", "bin_sha256", "idx_bytes", "idx_sha256")
DEFAULT_WORKERS = 2  # tokenizer processes of the local path
MANIFEST_EACH_UP_TO = 64  # languages: the manifest is rewritten after each one up to this many,
MANIFEST_EVERY_S = 1.0    # then at most this often


# ---------------------------------------------------------------------------------------------
# manifest.json: written by `prepare`, read by ShardSet (and training / evaluation)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenizerInfo:
    """The tokenizer the shards were made with."""

    path: str
    fingerprint: str
    vocab_size: int
    pad_id: int
    eos_id: int
    bos_id: int
    unk_id: int
    mask_id: int
    prefix_space: bool

    @property
    def special_ids(self) -> dict[str, int]:
        return {r: getattr(self, f"{r}_id") for r in SPECIAL_ROLES}


@dataclass(frozen=True)
class SplitEntry:
    """One language's documents in one split: counts, sources and its two files."""

    documents: int
    tokens: int
    chars: int
    sources: dict[str, int]  # source kind or corpus.json source -> documents
    bin: str                 # paths relative to the shard directory
    idx: str
    # size and sha256 of each file; None in manifests written before they were recorded
    bin_bytes: int | None = None
    bin_sha256: str | None = None
    idx_bytes: int | None = None
    idx_sha256: str | None = None

    @property
    def source(self) -> str:
        return "+".join(sorted(self.sources))

    @property
    def has_checksums(self) -> bool:
        return self.bin_sha256 is not None and self.idx_sha256 is not None

    @classmethod
    def from_dict(cls, sp: dict[str, Any]) -> "SplitEntry":
        return cls(sp["documents"], sp["tokens"], sp["chars"], sp["sources"], sp["bin"],
                   sp["idx"], *(sp.get(k) for k in CHECKSUM_FIELDS))

    def to_dict(self) -> dict[str, Any]:
        d = {"documents": self.documents, "tokens": self.tokens, "chars": self.chars,
             "source": self.source, "sources": self.sources, "bin": self.bin,
             "idx": self.idx}
        for k in CHECKSUM_FIELDS:
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return d


@dataclass(frozen=True)
class LanguageEntry:
    """One finished language: its splits (only those with documents) and U+FFFD replacements."""

    code: str
    splits: dict[str, SplitEntry]
    replacements: int = 0

    @property
    def tokens(self) -> int:
        return sum(sp.tokens for sp in self.splits.values())

    def is_complete(self, shards: Path) -> bool:
        """Whether every file the entry names exists in ``shards``."""
        return all((shards / sp.bin).is_file() and (shards / sp.idx).is_file()
                   for sp in self.splits.values())

    @classmethod
    def from_dict(cls, e: dict[str, Any]) -> "LanguageEntry":
        return cls(e["code"], {s: SplitEntry.from_dict(sp) for s, sp in e["splits"].items()},
                   e.get("replacements", 0))

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "splits": {s: e.to_dict() for s, e in self.splits.items()},
                "replacements": self.replacements}


@dataclass
class Manifest:
    """``manifest.json`` of a shard directory. :meth:`to_dict` gives the file's exact layout
    (key order included): the tokenizer's vocab size and special ids are repeated at the top
    level for other tools; ``replacements`` (all languages) and ``replacements_this_run`` are
    present once a run has finished."""

    tokenizer: TokenizerInfo
    corpus: str
    heldout_fraction: float
    languages: dict[str, LanguageEntry] = field(default_factory=dict)
    version: int = 1
    replacements: int | None = None
    replacements_this_run: int | None = None
    written_at: float = field(default=0.0, repr=False, compare=False)  # time.monotonic()

    def to_dict(self) -> dict[str, Any]:
        d = {"format": FORMAT, "version": self.version, "tokenizer": asdict(self.tokenizer),
             "vocab_size": self.tokenizer.vocab_size, "special_ids": self.tokenizer.special_ids,
             "corpus": self.corpus, "heldout_fraction": self.heldout_fraction,
             "languages": {lang: e.to_dict() for lang, e in self.languages.items()}}
        if self.replacements is not None:
            d["replacements"] = self.replacements
        if self.replacements_this_run is not None:
            d["replacements_this_run"] = self.replacements_this_run
        return d

    def write(self, shards: Path) -> None:
        write_json(shards / MANIFEST, self.to_dict())
        self.written_at = time.monotonic()

    def add(self, entry: LanguageEntry, shards: Path) -> None:
        """Record a finished language. The file is rewritten after each one while there are at
        most :data:`MANIFEST_EACH_UP_TO` languages, then at most every
        :data:`MANIFEST_EVERY_S` seconds (a rewrite costs more as the list grows; the caller
        writes it at the end). A language finished but not yet listed is redone by a rerun."""
        self.languages = dict(sorted({**self.languages, entry.code: entry}.items()))
        if (len(self.languages) <= MANIFEST_EACH_UP_TO
                or time.monotonic() - self.written_at >= MANIFEST_EVERY_S):
            self.write(shards)

    @classmethod
    def read(cls, shards: str | Path) -> "Manifest":
        p = Path(shards) / MANIFEST
        m = read_json(p, "a shard directory written by `mmbert data prepare`")
        if m.get("format") != FORMAT:
            raise MmbertError(f"{p}: not a shard manifest; expected format '{FORMAT}'")
        try:
            return cls.from_dict(m)
        except (KeyError, TypeError, AttributeError) as e:
            raise MmbertError(f"{p}: missing or malformed field ({type(e).__name__}: {e}); "
                              "expected a manifest written by `mmbert data prepare`") from None

    @classmethod
    def from_dict(cls, m: dict[str, Any]) -> "Manifest":
        langs = {lang: LanguageEntry.from_dict(e) for lang, e in m["languages"].items()}
        return cls(TokenizerInfo(**m["tokenizer"]), m["corpus"], m["heldout_fraction"], langs,
                   m.get("version", 1), m.get("replacements"), m.get("replacements_this_run"))


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def _damaged(p: Path, what: str) -> MmbertError:
    return MmbertError(f"{p}: {what} (a damaged shard: restore it or rerun `mmbert data "
                       f"prepare` into a new directory)")


def _file_size(p: Path, want: int, recorded: int | None) -> None:
    """``p`` exists and has ``want`` bytes (and the manifest's recorded size, if any)."""
    try:
        size = os.path.getsize(p)
    except FileNotFoundError:
        raise _damaged(p, f"missing; {MANIFEST} lists it") from None
    for expected in (want, recorded):
        if expected is not None and size != expected:
            raise _damaged(p, f"{size} bytes on disk; the manifest says {expected} (truncated?)")


def check_split(shards: Path, sp: SplitEntry) -> np.ndarray:
    """The quick check of one language's split, before use; returns its document offsets.

    Catches missing files, truncation or growth of either file, and any change to the
    ``.idx``: sizes against the manifest, the sha256 of the ``.idx`` (which is read whole anyway;
    8 bytes per document), offsets starting at 0, never decreasing and ending at the token count.
    A changed byte inside the ``.bin`` needs the full check (:func:`verify_shards`)."""
    bin_p, idx_p = shards / sp.bin, shards / sp.idx
    _file_size(bin_p, 4 * sp.tokens, sp.bin_bytes)
    _file_size(idx_p, 8 * (sp.documents + 1), sp.idx_bytes)
    raw = idx_p.read_bytes()
    if sp.idx_sha256 is not None and hashlib.sha256(raw).hexdigest() != sp.idx_sha256:
        raise _damaged(idx_p, "fails its sha256 check (corrupt)")
    off = np.frombuffer(raw, dtype="<u8").astype(np.int64)
    if (len(off) != sp.documents + 1 or off[0] != 0 or off[-1] != sp.tokens
            or bool(np.any(np.diff(off) < 0))):
        raise _damaged(idx_p, f"offsets are not 0 <= ... <= {sp.tokens} in order for "
                              f"{sp.documents} documents (corrupt)")
    return off


class ShardSet:
    """Read access to one split of a shard directory (memory-mapped).

    ``record`` is the typed :class:`Manifest`."""

    def __init__(self, path: str | Path, split: str = "train") -> None:
        if split not in SPLITS:
            raise MmbertError(f"split {split!r}: expected one of {SPLITS}")
        self.path = Path(path)
        self.split = split
        self.record = Manifest.read(self.path)
        tok = self.record.tokenizer
        self.vocab_size: int = tok.vocab_size
        self.pad_id, self.eos_id, self.bos_id = tok.pad_id, tok.eos_id, tok.bos_id
        self.unk_id, self.mask_id = tok.unk_id, tok.mask_id
        self.special_ids = frozenset((self.pad_id, self.eos_id, self.bos_id, self.unk_id,
                                      self.mask_id))
        self._info = {lang: e.splits[split] for lang, e in self.record.languages.items()
                      if split in e.splits and e.splits[split].documents > 0}
        self.languages: list[str] = sorted(self._info)
        self._tokens: dict[str, np.ndarray] = {}
        self._offsets: dict[str, np.ndarray] = {}

    def _check(self, lang: str) -> SplitEntry:
        if lang not in self._info:
            raise MmbertError(f"{self.path}: no {self.split} data for language {lang!r}; "
                              f"expected one of {self.languages[:8]}"
                              f"{' ...' if len(self.languages) > 8 else ''}")
        return self._info[lang]

    def num_tokens(self, lang: str) -> int:
        return int(self._check(lang).tokens)

    def num_docs(self, lang: str) -> int:
        return int(self._check(lang).documents)

    def token_counts(self) -> dict[str, int]:
        return {lang: int(self._info[lang].tokens) for lang in self.languages}

    def info(self, lang: str) -> SplitEntry:
        return self._check(lang)

    def tokens(self, lang: str) -> np.ndarray:
        """All tokens of a language (uint32 memmap)."""
        if lang not in self._tokens:
            self.offsets(lang)  # the quick check of both files (sizes included)
            p = self.path / self._check(lang).bin
            self._tokens[lang] = (np.memmap(p, dtype="<u4", mode="r") if self.num_tokens(lang)
                                  else np.zeros(0, dtype="<u4"))
        return self._tokens[lang]

    def offsets(self, lang: str) -> np.ndarray:
        """Document boundaries: ``doc i = tokens[offsets[i]:offsets[i + 1]]``."""
        if lang not in self._offsets:
            self._offsets[lang] = check_split(self.path, self._check(lang))
        return self._offsets[lang]

    def doc(self, lang: str, i: int) -> np.ndarray:
        off = self.offsets(lang)
        return self.tokens(lang)[off[i]:off[i + 1]]

    def check(self, languages: Sequence[str] | None = None) -> None:
        """The quick check (:func:`check_split`) of ``languages`` (default: all) now, before
        anything uses them."""
        for lang in self.languages if languages is None else languages:
            self.offsets(lang)


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_shards` checked: files, their bytes, seconds taken; files that had no
    checksum in the manifest and how many of those were added (``fix``)."""

    files: int
    bytes: int
    seconds: float
    unchecked: int
    added: int


def _verify_entry(shards: Path, sp: SplitEntry) -> SplitEntry:
    """Quick check, then the sha256 of the ``.bin``; the entry with both files' checksums."""
    check_split(shards, sp)
    bin_sha = sha256_file(shards / sp.bin)
    if sp.bin_sha256 is not None and bin_sha != sp.bin_sha256:
        raise _damaged(shards / sp.bin, "fails its sha256 check (corrupt)")
    return replace(sp, bin_bytes=4 * sp.tokens, bin_sha256=bin_sha,
                   idx_bytes=8 * (sp.documents + 1),
                   idx_sha256=sp.idx_sha256 or sha256_file(shards / sp.idx))


def verify_shards(shards: str | Path, *, fix: bool = False) -> VerifyReport:
    """Full check of a shard directory: the manifest, then every file's size, offsets and
    sha256. Raises MmbertError naming the first damaged file. Files whose manifest entry has no
    checksum (written before they were recorded) are checked for size and offsets only; with
    ``fix`` their checksums are computed from the files as they are and written into the
    manifest (atomically)."""
    shards = Path(shards)
    manifest = Manifest.read(shards)
    t0 = time.perf_counter()
    files = size = unchecked = 0
    for entry in manifest.languages.values():
        for split, sp in list(entry.splits.items()):
            unchecked += 0 if sp.has_checksums else 2
            entry.splits[split] = _verify_entry(shards, sp)
            files, size = files + 2, size + 4 * sp.tokens + 8 * (sp.documents + 1)
    if fix and unchecked:
        manifest.write(shards)
    return VerifyReport(files, size, time.perf_counter() - t0, unchecked,
                        unchecked if fix else 0)


# ---------------------------------------------------------------------------------------------
# Writing (`mmbert data prepare`)
# ---------------------------------------------------------------------------------------------

@dataclass
class _Job:
    lang: str
    inputs: list[Input]
    tokenizer: str
    out: str
    heldout_fraction: float
    errors: str
    sources: dict[str, dict[str, int]]  # split -> {source: documents}, from corpus.json


_PROCESS_TOK: dict[str, Any] = {}


def worker_tokenizer(path: str):
    """The tokenizer at ``path``, loaded once per process."""
    if path not in _PROCESS_TOK:
        from mmbert.tokenizer import load_tokenizer

        _PROCESS_TOK.clear()
        _PROCESS_TOK[path] = load_tokenizer(path)
    return _PROCESS_TOK[path]


class SplitWriter:
    """Documents of one language and split, written to ``out/<stem>.bin`` and ``.idx``: token ids
    appended to a temp ``.bin`` in batches (texts are tokenised at each flush, pre-tokenised ids
    are checked against the vocabulary), offsets, characters and documents per source kind kept
    for the manifest; :meth:`publish` renames both files into place."""

    def __init__(self, out: Path, stem: str) -> None:
        self.out, self.stem = out, stem
        self.final_bin, self.final_idx = out / f"{stem}.bin", out / f"{stem}.idx"
        self.tmp_bin = sibling(self.final_bin)
        self.handle: Any = None  # opened with the first batch: a split without documents has none
        self.offsets = [0]
        self.chars = 0
        self.kinds: dict[str, int] = {}
        self.buf: list[tuple[Any, str]] = []  # (text or uint32 ids, document id)
        self.bin_hash = hashlib.sha256()  # of the bytes written, so the .bin is not read back

    def add(self, doc: Document, kind: str) -> None:
        """Queue a document: its text (tokenised at the next flush) or its ids if pre-tokenised."""
        ids = None if doc.ids is None else np.asarray(doc.ids, dtype="<u4")
        self.buf.append((doc.text if ids is None else ids, doc.doc_id))
        self.chars += len(doc.text)
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def flush(self, tok) -> None:
        if not self.buf:
            return
        encoded = iter(tok.encode_batch([x for x, _ in self.buf if isinstance(x, str)]))
        ids = [next(encoded) if isinstance(x, str) else _check_ids(x, doc_id, tok)
               for x, doc_id in self.buf]
        if self.handle is None:
            self.handle = open(self.tmp_bin, "wb")
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype="<u4",
                           count=sum(len(x) for x in ids))
        data = flat.tobytes()
        self.handle.write(data)
        self.bin_hash.update(data)
        for x in ids:
            self.offsets.append(self.offsets[-1] + len(x))
        self.buf = []

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()

    def publish(self, sources: dict[str, int] | None) -> SplitEntry:
        """Write the offsets, rename both files to their final names; the manifest entry."""
        tmp_idx = sibling(self.final_idx)
        raw = np.asarray(self.offsets, dtype="<u8").tobytes()
        tmp_idx.write_bytes(raw)
        kill_point(f"shard:{self.stem}")
        os.replace(tmp_idx, self.final_idx)
        os.replace(self.tmp_bin, self.final_bin)
        return SplitEntry(len(self.offsets) - 1, int(self.offsets[-1]), self.chars,
                          sources or self.kinds, f"{self.stem}.bin", f"{self.stem}.idx",
                          4 * int(self.offsets[-1]), self.bin_hash.hexdigest(), len(raw),
                          hashlib.sha256(raw).hexdigest())

    def remove_temp(self) -> None:
        self.close()
        for p in (self.tmp_bin, sibling(self.final_idx)):
            p.unlink(missing_ok=True)


def _check_ids(ids: np.ndarray, doc_id: str, tok) -> np.ndarray:
    """Pre-tokenised ids as stored: inside the vocabulary, without the ``[bos]``/``[eos]`` a
    tokenizer with special tokens put around them (the packer adds its own)."""
    if ids.size and int(ids.max()) >= tok.vocab_size:
        raise MmbertError(f"{doc_id}: token id {int(ids.max())} is outside the tokenizer's "
                          f"vocabulary ({tok.vocab_size}); expected ids made with the tokenizer "
                          f"given by --tokenizer")
    start = 1 if ids.size and ids[0] == tok.bos_id else 0
    end = len(ids) - 1 if len(ids) > start and ids[-1] == tok.eos_id else len(ids)
    return ids[start:end]


def tokenize_inputs(inputs: Sequence[Input], lang: str, tok, writers: dict[str, SplitWriter],
                    heldout_fraction: float, errors: str, batch_docs: int = 256) -> int:
    """Tokenise the documents of ``lang`` in ``inputs`` (in order) into ``writers`` (one per
    split); returns the number of invalid UTF-8 sequences replaced."""
    stats = DecodeStats()
    for inp in inputs:
        for doc in iter_input(inp, lang, errors, stats):
            split = inp.split or ("heldout" if heldout_by_hash(doc, heldout_fraction)
                                  else "train")
            writers[split].add(doc, inp.kind)
            if len(writers[split].buf) >= batch_docs:
                writers[split].flush(tok)
    for w in writers.values():
        w.flush(tok)
    for w in writers.values():
        w.close()
    return stats.total


def _tokenize_language(job: _Job) -> LanguageEntry:
    """Tokenise one language into temp files, rename them, return its manifest entry."""
    tok = worker_tokenizer(job.tokenizer)
    writers = {s: SplitWriter(Path(job.out), f"{s}/{job.lang}") for s in SPLITS}
    try:
        replaced = tokenize_inputs(job.inputs, job.lang, tok, writers, job.heldout_fraction,
                                   job.errors)
        splits = {s: w.publish(job.sources.get(s)) for s, w in writers.items()
                  if w.handle is not None}
        return LanguageEntry(job.lang, splits, replaced)
    finally:
        for w in writers.values():
            w.remove_temp()


def _run_job(job: _Job) -> tuple[str, LanguageEntry | None, str | None]:
    """Pool entry point: errors come back as text (MmbertError) so the parent can stop cleanly."""
    try:
        return job.lang, _tokenize_language(job), None
    except MmbertError as e:
        return job.lang, None, str(e)


def _check_options(errors: str, heldout_fraction: float, workers: int | None) -> None:
    if errors not in ("strict", "replace"):
        raise MmbertError(f"--errors {errors!r}: expected 'strict' or 'replace'")
    if not 0.0 <= heldout_fraction < 1.0:
        raise MmbertError(f"--heldout-fraction {heldout_fraction}: expected a value in [0, 1)")
    if workers is not None and workers < 1:
        raise MmbertError(f"--workers {workers}: expected at least 1")


def _tokenizer_info(tokenizer: str | Path) -> tuple[Any, TokenizerInfo]:
    """The loaded tokenizer and what the manifest records of it."""
    from mmbert.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    info = TokenizerInfo(str(Path(tokenizer).resolve()), tok.fingerprint(), tok.vocab_size,
                         tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id, tok.mask_id,
                         tok.prefix_space)
    if tok.vocab_size > 2**32:
        raise MmbertError(f"{tokenizer}: vocab size {tok.vocab_size} does not fit uint32 shards")
    return tok, info


def _corpus_sources(corpus: Path) -> dict[str, Any]:
    """``{lang: {split: {"sources": {source: documents}, ...}}}`` of the corpus' corpus.json
    (written by ``mmbert data fetch-demo``); ``{}`` without one."""
    if (corpus / "corpus.json").is_file():
        try:
            return json.loads((corpus / "corpus.json").read_text(encoding="utf-8"))["languages"]
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    return {}


def _start_manifest(out: Path, corpus: Path, tok_info: TokenizerInfo,
                    heldout_fraction: float) -> Manifest:
    """The manifest of an earlier run into ``out`` (same tokenizer only), else a new one."""
    if not (out / MANIFEST).is_file():
        return Manifest(tok_info, str(corpus.resolve()), heldout_fraction)
    manifest = Manifest.read(out)
    old = manifest.tokenizer.fingerprint
    if old != tok_info.fingerprint:
        raise MmbertError(f"{out / MANIFEST}: shards were made with another tokenizer "
                          f"({old}); expected {tok_info.fingerprint} "
                          f"(use a new --out directory)")
    return manifest


def _remove_temp_files(out: Path) -> None:
    """Temp files of an interrupted run, or of workers stopped by an error."""
    for s in SPLITS:
        for stale in (out / s).glob(".*.tmp-*"):
            stale.unlink(missing_ok=True)


class _Collector:
    """Adds each finished language to the manifest (:meth:`Manifest.add`) and the progress."""

    def __init__(self, manifest: Manifest, out: Path, bar: Any) -> None:
        self.manifest, self.out, self.bar = manifest, out, bar
        self.replaced = self.tokens = 0

    def __call__(self, lang: str, entry: LanguageEntry | None, err: str | None) -> None:
        if err is not None:
            raise MmbertError(err)
        assert entry is not None
        self.manifest.add(entry, self.out)
        self.replaced += entry.replacements
        self.tokens += entry.tokens
        self.bar.update(1)
        self.bar.set_postfix(tokens=f"{self.tokens / 1e6:.1f}M", refresh=False)


def _run_jobs(jobs: list[_Job], workers: int, collect: _Collector) -> None:
    """Tokenise in this process (one worker or one job) or in a pool of ``workers``."""
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            collect(*_run_job(job))
    else:
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn"),
                                   initializer=_init_worker)
        try:
            for fut in as_completed([pool.submit(_run_job, job) for job in jobs]):
                collect(*fut.result())
        except BrokenProcessPool:  # a worker was killed (e.g. out of memory): stop, never hang
            raise MmbertError("data prepare: a tokenizer worker process died (killed, e.g. out "
                              "of memory); the finished languages are in the manifest: rerun "
                              "the same command to continue (or use fewer --workers)") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def prepare(corpus: str | Path, tokenizer: str | Path, out: str | Path, *,
            errors: str = "strict", workers: int | None = None, heldout_fraction: float = 0.0,
            languages: Sequence[str] | None = None, progress: bool = True,
            executor: str = "local", cluster: Any = None) -> Any:
    """Tokenise ``corpus`` into shards under ``out`` (see the module docstring).

    ``executor="local"``: ``workers`` processes (default 2) tokenise one language each at a
    time. ``"datatrove-local"``, ``"slurm"``, ``"ray"``: datatrove runs the work in units of one
    input file (:mod:`mmbert.data.executors`; ``cluster`` is its
    :class:`~mmbert.data.executors.ClusterOptions`), with the same shards as a result. Plain
    corpora go to the train split; ``heldout_fraction`` moves that fraction of documents (by a
    hash of the text) to ``heldout``. A rerun skips the languages the manifest lists. Returns
    the manifest (Slurm: the submission; its last job writes the manifest).
    """
    _check_options(errors, heldout_fraction, workers)
    corpus, out = Path(corpus), Path(out)
    tok, tok_info = _tokenizer_info(tokenizer)
    _PROCESS_TOK.clear()
    _PROCESS_TOK[str(tokenizer)] = tok  # whatever tokenises in this process: no second load
    inputs = only_languages(scan_corpus(corpus, errors), languages, corpus)
    manifest = _start_manifest(out, corpus, tok_info, heldout_fraction)
    for s in SPLITS:
        (out / s).mkdir(parents=True, exist_ok=True)
    _remove_temp_files(out)
    done = manifest.languages
    todo = {lang: ins for lang, ins in inputs.items()
            if not (lang in done and done[lang].is_complete(out))}
    sources = {lang: {s: v.get("sources", {}) for s, v in split.items()}
               for lang, split in _corpus_sources(corpus).items() if lang in todo}
    manifest.write(out)
    if executor != "local" and todo:  # (nothing left to do: the local path's bookkeeping)
        from mmbert.data import executors, units  # datatrove engines: the `scale` extra

        opts = cluster or executors.ClusterOptions(workers=workers)
        plan = units.UnitPlan.build(todo, opts.tasks, executors.min_tasks(executor, opts),
                                    tokenizer=str(tokenizer), out=str(out),
                                    heldout_fraction=heldout_fraction, errors=errors,
                                    sources=sources)
        return executors.run_executor(executor, plan, manifest, opts)
    return _prepare_local(todo, sources, manifest, out, tokenizer, heldout_fraction, errors,
                          workers or DEFAULT_WORKERS, progress)


def _prepare_local(todo: dict[str, list[Input]], sources: dict[str, Any], manifest: Manifest,
                   out: Path, tokenizer: str | Path, heldout_fraction: float, errors: str,
                   workers: int, progress: bool) -> Manifest:
    """The local path: a pool of ``workers`` processes, one language per job."""
    from tqdm import tqdm

    order = sorted(todo, key=lambda lang: -sum(i.size() for i in todo[lang]))
    jobs = [_Job(lang, todo[lang], str(tokenizer), str(out), heldout_fraction, errors,
                 sources.get(lang, {})) for lang in order]
    bar = tqdm(total=len(jobs), desc="prepare", unit="lang", disable=not progress or None)
    collect = _Collector(manifest, out, bar)
    try:
        _run_jobs(jobs, workers, collect)
    finally:
        bar.close()
        _remove_temp_files(out)
    manifest.replacements = sum(e.replacements for e in manifest.languages.values())
    manifest.replacements_this_run = collect.replaced
    manifest.write(out)
    return manifest


def _init_worker() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
