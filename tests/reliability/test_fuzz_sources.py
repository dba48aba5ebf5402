"""Fuzzing the corpus readers (text directories, JSONL, FineWeb-2 parquet) and
``mmbert data prepare`` on them: random bytes, huge lines, invalid UTF-8, empty and NUL-filled
files, JSONL with wrong types, parquet without (or with a wrongly typed) text column."""

from __future__ import annotations

import json
from collections import Counter
import shutil
import tempfile
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmbert.data.langcodes import is_code
from mmbert.data.sources import (DecodeStats, index_jsonl, iter_input, iter_jsonl, iter_parquet,
                                 iter_text_file, scan_corpus)


def fuzz(n: int) -> settings:
    return settings(derandomize=True, deadline=None, database=None, max_examples=n,
                    suppress_health_check=list(HealthCheck))


def _fresh(base: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=base))


def _check_docs(docs, path: Path, empty_ok: bool = False) -> None:
    for d in docs:
        assert is_code(d.lang)
        assert isinstance(d.text, str) and (d.text or empty_ok)  # JSONL keeps "text": ""
        assert unicodedata.is_normalized("NFC", d.text)
        d.text.encode("utf-8")  # no unpaired surrogates: the tokenizer needs valid Unicode
        assert isinstance(d.doc_id, str)


_chunks = st.one_of(
    st.binary(max_size=60),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"\n", b"\n\n", b"\r\n", b"\x00" * 50, b"\xff\xfe", b"\xc3", b"\xe2\x82",
                     b"caf\xe9", "café".encode("utf-16"), " \t \n".encode(), b"\xed\xa0\x80",
                     "e\u0301".encode(), b"a" * 100_000]))
_file_bytes = st.lists(_chunks, max_size=6).map(b"".join)


@fuzz(300)
@given(raw=_file_bytes, errors=st.sampled_from(["strict", "replace"]))
def test_text_file(fuzz, raw, errors, tmp_path):
    fuzz.count("sources.iter_text_file")
    p = _fresh(tmp_path) / "fra_Latn.txt"
    p.write_bytes(raw)
    stats = DecodeStats()
    docs, err = fuzz.call(lambda: list(iter_text_file(p, "fra_Latn", errors, stats)),
                          names=(str(p),))
    if err is None:
        _check_docs(docs, p)
    if errors == "replace" and err is not None:
        assert "UTF-8" not in err
    if errors == "replace" and docs is not None:
        try:
            raw.decode("utf-8")
            assert stats.total == 0
        except UnicodeDecodeError:
            assert stats.total > 0


_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))
_json = st.recursive(_json_scalar, lambda c: st.one_of(
    st.lists(c, max_size=3), st.dictionaries(st.text(max_size=5), c, max_size=3)), max_leaves=6)
_langs = st.one_of(st.sampled_from(["fr", "fra_Latn", "pt-BR", "sr@latin", "zh_TW", "und", "xx",
                                    "fra_Latn\n", "", "zzz", "ru", "abcd"]), _json)
_texts = st.one_of(st.text(max_size=30), st.sampled_from(["\ud800", "a\udfffb", "\x00", "",
                                                          "Привет", "x" * 50_000]), _json)


