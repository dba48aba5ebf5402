"""Composer/FlexBERT checkpoints: a synthetic .pt with FlexBERT's names and Composer's nesting
becomes a transformers directory whose logits equal transformers' own model with the same
weights; untrusted pickles are refused without running."""

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
import yaml
from transformers import ModernBertConfig, ModernBertForMaskedLM

from mmbert.config import ModelConfig
from mmbert.composer import convert_composer, hf_name, read_composer_weights, safe_load
from mmbert.errors import MmbertError
from test_train import data  # noqa: F401 (the small real shards and tokenizer fixture)

transformers.logging.set_verbosity_error()

# the FlexBERT training YAML as the ModernBERT trainer reads it (sizes shrunk)
FLEX = {"num_attention_heads": 4, "num_hidden_layers": 5, "hidden_size": 64,
        "intermediate_size": 96, "vocab_size": 211, "attention_layer": "rope",
        "attn_out_bias": False, "attn_qkv_bias": False, "bert_layer": "prenorm",
        "decoder_bias": True, "embed_norm": True, "final_norm": True,
        "embedding_layer": "sans_pos", "mlp_layer": "glu", "mlp_in_bias": False,
        "mlp_out_bias": False, "normalization": "layernorm",
        "norm_kwargs": {"eps": 1e-5, "bias": False}, "hidden_act": "gelu",
        "head_pred_act": "gelu", "rotary_emb_base": 20000.0, "local_attn_rotary_emb_base": -1,
        "sliding_window": 16, "global_attn_every_n_layers": 3, "skip_first_prenorm": True,
        "padding": "unpadded", "unpad_embeddings": True, "pad_token_id": 0, "bos_token_id": 2,
        "eos_token_id": 1, "cls_token_id": 2, "sep_token_id": 1, "mask_token_id": 4}


def _flex_name(hf: str) -> str:
    """transformers name -> FlexBERT name inside Composer's ``model.`` wrapper."""
    for a, b in (("model.embeddings.", "bert.embeddings."), ("model.layers.", "bert.encoder.layers."),
                 ("model.final_norm.", "bert.final_norm.")):
        if hf.startswith(a):
            return "model." + b + hf[len(a):]
    return "model." + hf


