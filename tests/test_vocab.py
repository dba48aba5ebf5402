"""`mmbert tokenizer extend`: pieces for the worst-covered languages, on the demo corpus with a
tokenizer trained on it (24 languages, 4096 entries; Armenian is not among them, so it falls
back to bytes and is the worst-covered of the languages measured here), and the Gemma 2
tokenizer."""

import json
import shutil

import pytest
import torch

from mmbert import MaskedLM, ModelConfig
from mmbert.cli import main
from mmbert.tokenizer import fetch_gemma, load_tokenizer
from mmbert.vocab import (expansion, extend_tokenizer, measurement_texts, resize_masked_lm,
                          spelling)

MEASURED = ["eng_Latn", "fra_Latn", "rus_Cyrl", "amh_Ethi", "hye_Armn"]
WORST = "hye_Armn"


def _cfg(vocab: int, tied: bool = True) -> ModelConfig:
    return ModelConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48,
                       num_hidden_layers=2, num_attention_heads=2, local_attention=8,
                       max_position_embeddings=128, tie_word_embeddings=tied)


def _model_dir(path, tokenizer, vocab: int, tied: bool = True, seed: int = 0):
    """A small masked-LM directory with random weights and a non-zero decoder bias."""
    torch.manual_seed(seed)
    model = MaskedLM(_cfg(vocab, tied))
    with torch.no_grad():
        model.decoder.bias.normal_()
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(tokenizer / name, path / name)
    return path


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def extended(demo_corpus, demo_tokenizer, tmp_path_factory):
    """The CLI end to end: 100 pieces asked for, with a model to resize."""
    root = tmp_path_factory.mktemp("vocab")
    model = _model_dir(root / "mlm", demo_tokenizer, 4096)
    out = root / "ext"
    rc = main(["tokenizer", "extend", "--tokenizer", str(demo_tokenizer), "--corpus",
               str(demo_corpus), "--add", "100", "--out", str(out), "--init-from", str(model),
               "--languages", ",".join(MEASURED), "--worst", "1"])
    assert rc == 0
    return {"out": out, "model": model, "tokenizer": demo_tokenizer,
            "report": json.loads((out / "fertility.json").read_text(encoding="utf-8"))}