@st.composite
def jsonl_lines(draw) -> bytes:
    how = draw(st.sampled_from(["record", "record", "record", "json", "bytes", "special"]))
    if how == "record":
        rec = {}
        if draw(st.booleans()) or True:
            rec["text"] = draw(_texts)
        if draw(st.integers(0, 5)):
            rec["lang"] = draw(_langs)
        if draw(st.booleans()):
            rec["id"] = draw(_json)
        if draw(st.integers(0, 4)) == 0:
            rec.pop(draw(st.sampled_from(["text", "lang", "id"])), None)
        return json.dumps(rec, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if how == "json":
        return json.dumps(draw(_json)).encode()
    if how == "bytes":
        return draw(st.binary(max_size=40)).replace(b"\n", b" ")
    return draw(st.sampled_from([b"", b"   ", b"\x00" * 10, b"[" * 3000, b"\xff",
                                 b'{"text": "a", "lang": "fr", "id": 1' + b"0" * 5000 + b"}",
                                 b'{"text": "a", "lang": "fr"', b"NaN", b'"text"']))


@fuzz(400)
@given(lines=st.lists(jsonl_lines(), max_size=5), errors=st.sampled_from(["strict", "replace"]),
       crlf=st.booleans())
def test_jsonl(fuzz, lines, errors, crlf, tmp_path):
    fuzz.count("sources.iter_jsonl/index_jsonl")
    p = _fresh(tmp_path) / "c.jsonl"
    p.write_bytes((b"\r\n" if crlf else b"\n").join(lines))
    docs, err = fuzz.call(lambda: list(iter_jsonl(p, errors)), names=(str(p),))
    index, err2 = fuzz.call(index_jsonl, p, errors, names=(str(p),))
    if err is None:
        _check_docs(docs, p, empty_ok=True)
    if index is not None:
        assert err is None
        # reading by the index gives the same documents, language by language
        for lang, offs in index.items():
            again = list(iter_jsonl(p, errors, only_lang=lang, lines=offs))
            assert again == [d for d in docs if d.lang == lang]


_arrow_types = st.sampled_from(["string", "large_string", "int", "binary", "null", "list",
                                "float", "struct"])


def _column(kind: str, n: int, draw) -> pa.Array:
    if kind in ("string", "large_string"):
        vals = draw(st.lists(st.one_of(st.none(), st.text(max_size=20)), min_size=n, max_size=n))
        return pa.array(vals, type=pa.string() if kind == "string" else pa.large_string())
    if kind == "int":
        return pa.array(draw(st.lists(st.integers(-5, 5), min_size=n, max_size=n)))
    if kind == "binary":
        return pa.array(draw(st.lists(st.binary(max_size=8), min_size=n, max_size=n)),
                        type=pa.binary())
    if kind == "null":
        return pa.nulls(n)
    if kind == "float":
        return pa.array(draw(st.lists(st.floats(), min_size=n, max_size=n)), type=pa.float64())
    if kind == "struct":
        return pa.array([{"a": i} for i in range(n)])
    return pa.array([[draw(st.text(max_size=3))] for _ in range(n)])


@st.composite
def parquet_bytes(draw) -> bytes:
    how = draw(st.sampled_from(["table", "table", "table", "corrupt", "bytes"]))
    if how == "bytes":
        return draw(st.sampled_from([b"", b"\x00" * 100, b"PAR1", b"PAR1PAR1"])) + draw(
            st.binary(max_size=40))
    n = draw(st.integers(0, 6))
    cols = {}
    for name in draw(st.lists(st.sampled_from(["text", "id", "url", "Text"]), unique=True,
                              max_size=3)):
        cols[name] = _column(draw(_arrow_types), n, draw)
    if not cols:
        cols["other"] = pa.array(list(range(n)))
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(cols), sink)
    raw = sink.getvalue().to_pybytes()
    if how == "corrupt":
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1:]
        if draw(st.booleans()):
            raw = raw[:draw(st.integers(0, len(raw)))]
    return raw


@fuzz(250)
@given(raw=parquet_bytes())
def test_parquet(fuzz, raw, tmp_path):
    fuzz.count("sources.iter_parquet")
    p = _fresh(tmp_path) / "fra_Latn" / "train-000.parquet"
    p.parent.mkdir()
    p.write_bytes(raw)
    docs, err = fuzz.call(lambda: list(iter_parquet(p, "fra_Latn")), names=(str(p),))
    if err is None:
        _check_docs(docs, p)


_names = st.sampled_from(["fra_Latn.txt", "fr.txt", "xx.txt", "und.txt", ".hidden.txt",
                          "a.jsonl", "b.jsonl", "fra_Latn", "deu_Latn", "bad dir", "rus_Cyrl",
                          "fra_Latn_removed", "notes.md", "train", "heldout", "zzz.txt",
                          "sr@latin.txt", "pt_BR.txt"])


_good_text = st.lists(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]),
                              min_size=1, max_size=30), min_size=1, max_size=4).map(
    lambda docs: "\n\n".join(docs).encode("utf-8"))


