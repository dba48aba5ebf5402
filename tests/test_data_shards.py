"""Token shards: the demo corpus, plain text/JSONL/FineWeb-2 parquet corpora, crash safety."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmbert.data.shards import ShardSet, prepare
from mmbert.errors import MmbertError
from mmbert.tokenizer import load_tokenizer


def _docs(path):
    return [d.strip("\n") for d in path.read_text(encoding="utf-8").split("\n\n") if d.strip()]


def test_demo_shards_manifest_and_round_trip(demo_shards, demo_corpus, demo_tokenizer,
                                             demo_languages):
    m = json.loads((demo_shards / "manifest.json").read_text())
    tok = load_tokenizer(demo_tokenizer)
    assert m["tokenizer"]["vocab_size"] == tok.vocab_size == m["vocab_size"] == 4096
    assert m["special_ids"] == {"pad": 0, "eos": 1, "bos": 2, "unk": 3, "mask": 4}
    assert sorted(m["languages"]) == sorted(demo_languages)
    fra = m["languages"]["fra_Latn"]
    assert fra["code"] == "fra_Latn"
    assert fra["splits"]["train"]["source"] == "gettext+udhr"
    for split in ("train", "heldout"):
        ss = ShardSet(demo_shards, split)
        assert ss.languages == sorted(demo_languages)
        for lang in ("fra_Latn", "amh_Ethi", "cmn_Hans"):
            docs = _docs(demo_corpus / split / f"{lang}.txt")
            assert ss.num_docs(lang) == len(docs)
            assert ss.num_tokens(lang) == int(ss.offsets(lang)[-1]) == len(ss.tokens(lang))
            for i in (0, len(docs) // 2, len(docs) - 1):
                d = ss.doc(lang, i)
                assert d.dtype == np.dtype("<u4")
                assert tok.decode(d) == docs[i]


def _udhr_paragraphs(demo_corpus, lang, n):
    return _docs(demo_corpus / "train" / f"{lang}.txt")[:n]


def test_plain_corpus_txt_jsonl_fineweb_parquet(demo_corpus, demo_tokenizer, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    fra = _udhr_paragraphs(demo_corpus, "fra_Latn", 20)
    (corpus / "fra_Latn.txt").write_text("\n\n".join(fra) + "\n", encoding="utf-8")
    deu = _udhr_paragraphs(demo_corpus, "deu_Latn", 6)
    rus = _udhr_paragraphs(demo_corpus, "rus_Cyrl", 4)
    with open(corpus / "mixed.jsonl", "w", encoding="utf-8") as f:
        for i, t in enumerate(deu):  # ISO 639-1 codes are normalised (de -> deu_Latn)
            f.write(json.dumps({"id": f"d{i}", "lang": "de", "text": t}) + "\n")
        for t in rus:
            f.write(json.dumps({"lang": "rus_Cyrl", "text": t}, ensure_ascii=False) + "\n")
    spa = _udhr_paragraphs(demo_corpus, "spa_Latn", 9)
    for sub, texts in (("train", spa[:6]), ("test", spa[6:])):  # FineWeb-2: data/<lang>/test
        (corpus / "spa_Latn" / sub).mkdir(parents=True)
        pq.write_table(pa.table({"text": texts, "id": [f"s{i}" for i in range(len(texts))],
                                 "language": ["spa"] * len(texts)}),
                       corpus / "spa_Latn" / sub / "000_00000.parquet")
    (corpus / "spa_Latn_removed").mkdir()  # FineWeb-2's filtered-out data: skipped
    pq.write_table(pa.table({"text": ["removed"]}), corpus / "spa_Latn_removed" / "x.parquet")

    out = tmp_path / "shards"
    m = prepare(corpus, demo_tokenizer, out, workers=2, heldout_fraction=0.3,
                progress=False).to_dict()
    tok = load_tokenizer(demo_tokenizer)
    assert sorted(m["languages"]) == ["deu_Latn", "fra_Latn", "rus_Cyrl", "spa_Latn"]
    tr, ho = ShardSet(out, "train"), ShardSet(out, "heldout")

    def texts(ss, lang):
        return [tok.decode(ss.doc(lang, i)) for i in range(ss.num_docs(lang))] \
            if lang in ss.languages else []

    # held-out fraction by text hash: a split of fra, disjoint, nothing lost
    assert sorted(texts(tr, "fra_Latn") + texts(ho, "fra_Latn")) == sorted(fra)
    assert 0 < len(texts(ho, "fra_Latn")) < len(fra)
    assert sorted(texts(tr, "deu_Latn") + texts(ho, "deu_Latn")) == sorted(deu)
    assert sorted(texts(tr, "rus_Cyrl") + texts(ho, "rus_Cyrl")) == sorted(rus)
    # parquet: test/ is held out as FineWeb-2 ships it; the _removed folder is ignored
    assert texts(tr, "spa_Latn") == spa[:6] and texts(ho, "spa_Latn") == spa[6:]
    assert m["languages"]["spa_Latn"]["splits"]["train"]["source"] == "parquet"
    assert m["languages"]["deu_Latn"]["splits"]["train"]["source"] == "jsonl"


def test_rerun_skips_finished_and_interrupted_run_leaves_nothing_half_written(
        demo_corpus, demo_tokenizer, tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    for lang, n in (("fra_Latn", 30), ("deu_Latn", 20)):
        (corpus / f"{lang}.txt").write_text("\n\n".join(_udhr_paragraphs(demo_corpus, lang, n)),
                                            encoding="utf-8")
    bad = corpus / "ita_Latn.txt"  # smallest, so tokenised last
    bad.write_bytes(b"Tutti gli esseri umani\n\nnascono liberi \xff e eguali\n")
    out = tmp_path / "s"
    with pytest.raises(MmbertError, match=r"ita_Latn.txt: invalid UTF-8 at byte 39"):
        prepare(corpus, demo_tokenizer, out, workers=1, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert sorted(m["languages"]) == ["deu_Latn", "fra_Latn"]  # finished ones only
    names = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert not [n for n in names if "ita" in n or ".tmp" in n]
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("train/*.bin")}
    (out / "train" / ".deu_Latn.bin.tmp-99999").write_bytes(b"junk")  # a killed worker's file

    bad.write_text("Tutti gli esseri umani\n\nnascono liberi e eguali\n", encoding="utf-8")
    m = prepare(corpus, demo_tokenizer, out, workers=1, progress=False).to_dict()
    assert sorted(m["languages"]) == ["deu_Latn", "fra_Latn", "ita_Latn"]
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # skipped, not rewritten
    assert not list(out.rglob(".*.tmp-*"))
    assert ShardSet(out).num_docs("ita_Latn") == 2
    # a third run has nothing to do; another tokenizer is refused
    prepare(corpus, demo_tokenizer, out, workers=1, progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    other = tmp_path / "tok2"
    load_tokenizer(demo_tokenizer).save(other)
    cfg = json.loads((other / "tokenizer.json").read_text())
    cfg["decoder"] = None
    (other / "tokenizer.json").write_text(json.dumps(cfg))
    with pytest.raises(MmbertError, match="another tokenizer"):
        prepare(corpus, other, out, workers=1, progress=False)
    assert os.path.getsize(out / "manifest.json") > 0