def test_cli_writes_model_tokenizer_and_report(extended):
    out, report = extended["out"], extended["report"]
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "fertility.json", "fertility.md",
            "fertility.png"} <= names
    assert (out / "fertility.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # 4096 + 100 rounded up to the next multiple of 64: 4224, so 128 pieces
    assert (report["requested"], report["added"], report["rounded_up_by"]) == (100, 128, 28)
    assert (report["vocab_size_before"], report["vocab_size_after"]) == (4096, 4224)
    assert report["chosen"] == [WORST]
    assert set(report["languages"]) == set(MEASURED)
    md = (out / "fertility.md").read_text(encoding="utf-8")
    assert "| hye_Armn | word | heldout |" in md and "rounded up" in md
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 4224


def test_vocab_size_old_ids_and_fertility(extended, demo_corpus):
    old = load_tokenizer(extended["tokenizer"])
    new = load_tokenizer(extended["out"])
    assert new.vocab_size == 4224 and new.vocab_size % 64 == 0
    # every old entry keeps its id, specials and byte tokens included; new ones come after
    old_vocab = old.backend.get_vocab(with_added_tokens=True)
    new_vocab = new.backend.get_vocab(with_added_tokens=True)
    assert {t: new_vocab[t] for t in old_vocab} == old_vocab
    assert sorted(set(new_vocab.values()) - set(old_vocab.values())) == list(range(4096, 4224))
    old_merges = json.loads(old.backend.to_str())["model"]["merges"]
    assert json.loads(new.backend.to_str())["model"]["merges"][:len(old_merges)] == old_merges
    assert (new.pad_id, new.eos_id, new.bos_id, new.unk_id, new.mask_id) == (0, 1, 2, 3, 4)

    langs = extended["report"]["languages"]
    hye = langs[WORST]
    assert hye["fertility_after"] < 0.6 * hye["fertility_before"], hye
    assert hye["fertility_before"] == max(v["fertility_before"] for v in langs.values())
    assert langs["amh_Ethi"]["unit"] == "word" and langs["amh_Ethi"]["fertility_before"] < 8

    # Precisely "as before": in every measured language, replacing each new piece by the old
    # pieces it was merged from gives the old tokenisation exactly; the well-covered languages
    # (none of whose words hold a new piece here) tokenise to the very same ids.
    pieces = [_piece(p) for p in extended["report"]["pieces"]]
    back = expansion(pieces, old)
    for lang, (_, docs) in measurement_texts(demo_corpus, MEASURED, 200_000).items():
        for doc in docs:
            ids = new.encode(doc)
            assert [j for i in ids for j in back.get(i, [i])] == old.encode(doc), lang
            assert new.decode(ids) == doc
            if lang in ("eng_Latn", "fra_Latn", "rus_Cyrl"):
                assert ids == old.encode(doc), lang
    assert langs["eng_Latn"]["tokens_after"] == langs["eng_Latn"]["tokens_before"]


def _piece(d):
    from mmbert.vocab import Piece

    return Piece(**d)


def test_transformers_loads_tokenizer_and_model(extended):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    out = extended["out"]
    ours = load_tokenizer(out)
    hf_tok = AutoTokenizer.from_pretrained(str(out))
    text = "Բոլոր մարդիկ ծնվում են ազատ ու հավասար"
    assert hf_tok(text)["input_ids"] == [2] + ours.encode(text) + [1]
    assert max(ours.encode(text)) >= 4096  # new pieces in use
    hf = AutoModelForMaskedLM.from_pretrained(str(out)).eval()
    model = MaskedLM.from_pretrained(out).eval()
    ids = torch.tensor([[2] + ours.encode(text) + [1]])
    with torch.no_grad():
        a = hf(input_ids=ids).logits
        b = model(ids).logits
    assert a.shape == (1, ids.shape[1], 4224)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_old_logits_unchanged_on_old_ids(extended):
    old_tok = load_tokenizer(extended["tokenizer"])
    before = MaskedLM.from_pretrained(extended["model"]).eval()
    after = MaskedLM.from_pretrained(extended["out"]).eval()
    texts = ["All human beings are born free and equal in dignity and rights.",
             "Բոլոր մարդիկ ծնվում են ազատ ու հավասար",
             "Все люди рождаются свободными"]
    rows = [[2] + old_tok.encode(t) + [1] for t in texts]
    n = max(map(len, rows))
    ids = torch.tensor([r + [0] * (n - len(r)) for r in rows])
    mask = (torch.arange(n)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
    assert int(ids.max()) < 4096
    with torch.no_grad():
        a = before(ids, mask).logits
        b = after(ids, mask).logits
    assert b.shape[-1] == 4224
    assert torch.equal(a, b[..., :4096])


def test_new_rows_are_means_of_their_old_pieces(extended):
    old_tok = load_tokenizer(extended["tokenizer"])
    before = MaskedLM.from_pretrained(extended["model"])
    after = MaskedLM.from_pretrained(extended["out"])
    e0 = before.model.embeddings.tok_embeddings.weight
    e1 = after.model.embeddings.tok_embeddings.weight
    assert torch.equal(e1[:4096], e0) and torch.equal(after.decoder.bias[:4096],
                                                      before.decoder.bias)
    assert after.decoder.weight.data_ptr() == e1.data_ptr()  # still tied
    kinds = set()
    for p in extended["report"]["pieces"]:
        ids = old_tok.encode(p["token"])  # the piece's string through the old tokenizer
        assert len(ids) >= 2 and max(ids) < 4096
        assert torch.equal(e1[p["id"]], e0[ids].mean(0)), p
        assert torch.equal(after.decoder.bias[p["id"]], before.decoder.bias[ids].mean(0)), p
        kinds.add(p["kind"])
    assert kinds == {"char", "merge"}  # Armenian letters fall back to bytes; then merges


def test_untied_decoder_rows_follow_the_same_rule(extended, tmp_path):
    from mmbert.vocab import Extension

    old_tok = load_tokenizer(extended["tokenizer"])
    model = MaskedLM.from_pretrained(
        _model_dir(tmp_path / "untied", extended["tokenizer"], 4096, tied=False, seed=1))
    pieces = [_piece(p) for p in extended["report"]["pieces"]]
    ext = Extension(pieces, 100, 4096, [WORST], {WORST: 1})
    big = resize_masked_lm(model, old_tok, ext)
    assert big.config.vocab_size == 4224 and not big.config.tie_word_embeddings
    assert big.decoder.weight.data_ptr() != big.model.embeddings.tok_embeddings.weight.data_ptr()
    for p in pieces[:40]:
        ids = spelling(old_tok, p)
        assert torch.equal(big.decoder.weight[p.id], model.decoder.weight[ids].mean(0))
        assert torch.equal(big.model.embeddings.tok_embeddings.weight[p.id],
                           model.model.embeddings.tok_embeddings.weight[ids].mean(0))
    ids = torch.tensor([[2] + old_tok.encode("Rights and freedoms of everyone") + [1]])
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, big(ids).logits[..., :4096])


def test_gemma_extension_keeps_ids(demo_corpus, tmp_path):
    """Gemma 2 (256000 entries, merges stored as "a b" strings, no pre-tokenizer: words are cut
    before each ▁) grows to 256064; its old ids and merges stay."""
    gemma = tmp_path / "gemma"
    fetch_gemma(gemma)
    r = extend_tokenizer(gemma, demo_corpus, 1, tmp_path / "g2", languages=["eng_Latn", WORST,
                         "amh_Ethi"], targets=["amh_Ethi"], eval_chars=30_000)
    assert (r.extension.added, r.extension.vocab_after) == (64, 256064)
    old, new = load_tokenizer(gemma), load_tokenizer(tmp_path / "g2")
    assert new.vocab_size == 256064
    for p in r.extension.pieces:  # within words: no separator inside, no ▁ after the start
        assert p.kind == "char" or ("\u1361" not in p.token and "\u2581" not in p.token[1:]), p
    assert {p.kind for p in r.extension.pieces} == {"merge", "char"}  # Gemma lacks a few letters
    back = expansion(r.extension.pieces, old)
    for lang, (_, docs) in measurement_texts(demo_corpus, ["eng_Latn", "amh_Ethi"],
                                             30_000).items():
        for doc in docs:
            ids = new.encode(doc)
            assert [j for i in ids for j in back.get(i, [i])] == old.encode(doc), lang
    f = r.fertility["amh_Ethi"]
    assert f.after < f.before and f.chosen


@pytest.mark.parametrize("case", ["mismatch", "add0", "negative", "empty", "blank"])
def test_bad_input_one_line_nothing_written(case, demo_corpus, demo_tokenizer, tmp_path, capsys):
    corpus, add, model = demo_corpus, "64", None
    if case == "mismatch":
        model = _model_dir(tmp_path / "m", demo_tokenizer, 4160)
    elif case in ("add0", "negative"):
        add = "0" if case == "add0" else "-5"
    else:
        corpus = tmp_path / "corpus"
        corpus.mkdir()
        if case == "blank":
            (corpus / "eng_Latn.txt").write_text("\n\n  \n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["tokenizer", "extend", "--tokenizer", demo_tokenizer, "--corpus", corpus,
            "--add", add, "--out", out, "--languages", "eng_Latn,hye_Armn"]
    if case in ("empty", "blank"):
        argv = argv[:-2]
    if model is not None:
        argv += ["--init-from", model]
    rc, _, err = run(capsys, *argv)
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    expected = {"mismatch": "vocab_size 4160 does not match", "add0": "--add 0",
                "negative": "--add -5", "empty": "no <lang>.txt", "blank": "no documents"}[case]
    assert expected in err, err
    assert not out.exists()
