"""Documents: the record every source yields, and the text primitives they share (NFC, a
process-independent hash, UTF-8 decoding with file/byte-offset errors and counted
replacements). :mod:`mmbert.data.sources` and :mod:`mmbert.data.mds` build on it."""

from __future__ import annotations

import codecs
import hashlib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mmbert.errors import MmbertError


class Document(NamedTuple):
    lang: str
    text: str
    source: str
    doc_id: str
    # token ids of a pre-tokenised source (MDS ``input_ids``): a uint32 array, ``text`` is ""
    ids: Any = None


def nfc(text: str) -> str:
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


def stable_hash(s: str) -> int:
    """A 64-bit hash that is the same in every process and Python version."""
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")


# ---------------------------------------------------------------------------------------------
# UTF-8 decoding with file/byte-offset errors and counted replacements
# ---------------------------------------------------------------------------------------------

_REPLACED = [0]


def _count_replace(e: UnicodeDecodeError) -> tuple[str, int]:
    _REPLACED[0] += 1
    return "\ufffd", e.end


codecs.register_error("mmbert-count", _count_replace)


@dataclass
class DecodeStats:
    """Replacements made under ``errors='replace'`` (per file)."""

    replaced: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.replaced.values())


def decode_line(raw: bytes, path: Path | str, offset: int, errors: str,
                stats: DecodeStats | None) -> str:
    """Decode one line of a UTF-8 file; ``offset`` is the line's byte offset in the file.

    A UTF-8 sequence never contains the byte 0x0A, so decoding line by line is exact.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if errors != "replace":
            raise MmbertError(f"{path}: invalid UTF-8 at byte {offset + e.start}; expected UTF-8 "
                              f"text (or use --errors replace)") from None
        before = _REPLACED[0]
        text = raw.decode("utf-8", "mmbert-count")
        if stats is not None:
            stats.replaced[str(path)] = stats.replaced.get(str(path), 0) + _REPLACED[0] - before
        return text
