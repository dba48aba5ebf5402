"""Bad input through the CLI: one clear `error:` line, exit code 2, nothing half-written."""

import json

import pytest

from mmbert.cli import main


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _no_shards(out):
    return not list(out.rglob("*.bin")) and not list(out.rglob(".*tmp*"))


def test_invalid_utf8_strict_names_file_and_offset(tmp_path, capsys, demo_tokenizer):
    corpus = tmp_path / "c"
    corpus.mkdir()
    data = "Première ligne\n\nTous les êtres".encode() + b" \xc3\x28 humains\n"
    (corpus / "fra_Latn.txt").write_bytes(data)
    out = tmp_path / "s"
    rc, _, err = _run(capsys, "data", "prepare", "--corpus", corpus, "--tokenizer",
                      demo_tokenizer, "--out", out, "--workers", "1")
    line = _one_error_line(err)
    at = data.index(b"\xc3\x28")
    assert rc == 2 and "fra_Latn.txt" in line and f"invalid UTF-8 at byte {at}" in line
    assert _no_shards(out)
    assert json.loads((out / "manifest.json").read_text())["languages"] == {}

    rc, stdout, err = _run(capsys, "data", "prepare", "--corpus", corpus, "--tokenizer",
                           demo_tokenizer, "--out", tmp_path / "r", "--errors", "replace",
                           "--workers", "1")
    assert rc == 0, err
    assert "replaced 1 invalid UTF-8 sequences" in stdout
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["replacements"] == 1
    assert m["languages"]["fra_Latn"]["splits"]["train"]["documents"] == 2


def test_invalid_utf8_in_jsonl(tmp_path, capsys, demo_tokenizer):
    corpus = tmp_path / "c"
    corpus.mkdir()
    data = b'{"lang": "fr", "text": "bonjour"}\n{"lang": "fr", "text": "caf\xe9"}\n'
    (corpus / "a.jsonl").write_bytes(data)
    rc, _, err = _run(capsys, "data", "prepare", "--corpus", corpus, "--tokenizer",
                      demo_tokenizer, "--out", tmp_path / "s")
    at = data.index(b"\xe9")
    assert rc == 2 and f"a.jsonl: invalid UTF-8 at byte {at}" in _one_error_line(err)


@pytest.mark.parametrize("name,content,expect", [
    ("fra_Latn.txt", b"", "fra_Latn.txt: empty file"),
    ("qq.txt", b"some text\n", "unknown ISO 639-1 code 'qq'"),
    ("und.txt", b"some text\n", "'und' names no single language"),
    ("x.jsonl", b'{"lang": "fr"}\n', "no string field 'text'"),
    ("y.jsonl", b'{"lang": "fr", "text": "a"\n', "invalid JSON at byte 0"),
    ("z.jsonl", b'{"lang": "zz", "text": "a"}\n', "unknown ISO 639-1 code 'zz'"),
])
def test_bad_files(tmp_path, capsys, demo_tokenizer, name, content, expect):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / name).write_bytes(content)
    out = tmp_path / "s"
    rc, _, err = _run(capsys, "data", "prepare", "--corpus", corpus, "--tokenizer",
                      demo_tokenizer, "--out", out, "--workers", "1")
    assert rc == 2 and expect in _one_error_line(err)
    assert _no_shards(out)


def test_language_with_zero_tokens_in_a_phase(tmp_path, capsys, demo_tokenizer):
    corpus = tmp_path / "c"
    (corpus / "train").mkdir(parents=True)
    (corpus / "heldout").mkdir()
    (corpus / "train" / "fra_Latn.txt").write_text("Bonjour le monde\n", encoding="utf-8")
    (corpus / "heldout" / "fra_Latn.txt").write_text("Au revoir\n", encoding="utf-8")
    (corpus / "heldout" / "deu_Latn.txt").write_text("Nur zum Testen\n", encoding="utf-8")
    out = tmp_path / "s"
    assert _run(capsys, "data", "prepare", "--corpus", corpus, "--tokenizer", demo_tokenizer,
                "--out", out, "--workers", "1")[0] == 0
    rc, _, err = _run(capsys, "data", "plan", "--shards", out, "--languages",
                      "fra_Latn,deu_Latn", "--tau", "0.5", "--tokens", "1000")
    assert rc == 2 and "'deu_Latn' has 0 tokens" in _one_error_line(err)
    rc, stdout, _ = _run(capsys, "data", "plan", "--shards", out, "--tokens", "1000")
    assert rc == 0 and "fra_Latn" in stdout and "deu_Latn" not in stdout


def test_other_bad_arguments(tmp_path, capsys, demo_tokenizer, demo_shards):
    rc, _, err = _run(capsys, "data", "prepare", "--corpus", tmp_path / "missing",
                      "--tokenizer", demo_tokenizer, "--out", tmp_path / "s")
    assert rc == 2 and "not a directory" in _one_error_line(err)
    rc, _, err = _run(capsys, "data", "plan", "--shards", tmp_path, "--tokens", "10")
    assert rc == 2 and "manifest.json: no such file" in _one_error_line(err)
    rc, _, err = _run(capsys, "data", "plan", "--shards", demo_shards, "--tokens", "10",
                      "--tau", "2")
    assert rc == 2 and "tau 2.0" in _one_error_line(err)
    rc, _, err = _run(capsys, "tokenizer", "train", "--corpus", tmp_path, "--vocab-size", "10",
                      "--out", tmp_path / "t")
    assert rc == 2 and "--vocab-size 10" in _one_error_line(err)
    rc, _, err = _run(capsys, "data", "prepare", "--corpus", tmp_path, "--tokenizer",
                      tmp_path / "nothing", "--out", tmp_path / "s")
    assert rc == 2 and "no tokenizer.json" in _one_error_line(err)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("x")
    rc, _, err = _run(capsys, "data", "fetch-demo", "--out", tmp_path / "x")
    assert rc == 2 and "exists and is not empty" in _one_error_line(err)
