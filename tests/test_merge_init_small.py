"""Strided small-from-base init: shapes, selected entries, loading (transformers, ours), errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mmbert.cli import main
from mmbert.config import preset
from mmbert.merge import init_small, plan_small_init

# base: hidden 128, 4 heads (head dim 32), intermediate 192, 4 layers
BASE = preset("tiny").replace(vocab_size=80, num_hidden_layers=4)
# target: hidden 64, 2 heads (head dim 32), intermediate 96, 3 layers
SMALL = BASE.replace(hidden_size=64, num_attention_heads=2, intermediate_size=96,
                     num_hidden_layers=3)


def _read(dir_: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(dir_ / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    torch.manual_seed(0)
    m = ModernBertForMaskedLM(ModernBertConfig(**BASE.to_hf_dict()))
    sd = {k: v.detach().clone() for k, v in m.state_dict().items() if k != "decoder.weight"}
    g = torch.Generator().manual_seed(1)
    for k in sd:  # norms / biases are constant at init: make every entry distinguishable
        sd[k] += 0.05 * torch.randn(sd[k].shape, generator=g)
    d = tmp_path_factory.mktemp("base") / "base"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(BASE.to_hf_dict()))
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "tokenizer.json").write_text('{"tok": 1}')
    return d


def _load_hf(dir_: Path):
    from transformers import AutoModelForMaskedLM

    model, info = AutoModelForMaskedLM.from_pretrained(str(dir_), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    model.eval()
    ids = torch.tensor([[2, 5, 7, 9, 4, 11, 13, 1]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, 8, model.config.vocab_size) and torch.isfinite(logits).all()
    return model, logits


def test_plan_is_strided_and_whole_heads():
    p = plan_small_init(BASE, SMALL, residual_offset=1, head_offset=1)
    assert p.residual == list(range(1, 128, 2))
    assert p.heads == [1, 3]
    assert p.head_dims == list(range(32, 64)) + list(range(96, 128))
    assert p.intermediate == list(range(0, 192, 2))
    assert p.layers == [0, 1, 2]
    assert p.target.vocab_size == BASE.vocab_size
    # mmBERT base -> small: hidden every other coordinate, heads 0,2,...,10, MLP kept whole
    p = plan_small_init(preset("mmbert-base"), preset("mmbert-small"))
    assert p.residual == list(range(0, 768, 2)) and p.heads == [0, 2, 4, 6, 8, 10]
    assert p.intermediate == list(range(1152)) and p.layers == list(range(22))


def test_init_small_selects_base_entries_and_loads(base_dir, tmp_path):
    out = init_small(base_dir, tmp_path / "small", SMALL, residual_offset=1, heads=[3, 0],
                     intermediate_offset=1, layers=[0, 2, 3])
    b, s = _read(base_dir), _read(out)
    r = torch.arange(1, 128, 2)                       # residual coordinates kept
    heads, d = [3, 0], 32
    inner = torch.cat([torch.arange(h * d, (h + 1) * d) for h in heads])
    m = torch.arange(1, 192, 2)                       # intermediate units kept
    assert set(s) == {k for k in b if not k.startswith("model.layers.3.")}  # renamed 0, 1, 2
    emb = "model.embeddings.tok_embeddings.weight"
    assert s[emb].shape == (80, 64) and torch.equal(s[emb], b[emb][:, r])
    for name in ("model.embeddings.norm.weight", "model.final_norm.weight", "head.norm.weight"):
        assert torch.equal(s[name], b[name][r]), name
    assert torch.equal(s["head.dense.weight"], b["head.dense.weight"][r][:, r])
    assert torch.equal(s["decoder.bias"], b["decoder.bias"])
    for j, i in enumerate([0, 2, 3]):                 # small layer j <- base layer i
        S, B = f"model.layers.{j}.", f"model.layers.{i}."
        qkv = b[B + "attn.Wqkv.weight"]
        assert s[S + "attn.Wqkv.weight"].shape == (3 * 64, 64)
        for part in range(3):                         # q, k, v blocks of the kept heads, in order
            assert torch.equal(s[S + "attn.Wqkv.weight"][part * 64:(part + 1) * 64],
                               qkv[part * 128 + inner][:, r])
        assert torch.equal(s[S + "attn.Wo.weight"], b[B + "attn.Wo.weight"][r][:, inner])
        wi = b[B + "mlp.Wi.weight"]
        assert torch.equal(s[S + "mlp.Wi.weight"][:96], wi[m][:, r])           # input half
        assert torch.equal(s[S + "mlp.Wi.weight"][96:], wi[192 + m][:, r])     # gate half
        assert torch.equal(s[S + "mlp.Wo.weight"], b[B + "mlp.Wo.weight"][r][:, m])
        assert torch.equal(s[S + "mlp_norm.weight"], b[B + "mlp_norm.weight"][r])
        if j:
            assert torch.equal(s[S + "attn_norm.weight"], b[B + "attn_norm.weight"][r])
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"],
            cfg["num_hidden_layers"], cfg["vocab_size"]) == (64, 2, 96, 3, 80)
    assert (out / "tokenizer.json").read_text() == '{"tok": 1}'
    model, _ = _load_hf(out)
    assert model.config.hidden_size == 64 and len(model.model.layers) == 3


def test_same_size_target_reproduces_base(base_dir, tmp_path):
    # the identity plan must not permute anything: outputs equal the base model's
    out = init_small(base_dir, tmp_path / "same", BASE)
    b, s = _read(base_dir), _read(out)
    assert set(b) == set(s) and all(torch.equal(b[k], s[k]) for k in b)
    _, l_out = _load_hf(out)
    _, l_base = _load_hf(base_dir)
    assert torch.allclose(l_out, l_base, atol=1e-5)


def test_cli_and_bad_targets(base_dir, tmp_path, capsys):
    out = tmp_path / "small"
    rc = main(["init-small", "--from", str(base_dir), "--out", str(out), "--preset", "tiny",
               "--hidden-size", "64", "--num-heads", "2", "--intermediate-size", "96",
               "--num-layers", "2"])
    assert rc == 0, capsys.readouterr().err
    assert _read(out)["model.layers.1.mlp.Wo.weight"].shape == (64, 96)

    def fails(extra: list[str], needle: str) -> None:
        bad = tmp_path / "bad"
        rc = main(["init-small", "--from", str(base_dir), "--out", str(bad), "--preset", "tiny",
                   *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("error: ") and "\n" not in err and needle in err, err
        assert not bad.exists() and not list(tmp_path.glob(".bad.tmp*"))

    fails(["--hidden-size", "96", "--num-heads", "3"], "hidden_size")          # 128 % 96
    fails(["--hidden-size", "64", "--num-heads", "4"], "head dimension")       # 16 != 32
    fails(["--hidden-size", "64", "--num-heads", "2", "--intermediate-size", "100"],
          "intermediate_size")
    fails(["--hidden-size", "64", "--num-heads", "2", "--num-layers", "2", "--layers", "1", "2"],
          "--layers")
    fails(["--hidden-size", "64", "--num-heads", "2", "--residual-offset", "2"], "offset")
    fails(["--hidden-size", "64", "--num-heads", "2", "--heads", "0", "0"], "--heads")
    fails(["--num-layers", "9"], "num_hidden_layers")
    rc = main(["init-small", "--from", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert rc == 2 and "no such directory" in capsys.readouterr().err


def test_small_loads_in_mmbert_model_like_transformers(base_dir, tmp_path):
    from mmbert.model import MaskedLM

    out = init_small(base_dir, tmp_path / "small", SMALL)
    _, hf_logits = _load_hf(out)
    ours = MaskedLM.from_pretrained(out).eval()
    assert ours.config.hidden_size == 64 and ours.config.num_attention_heads == 2
    with torch.no_grad():
        logits = ours(torch.tensor([[2, 5, 7, 9, 4, 11, 13, 1]])).logits
    assert torch.allclose(logits, hf_logits, atol=1e-4)
