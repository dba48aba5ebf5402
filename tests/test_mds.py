"""MDS datasets (mosaicml-streaming's format) as a corpus source: mmbert's own reader
(:mod:`mmbert.data.mds`) against streaming's writer and reader, through `mmbert data prepare`."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmbert.data import mds
from mmbert.data.shards import ShardSet, prepare
from mmbert.data.sources import DecodeStats, iter_input, nfc, scan_corpus
from mmbert.errors import MmbertError

LANGS = ("fra_Latn", "deu_Latn", "rus_Cyrl")
WORDS = {
    "fra_Latn": "le chat dort sur la chaise près de la fenêtre et rêve d'été".split(),
    "deu_Latn": "der Hund läuft über die grüne Wiese und trinkt Wasser".split(),
    "rus_Cyrl": "кошка спит на стуле у окна и видит сны о лете".split(),
}


@pytest.fixture(scope="module")
def streaming() -> types.SimpleNamespace:
    """mosaicml-streaming as the reference writer and reader. ``import streaming`` fails here (its
    ``__init__`` imports torchvision, which is not installed), so the package is registered bare
    and only ``streaming.base`` (writer, readers, merge_index) is imported from it."""
    spec = importlib.util.find_spec("streaming")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("mosaicml-streaming is not installed (make test installs it)")
    if "streaming" not in sys.modules:
        pkg = types.ModuleType("streaming")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["streaming"] = pkg
    from streaming.base import MDSWriter
    from streaming.base.format import reader_from_json
    from streaming.base.util import merge_index

    return types.SimpleNamespace(MDSWriter=MDSWriter, reader_from_json=reader_from_json,
                                 merge_index=merge_index)


def documents(lang: str, n: int, seed: int = 0) -> list[str]:
    """``n`` documents of 1-3 lines; some start with a decomposed é (NFC must compose it)."""
    rng = np.random.default_rng(seed + LANGS.index(lang))
    out = []
    for i in range(n):
        lines = [" ".join(rng.choice(WORDS[lang], int(rng.integers(3, 12))))
                 for _ in range(int(rng.integers(1, 4)))]
        out.append(("e\u0301 " if i % 4 == 0 else "") + "\n".join(lines))
    return out


def write(streaming, out: Path, columns: dict[str, str], samples: list[dict[str, Any]],
          **kw: Any) -> Path:
    with streaming.MDSWriter(columns=columns, out=str(out), **kw) as w:
        for s in samples:
            w.write(s)
    return out / "index.json"


def write_text(streaming, out: Path, texts: list[str], **kw: Any) -> Path:
    samples = [{"text": t, "id": f"doc{i}"} for i, t in enumerate(texts)]
    return write(streaming, out, {"text": "str", "id": "str"}, samples, **kw)


def corpus_docs(root: Path) -> dict[str, list[Any]]:
    """What the corpus scan and reader give: ``{lang: [text or list of ids]}``."""
    out: dict[str, list[Any]] = {}
    for lang, inputs in scan_corpus(root).items():
        for inp in inputs:
            for d in iter_input(inp, lang):
                out.setdefault(lang, []).append(d.text if d.ids is None else d.ids.tolist())
    return out


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b))
    return type(a) is type(b) and a == b


def reference_samples(streaming, index: Path) -> list[dict[str, Any]]:
    """Every sample as streaming's own MDS reader decodes it (uncompressed shards)."""
    out = []
    for shard in json.loads(index.read_text())["shards"]:
        reader = streaming.reader_from_json(str(index.parent), "", shard)
        out.extend(reader.get_item(i) for i in range(shard["samples"]))
    return out


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    from mmbert.tokenizer import train_tokenizer

    corpus = tmp_path_factory.mktemp("tokcorpus")
    for lang in LANGS:
        (corpus / f"{lang}.txt").write_text("\n\n".join(documents(lang, 60, seed=7)))
    out = tmp_path_factory.mktemp("tok") / "bpe"
    train_tokenizer(corpus, 512, out)
    return out


# ---------------------------------------------------------------------------------------------
# Decoding: every encoding mmbert reads, against streaming's reader
# ---------------------------------------------------------------------------------------------

