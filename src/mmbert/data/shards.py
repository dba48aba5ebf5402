"""Token shards: tokenised corpora on disk, one pair of files per language and split.

Layout of ``SHARDS`` (``mmbert data prepare``)::

    SHARDS/manifest.json
    SHARDS/<split>/<lang>.bin   uint32 little-endian token ids of all documents, concatenated
    SHARDS/<split>/<lang>.idx   uint64 little-endian offsets, documents + 1 entries (0 first)

Documents are stored without special tokens (the packer adds ``[bos] doc [eos]``). Splits are
``train`` and ``heldout``. ``manifest.json`` records the tokenizer (fingerprint, vocab size,
special ids) and, per language and split: code, documents, tokens, chars, source(s).

Crash safety: each language is written to temp names and renamed, then the manifest is
rewritten atomically (temp + rename). A rerun skips languages the manifest lists; files of an
interrupted language are never visible under their final names.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmbert.data.sources import DecodeStats, Input, heldout_by_hash, iter_input, scan_corpus
from mmbert.errors import MmbertError
from mmbert.outputs import read_json, write_json

SPLITS = ("train", "heldout")
MANIFEST = "manifest.json"
FORMAT = "mmbert-shards"


def read_manifest(shards: str | Path) -> dict[str, Any]:
    p = Path(shards) / MANIFEST
    m = read_json(p, "a shard directory written by `mmbert data prepare`")
    if m.get("format") != FORMAT:
        raise MmbertError(f"{p}: not a shard manifest; expected format '{FORMAT}'")
    return m


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

class ShardSet:
    """Read access to one split of a shard directory (memory-mapped)."""

    def __init__(self, path: str | Path, split: str = "train") -> None:
        if split not in SPLITS:
            raise MmbertError(f"split {split!r}: expected one of {SPLITS}")
        self.path = Path(path)
        self.split = split
        self.manifest = read_manifest(self.path)
        tok = self.manifest["tokenizer"]
        self.vocab_size: int = tok["vocab_size"]
        self.pad_id, self.eos_id, self.bos_id = tok["pad_id"], tok["eos_id"], tok["bos_id"]
        self.unk_id, self.mask_id = tok["unk_id"], tok["mask_id"]
        self.special_ids = frozenset((self.pad_id, self.eos_id, self.bos_id, self.unk_id,
                                      self.mask_id))
        self._info = {lang: e["splits"][split] for lang, e in self.manifest["languages"].items()
                      if split in e["splits"] and e["splits"][split]["documents"] > 0}
        self.languages: list[str] = sorted(self._info)
        self._tokens: dict[str, np.ndarray] = {}
        self._offsets: dict[str, np.ndarray] = {}

    def _check(self, lang: str) -> dict[str, Any]:
        if lang not in self._info:
            raise MmbertError(f"{self.path}: no {self.split} data for language {lang!r}; "
                              f"expected one of {self.languages[:8]}"
                              f"{' ...' if len(self.languages) > 8 else ''}")
        return self._info[lang]

    def num_tokens(self, lang: str) -> int:
        return int(self._check(lang)["tokens"])

    def num_docs(self, lang: str) -> int:
        return int(self._check(lang)["documents"])

    def token_counts(self) -> dict[str, int]:
        return {lang: int(self._info[lang]["tokens"]) for lang in self.languages}

    def info(self, lang: str) -> dict[str, Any]:
        return dict(self._check(lang))

    def tokens(self, lang: str) -> np.ndarray:
        """All tokens of a language (uint32 memmap)."""
        if lang not in self._tokens:
            info = self._check(lang)
            p = self.path / info["bin"]
            n = os.path.getsize(p) // 4
            if n != info["tokens"]:
                raise MmbertError(f"{p}: {n} tokens on disk; manifest says {info['tokens']} "
                                  f"(a damaged shard: rerun `mmbert data prepare` elsewhere)")
            self._tokens[lang] = (np.memmap(p, dtype="<u4", mode="r") if n else
                                  np.zeros(0, dtype="<u4"))
        return self._tokens[lang]

    def offsets(self, lang: str) -> np.ndarray:
        """Document boundaries: ``doc i = tokens[offsets[i]:offsets[i + 1]]``."""
        if lang not in self._offsets:
            info = self._check(lang)
            off = np.fromfile(self.path / info["idx"], dtype="<u8").astype(np.int64)
            if len(off) != info["documents"] + 1:
                raise MmbertError(f"{self.path / info['idx']}: {len(off) - 1} documents on "
                                  f"disk; manifest says {info['documents']}")
            self._offsets[lang] = off
        return self._offsets[lang]

    def doc(self, lang: str, i: int) -> np.ndarray:
        off = self.offsets(lang)
        return self.tokens(lang)[off[i]:off[i + 1]]


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


_WORKER_TOK: dict[str, Any] = {}


def _worker_tokenizer(path: str):
    if path not in _WORKER_TOK:
        from mmbert.tokenizer import load_tokenizer

        _WORKER_TOK.clear()
        _WORKER_TOK[path] = load_tokenizer(path)
    return _WORKER_TOK[path]


def _tokenize_language(job: _Job, batch_docs: int = 256) -> dict[str, Any]:
    """Tokenise one language into temp files, rename them, return its manifest entry."""
    tok = _worker_tokenizer(job.tokenizer)
    out = Path(job.out)
    stats = DecodeStats()
    files = {s: out / s / f".{job.lang}.bin.tmp-{os.getpid()}" for s in SPLITS}
    handles: dict[str, Any] = {}
    offsets = {s: [0] for s in SPLITS}
    chars = {s: 0 for s in SPLITS}
    kinds = {s: {} for s in SPLITS}
    buf: dict[str, list[str]] = {s: [] for s in SPLITS}

    def flush(split: str) -> None:
        if not buf[split]:
            return
        ids = tok.encode_batch(buf[split])
        if split not in handles:
            handles[split] = open(files[split], "wb")
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype="<u4",
                           count=sum(len(x) for x in ids))
        handles[split].write(flat.tobytes())
        off = offsets[split]
        for x in ids:
            off.append(off[-1] + len(x))
        buf[split] = []

    try:
        for inp in job.inputs:
            for doc in iter_input(inp, job.lang, job.errors, stats):
                split = inp.split or ("heldout" if heldout_by_hash(doc.text, job.heldout_fraction)
                                      else "train")
                buf[split].append(doc.text)
                chars[split] += len(doc.text)
                kinds[split][inp.kind] = kinds[split].get(inp.kind, 0) + 1
                if len(buf[split]) >= batch_docs:
                    flush(split)
        for s in SPLITS:
            flush(s)
        for h in handles.values():
            h.close()
        entry: dict[str, Any] = {"code": job.lang, "splits": {}, "replacements": stats.total}
        for s in SPLITS:
            if s not in handles:
                continue
            final_bin = out / s / f"{job.lang}.bin"
            final_idx = out / s / f"{job.lang}.idx"
            tmp_idx = out / s / f".{job.lang}.idx.tmp-{os.getpid()}"
            np.asarray(offsets[s], dtype="<u8").tofile(tmp_idx)
            os.replace(tmp_idx, final_idx)
            os.replace(files[s], final_bin)
            src = job.sources.get(s) or kinds[s]
            entry["splits"][s] = {
                "documents": len(offsets[s]) - 1, "tokens": int(offsets[s][-1]),
                "chars": chars[s], "source": "+".join(sorted(src)), "sources": src,
                "bin": f"{s}/{job.lang}.bin", "idx": f"{s}/{job.lang}.idx"}
        return entry
    finally:
        for h in handles.values():
            h.close()
        for s in SPLITS:
            for p in (files[s], out / s / f".{job.lang}.idx.tmp-{os.getpid()}"):
                p.unlink(missing_ok=True)


def _run_job(job: _Job) -> tuple[str, dict[str, Any] | None, str | None]:
    """Pool entry point: errors come back as text (MmbertError) so the parent can stop cleanly."""
    try:
        return job.lang, _tokenize_language(job), None
    except MmbertError as e:
        return job.lang, None, str(e)


def prepare(corpus: str | Path, tokenizer: str | Path, out: str | Path, *,
            errors: str = "strict", workers: int = 2, heldout_fraction: float = 0.0,
            languages: Sequence[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Tokenise ``corpus`` into shards under ``out`` (see the module docstring).

    ``workers`` processes tokenise one language each at a time. Plain corpora go to the train
    split; ``heldout_fraction`` moves that fraction of documents (by a hash of the text) to
    ``heldout``. Returns the manifest.
    """
    from tqdm import tqdm

    from mmbert.tokenizer import load_tokenizer

    if errors not in ("strict", "replace"):
        raise MmbertError(f"--errors {errors!r}: expected 'strict' or 'replace'")
    if not 0.0 <= heldout_fraction < 1.0:
        raise MmbertError(f"--heldout-fraction {heldout_fraction}: expected a value in [0, 1)")
    if workers < 1:
        raise MmbertError(f"--workers {workers}: expected at least 1")
    corpus, out = Path(corpus), Path(out)
    tok = load_tokenizer(tokenizer)
    tok_info = {"path": str(Path(tokenizer).resolve()), "fingerprint": tok.fingerprint(),
                "vocab_size": tok.vocab_size, "pad_id": tok.pad_id, "eos_id": tok.eos_id,
                "bos_id": tok.bos_id, "unk_id": tok.unk_id, "mask_id": tok.mask_id,
                "prefix_space": tok.prefix_space}
    if tok.vocab_size > 2**32:
        raise MmbertError(f"{tokenizer}: vocab size {tok.vocab_size} does not fit uint32 shards")
    inputs = scan_corpus(corpus, errors)
    if languages is not None:
        missing = sorted(set(languages) - set(inputs))
        if missing:
            raise MmbertError(f"--languages: {missing[:5]} not in {corpus}; expected codes the "
                              f"corpus has (e.g. {sorted(inputs)[:3]})")
        inputs = {lang: inputs[lang] for lang in languages}
    hint: dict[str, Any] = {}
    if (corpus / "corpus.json").is_file():
        try:
            hint = json.loads((corpus / "corpus.json").read_text(encoding="utf-8"))["languages"]
        except (json.JSONDecodeError, KeyError, TypeError):
            hint = {}

    if (out / MANIFEST).is_file():
        manifest = read_manifest(out)
        old = manifest.get("tokenizer", {}).get("fingerprint")
        if old != tok_info["fingerprint"]:
            raise MmbertError(f"{out / MANIFEST}: shards were made with another tokenizer "
                              f"({old}); expected {tok_info['fingerprint']} "
                              f"(use a new --out directory)")
    else:
        manifest = {"format": FORMAT, "version": 1, "tokenizer": tok_info,
                    "vocab_size": tok.vocab_size,
                    "special_ids": {r: tok_info[f"{r}_id"] for r in ("pad", "eos", "bos", "unk",
                                                                       "mask")},
                    "corpus": str(corpus.resolve()), "heldout_fraction": heldout_fraction,
                    "languages": {}}
    for s in SPLITS:
        (out / s).mkdir(parents=True, exist_ok=True)
        for stale in (out / s).glob(".*.tmp-*"):  # an interrupted earlier run
            stale.unlink()

    def done(lang: str) -> bool:
        e = manifest["languages"].get(lang)
        return e is not None and all((out / sp["bin"]).is_file() and (out / sp["idx"]).is_file()
                                     for sp in e["splits"].values())

    todo = [lang for lang in inputs if not done(lang)]
    todo.sort(key=lambda lang: -sum(os.path.getsize(i.path) for i in inputs[lang]))
    jobs = [_Job(lang, inputs[lang], str(tokenizer), str(out), heldout_fraction, errors,
                 {s: v.get("sources", {}) for s, v in hint.get(lang, {}).items()})
            for lang in todo]
    write_json(out / MANIFEST, manifest)
    replaced = 0
    bar = tqdm(total=len(jobs), desc="prepare", unit="lang", disable=not progress or None)
    n_tokens = 0

    def accept(lang: str, entry: dict[str, Any] | None, err: str | None) -> None:
        nonlocal replaced, n_tokens
        if err is not None:
            raise MmbertError(err)
        assert entry is not None
        manifest["languages"][lang] = entry
        manifest["languages"] = dict(sorted(manifest["languages"].items()))
        write_json(out / MANIFEST, manifest)
        replaced += entry["replacements"]
        n_tokens += sum(s["tokens"] for s in entry["splits"].values())
        bar.update(1)
        bar.set_postfix(tokens=f"{n_tokens / 1e6:.1f}M", refresh=False)

    try:
        if workers == 1 or len(jobs) <= 1:
            _WORKER_TOK.clear()
            _WORKER_TOK[str(tokenizer)] = tok  # in this process: no second load
            for job in jobs:
                accept(*_run_job(job))
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker) as pool:
                for res in pool.imap_unordered(_run_job, jobs):
                    accept(*res)
    finally:
        bar.close()
        for s in SPLITS:  # temp files of workers stopped by an error
            for stale in (out / s).glob(".*.tmp-*"):
                stale.unlink(missing_ok=True)
    manifest["replacements"] = sum(e.get("replacements", 0)
                                   for e in manifest["languages"].values())
    manifest["replacements_this_run"] = replaced
    write_json(out / MANIFEST, manifest)
    return manifest


def _init_worker() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
