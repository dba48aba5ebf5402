"""Fuzzing config.json loading: ``ModelConfig.from_hf_dict``, ``ModelConfig.load_json`` and
``hf.read_config`` on random values, types and bytes."""

from __future__ import annotations

import json
import warnings
from dataclasses import fields

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmbert.config import ModelConfig
from mmbert.hf import read_config


def fuzz(n: int) -> settings:
    return settings(derandomize=True, deadline=None, database=None, max_examples=n,
                    suppress_health_check=list(HealthCheck))


FIELDS = [f.name for f in fields(ModelConfig)]
HF_KEYS = FIELDS + ["model_type", "rope_parameters", "layer_types", "sliding_window",
                    "architectures", "torch_dtype"]
_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10), st.integers(), st.integers(10**300, 10**310),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["gelu", "silu", "cls", "mean", "full_attention", "sliding_attention",
                     "default", "linear", "modernbert", "1e400", "nan"]))
_json = st.recursive(_json_scalars, lambda c: st.one_of(
    st.lists(c, max_size=4), st.dictionaries(st.text(max_size=6), c, max_size=4)), max_leaves=8)


@st.composite
def hf_dicts(draw) -> dict:
    """A valid tiny config.json with some keys replaced, dropped or added."""
    base = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                       num_attention_heads=2, max_position_embeddings=128,
                       local_attention=16).to_hf_dict()
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(HF_KEYS + ["extra"]))
        how = draw(st.sampled_from(["set", "drop"]))
        if how == "drop":
            base.pop(key, None)
        else:
            base[key] = draw(_json)
    if draw(st.booleans()):
        base["rope_parameters"] = draw(st.one_of(_json, st.fixed_dictionaries({
            "full_attention": st.dictionaries(st.sampled_from(["rope_theta", "rope_type"]),
                                              _json, max_size=2),
            "sliding_attention": _json})))
    if draw(st.booleans()):
        base["layer_types"] = draw(st.lists(st.sampled_from(
            ["full_attention", "sliding_attention", "x"]), max_size=6))
    return base


def _check_result(cfg: ModelConfig) -> None:
    cfg.validate()
    assert isinstance(cfg.vocab_size, int) and cfg.vocab_size > 0
    assert cfg.hidden_size % cfg.num_attention_heads == 0


@fuzz(600)
@given(d=hf_dicts())
def test_from_hf_dict(fuzz, d):
    fuzz.count("config.from_hf_dict")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg, err = fuzz.call(ModelConfig.from_hf_dict, d, "fuzz/config.json",
                             names=("fuzz/config.json",))
    if err is None:
        _check_result(cfg)


@fuzz(300)
@given(kw=st.dictionaries(st.sampled_from(FIELDS), _json_scalars, max_size=4))
def test_model_config_fields(fuzz, kw):
    """ModelConfig(**fields) with wrong types: one error line naming the field."""
    fuzz.count("config.ModelConfig(fields)")
    cfg, err = fuzz.call(ModelConfig, **kw, names=tuple(kw) or ("model config",))
    if err is None:
        _check_result(cfg)


_file_bytes = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda d: json.dumps(d).encode(), hf_dicts()),
    st.builds(lambda d, cut: json.dumps(d).encode()[:cut], hf_dicts(), st.integers(0, 400)),
    st.sampled_from([b"", b"\x00" * 64, b"[]", b"null", b"\xff\xfe{}", b"[" * 5000,
                     b'{"model_type": "modernbert", "vocab_size": 1' + b"0" * 5000 + b"}",
                     b'{"model_type": "modernbert", "global_rope_theta": 1' + b"0" * 400 + b"}",
                     b'{"model_type": "modernbert", "norm_eps": NaN}',
                     b'{"model_type": "modernbert", "hidden_size": 1e999}']))


@fuzz(250)
@given(raw=_file_bytes)
def test_load_json_and_read_config(fuzz, raw, tmp_path_factory):
    fuzz.count("config.load_json + hf.read_config (bytes)")
    d = tmp_path_factory.mktemp("cfg")
    (d / "config.json").write_bytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg, err = fuzz.call(ModelConfig.load_json, d / "config.json", names=("config.json",))
        if err is None:
            _check_result(cfg)
        res, err2 = fuzz.call(read_config, d, names=("config.json",))
    assert (err is None) == (err2 is None), (err, err2)