def test_every_encoding_decodes_as_streaming_reads_it(streaming, tmp_path):
    columns = {"text": "str", "raw": "bytes", "n": "int", "u8": "uint8", "i16": "int16",
               "u64": "uint64", "f16": "float16", "f32": "float32", "f64": "float64",
               "arr": "ndarray", "i64s": "ndarray:int64", "grid": "ndarray:uint16:2,3",
               "meta": "json", "si": "str_int", "sf": "str_float", "sd": "str_decimal"}
    rng = np.random.default_rng(0)
    samples = []
    for i in range(40):
        dyn = [np.uint8, np.int32, np.float32, np.uint64][i % 4]
        samples.append({
            "text": f"ligne {i}\nété " * (i % 5), "raw": bytes(rng.integers(0, 256, i % 7)),
            "n": -i * 10**12, "u8": i, "i16": -i, "u64": 2**63 + i, "f16": i / 8,
            "f32": i / 3, "f64": -i / 7,
            "arr": rng.integers(0, 300, size=(1 + i % 3, 2 + i % 4)).astype(dyn),
            "i64s": np.arange(1 + i, dtype=np.int64) - 5,
            "grid": np.arange(6, dtype=np.uint16).reshape(2, 3) + i,
            "meta": {"i": i, "tags": ["a", "é"][: i % 3]}, "si": 10**30 + i, "sf": i + 0.25,
            "sd": Decimal(f"{i}.125")})
    index = write(streaming, tmp_path / "ds", columns, samples, size_limit=1 << 11)
    assert len(mds.read_index(index)) > 3  # several shards
    ours = list(mds.iter_samples(index))
    ref = reference_samples(streaming, index)
    assert len(ours) == len(ref) == 40
    for a, b in zip(ours, ref):
        assert a.keys() == b.keys()
        for k in a:
            assert same(a[k], b[k]), (k, a[k], b[k])


# ---------------------------------------------------------------------------------------------
# Corpus layouts
# ---------------------------------------------------------------------------------------------

def test_text_datasets_in_language_folders(streaming, tmp_path):
    corpus = tmp_path / "corpus"
    want = {lang: documents(lang, 30) for lang in LANGS}
    for lang in LANGS:  # mmBERT's layout: <lang>/<name>/index.json + shards
        write_text(streaming, corpus / lang / "split_212-chunked", want[lang], size_limit=600)
    inputs = scan_corpus(corpus)
    assert sorted(inputs) == sorted(LANGS)
    for lang in LANGS:
        shards = [i.shard for i in inputs[lang]]
        assert {i.kind for i in inputs[lang]} == {"mds"} and len(shards) > 2
        assert shards == sorted(shards) and inputs[lang][0].size() > 0
    got = corpus_docs(corpus)
    assert got == {lang: [nfc(t) for t in want[lang]] for lang in LANGS}
    assert got["fra_Latn"][0].startswith("\u00e9 ")  # NFC


def test_input_ids_uint32_int64_bytes_and_other_columns(streaming, tmp_path):
    rng = np.random.default_rng(1)
    ids = [rng.integers(0, 512, int(rng.integers(1, 40))) for _ in range(25)]
    corpus = tmp_path / "corpus"
    # ModernBERT: int64 ids as raw bytes, with a length column
    write(streaming, corpus / "fra_Latn" / "modernbert", {"input_ids": "bytes", "len": "int"},
          [{"input_ids": x.astype(np.int64).tobytes(), "len": len(x)} for x in ids],
          size_limit=500)
    # pre-tokenised uint32 arrays with an attention mask and ids
    write(streaming, corpus / "deu_Latn" / "u32",
          {"input_ids": "ndarray:uint32", "attention_mask": "ndarray:uint8", "id": "int"},
          [{"input_ids": x.astype(np.uint32), "attention_mask": np.ones(len(x), np.uint8),
            "id": i} for i, x in enumerate(ids)])
    got = corpus_docs(corpus)
    assert got == {lang: [x.tolist() for x in ids] for lang in ("fra_Latn", "deu_Latn")}
    doc = next(iter_input(scan_corpus(corpus)["deu_Latn"][0], "deu_Latn"))
    assert doc.ids.dtype == np.uint32 and doc.text == "" and doc.doc_id == "0"


def test_zstd_shards_read_as_the_uncompressed_ones(streaming, tmp_path):
    texts = documents("rus_Cyrl", 40)
    plain = write_text(streaming, tmp_path / "plain" / "rus_Cyrl", texts, size_limit=800)
    zst = write_text(streaming, tmp_path / "zst" / "rus_Cyrl", texts, size_limit=800,
                     compression="zstd:7")
    assert not list(zst.parent.glob("*.mds")) and list(zst.parent.glob("*.mds.zstd"))
    assert corpus_docs(tmp_path / "zst") == corpus_docs(tmp_path / "plain")
    assert list(mds.iter_samples(zst)) == reference_samples(streaming, plain)


