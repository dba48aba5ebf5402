"""Fine-tuning: readers, first-subword label alignment, the three tasks on real derived data
(demo corpus), transformers / sentence-transformers loading, and bad input via the CLI."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mmbert.cli import main

LANGS = ["fra_Latn", "deu_Latn", "spa_Latn", "rus_Cyrl", "tur_Latn"]


def make_model(tokenizer_dir: Path, out: Path, seed: int = 0, **overrides) -> Path:
    """A randomly initialised tiny masked LM with the demo tokenizer, in transformers layout."""
    from mmbert.config import preset
    from mmbert.model import MaskedLM
    from mmbert.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    sizes = dict(vocab_size=tok.vocab_size, hidden_size=96, num_attention_heads=3,
                 intermediate_size=128, num_hidden_layers=3)
    cfg = preset("tiny").replace(**{**sizes, **overrides})
    torch.manual_seed(seed)
    MaskedLM(cfg).save_pretrained(out)
    tok.save(out)
    return out


@pytest.fixture(scope="module")
def tiny_model(demo_tokenizer: Path, tmp_path_factory) -> Path:
    return make_model(demo_tokenizer, tmp_path_factory.mktemp("tasks") / "tiny")


@pytest.fixture(scope="module")
def tt(tiny_model: Path):
    from mmbert.hf import read_config
    from mmbert.text import load_text_tokenizer

    return load_text_tokenizer(tiny_model, read_config(tiny_model)[0])


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    rc = main(args)
    err = capsys.readouterr().err
    return rc, err


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------

def test_readers_all_formats(tmp_path: Path) -> None:
    from mmbert.tasks.io import read_pair_file, read_sequence_file, read_token_file

    (tmp_path / "a.jsonl").write_text('{"text": "hello", "label": 1}\n\n'
                                      '{"premise": "p", "hypothesis": "h", "label": "x"}\n')
    ex = read_sequence_file(tmp_path / "a.jsonl")
    assert [(e.text, e.text_pair, e.label) for e in ex] == [("hello", None, "1"), ("p", "h", "x")]
    (tmp_path / "a.csv").write_text('premise,hypothesis,label\n"a, b",c,entail\n')
    assert read_sequence_file(tmp_path / "a.csv")[0].text == "a, b"
    (tmp_path / "p.jsonl").write_text('{"anchor": "a", "positive": "b"}\n')
    assert read_pair_file(tmp_path / "p.jsonl")[0].positive == "b"
    conllu = ("# sent_id = 1\n1-2\tdu\t_\t_\t_\t_\t_\t_\t_\t_\n"
              "1\tde\tde\tADP\t_\t_\t3\tcase\t_\t_\n2\tle\tle\tDET\t_\t_\t3\tdet\t_\t_\n"
              "2.1\tx\t_\tX\t_\t_\t_\t_\t_\t_\n3\tchat\tchat\tNOUN\t_\t_\t0\troot\t_\t_\n\n")
    (tmp_path / "a.conllu").write_text(conllu)
    s = read_token_file(tmp_path / "a.conllu")
    assert s[0].words == ["de", "le", "chat"] and s[0].labels == ["ADP", "DET", "NOUN"]
    assert read_token_file(tmp_path / "a.conllu", "deprel")[0].labels == ["case", "det", "root"]
    (tmp_path / "a.conll").write_text("-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ "
                                      "B-VP O\n\nPeter NNP B-NP B-PER\n")
    s = read_token_file(tmp_path / "a.conll")
    assert [x.labels for x in s] == [["B-ORG", "O"], ["B-PER"]]


def test_bio_span_f1() -> None:
    from mmbert.scores import span_f1

    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    assert span_f1(gold, gold) == 1.0
    assert span_f1([["B-PER", "O", "O", "B-LOC"]], gold) == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# Label alignment
# ---------------------------------------------------------------------------------------------

def expected_first_tokens(tt, words: list[str], max_length: int) -> list[int]:
    """Oracle from token strings, not offsets: the tokenizer splits at spaces (Metaspace), so
    word j's tokens are those the text gains when word j is appended; its first subword is the
    first of them that is not a bare word-boundary piece "▁" (+1 for [CLS])."""
    kept = [(j, w) for j, w in enumerate(words) if w.strip()]
    out = [-1] * len(words)
    for k, (j, _) in enumerate(kept):
        before = len(tt.ids(" ".join(w for _, w in kept[:k])))
        new = tt.tok.encode(" ".join(w for _, w in kept[:k + 1]),
                            add_special_tokens=False).tokens[before:]
        skip = next(i for i, t in enumerate(new) if t != "\u2581")
        pos = 1 + before + skip
        if pos < max_length - 1:
            out[j] = pos
    return out


@pytest.mark.parametrize("words", [
    ["Die", "Donaudampfschifffahrtsgesellschaftskapitänsmütze", "kostet", "2024", "€"],
    ["", "empty", " ", "Weltgesundheitsorganisation", "", "everywhere", ""],
    ["naïve", "nai\u0308ve", "😀😀", "Ελλάδα", "東京都", "New York", "x"],
])
def test_alignment_exact(tt, words: list[str]) -> None:
    from mmbert.config import IGNORE_INDEX as IGNORE
    from mmbert.tasks.token import align_labels
    from mmbert.text import encode_words

    enc = encode_words(tt, words, 512)
    labels = align_labels(enc.word_of_token, list(range(100, 100 + len(words))))
    want = expected_first_tokens(tt, words, 512)
    assert enc.first_tokens(len(words)) == want
    assert enc.ids[0] == tt.cls_id and enc.ids[-1] == tt.sep_id
    for j, pos in enumerate(want):
        if pos >= 0:
            assert labels[pos] == 100 + j
    assert sum(l != IGNORE for l in labels) == sum(p >= 0 for p in want)
    assert any(len([t for t in enc.word_of_token if t == j]) > 1 for j in range(len(words))), \
        "expected at least one multi-subword word"
    # the tokens of each word decode back to the word (offsets are exact)
    for j, w in enumerate(words):
        toks = [i for i, t in zip(enc.ids, enc.word_of_token) if t == j]
        if w.strip():
            assert tt.tok.decode(toks).strip().replace(" ", "") == \
                __import__("unicodedata").normalize("NFC", w).replace(" ", "")


def test_alignment_truncation(tt) -> None:
    from mmbert.config import IGNORE_INDEX as IGNORE
    from mmbert.tasks.token import align_labels
    from mmbert.text import encode_words

    words = [f"wort{i}" for i in range(200)]
    enc = encode_words(tt, words, 64)
    assert len(enc.ids) == 64 and enc.ids[-1] == tt.sep_id
    labels = align_labels(enc.word_of_token, [i % 7 for i in range(200)])
    want = expected_first_tokens(tt, words, 64)
    kept = [j for j, p in enumerate(want) if p >= 0]
    assert 0 < len(kept) < 200 and kept == list(range(len(kept)))
    assert [labels[p] for p in want if p >= 0] == [j % 7 for j in kept]
    assert sum(l != IGNORE for l in labels) == len(kept)
    # a word cut in the middle keeps its label (its first token made it in)
    assert enc.first_tokens(200)[kept[-1]] == want[kept[-1]]


# ---------------------------------------------------------------------------------------------
# Fine-tuning on tasks derived from the demo corpus
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def task_files(demo_corpus: Path, tmp_path_factory) -> Path:
    """Derived tasks: domain classification (train/test per language), code-switch tagging,
    translation pairs; a small slice of each to keep the test fast."""
    from mmbert.evaluate.classification import domain_task
    from mmbert.evaluate.corpus import Corpus, gettext_pairs
    from mmbert.evaluate.tagging import codeswitch_examples
    from mmbert.outputs import write_jsonl
    from mmbert.tasks.io import write_conll

    d = tmp_path_factory.mktemp("taskfiles")
    c = Corpus.open(demo_corpus)
    t = domain_task(c, LANGS, n_domains=4, train_per_class=40, test_per_language=40,
                    train_languages=["eng_Latn", *LANGS])
    write_jsonl(d / "seq_train.jsonl", [{"text": x, "label": t.domains[y]} for x, y in t.train])
    write_jsonl(d / "seq_test.jsonl", [{"text": x, "label": t.domains[y]}
                                       for l in t.test for x, y in t.test[l]])
    write_conll(d / "tok_train.conll", [e for l in LANGS for e in
                                         codeswitch_examples(c, l, "train", max_sentences=16)])
    write_conll(d / "tok_test.conll", [e for l in LANGS for e in
                                        codeswitch_examples(c, l, "heldout", max_sentences=6)])
    pairs = {s: [{"anchor": e, "positive": x} for l in LANGS[:2]
                 for e, x in gettext_pairs(c, l, s, cap=None if s == "train" else 60)]
             for s in ("train", "heldout")}
    write_jsonl(d / "pairs_train.jsonl", pairs["train"])
    write_jsonl(d / "pairs_test.jsonl", pairs["heldout"])
    return d


def majority_share(path: Path) -> float:
    labels = [json.loads(l)["label"] for l in path.read_text().splitlines()]
    return max(labels.count(x) for x in set(labels)) / len(labels)


def test_finetune_sequence(tiny_model: Path, task_files: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "seq"
    rc = main(["finetune", "--task", "sequence", "--model", str(tiny_model), "--train",
               str(task_files / "seq_train.jsonl"), "--eval", str(task_files / "seq_test.jsonl"),
               "--out", str(out), "--epochs", "2", "--batch-size", "32", "--lr", "2e-3",
               "--max-length", "64", "--seed", "1"])
    assert rc == 0, capsys.readouterr().err
    hist = json.loads((out / "finetune.json").read_text())["history"]
    assert len(hist) == 2 and all("eval_accuracy" in h for h in hist)  # metrics per epoch
    chance = majority_share(task_files / "seq_test.jsonl")
    assert hist[-1]["eval_accuracy"] > chance + 0.15, (hist[-1], chance)

    # transformers loads it, with labels and the same logits; AutoTokenizer frames alike
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from mmbert.model import SequenceClassifier
    from mmbert.text import pack

    tok = AutoTokenizer.from_pretrained(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    labels = json.loads((out / "finetune.json").read_text())["labels"]
    assert [hf.config.id2label[i] for i in range(len(labels))] == labels
    assert hf.config.label2id == {l: i for i, l in enumerate(labels)}
    texts = ["Unable to open file", "Allemagne"]
    enc = tok(texts, return_tensors="pt", padding=True)
    ours = SequenceClassifier.from_pretrained(out).eval()
    seqs = [ids[:int(m.sum())] for ids, m in zip(enc["input_ids"].tolist(),
                                                  enc["attention_mask"])]
    with torch.no_grad():
        a = hf(**enc).logits
        b = ours(**pack(seqs).kwargs()).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_finetune_token(tiny_model: Path, task_files: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tok"
    rc = main(["finetune", "--task", "token", "--model", str(tiny_model), "--train",
               str(task_files / "tok_train.conll"), "--eval", str(task_files / "tok_test.conll"),
               "--out", str(out), "--epochs", "2", "--batch-size", "8", "--lr", "2e-3",
               "--max-length", "128"])
    assert rc == 0, capsys.readouterr().err
    last = json.loads((out / "finetune.json").read_text())["history"][-1]
    assert last["eval_words_lost"] <= 0.02 * last["eval_words"]  # cut by --max-length only
    assert last["eval_accuracy"] > 0.75, last  # two balanced tags: chance ~0.5

    from transformers import AutoModelForTokenClassification

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = AutoModelForTokenClassification.from_pretrained(out)
    assert hf.config.id2label == {0: "eng", 1: "oth"}
    assert hf.config.label2id == {"eng": 0, "oth": 1}
    # `mmbert eval --data` scores the saved model the same way
    capsys.readouterr()
    rc = main(["eval", str(out), "--data", str(task_files / "tok_test.conll"), "--task", "token"])
    assert rc == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["accuracy"] == pytest.approx(last["eval_accuracy"], abs=1e-3)


def test_finetune_embedding(tiny_model: Path, task_files: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "emb"
    rc = main(["finetune", "--task", "embedding", "--model", str(tiny_model), "--train",
               str(task_files / "pairs_train.jsonl"), "--eval",
               str(task_files / "pairs_test.jsonl"), "--out", str(out), "--epochs", "1",
               "--batch-size", "64", "--lr", "1e-3", "--max-length", "48",
               "--temperature", "0.05"])
    assert rc == 0, capsys.readouterr().err
    s = json.loads((out / "finetune.json").read_text())
    before = s["before"]["eval_acc@1_a2p"] + s["before"]["eval_acc@1_p2a"]
    after = s["history"][-1]["eval_acc@1_a2p"] + s["history"][-1]["eval_acc@1_p2a"]
    assert after > before + 0.1, (s["before"], s["history"][-1])

    # sentence-transformers layout; the model API gives the same vectors
    for f in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json",
              "config.json", "model.safetensors", "tokenizer.json"):
        assert (out / f).is_file(), f
    from sentence_transformers import SentenceTransformer

    import mmbert

    texts = ["Open file", "Ouvrir le fichier", "Toute personne a droit à l'éducation, gratuite."]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = SentenceTransformer(str(out), device="cpu")
    a = st.encode(texts)
    b = mmbert.Encoder.from_pretrained(out).encode(texts)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)


def test_encode_batched_by_length_is_order_free(tiny_model: Path) -> None:
    import mmbert

    enc = mmbert.Encoder.from_pretrained(tiny_model)
    texts = ["short", "a somewhat longer text " * 5, "mittel langer Satz", "x"]
    full = enc.encode(texts, batch_size=2)
    rev = enc.encode(texts[::-1], batch_size=3)[::-1]
    one = np.stack([enc.encode(t) for t in texts])
    np.testing.assert_allclose(full, rev, atol=1e-5)
    np.testing.assert_allclose(full, one, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2
# ---------------------------------------------------------------------------------------------

def test_unknown_label_at_eval(tiny_model: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "tr.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    (tmp_path / "ev.jsonl").write_text('{"text": "c", "label": "zzz"}\n')
    rc, err = run_cli(["finetune", "--task", "sequence", "--model", str(tiny_model), "--train",
                       str(tmp_path / "tr.jsonl"), "--eval", str(tmp_path / "ev.jsonl"), "--out",
                       str(tmp_path / "o")], capsys)
    assert rc == 2 and "'zzz' was not seen in training" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
    (tmp_path / "tr.conll").write_text("a X\nb Y\n")
    (tmp_path / "ev.conll").write_text("a X\nb Q\n")
    rc, err = run_cli(["finetune", "--task", "token", "--model", str(tiny_model), "--train",
                       str(tmp_path / "tr.conll"), "--eval", str(tmp_path / "ev.conll"), "--out",
                       str(tmp_path / "o")], capsys)
    assert rc == 2 and "label 'Q'" in err and err.count("\n") == 1


def test_mismatched_vocab(demo_tokenizer: Path, tmp_path: Path, capsys) -> None:
    model = make_model(demo_tokenizer, tmp_path / "small_vocab", vocab_size=1000)
    (tmp_path / "tr.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    rc, err = run_cli(["finetune", "--task", "sequence", "--model", str(model), "--train",
                       str(tmp_path / "tr.jsonl"), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "vocab_size 1000" in err and err.count("\n") == 1
    rc, err = run_cli(["eval", str(model), "--corpus", str(tmp_path), "--out",
                       str(tmp_path / "e")], capsys)
    assert rc == 2 and "vocab_size 1000" in err and err.count("\n") == 1


@pytest.mark.parametrize("task,name", [("sequence", "e.jsonl"), ("token", "e.conll"),
                                       ("embedding", "e.csv")])
def test_empty_files(tiny_model: Path, tmp_path: Path, capsys, task: str, name: str) -> None:
    (tmp_path / name).write_text("")
    rc, err = run_cli(["finetune", "--task", task, "--model", str(tiny_model), "--train",
                       str(tmp_path / name), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "empty" in err and err.count("\n") == 1
    (tmp_path / "blank.jsonl").write_text("\n\n")
    rc, err = run_cli(["finetune", "--task", "sequence", "--model", str(tiny_model), "--train",
                       str(tmp_path / "blank.jsonl"), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "no examples" in err


def test_output_not_overwritten(tiny_model: Path, tmp_path: Path, capsys) -> None:
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    (tmp_path / "tr.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    rc, err = run_cli(["finetune", "--task", "sequence", "--model", str(tiny_model), "--train",
                       str(tmp_path / "tr.jsonl"), "--out", str(keep)], capsys)
    assert rc == 2 and "exists and is not empty" in err and "--overwrite" in err
    assert (keep / "notes.txt").read_text() == "mine"


def test_cli_finetune_defaults_are_the_task_functions(monkeypatch, tmp_path, capsys):
    """The CLI passes only the options given; every other default is the task function's own
    (stated once), and its help shows them; an option another task owns is one clear error."""
    import inspect

    import mmbert.tasks.embedding as emb
    from mmbert.cli import main

    seen = {}

    def fake(model_dir, train, out, eval=None, **options):
        seen.update(options)
        return {"history": []}

    fake.__signature__ = inspect.signature(emb.finetune_embedding)
    monkeypatch.setattr(emb, "finetune_embedding", fake)
    args = ["finetune", "--task", "embedding", "--model", "m", "--train", "t", "--out",
            str(tmp_path / "o")]
    assert main(args) == 0 and seen == {}
    assert main(args + ["--epochs", "2", "--temperature", "0.1"]) == 0
    assert seen == {"epochs": 2, "temperature": 0.1}
    capsys.readouterr()
    assert main(["finetune", "--task", "sequence", "--model", "m", "--train", "t", "--out",
                 str(tmp_path / "o"), "--temperature", "0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--temperature: not an option of the sequence task" in err[0]
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    out = capsys.readouterr().out
    e = inspect.signature(emb.finetune_embedding).parameters["epochs"].default
    assert f"embedding {e}" in out and "sequence 3" in out
