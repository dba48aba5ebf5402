"""MosaicML Streaming "MDS" datasets (mmBERT's and ModernBERT's published data), read by mmbert.

mosaicml-streaming is not a runtime dependency (its pins conflict with transformers 5 and
datatrove; see docs/data.md), so the format is read here. A dataset is a folder with an
``index.json``: ``{"version": 2, "shards": [...]}``, one entry per shard naming its columns
(names, encodings, fixed sizes), its compression and its file (``raw_data`` / ``zip_data``
basenames, relative to the folder of the index and possibly with sub-folders, as in a merged
index). A shard file, once decompressed, is::

    uint32 n | uint32 offsets[n + 1] | the writer's JSON settings | sample 0 | ... | sample n-1

(little-endian; ``offsets`` are the samples' byte positions in the file, the last one its size).
A sample is a uint32 byte size for each column without a fixed size, then each column's bytes,
in the index's column order.

Documents: ``input_ids`` (or llm-foundry's ``tokens``) when the shard has the column, as uint32
ids; else ``text``. The language of a sample is its ``lang`` / ``language`` column when the shard
has one, else the nearest folder named by a language code (``fra_Latn/``) above the shard file.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import mmap
import os
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import numpy as np

from mmbert.data.langcodes import is_code, normalize_lang
from mmbert.data.documents import DecodeStats, Document, decode_line, nfc
from mmbert.errors import MmbertError
from mmbert.outputs import read_json

INDEX = "index.json"
IDS_COLUMNS = ("input_ids", "tokens")
TEXT_COLUMN = "text"
LANG_COLUMNS = ("lang", "language")
COMPRESSIONS = ("zstd", "gz", "bz2", "br", "snappy")

# ndarray encodings: the dtype byte of a sample without a fixed dtype -> dtype name
_ARRAY_DTYPES = {8: "uint8", 9: "int8", 16: "uint16", 17: "int16", 18: "float16", 32: "uint32",
                 33: "int32", 34: "float32", 64: "uint64", 65: "int64", 66: "float64"}
_SCALARS = {"int": "int64", **{n: n for n in _ARRAY_DTYPES.values()}}
_IMAGES = ("pil", "jpeg", "png", "jpeg_array", "jpegarray", "list[pil]", "list[jpeg]",
           "list[png]")

Buffer = Union[bytes, mmap.mmap]  # slicing either gives bytes


class _Bad(ValueError):
    """A value or setting that does not decode; the caller adds the file and sample."""


# ---------------------------------------------------------------------------------------------
# Column encodings
# ---------------------------------------------------------------------------------------------

def _le(dtype: str) -> np.dtype:
    return np.dtype(dtype).newbyteorder("<")


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Bad(f"invalid UTF-8 at byte {e.start}; expected UTF-8 text") from None


def _scalar(dtype: str) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        if len(data) != _le(dtype).itemsize:
            raise _Bad(f"{len(data)} bytes; expected one {dtype}")
        return np.frombuffer(data, _le(dtype))[0]
    return decode


def _ndarray(arg: str) -> Callable[[bytes], np.ndarray]:
    """``ndarray[:dtype[:d0,d1,...]]``: a sample holds what the encoding leaves open, in order:
    one dtype byte, one byte ``ndim << 2 | log2(shape item bytes)`` and the shape, the values."""
    dtype, _, shape_text = arg.partition(":")
    if dtype and dtype not in _ARRAY_DTYPES.values():
        raise _Bad(f"ndarray dtype {dtype!r}; expected one of {sorted(_ARRAY_DTYPES.values())}")
    try:
        shape = tuple(int(d) for d in shape_text.split(",")) if shape_text else None
    except ValueError:
        raise _Bad(f"ndarray shape {shape_text!r}; expected sizes such as '3,4'") from None

    def decode(data: bytes) -> np.ndarray:
        pos, dt, shp = 0, dtype, shape
        try:
            if not dt:
                dt, pos = _ARRAY_DTYPES[data[0]], 1
            if shp is None:
                ndim, width = data[pos] >> 2, 1 << (data[pos] & 3)
                shp = tuple(int(d) for d in np.frombuffer(data, _le(f"u{width}"), ndim, pos + 1))
                pos += 1 + ndim * width
            return np.frombuffer(data, _le(dt), offset=pos).reshape(shp)
        except (IndexError, KeyError, ValueError) as e:
            raise _Bad(f"not an ndarray of this encoding ({e})") from None
    return decode


def _json(data: bytes) -> Any:
    try:
        return json.loads(_utf8(data))
    except (ValueError, RecursionError) as e:
        raise _Bad(f"invalid JSON ({str(e).split(';')[0]})") from None


def _digits(parse: Callable[[str], Any]) -> Callable[[bytes], Any]:
    """``str_int`` / ``str_float`` / ``str_decimal``: a number written out in UTF-8."""
    def decode(data: bytes) -> Any:
        try:
            return parse(_utf8(data))
        except (ValueError, ArithmeticError):  # decimal.InvalidOperation is an ArithmeticError
            raise _Bad(f"{bytes(data[:40])!r} is not a number") from None
    return decode


def decoder(encoding: str) -> Callable[[bytes], Any]:
    """The function decoding one column value of ``encoding`` (raises ``_Bad``)."""
    name, _, arg = encoding.partition(":")
    if encoding == "pkl":
        raise _Bad("encoding 'pkl' is a Python pickle, which mmbert never loads (it can run "
                   "code); expected str, bytes, ndarray, json or scalar columns")
    if name == "ndarray":
        return _ndarray(arg)
    simple: dict[str, Callable[[bytes], Any]] = {
        "str": _utf8, "bytes": bytes, "json": _json,
        "str_int": _digits(int), "str_float": _digits(float), "str_decimal": _digits(Decimal)}
    if encoding in simple:
        return simple[encoding]
    if encoding == "int":  # streaming's plain "int" is an int64 read back as a Python int
        int64 = _scalar("int64")
        return lambda data: int(int64(data))
    if encoding in _SCALARS:
        return _scalar(_SCALARS[encoding])
    what = "an image encoding (not read)" if encoding in _IMAGES else "unknown"
    raise _Bad(f"encoding {encoding!r} is {what}; expected str, bytes, json, "
               f"ndarray[:dtype[:shape]], str_int/str_float/str_decimal or one of "
               f"{sorted(_SCALARS)}")


# ---------------------------------------------------------------------------------------------
# index.json
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    name: str
    encoding: str
    size: int | None  # fixed byte size, or None: each sample stores a uint32 size


@dataclass(frozen=True)
class ShardInfo:
    """One entry of an ``index.json``: shard ``number`` of the dataset whose index is ``index``."""

    index: Path
    number: int
    columns: tuple[Column, ...]
    samples: int
    raw: str                # the uncompressed file, relative to the index's folder
    raw_bytes: int | None
    zip: str | None         # the compressed file (None: stored uncompressed)
    zip_bytes: int | None
    compression: str | None

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, *names: str) -> str | None:
        """The first of ``names`` the shard has."""
        return next((n for n in names if n in self.names), None)

    @property
    def raw_path(self) -> Path:
        return self.index.parent / self.raw

    @property
    def zip_path(self) -> Path | None:
        return None if self.zip is None else self.index.parent / self.zip

    def stored_bytes(self) -> int:
        """The shard file's size as the index records it (else as on disk; 0 when missing)."""
        recorded = self.zip_bytes if self.zip is not None else self.raw_bytes
        if recorded is not None:
            return recorded
        p = self.zip_path or self.raw_path
        return p.stat().st_size if p.is_file() else 0

    def locate(self) -> tuple[Path, bool]:
        """``(file, compressed)``: the uncompressed file when present (as streaming leaves it in
        its cache), else the compressed one. A missing file is an error."""
        if self.zip_path is None or self.raw_path.is_file():
            if not self.raw_path.is_file():
                raise MmbertError(f"{self.raw_path}: missing; {self.index} lists it as shard "
                                  f"{self.number}")
            return self.raw_path, False
        if not self.zip_path.is_file():
            raise MmbertError(f"{self.zip_path}: missing; {self.index} lists it as shard "
                              f"{self.number} (expected it or {self.raw})")
        return self.zip_path, True