def test_mixture_with_a_lang_column_in_the_split_layout(streaming, tmp_path, tokenizer):
    """mmBERT's layout under train/ and heldout/; one dataset holds several languages."""
    corpus = tmp_path / "corpus"
    tags = {"fra_Latn": "fr", "deu_Latn": "de-DE", "rus_Cyrl": "rus_Cyrl"}
    texts = {lang: documents(lang, 12, seed=3) for lang in LANGS}
    samples = [{"text": texts[lang][k], "lang": tags[lang]} for k in range(12) for lang in LANGS]
    name = "split_212-tokenized-chunked-8192-512-32-backfill-nodups"
    write(streaming, corpus / "train" / "web" / name, {"text": "str", "lang": "str"}, samples,
          size_limit=700)
    write_text(streaming, corpus / "heldout" / "deu_Latn", ["ein Hund", "zwei Hunde"])
    inputs = scan_corpus(corpus)
    assert sorted(inputs) == sorted(LANGS)
    assert {i.split for i in inputs["fra_Latn"]} == {"train"}
    assert {i.split for i in inputs["deu_Latn"]} == {"train", "heldout"}
    shards = [{i.shard for i in inputs[lang] if i.split == "train"} for lang in LANGS]
    assert shards[0] & shards[1] & shards[2]  # shards hold several languages
    got = corpus_docs(corpus)
    for lang in LANGS:
        assert got[lang][:12] == [nfc(t) for t in texts[lang]]
    assert got["deu_Latn"][12:] == ["ein Hund", "zwei Hunde"]
    m = prepare(corpus, tokenizer, tmp_path / "shards", workers=1, progress=False)
    assert m.languages["deu_Latn"].splits["heldout"].documents == 2
    assert m.languages["rus_Cyrl"].splits["train"].documents == 12


def test_language_column_tags_and_errors_replace(streaming, tmp_path):
    """A ``language`` column normalised as JSONL's ``lang`` (a tag without a script takes it
    from the text); ``--errors replace`` counts invalid UTF-8 as for text files."""
    rows = [(b"bonjour", "fra"), (b"caf\xe9", "fr"), ("Здраво свете".encode(), "sr"),
            (b"Zdravo svete", "sr"), ("привет".encode(), "ru-RU")]
    index = write(streaming, tmp_path / "c" / "mix", {"text": "bytes", "language": "str"},
                  [{"text": t, "language": tag} for t, tag in rows])
    _edit_index(index, lambda o: o["shards"][0].update(column_encodings=["str", "str"]))
    inputs = scan_corpus(tmp_path / "c")
    assert sorted(inputs) == ["fra_Latn", "rus_Cyrl", "srp_Cyrl", "srp_Latn"]
    stats = DecodeStats()
    docs = [d.text for lang in sorted(inputs) for i in inputs[lang]
            for d in iter_input(i, lang, "replace", stats)]
    assert docs == ["bonjour", "caf\ufffd", "привет", "Здраво свете", "Zdravo svete"]
    assert stats.total == 1
    with pytest.raises(MmbertError, match="sample 1, column 'text': invalid UTF-8"):
        list(iter_input(inputs["fra_Latn"][0], "fra_Latn"))


def test_merged_root_index_with_sub_paths(streaming, tmp_path):
    root = tmp_path / "corpus" / "web"
    want = {lang: documents(lang, 15) for lang in ("fra_Latn", "deu_Latn")}
    for lang, texts in want.items():
        write_text(streaming, root / lang, texts, size_limit=700)
    streaming.merge_index(str(root))
    merged = json.loads((root / "index.json").read_text())
    assert all("/" in s["raw_data"]["basename"] for s in merged["shards"])
    # the root index covers the parts: nothing is read twice
    assert corpus_docs(tmp_path / "corpus") == {k: [nfc(t) for t in v]
                                                for k, v in want.items()}
    assert {str(p.relative_to(tmp_path)) for p in mds.find_datasets(tmp_path)} == {
        "corpus/web/index.json"}


# ---------------------------------------------------------------------------------------------
# `mmbert data prepare`
# ---------------------------------------------------------------------------------------------

