"""Readers for fine-tuning files: JSONL/CSV (sequences, text pairs) and CoNLL-U / CoNLL-2003.

Every reader returns plain dataclasses and raises :class:`MmbertError` with the file, the line
and what was expected, so the CLI can print one clear line. Labels are kept as strings (an integer
label ``1`` in a JSONL file becomes ``"1"``); the label <-> id maps are built from the training
file (sorted, so the same file always gives the same ids).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from mmbert.errors import MmbertError
from mmbert.outputs import atomic_file

# Accepted column names for text pairs (contrastive training), first match wins.
PAIR_COLUMNS = (("anchor", "positive"), ("query", "positive"), ("sentence1", "sentence2"),
                ("text1", "text2"), ("source", "target"))
CONLLU_LABEL_COLUMNS = {"upos": 3, "xpos": 4, "deprel": 7}


@dataclass(frozen=True)
class SequenceExample:
    text: str
    text_pair: str | None
    label: str


@dataclass(frozen=True)
class TokenExample:
    words: list[str]
    labels: list[str]


@dataclass(frozen=True)
class PairExample:
    anchor: str
    positive: str


# ---------------------------------------------------------------------------------------------
# JSONL / CSV records
# ---------------------------------------------------------------------------------------------

def _check_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise MmbertError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise MmbertError(f"{p}: the file is empty; expected at least one example")
    return p


def json_line(p: Path, n: int, line: str, expected: str) -> Any:
    """The JSON value on line ``n`` of ``p``; invalid JSON is one error line saying what was
    ``expected``."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise MmbertError(f"{p}:{n}: not valid JSON ({e.msg}); expected {expected}") from None


def read_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` from a ``.jsonl``/``.json`` or ``.csv``/``.tsv`` file."""
    p = _check_file(path)
    suffix = p.suffix.lower()
    try:
        if suffix in (".jsonl", ".json", ".ndjson"):
            with p.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    rec = json_line(p, n, line, "one JSON object per line")
                    if not isinstance(rec, dict):
                        raise MmbertError(f"{p}:{n}: expected a JSON object per line")
                    yield n, rec
        elif suffix in (".csv", ".tsv"):
            with p.open(encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                for n, rec in enumerate(reader, 2):
                    yield n, rec
        else:
            raise MmbertError(f"{p}: unknown file type {suffix!r}; expected .jsonl or .csv")
    except UnicodeDecodeError:
        raise MmbertError(f"{p}: not UTF-8 text") from None


def _field(p: Path, n: int, rec: dict[str, Any], key: str, expected: str) -> str:
    v = rec.get(key)
    if v is None or (isinstance(v, str) and not v.strip() and key != "label"):
        raise MmbertError(f"{p}:{n}: missing or empty field {key!r}; expected {expected}")
    return str(v)


def read_sequence_file(path: str | Path) -> list[SequenceExample]:
    """Sequence classification examples: ``text`` or ``premise`` + ``hypothesis``, and ``label``."""
    p = Path(path)
    out = []
    for n, rec in read_records(p):
        if "text" in rec:
            text, pair = _field(p, n, rec, "text", "a string"), None
        elif "premise" in rec or "hypothesis" in rec:
            text = _field(p, n, rec, "premise", "a string (premise + hypothesis pairs)")
            pair = _field(p, n, rec, "hypothesis", "a string (premise + hypothesis pairs)")
        else:
            raise MmbertError(f"{p}:{n}: no 'text' field; expected 'text' or 'premise' + "
                              "'hypothesis', and 'label'")
        label = _field(p, n, rec, "label", "a class label")
        if not label.strip():
            raise MmbertError(f"{p}:{n}: empty 'label'; expected a class label")
        out.append(SequenceExample(text, pair, label.strip()))
    if not out:
        raise MmbertError(f"{p}: no examples; expected records with 'text' and 'label'")
    return out


def read_pair_file(path: str | Path) -> list[PairExample]:
    """Text pairs for contrastive training (columns: anchor/positive, query/positive, ...)."""
    p = Path(path)
    out = []
    names = " or ".join(f"{a}+{b}" for a, b in PAIR_COLUMNS)
    for n, rec in read_records(p):
        for a, b in PAIR_COLUMNS:
            if a in rec and b in rec:
                out.append(PairExample(_field(p, n, rec, a, "a string"),
                                       _field(p, n, rec, b, "a string")))
                break
        else:
            raise MmbertError(f"{p}:{n}: no text-pair columns; expected {names}")
    if not out:
        raise MmbertError(f"{p}: no examples; expected text pairs ({names})")
    return out


# ---------------------------------------------------------------------------------------------
# CoNLL-U and CoNLL-2003
# ---------------------------------------------------------------------------------------------

def _is_conllu(lines: list[str]) -> bool:
    for line in lines:
        if line.strip() and not line.startswith("#"):
            cols = line.rstrip("\n").split("\t")
            return len(cols) == 10 and cols[0].split("-")[0].split(".")[0].isdigit()
    return False


def read_token_file(path: str | Path, label_column: str = "upos") -> list[TokenExample]:
    """Word-level examples from CoNLL-U (``label_column``: upos, xpos or deprel) or CoNLL-2003.

    CoNLL-U: multi-word token ranges (``1-2``) and empty nodes (``1.1``) are skipped, so the
    words are the syntactic words that carry the labels. CoNLL-2003 style: one word per line,
    whitespace-separated columns, the word first and the label last (``EU NNP B-NP B-ORG``);
    ``-DOCSTART-`` lines are skipped; a blank line ends a sentence.
    """
    p = _check_file(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise MmbertError(f"{p}: not UTF-8 text") from None
    conllu = _is_conllu(lines)
    if conllu and label_column not in CONLLU_LABEL_COLUMNS:
        raise MmbertError(f"--label-column {label_column!r}: expected one of "
                          f"{sorted(CONLLU_LABEL_COLUMNS)}")
    out: list[TokenExample] = []
    words: list[str] = []
    labels: list[str] = []

    def flush() -> None:
        if words:
            out.append(TokenExample(list(words), list(labels)))
            words.clear()
            labels.clear()

    for n, line in enumerate(lines, 1):
        if not line.strip():
            flush()
            continue
        if conllu:
            if line.startswith("#"):
                continue
            cols = line.split("\t")
            if len(cols) != 10:
                raise MmbertError(f"{p}:{n}: {len(cols)} tab-separated columns; expected 10 "
                                  "(CoNLL-U)")
            if "-" in cols[0] or "." in cols[0]:
                continue
            words.append(cols[1])
            labels.append(cols[CONLLU_LABEL_COLUMNS[label_column]])
        else:
            cols = line.split()
            if cols[0] == "-DOCSTART-":
                flush()
                continue
            if len(cols) < 2:
                raise MmbertError(f"{p}:{n}: one column; expected 'word ... label' "
                                  "(CoNLL-2003: whitespace-separated, label last)")
            words.append(cols[0])
            labels.append(cols[-1])
    flush()
    if not out:
        raise MmbertError(f"{p}: no sentences; expected CoNLL-U or CoNLL-2003 word lines")
    return out


def write_conll(path: str | Path, examples: list[TokenExample]) -> None:
    """Write CoNLL-2003-style ``word label`` lines (words must not contain whitespace)."""
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for ex in examples:
            for w, lab in zip(ex.words, ex.labels):
                f.write(f"{w} {lab}\n")
            f.write("\n")