def _file_entry(entry: Any, what: str) -> tuple[str, int | None]:
    if not isinstance(entry, dict) or not isinstance(entry.get("basename"), str):
        raise _Bad(f"{what} has no 'basename'")
    name, size = entry["basename"], entry.get("bytes")
    if name.startswith(("/", "\\")) or ".." in Path(name).parts or not name:
        raise _Bad(f"{what} basename {name!r} is outside the dataset folder")
    if size is not None and (not isinstance(size, int) or size < 0):
        raise _Bad(f"{what} bytes {size!r} is not a size")
    return name, size


def _shard_info(index: Path, number: int, s: Any) -> ShardInfo:
    if not isinstance(s, dict):
        raise _Bad("not an object")
    if s.get("format") != "mds":
        raise _Bad(f"format {s.get('format')!r}; expected 'mds' (mmbert reads MDS shards only)")
    if s.get("version", 2) != 2:
        raise _Bad(f"version {s.get('version')!r}; expected 2")
    names, encodings, sizes = (s.get(k) for k in ("column_names", "column_encodings",
                                                  "column_sizes"))
    if not (isinstance(names, list) and isinstance(encodings, list) and isinstance(sizes, list)
            and len(names) == len(encodings) == len(sizes) and names):
        raise _Bad("column_names, column_encodings and column_sizes are not lists of one length")
    columns = tuple(Column(str(n), str(e), z) for n, e, z in zip(names, encodings, sizes))
    for c in columns:
        try:
            decoder(c.encoding)
        except _Bad as e:
            raise _Bad(f"column {c.name!r}: {e}") from None
        if c.size is not None and (not isinstance(c.size, int) or c.size < 0):
            raise _Bad(f"column {c.name!r}: size {c.size!r}; expected a byte count or null")
    samples = s.get("samples")
    if not isinstance(samples, int) or samples < 0:
        raise _Bad(f"samples {samples!r}; expected a count")
    compression = str(s["compression"]) if s.get("compression") else None
    if compression is not None and compression.split(":")[0] not in COMPRESSIONS:
        raise _Bad(f"compression {compression!r}; expected none or one of {list(COMPRESSIONS)}")
    raw, raw_bytes = _file_entry(s.get("raw_data"), "raw_data")
    zip_name, zip_bytes = (_file_entry(s.get("zip_data"), "zip_data") if compression
                           else (None, None))
    return ShardInfo(index, number, columns, samples, raw, raw_bytes, zip_name, zip_bytes,
                     compression)