def test_prepare_mds_text_is_byte_identical_to_text_files(streaming, tmp_path, tokenizer):
    txt, mdsc = tmp_path / "txt", tmp_path / "mds"
    txt.mkdir()
    for k, lang in enumerate(LANGS):
        texts = documents(lang, 50, seed=11)
        (txt / f"{lang}.txt").write_text("\n\n".join(texts) + "\n")
        write_text(streaming, mdsc / lang / "data", texts, size_limit=900,
                   compression="zstd" if k == 0 else None)
    a = prepare(txt, tokenizer, tmp_path / "a", workers=1, progress=False, heldout_fraction=0.2)
    b = prepare(mdsc, tokenizer, tmp_path / "b", workers=1, progress=False, heldout_fraction=0.2)
    for lang in LANGS:
        for split in ("train", "heldout"):
            sa, sb = a.languages[lang].splits[split], b.languages[lang].splits[split]
            assert (sa.documents, sa.tokens, sa.chars) == (sb.documents, sb.tokens, sb.chars)
            for ext in ("bin", "idx"):
                f = f"{split}/{lang}.{ext}"
                assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
        assert set(b.languages[lang].splits["train"].sources) == {"mds"}


def test_prepare_input_ids_gives_those_tokens(streaming, tmp_path, tokenizer):
    from mmbert.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    rng = np.random.default_rng(2)
    ids = [rng.integers(5, tok.vocab_size, int(rng.integers(1, 60))) for _ in range(30)]
    # odd documents stored as a tokenizer with special tokens writes them: [bos] ids [eos]
    stored = [np.concatenate([[tok.bos_id], x, [tok.eos_id]]) if i % 2 else x
              for i, x in enumerate(ids)]
    corpus = tmp_path / "corpus"
    write(streaming, corpus / "fra_Latn" / "ids", {"input_ids": "ndarray:int64"},
          [{"input_ids": x.astype(np.int64)} for x in stored], size_limit=800,
          compression="zstd")
    prepare(corpus, tokenizer, tmp_path / "shards", workers=1, progress=False)
    ss = ShardSet(tmp_path / "shards")
    assert ss.num_docs("fra_Latn") == 30
    for i, x in enumerate(ids):
        assert ss.doc("fra_Latn", i).tolist() == x.tolist()


# ---------------------------------------------------------------------------------------------
# Bad input: one MmbertError line naming the file, and exit 2 from the CLI
# ---------------------------------------------------------------------------------------------

def _shard_file(index: Path, k: int = 0) -> Path:
    return index.parent / json.loads(index.read_text())["shards"][k]["raw_data"]["basename"]


def _edit_index(index: Path, fn) -> None:
    obj = json.loads(index.read_text())
    fn(obj)
    index.write_text(json.dumps(obj))


def _bad(streaming, corpus: Path, case: str) -> str:
    """Make ``corpus`` bad in one way; the text its error must contain."""
    index = write_text(streaming, corpus / "fra_Latn" / "ds", documents("fra_Latn", 20),
                       size_limit=500)
    shard = _shard_file(index, 1)
    if case == "missing shard":
        shard.unlink()
        return str(shard)
    if case == "truncated shard":
        shard.write_bytes(shard.read_bytes()[:-10])
        return f"{shard}: "
    if case == "truncated, size not in index":
        shard.write_bytes(shard.read_bytes()[:-10])
        _edit_index(index, lambda o: o["shards"][1]["raw_data"].pop("bytes"))
        return f"{shard}: "
    if case == "index not JSON":
        index.write_text("{\"version\": 2, ")
        return str(index)
    if case == "index version 1":
        _edit_index(index, lambda o: o.update(version=1))
        return str(index)
    if case == "shard format json":
        _edit_index(index, lambda o: o["shards"][0].update(format="json"))
        return str(index)
    if case == "sample count":
        _edit_index(index, lambda o: o["shards"][1].update(samples=o["shards"][1]["samples"] + 1))
        return str(shard)
    if case == "path outside":
        _edit_index(index, lambda o: o["shards"][0]["raw_data"].update(basename="../x.mds"))
        return str(index)
    shutil.rmtree(corpus / "fra_Latn")
    if case == "pickle column":
        write(streaming, corpus / "fra_Latn" / "p", {"text": "str", "meta": "pkl"},
              [{"text": "a", "meta": {"x": 1}}])
        return "pickle"
    if case == "image column":
        index = write(streaming, corpus / "fra_Latn" / "p", {"text": "str", "img": "bytes"},
                      [{"text": "a", "img": b"\xff\xd8"}])
        _edit_index(index, lambda o: o["shards"][0].update(column_encodings=["jpeg", "str"]))
        return "jpeg"
    if case == "no document column":
        write(streaming, corpus / "fra_Latn" / "p", {"body": "str"}, [{"body": "a"}])
        return "['body']"
    if case == "no language":
        write_text(streaming, corpus / "web" / "p", ["a"])
        return str(corpus / "web" / "p")
    if case == "bad lang tag":
        write(streaming, corpus / "p", {"text": "str", "lang": "str"}, [{"text": "a",
                                                                         "lang": "qq"}])
        return "sample 0"
    if case == "ids out of range":
        write(streaming, corpus / "fra_Latn" / "p", {"input_ids": "ndarray:int64"},
              [{"input_ids": np.array([3, 4], np.int64)},
               {"input_ids": np.array([3, -1], np.int64)}])
        return "sample 1"
    if case == "ids bytes not int64":
        write(streaming, corpus / "fra_Latn" / "p", {"input_ids": "bytes"},
              [{"input_ids": b"\x01\x02\x03"}])
        return "sample 0"
    if case == "invalid utf-8":
        index = write(streaming, corpus / "fra_Latn" / "p", {"text": "bytes"},
                      [{"text": b"ok"}, {"text": b"bad \xff"}])
        _edit_index(index, lambda o: o["shards"][0].update(column_encodings=["str"]))
        return "sample 1"
    if case == "corrupt zstd":
        index = write_text(streaming, corpus / "fra_Latn" / "z", ["un", "deux"],
                           compression="zstd")
        z = index.parent / json.loads(index.read_text())["shards"][0]["zip_data"]["basename"]
        z.write_bytes(b"\0" * z.stat().st_size)
        return str(z)
    raise AssertionError(case)


