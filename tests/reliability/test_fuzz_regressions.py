"""The inputs fuzzing found that used to escape as tracebacks (or pass as wrong values), pinned:
each is now one MmbertError line naming the file or field."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmbert.config import ModelConfig
from mmbert.data.langcodes import check_code, is_code, normalize_lang
from mmbert.data.masking import Masker
from mmbert.data.sources import iter_jsonl, iter_parquet
from mmbert.errors import MmbertError
from mmbert.hf import read_config
from mmbert.outputs import read_json
from mmbert.tokenizer import load_tokenizer


def one_line(fn, match: str) -> str:
    with pytest.raises(MmbertError) as ei:
        fn()
    msg = str(ei.value)
    assert "\n" not in msg and match in msg, msg
    return msg


def test_language_code_with_a_trailing_newline():
    assert not is_code("fra_Latn\n")
    one_line(lambda: check_code("fra_Latn\n"), "not a language code")
    assert normalize_lang("aa-Latn\n-Latn") == "aar_Latn"
    assert normalize_lang("fr-\ufb00oo") == "fra_Latn"  # 'ﬀoo' capitalises to 'Ffoo'


def test_masker_nan_share():
    one_line(lambda: Masker(10, {0}, 4, random_prob=float("nan")), "masking")


@pytest.mark.parametrize("field, value", [("attention_dropout", 10**400),
                                          ("global_rope_theta", ""), ("norm_eps", [1])])
def test_model_config_non_numbers(field, value):
    one_line(lambda: ModelConfig(**{field: value}), field)


@pytest.mark.parametrize("raw", [
    b'{"model_type": "modernbert", "vocab_size": 1' + b"0" * 5000 + b"}",
    b"[" * 5000,
    b'{"model_type": "modernbert", "global_rope_theta": 1' + b"0" * 400 + b"}",
])
def test_config_json_huge_or_deep(raw, tmp_path):
    (tmp_path / "config.json").write_bytes(raw)
    one_line(lambda: ModelConfig.load_json(tmp_path / "config.json"), "config.json")
    one_line(lambda: read_config(tmp_path), "config.json")
    if not raw.startswith(b'{"model_type": "modernbert", "global'):
        one_line(lambda: read_json(tmp_path / "config.json", "a test object"), "config.json")


@pytest.mark.parametrize("cfg, match", [(b"\x80", "tokenizer_config.json"),
                                        (b"null", "tokenizer_config.json"),
                                        (b'{"mmbert": [1]}', "'mmbert'")])
def test_tokenizer_config(cfg, match, tmp_path):
    from tokenizers import Tokenizer, models

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])}
    (tmp_path / "tokenizer.json").write_text(
        Tokenizer(models.WordLevel(vocab, unk_token="<unk>")).to_str())
    (tmp_path / "tokenizer_config.json").write_bytes(cfg)
    one_line(lambda: load_tokenizer(tmp_path), match)


@pytest.mark.parametrize("line, match", [
    (b'{"text": "a", "lang": "fr", "id": 1' + b"0" * 5000 + b"}", "invalid JSON at byte 0"),
    (b"[" * 3000, "invalid JSON at byte 0"),
    (b'{"text": "a\\ud800", "lang": "fr"}', "unpaired surrogate"),
])
def test_jsonl_records(line, match, tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(line + b"\n")
    one_line(lambda: list(iter_jsonl(p)), match)


def test_parquet_text_column_type_and_corruption(tmp_path):
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": pa.array([{"a": 1}])}), p)
    one_line(lambda: list(iter_parquet(p, "fra_Latn")), "column 'text' has type")
    pq.write_table(pa.table({"text": [1, 2]}), p)
    one_line(lambda: list(iter_parquet(p, "fra_Latn")), "expected a string column")
    p.write_bytes(b"PAR1" + b"\x00" * 20 + b"PAR1")
    one_line(lambda: list(iter_parquet(p, "fra_Latn")), "not a readable parquet file")


def test_cli_prepare_surrogate_jsonl(tmp_path, capsys):
    from mmbert.cli import main
    from tokenizers import Tokenizer, models

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "a"])}
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text(
        Tokenizer(models.WordLevel(vocab, unk_token="<unk>")).to_str())
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.jsonl").write_text(json.dumps({"text": "a\ud800", "lang": "fr"}))
    rc = main(["data", "prepare", "--corpus", str(tmp_path / "corpus"), "--tokenizer",
               str(tmp_path / "tok"), "--out", str(tmp_path / "shards"), "--workers", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "unpaired surrogate" in err[0], err