@st.composite
def _good_jsonl(draw) -> bytes:
    recs = draw(st.lists(st.fixed_dictionaries({
        "text": st.text(min_size=1, max_size=20).filter(lambda t: t.strip()).map(
            lambda t: t.encode("utf-8", "replace").decode("utf-8")),
        "lang": st.sampled_from(["fr", "fra_Latn", "pt-BR", "ru"])}), min_size=1, max_size=3))
    return "\n".join(json.dumps(r) for r in recs).encode("utf-8")


@st.composite
def _good_parquet(draw) -> bytes:
    texts = draw(st.lists(st.text(max_size=20).map(
        lambda t: t.encode("utf-8", "replace").decode("utf-8")), min_size=1, max_size=4))
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"text": texts}), sink)
    return sink.getvalue().to_pybytes()


@st.composite
def corpora(draw, root: Path) -> Path:
    """A corpus directory with a few entries: well-formed files (half of the corpora) or
    random ones."""
    good = draw(st.booleans())
    text = _good_text if good else _file_bytes
    jsonl = _good_jsonl() if good else st.lists(jsonl_lines(), max_size=3).map(b"\n".join)
    parquet = _good_parquet() if good else parquet_bytes()
    for name in draw(st.lists(_names, unique=True, max_size=4)):
        p = root / name
        if name.endswith(".txt") or name.endswith(".md"):
            p.write_bytes(draw(text))
        elif name.endswith(".jsonl"):
            p.write_bytes(draw(jsonl))
        elif name in ("train", "heldout"):
            p.mkdir()
            (p / "deu_Latn.txt").write_bytes(draw(text))
        else:
            p.mkdir()
            if draw(st.booleans()):
                sub = p / "test" if draw(st.booleans()) else p
                sub.mkdir(exist_ok=True)
                (sub / "000.parquet").write_bytes(draw(parquet))
    return root


@fuzz(200)
@given(data=st.data(), errors=st.sampled_from(["strict", "replace"]))
def test_scan_and_read_corpus(fuzz, data, errors, tmp_path):
    fuzz.count("sources.scan_corpus + iter_input")
    root = data.draw(corpora(_fresh(tmp_path)))
    inputs, err = fuzz.call(scan_corpus, root, errors, names=(str(root),))
    if inputs is None:
        return
    for lang, ins in inputs.items():
        assert is_code(lang)
        for inp in ins:
            docs, err = fuzz.call(lambda: list(iter_input(inp, lang, errors)),
                                  names=(str(root),))
            if docs is not None:
                _check_docs(docs, Path(inp.path), empty_ok=inp.kind == "jsonl")
                assert all(d.lang == lang for d in docs)


PREPARE_EXITS: Counter[int] = Counter()


def _tiny_tokenizer(out: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>",
                                         *"abcdefghijklmnopqrstuvwxyz"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(tok.to_str(), encoding="utf-8")
    return out


@fuzz(60)
@given(data=st.data(), errors=st.sampled_from(["strict", "replace"]),
       heldout=st.sampled_from(["0", "0.5"]))
def test_cli_data_prepare(fuzz, data, errors, heldout, tmp_path, capsys):
    """``mmbert data prepare`` on a random corpus: exit 0, or exit 2 with one error line."""
    fuzz.count("cli data prepare")
    base = _fresh(tmp_path)
    tok = _tiny_tokenizer(base / "tok")
    (base / "corpus").mkdir()
    root = data.draw(corpora(base / "corpus"))
    rc, err = fuzz.cli(["data", "prepare", "--corpus", str(root), "--tokenizer", str(tok),
                        "--out", str(base / "shards"), "--errors", errors, "--workers", "1",
                        "--heldout-fraction", heldout], capsys)
    assert rc in (0, 2), (rc, err)
    PREPARE_EXITS[rc] += 1
    shutil.rmtree(base, ignore_errors=True)


def test_cli_data_prepare_outcomes():
    """The random corpora above both succeed and fail (the fuzzing reaches the tokenizer)."""
    if PREPARE_EXITS:
        print(f"\nmmbert data prepare exit codes: {dict(PREPARE_EXITS)}")
        assert PREPARE_EXITS[0] > 0 and PREPARE_EXITS[2] > 0