def _hf_model(local_theta: float) -> ModernBertForMaskedLM:
    torch.manual_seed(0)
    cfg = ModernBertConfig(vocab_size=211, hidden_size=64, intermediate_size=96,
                           num_hidden_layers=5, num_attention_heads=4, local_attention=16,
                           global_attn_every_n_layers=3, global_rope_theta=20000.0,
                           local_rope_theta=local_theta, max_position_embeddings=256,
                           pad_token_id=0, bos_token_id=2, eos_token_id=1, cls_token_id=2,
                           sep_token_id=1, norm_bias=False, hidden_activation="gelu",
                           classifier_activation="gelu", tie_word_embeddings=True)
    cfg._attn_implementation = "eager"
    m = ModernBertForMaskedLM(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():  # non-trivial norms and biases, so a swap would show
            p.add_(torch.randn_like(p) * 0.05)
    return m


def _write_checkpoint(path, model) -> None:
    sd = {_flex_name(k): v.clone() for k, v in model.state_dict().items()}
    opt = {"state": {0: {"exp_avg": torch.zeros(3), "step": torch.tensor(5.0)}},
           "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.98), "params": [0]}]}
    torch.save({"state": {"model": sd, "optimizers": {"DecoupledAdamW": opt},
                          "timestamp": {"epoch": 0, "batch": 10, "token": 5120},
                          "rank_zero_seed": 17, "run_name": "flex-bert-rope-base"},
                "rng": [{"python": random.getstate(), "numpy": np.random.get_state(),
                         "torch": torch.get_rng_state()}]}, path)


def _write_yaml(path, **changes) -> None:
    cfg = {**FLEX, **changes}
    path.write_text(yaml.safe_dump({"max_seq_len": 256, "tokenizer_name": "${x}",
                                    "model": {"name": "flex_bert", "model_config": cfg}}))


@pytest.mark.parametrize("local_theta", [-1, 500.0])
def test_composer_checkpoint_matches_transformers(tmp_path, local_theta):
    hf = _hf_model(20000.0 if local_theta == -1 else local_theta)
    _write_checkpoint(tmp_path / "ep0-ba10-rank0.pt", hf)
    _write_yaml(tmp_path / "flex.yaml", local_attn_rotary_emb_base=local_theta)
    out = convert_composer(tmp_path / "ep0-ba10-rank0.pt", tmp_path / "flex.yaml",
                           tmp_path / "hf")
    loaded = ModernBertForMaskedLM.from_pretrained(out, attn_implementation="eager").eval()
    cfg = ModelConfig.load_json(out / "config.json")
    assert cfg.local_rope_theta == (20000.0 if local_theta == -1 else 500.0)
    assert cfg.local_attention == 16 and cfg.global_attn_every_n_layers == 3
    ids = torch.randint(5, 211, (2, 40), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
        got = loaded(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=1e-5, rtol=0)


def test_cli_from_composer(tmp_path):
    _write_checkpoint(tmp_path / "c.pt", _hf_model(20000.0))
    _write_yaml(tmp_path / "flex.yaml")
    r = subprocess.run([sys.executable, "-m", "mmbert.cli", "convert", "--from-composer",
                        str(tmp_path / "c.pt"), "--config", str(tmp_path / "flex.yaml"),
                        "--out", str(tmp_path / "hf")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_names_and_optimizer_flag(tmp_path):
    _write_checkpoint(tmp_path / "c.pt", _hf_model(20000.0))
    w = read_composer_weights(tmp_path / "c.pt")
    assert w.has_optimizer
    assert "model.layers.4.mlp.Wi.weight" in w.tensors and "head.norm.weight" in w.tensors
    assert hf_name("model.bert.encoder.layers.12.attn.Wqkv.weight") == "model.layers.12.attn.Wqkv.weight"
    assert hf_name("model.bert.pooler.dense.weight") is None


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state": {"model": {"x": _Evil(marker)}}}, tmp_path / "evil.pt")
    _write_yaml(tmp_path / "flex.yaml")
    with pytest.raises(MmbertError, match=r"evil\.pt: refused: the pickle asks for .*system"):
        safe_load(tmp_path / "evil.pt")
    r = subprocess.run([sys.executable, "-m", "mmbert.cli", "convert", "--from-composer",
                        str(tmp_path / "evil.pt"), "--config", str(tmp_path / "flex.yaml"),
                        "--out", str(tmp_path / "hf")], capture_output=True, text=True)
    assert r.returncode == 2 and "refused" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "hf").exists()


def test_truncated_and_foreign_files(tmp_path):
    _write_checkpoint(tmp_path / "c.pt", _hf_model(20000.0))
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(MmbertError, match=r"cut\.pt: not a readable torch checkpoint"):
        safe_load(tmp_path / "cut.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(MmbertError, match="holds a list"):
        read_composer_weights(tmp_path / "list.pt")


@pytest.mark.parametrize("change,field", [({"attention_layer": "rope_parallel"}, "attention_layer"),
                                          ({"skip_first_prenorm": False}, "skip_first_prenorm"),
                                          ({"normalization": "rmsnorm"}, "normalization"),
                                          ({"hidden_size": 32}, "shape")])
def test_config_mismatch_is_one_line(tmp_path, change, field):
    _write_checkpoint(tmp_path / "c.pt", _hf_model(20000.0))
    _write_yaml(tmp_path / "flex.yaml", **change)
    with pytest.raises(MmbertError, match=field):
        convert_composer(tmp_path / "c.pt", tmp_path / "flex.yaml", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_pretrain_init_from_composer_equals_directory(tmp_path, data):
    """`pretrain --init-from FILE.pt --init-config YAML` trains exactly as from the same weights
    in a transformers directory (same losses step by step), and not as from random weights."""
    from mmbert.cli import main
    from mmbert.model import MaskedLM
    from mmbert.recipe import recipe_from_dict
    from test_train import MODEL, losses, recipe_dict, write_recipe

    d = recipe_dict(data)
    d["phases"] = d["phases"][:1]
    d["phases"][0]["tokens"] = 1024
    base = recipe_from_dict(d, "r.yaml")
    torch.manual_seed(5)
    model = MaskedLM(base.model_config(1024, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                                       cls_token_id=2, sep_token_id=1, mask_token_id=4))
    model.save_pretrained(tmp_path / "hfdir")
    torch.save({"state": {"model": {"model." + _flex_name(k)[len("model."):]: v
                                    for k, v in model.state_dict().items()}}},
               tmp_path / "ck.pt")
    flex = {**FLEX, **{k: MODEL[k] for k in ("hidden_size", "intermediate_size",
                                             "num_hidden_layers", "num_attention_heads")},
            "vocab_size": 1024, "sliding_window": MODEL["local_attention"],
            "rotary_emb_base": 10000.0, "local_attn_rotary_emb_base": 10000.0,
            "max_position_embeddings": MODEL["max_position_embeddings"]}
    (tmp_path / "flex.yaml").write_text(yaml.safe_dump({"model": {"model_config": flex}}))
    recipe = write_recipe(tmp_path / "r.yaml", d)
    runs = {"dir": ["--init-from", str(tmp_path / "hfdir")],
            "pt": ["--init-from", str(tmp_path / "ck.pt"), "--init-config",
                   str(tmp_path / "flex.yaml")], "random": []}
    for name, extra in runs.items():
        assert main(["pretrain", "--recipe", str(recipe), "--out", str(tmp_path / name),
                     *extra]) == 0
    got = {name: losses(tmp_path / name / "metrics.jsonl") for name in runs}
    assert got["pt"] == got["dir"] and got["pt"] != got["random"]
    assert main(["pretrain", "--recipe", str(recipe), "--out", str(tmp_path / "bad"),
                 "--init-from", str(tmp_path / "ck.pt")]) == 2  # .pt without its YAML