BAD = ["missing shard", "truncated shard", "truncated, size not in index", "index not JSON",
       "index version 1", "shard format json", "sample count", "path outside", "pickle column",
       "image column", "no document column", "no language", "bad lang tag", "ids out of range",
       "ids bytes not int64", "invalid utf-8", "corrupt zstd"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_error_line(streaming, tmp_path, case, tokenizer, capsys):
    from mmbert.cli import main

    corpus = tmp_path / "corpus"
    needle = _bad(streaming, corpus, case)
    with pytest.raises(MmbertError) as e:
        corpus_docs(corpus)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg, msg
    capsys.readouterr()
    rc = main(["data", "prepare", "--corpus", str(corpus), "--tokenizer", str(tokenizer),
               "--out", str(tmp_path / "out"), "--workers", "1"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and err[0] == f"error: {msg}", err


def test_zstd_without_the_zstandard_package(streaming, tmp_path, monkeypatch):
    index = write_text(streaming, tmp_path / "fra_Latn", ["un", "deux"], compression="zstd")
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard -> ImportError
    with pytest.raises(MmbertError, match=r"needs the zstandard package: pip install "
                                          r"'mmbert\[scale\]'") as e:
        list(mds.iter_samples(index))
    assert "shard.00000.mds.zstd" in str(e.value)


def test_corrupted_shards_read_or_fail_with_one_line(streaming, tmp_path):
    """Random byte changes and truncations of shard files and index fields: each read either
    succeeds or raises one MmbertError line (never another exception)."""
    src = tmp_path / "src"
    rng = np.random.default_rng(5)
    samples = [{"text": t, "lang": ["fr", "deu_Latn"][i % 2], "id": i,
                "extra": rng.integers(0, 9, 1 + i % 4).astype(np.int16)}
               for i, t in enumerate(documents("fra_Latn", 12))]
    write(streaming, src / "ds", {"text": "str", "lang": "str", "id": "int", "extra": "ndarray"},
          samples, size_limit=900)
    fields = ["samples", "column_sizes", "column_names", "raw_data", "compression", "format"]
    values: list[Any] = [None, -1, 0, 10**12, "x", [], {}, [None], True, 2.5]
    for case in range(150):
        work = tmp_path / f"c{case}"
        shutil.copytree(src, work)
        shard = _shard_file(work / "ds" / "index.json", case % 2)
        data = bytearray(shard.read_bytes())
        if case % 3 == 0:
            _edit_index(work / "ds" / "index.json", lambda o: o["shards"][case % 2].update(
                {fields[case % len(fields)]: values[int(rng.integers(len(values)))]}))
        elif case % 3 == 1:
            for pos in rng.integers(0, len(data), int(rng.integers(1, 6))):
                data[pos] = int(rng.integers(0, 256))
        else:
            data = data[:int(rng.integers(0, len(data)))]
            _edit_index(work / "ds" / "index.json",
                        lambda o: o["shards"][case % 2]["raw_data"].pop("bytes"))
        shard.write_bytes(bytes(data))
        try:
            corpus_docs(work)
            list(mds.iter_samples(work / "ds" / "index.json"))
        except MmbertError as e:
            assert str(e).strip() and "\n" not in str(e), str(e)
        shutil.rmtree(work)