@lru_cache(maxsize=16)
def _read_index_cached(path: str, stamp: tuple[int, int]) -> tuple[ShardInfo, ...]:
    p = Path(path)
    obj = read_json(p, "an MDS index.json (mosaicml-streaming version 2)")
    if obj.get("version") != 2 or not isinstance(obj.get("shards"), list):
        raise MmbertError(f"{p}: version {obj.get('version')!r} without a 'shards' list; "
                          f"expected an MDS index.json (version 2 with a 'shards' list)")
    out = []
    for i, s in enumerate(obj["shards"]):
        try:
            out.append(_shard_info(p, i, s))
        except _Bad as e:
            raise MmbertError(f"{p}: shard {i}: {e}") from None
    return tuple(out)


def read_index(path: str | Path) -> tuple[ShardInfo, ...]:
    """The shards an ``index.json`` lists (validated: format, columns, encodings, files)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        raise MmbertError(f"{p}: missing; expected an MDS index.json") from None
    return _read_index_cached(str(p), (st.st_mtime_ns, st.st_size))  # a changed file is reread


def find_datasets(root: Path) -> list[Path]:
    """The ``index.json`` files at or below ``root``, the topmost of each branch (one below
    another is a part the upper one merges); hidden and ``*_removed`` folders are skipped."""
    out = []
    for d, dirs, files in os.walk(root):
        if INDEX in files:
            out.append(Path(d) / INDEX)
            dirs.clear()
        dirs[:] = sorted(x for x in dirs if not x.startswith(".") and not x.endswith("_removed"))
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# Shard files
# ---------------------------------------------------------------------------------------------

def _codec(name: str, path: Path) -> Callable[[bytes], bytes]:
    """The decompression function of ``name``; its package is imported only when needed."""
    if name == "gz":
        return gzip.decompress
    if name == "bz2":
        return bz2.decompress
    try:
        if name == "zstd":
            import zstandard

            # a frame need not record its size: read it as a stream
            return lambda data: zstandard.ZstdDecompressor().stream_reader(
                io.BytesIO(data), read_across_frames=True).read()
        if name == "br":
            import brotli

            return brotli.decompress
        import snappy

        return snappy.decompress
    except ImportError:
        package, hint = {"zstd": ("zstandard", "pip install 'mmbert[scale]'"),
                         "br": ("brotli", "pip install brotli"),
                         "snappy": ("snappy", "pip install python-snappy")}[name]
        raise MmbertError(f"{path}: a {name}-compressed MDS shard needs the {package} package: "
                          f"{hint}") from None


def _decompress(kind: str, data: bytes, path: Path) -> bytes:
    name = kind.split(":")[0]
    codec = _codec(name, path)
    try:
        return codec(data)
    except Exception as e:  # gzip: OSError/EOFError, zstandard.ZstdError, brotli.error, ...
        raise MmbertError(f"{path}: not a valid {name} stream ({' '.join(str(e).split())}); "
                          f"expected a {name}-compressed MDS shard") from None


def _sample_offsets(buf: Buffer, info: ShardInfo, path: Path) -> np.ndarray:
    """The samples' byte positions (``samples + 1``), after checking the shard's header."""
    n = info.samples
    head = 4 + 4 * (n + 1)
    if len(buf) < 4:
        raise MmbertError(f"{path}: {len(buf)} bytes (truncated?); expected an MDS shard")
    stored = int.from_bytes(buf[:4], "little")
    if stored != n:
        raise MmbertError(f"{path}: holds {stored} samples; {info.index} says {n} (shard "
                          f"{info.number}); expected the same count")
    if len(buf) < head:
        raise MmbertError(f"{path}: {len(buf)} bytes (truncated?); its header needs {head}")
    off = np.frombuffer(buf[4:head], "<u4").astype(np.int64)
    if off[-1] > len(buf):
        raise MmbertError(f"{path}: {len(buf)} bytes (truncated?); its samples end at byte "
                          f"{off[-1]}")
    if off[0] < head or off[-1] != len(buf) or bool(np.any(np.diff(off) < 0)):
        raise MmbertError(f"{path}: sample offsets are not in order from the header to the end "
                          f"of the file (corrupt); expected an MDS shard")
    return off


class Shard:
    """The samples of one shard: an uncompressed file is memory-mapped, a compressed one
    decompressed into memory (one shard at a time). Use as a context manager."""

    def __init__(self, info: ShardInfo) -> None:
        self.info = info
        self.path, compressed = info.locate()
        want = info.zip_bytes if compressed else info.raw_bytes
        size = self.path.stat().st_size
        if want is not None and size != want:
            raise MmbertError(f"{self.path}: {size} bytes; {info.index} says {want} "
                              f"(truncated?)")
        self._map: mmap.mmap | None = None
        if compressed:
            assert info.compression is not None
            self.buf: Buffer = _decompress(info.compression, self.path.read_bytes(), self.path)
        elif size == 0:
            self.buf = b""
        else:
            with open(self.path, "rb") as f:
                self._map = self.buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self.offsets = _sample_offsets(self.buf, info, self.path)
        except MmbertError:
            self.close()
            raise
        self._decoders = [decoder(c.encoding) for c in info.columns]
        self._spans: tuple[int, list[tuple[int, int]]] = (-1, [])

    def __enter__(self) -> "Shard":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

    def __len__(self) -> int:
        return self.info.samples

    def where(self, i: int, column: str | None = None) -> str:
        col = f", column {column!r}" if column else ""
        return f"{self.path}: sample {i}{col}"

    def spans(self, i: int) -> list[tuple[int, int]]:
        """Byte ranges of sample ``i``'s columns in the shard (the last sample's are kept)."""
        if self._spans[0] == i:
            return self._spans[1]
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        cols = self.info.columns
        nvar = sum(c.size is None for c in cols)
        if end - start < 4 * nvar:
            raise MmbertError(f"{self.where(i)}: {end - start} bytes (corrupt); expected "
                              f"{nvar} column sizes first")
        var = iter(np.frombuffer(self.buf[start:start + 4 * nvar], "<u4").tolist())
        pos, out = start + 4 * nvar, []
        for c in cols:
            size = c.size if c.size is not None else next(var)
            out.append((pos, pos + size))
            pos += size
        if pos != end:
            raise MmbertError(f"{self.where(i)}: columns take {pos - start} bytes, the sample "
                              f"{end - start} (corrupt); expected an MDS sample")
        self._spans = (i, out)
        return out

    def raw(self, i: int, name: str) -> bytes:
        a, b = self.spans(i)[self.info.names.index(name)]
        return self.buf[a:b]

    def value(self, i: int, name: str) -> Any:
        """Column ``name`` of sample ``i``, decoded."""
        k = self.info.names.index(name)
        a, b = self.spans(i)[k]
        try:
            return self._decoders[k](self.buf[a:b])
        except _Bad as e:
            raise MmbertError(f"{self.where(i, name)}: {e}") from None

    def sample(self, i: int) -> dict[str, Any]:
        """Every column of sample ``i``, decoded (as streaming's reader returns it)."""
        return {name: self.value(i, name) for name in self.info.names}


def iter_samples(index: str | Path) -> Iterator[dict[str, Any]]:
    """Every sample of a dataset, in shard and sample order, all columns decoded."""
    for info in read_index(index):
        if info.samples:
            with Shard(info) as shard:
                for i in range(len(shard)):
                    yield shard.sample(i)


# ---------------------------------------------------------------------------------------------
# Documents and languages
# ---------------------------------------------------------------------------------------------

def check_columns(info: ShardInfo) -> None:
    """The shard has a document column (ids or text) and a language column of usable
    encodings."""
    enc = {c.name: c.encoding for c in info.columns}
    ids, lang = info.column(*IDS_COLUMNS), info.column(*LANG_COLUMNS)
    where = f"{info.index}: shard {info.number}"
    if ids is None and TEXT_COLUMN not in enc:
        raise MmbertError(f"{where} has columns {info.names}; expected 'input_ids' (token ids) "
                          f"or 'text'")
    if ids is not None and not enc[ids].startswith(("ndarray", "bytes", "json")):
        raise MmbertError(f"{where}: column {ids!r} has encoding {enc[ids]!r}; expected "
                          f"ndarray:<int dtype>, bytes (int64 ids) or json")
    for name in ([] if ids else [TEXT_COLUMN]) + ([lang] if lang else []):
        if enc[name] != "str":
            raise MmbertError(f"{where}: column {name!r} has encoding {enc[name]!r}; "
                              f"expected str")


def folder_language(info: ShardInfo, root: Path) -> str:
    """The language of the nearest folder named by a code (``fra_Latn/``) from the shard file's
    folder up to ``root`` (both included)."""
    root = Path(root)
    folder = info.raw_path.parent
    for d in (folder, *folder.parents):
        if is_code(d.name):
            return d.name
        if d == root:
            break
    raise MmbertError(f"{info.index.parent}: shard {info.number} ({info.raw}) has no 'lang' or "
                      f"'language' column and no folder between it and {root} is named by a "
                      f"language code; expected a folder such as fra_Latn/ or a language column")


def _token_ids(value: Any, where: str) -> np.ndarray:
    """uint32 ids of an ``input_ids`` value: an integer array, int64 bytes, or a JSON list."""
    if isinstance(value, bytes):
        if len(value) % 8:
            raise MmbertError(f"{where}: {len(value)} bytes; expected int64 token ids (a "
                              f"multiple of 8 bytes)")
        arr = np.frombuffer(value, "<i8")
    else:
        arr = np.asarray(value)
    if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind == "f"):
        raise MmbertError(f"{where}: dtype {arr.dtype}; expected integer token ids")
    arr = arr.reshape(-1)
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= 2**32):
        raise MmbertError(f"{where}: token ids from {int(arr.min())} to {int(arr.max())}; "
                          f"expected ids in 0 .. 2**32-1")
    return arr.astype("<u4")


