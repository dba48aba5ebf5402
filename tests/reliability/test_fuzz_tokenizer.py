"""Fuzzing tokenizer loading: random and corrupted tokenizer.json / tokenizer_config.json,
missing special tokens. Every failure is one MmbertError line naming the file or token."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmbert.hf import tokenizer_special_ids
from mmbert.tokenizer import SPECIAL_TOKENS, load_tokenizer


def fuzz(n: int) -> settings:
    return settings(derandomize=True, deadline=None, database=None, max_examples=n,
                    suppress_health_check=list(HealthCheck))


def _valid_tokenizer_json(extra: list[str] = ()) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>",
                                         "a", "b", "hello", *extra])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str()


VALID = _valid_tokenizer_json()
VALID_OBJ = json.loads(VALID)

_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(),
                         st.text(max_size=10))
_json = st.recursive(_json_scalar, lambda c: st.one_of(
    st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c, max_size=4)), max_leaves=10)


@st.composite
def mutated_tokenizer(draw) -> bytes:
    """The valid tokenizer.json with one part replaced, removed, or the text cut/flipped."""
    obj = json.loads(VALID)
    how = draw(st.sampled_from(["top", "model", "vocab", "drop_special", "cut", "flip"]))
    if how == "top":
        obj[draw(st.sampled_from(sorted(obj) + ["x"]))] = draw(_json)
    elif how == "model":
        obj["model"][draw(st.sampled_from(sorted(obj["model"]) + ["type"]))] = draw(_json)
    elif how == "vocab":
        obj["model"]["vocab"][draw(st.text(max_size=5))] = draw(_json)
    elif how == "drop_special":
        for t in draw(st.sets(st.sampled_from(list(SPECIAL_TOKENS.values())), min_size=1)):
            obj["model"]["vocab"].pop(t, None)
    raw = json.dumps(obj).encode()
    if how == "cut":
        raw = raw[:draw(st.integers(0, len(raw)))]
    elif how == "flip":
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1:]
    return raw


_tok_bytes = st.one_of(
    mutated_tokenizer(), st.binary(max_size=100),
    st.builds(lambda o: json.dumps(o).encode(), _json),
    st.sampled_from([b"", b"\x00" * 32, b"{}", b"[]", b"[" * 3000, b"\xff\xfe"]))

_cfg_bytes = st.one_of(
    st.none(), st.binary(max_size=40),
    st.builds(lambda o: json.dumps(o).encode(), _json),
    st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
        st.sampled_from(["pad_token", "eos_token", "bos_token", "unk_token", "mask_token",
                         "cls_token", "sep_token", "mmbert"]),
        st.one_of(_json, st.sampled_from(["<pad>", "<mask>", "hello", "nope"]),
                  st.fixed_dictionaries({"content": st.sampled_from(["<bos>", "zz"])}),
                  st.fixed_dictionaries({"prefix_space": _json})), max_size=4)),
    st.sampled_from([b"[" * 3000, b'{"x": 1' + b"0" * 5000 + b"}", b"\xff{}"]))


@fuzz(300)
@given(tok=_tok_bytes, cfg=_cfg_bytes, as_dir=st.booleans())
def test_load_tokenizer(fuzz, tok, cfg, as_dir, tmp_path_factory):
    fuzz.count("tokenizer.load_tokenizer")
    d = tmp_path_factory.mktemp("tok")
    (d / "tokenizer.json").write_bytes(tok)
    if cfg is not None:
        (d / "tokenizer_config.json").write_bytes(cfg)
    path = d if as_dir else d / "tokenizer.json"
    t, err = fuzz.call(load_tokenizer, path, names=(str(d), "tokenizer"))
    if err is None:
        ids = {t.pad_id, t.eos_id, t.bos_id, t.unk_id, t.mask_id}
        assert t.special_ids == frozenset(ids)
        assert all(0 <= i < t.vocab_size for i in ids)
        assert isinstance(t.prefix_space, bool)
        assert isinstance(t.encode("hello a b"), list)


@fuzz(200)
@given(tok=_tok_bytes, cfg=_cfg_bytes, smap=_cfg_bytes)
def test_tokenizer_special_ids(fuzz, tok, cfg, smap, tmp_path_factory):
    """The special ids a model directory's tokenizer gives its config.json."""
    fuzz.count("hf.tokenizer_special_ids")
    d = tmp_path_factory.mktemp("tok")
    (d / "tokenizer.json").write_bytes(tok)
    for name, raw in (("tokenizer_config.json", cfg), ("special_tokens_map.json", smap)):
        if raw is not None:
            (d / name).write_bytes(raw)
    ids, err = fuzz.call(tokenizer_special_ids, d, names=(str(d),))
    if err is None:
        assert all(isinstance(v, int) and v >= 0 for v in ids.values())
