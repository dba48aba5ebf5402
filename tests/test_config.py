"""ModelConfig <-> transformers ModernBertConfig, and parameter counts against real models."""

import json

import pytest
import torch
from transformers import ModernBertConfig

from mmbert import Encoder, MaskedLM, ModelConfig
from mmbert.config import PRESETS, preset
from mmbert.errors import MmbertError


def test_round_trip_through_hf_dict():
    c = preset("tiny").replace(global_rope_theta=12345.0, local_attention=64,
                               classifier_pooling="cls", global_attn_every_n_layers=2)
    assert ModelConfig.from_hf_dict(json.loads(json.dumps(c.to_hf_dict()))) == c


def test_transformers_reads_our_dict_with_same_meaning():
    c = preset("tiny").replace(global_rope_theta=12345.0, local_rope_theta=99.0,
                               global_attn_every_n_layers=2)
    d = {k: v for k, v in c.to_hf_dict().items() if k not in ("model_type", "architectures")}
    hf = ModernBertConfig(**d)
    assert hf.rope_parameters["full_attention"]["rope_theta"] == 12345.0
    assert hf.rope_parameters["sliding_attention"]["rope_theta"] == 99.0
    assert hf.layer_types == ["full_attention" if i % 2 == 0 else "sliding_attention"
                              for i in range(c.num_hidden_layers)]
    assert hf.sliding_window == c.local_attention // 2


def test_reads_transformers_5_config_and_its_defaults():
    """A config saved by transformers 5.x (rope_parameters + layer_types, no flat thetas)."""
    hf = ModernBertConfig(num_hidden_layers=7, global_attn_every_n_layers=2,
                          global_rope_theta=5000.0, local_rope_theta=300.0, local_attention=32)
    d = hf.to_dict()
    d.pop("global_attn_every_n_layers", None)
    c = ModelConfig.from_hf_dict(d)
    assert (c.global_rope_theta, c.local_rope_theta) == (5000.0, 300.0)
    assert c.global_attn_every_n_layers == 2 and c.local_attention == 32
    # keys a config.json omits mean transformers' defaults, not mmBERT's
    bare = ModelConfig.from_hf_dict({"model_type": "modernbert"})
    ref = ModernBertConfig()
    for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "local_attention", "classifier_pooling", "pad_token_id",
              "cls_token_id", "sep_token_id", "norm_eps", "hidden_activation", "decoder_bias"):
        assert getattr(bare, f) == getattr(ref, f), f
    assert bare.global_rope_theta == ref.rope_parameters["full_attention"]["rope_theta"]


@pytest.mark.parametrize("bad, match", [
    ({"model_type": "bert"}, "model_type is 'bert'"),
    ({"model_type": "modernbert", "num_hidden_layers": 4,
      "layer_types": ["full_attention", "full_attention", "sliding_attention", "full_attention"]},
     "not periodic"),
    ({"model_type": "modernbert", "rope_parameters": {"full_attention": {"rope_type": "yarn"}}},
     "rope_type"),
    ({"model_type": "modernbert", "hidden_size": 100, "num_attention_heads": 12}, "hidden_size"),
    ({"model_type": "modernbert", "norm_eps": "small"}, "norm_eps"),
])
def test_bad_configs_raise_one_line(bad, match):
    with pytest.raises(MmbertError, match=match) as e:
        ModelConfig.from_hf_dict(bad)
    assert "\n" not in str(e.value)


def test_parameter_counts_equal_instantiated_models():
    tiny = preset("tiny")
    n = tiny.num_parameters()
    assert sum(p.numel() for p in Encoder(tiny).parameters()) == n["total"]
    assert sum(p.numel() for p in MaskedLM(tiny).parameters()) == n["total"] + n["mlm_head"]
    for name in ("mmbert-small", "mmbert-base"):
        c = PRESETS[name]
        with torch.device("meta"):  # no memory, no init
            enc = Encoder(c, init=False)
            mlm = MaskedLM(c, init=False)
        n = c.num_parameters()
        assert sum(p.numel() for p in enc.parameters()) == n["total"]
        assert sum(p.numel() for p in mlm.parameters()) == n["total"] + n["mlm_head"]
        emb = enc.embeddings.tok_embeddings.weight.numel()
        assert n["non_embedding"] == n["total"] - emb


def test_paper_sizes():
    base, small = preset("mmbert-base").num_parameters(), preset("mmbert-small").num_parameters()
    assert abs(base["total"] / 307e6 - 1) < 0.01 and abs(base["non_embedding"] / 110e6 - 1) < 0.01
    assert abs(small["total"] / 140e6 - 1) < 0.01 and abs(small["non_embedding"] / 42e6 - 1) < 0.01