def _text(shard: Shard, i: int, errors: str, stats: DecodeStats | None) -> str:
    raw = shard.raw(i, TEXT_COLUMN)
    try:
        return nfc(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        if errors != "replace":
            raise MmbertError(f"{shard.where(i, TEXT_COLUMN)}: invalid UTF-8 at byte {e.start}; "
                              f"expected UTF-8 text (or use --errors replace)") from None
        return nfc(decode_line(raw, shard.path, 0, errors, stats))


def sample_language(shard: Shard, i: int, column: str, has_text: bool) -> str:
    """The normalised language of sample ``i`` from its language column (a tag without a script
    takes it from the text, as JSONL records do)."""
    tag = shard.value(i, column)
    if is_code(tag):
        return tag
    text = shard.raw(i, TEXT_COLUMN).decode("utf-8", "replace") if has_text else None
    try:
        return normalize_lang(tag, text)
    except MmbertError as e:
        raise MmbertError(f"{shard.where(i, column)}: {e}") from None


def shard_languages(info: ShardInfo, root: Path) -> dict[str, int]:
    """``{language: samples}`` of one shard: one pass over its language column, or the folder's
    language for a shard without one."""
    check_columns(info)
    lang_col = info.column(*LANG_COLUMNS)
    if lang_col is None:
        info.locate()  # a missing file shows now, not when tokenising
        return {folder_language(info, root): info.samples}
    has_text = TEXT_COLUMN in info.names
    out: dict[str, int] = {}
    with Shard(info) as shard:
        for i in range(len(shard)):
            lang = sample_language(shard, i, lang_col, has_text)
            out[lang] = out.get(lang, 0) + 1
    return out


def index_dataset(index: Path, root: Path) -> dict[str, list[int]]:
    """``{language: [shard numbers]}`` of one dataset (shards without samples left out)."""
    out: dict[str, list[int]] = {}
    for info in read_index(index):
        if info.samples:
            for lang in shard_languages(info, root):
                out.setdefault(lang, []).append(info.number)
    return out


def iter_documents(index: str | Path, number: int, lang: str, errors: str = "strict",
                   stats: DecodeStats | None = None) -> Iterator[Document]:
    """The documents of language ``lang`` in shard ``number`` of a dataset, in sample order.
    A shard without a language column is all ``lang`` (its folder's, found by the scan). Empty
    documents are skipped."""
    shards = read_index(index)
    if not 0 <= number < len(shards):
        raise MmbertError(f"{index}: {len(shards)} shards; expected a shard {number} (was the "
                          f"dataset changed after the corpus was scanned?)")
    info = shards[number]
    check_columns(info)
    ids_col, lang_col = info.column(*IDS_COLUMNS), info.column(*LANG_COLUMNS)
    id_col = info.column("id")
    has_text = TEXT_COLUMN in info.names
    with Shard(info) as shard:
        for i in range(len(shard)):
            if lang_col is not None and sample_language(shard, i, lang_col, has_text) != lang:
                continue
            doc_id = (str(shard.value(i, id_col)) if id_col is not None
                      else f"{info.raw_path}:{i}")
            if ids_col is not None:
                ids = _token_ids(shard.value(i, ids_col), shard.where(i, ids_col))
                if ids.size:
                    yield Document(lang, "", "mds", doc_id, ids)
            else:
                text = _text(shard, i, errors, stats)
                if text:
                    yield Document(lang, text, "mds", doc_id)
