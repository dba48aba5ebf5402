"""`mmbert info/check/convert` and the loader's errors: one line, exit code 2, no traceback."""

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmbert import Encoder, MaskedLM, ModelConfig
from mmbert.cli import main

CFG = ModelConfig(vocab_size=61, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                  num_attention_heads=2, local_attention=4, max_position_embeddings=64)


@pytest.fixture()
def mlm_dir(tmp_path):
    torch.manual_seed(0)
    d = tmp_path / "mlm"
    MaskedLM(CFG).save_pretrained(d)
    return d


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_error(capsys, argv, *needles):
    rc, out, err = run(capsys, *argv)
    assert rc == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err


@pytest.mark.parametrize("name, total, non_emb", [("mmbert-base", 307, 110),
                                                  ("mmbert-small", 140, 42)])
def test_info_presets(capsys, name, total, non_emb):
    rc, out, _ = run(capsys, "info", "--preset", name)
    assert rc == 0
    got_total = float(out.split("M parameters total")[0].split()[-1])
    got_non = float(out.split("M without embeddings")[0].split()[-1])
    assert abs(got_total / total - 1) < 0.01 and abs(got_non / non_emb - 1) < 0.01


def test_check_and_convert(capsys, mlm_dir, tmp_path):
    rc, out, _ = run(capsys, "check", str(mlm_dir))
    assert rc == 0 and "MaskedLM" in out
    rc, _, _ = run(capsys, "convert", str(mlm_dir), "--out", str(tmp_path / "bf16"), "--dtype", "bfloat16")
    assert rc == 0
    m = MaskedLM.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert m.model.layers[0].attn.Wqkv.weight.dtype == torch.bfloat16
    assert not list(tmp_path.joinpath("bf16").glob("*.tmp"))  # temp files renamed away


def test_sharded_and_compiled_names_load(mlm_dir, tmp_path):
    """A sharded checkpoint whose names carry torch.compile's `_orig_mod.` loads exactly."""
    sd = load_file(mlm_dir / "model.safetensors")
    d = tmp_path / "sharded"
    d.mkdir()
    (d / "config.json").write_text((mlm_dir / "config.json").read_text())
    names = sorted(sd)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({"_orig_mod." + n: sd[n] for n in part}, d / fname, metadata={"format": "pt"})
        weight_map.update({"_orig_mod." + n: fname for n in part})
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    a, b = MaskedLM.from_pretrained(mlm_dir), MaskedLM.from_pretrained(d)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n


def test_missing_dir_and_config(capsys, tmp_path):
    assert_error(capsys, ["check", str(tmp_path / "nope")], "nope", "no such model directory")
    (tmp_path / "empty").mkdir()
    assert_error(capsys, ["check", str(tmp_path / "empty")], "no config.json")


def test_other_model_type(capsys, mlm_dir):
    cfg = json.loads((mlm_dir / "config.json").read_text())
    cfg["model_type"] = "xlm-roberta"
    (mlm_dir / "config.json").write_text(json.dumps(cfg))
    assert_error(capsys, ["check", str(mlm_dir)], "model_type is 'xlm-roberta'", "modernbert")
    assert_error(capsys, ["info", "--model", str(mlm_dir)], "model_type")


def test_missing_tensor_named(capsys, mlm_dir):
    sd = load_file(mlm_dir / "model.safetensors")
    del sd["model.layers.1.mlp.Wi.weight"]
    save_file(sd, mlm_dir / "model.safetensors", metadata={"format": "pt"})
    assert_error(capsys, ["check", str(mlm_dir)], "model.layers.1.mlp.Wi.weight", "missing")


def test_mlm_head_missing_from_bare_encoder_dir(capsys, tmp_path):
    Encoder(CFG).save_pretrained(tmp_path / "enc")
    cfg = json.loads((tmp_path / "enc" / "config.json").read_text())
    cfg["architectures"] = ["ModernBertForMaskedLM"]  # claims a head it does not have
    (tmp_path / "enc" / "config.json").write_text(json.dumps(cfg))
    assert_error(capsys, ["check", str(tmp_path / "enc")], "head.", "load it with Encoder")


def test_misshaped_tensor(capsys, mlm_dir):
    sd = load_file(mlm_dir / "model.safetensors")
    sd["model.layers.2.attn.Wo.weight"] = torch.zeros(16, 8)
    save_file(sd, mlm_dir / "model.safetensors", metadata={"format": "pt"})
    assert_error(capsys, ["check", str(mlm_dir)], "model.layers.2.attn.Wo.weight", "[16, 8]",
                 "expected [16, 16]")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_truncated_or_corrupt_safetensors(capsys, mlm_dir, damage):
    f = mlm_dir / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) * 2 // 3] if damage == "truncate" else b"\x07" * 64)
    assert_error(capsys, ["check", str(mlm_dir)], "truncated or corrupt safetensors")


def test_unknown_tensor_warns_but_loads(mlm_dir):
    sd = load_file(mlm_dir / "model.safetensors")
    sd["model.layers.0.attn.rotary_emb.inv_freq"] = torch.ones(4)
    save_file(sd, mlm_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(UserWarning, match="rotary_emb.inv_freq"):
        MaskedLM.from_pretrained(mlm_dir)


def test_stored_tied_decoder_weight_is_accepted(mlm_dir):
    """Some checkpoints store decoder.weight although it is tied: no error, no warning."""
    sd = load_file(mlm_dir / "model.safetensors")
    sd["decoder.weight"] = sd["model.embeddings.tok_embeddings.weight"].clone()
    save_file(sd, mlm_dir / "model.safetensors", metadata={"format": "pt"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = MaskedLM.from_pretrained(mlm_dir)
    assert m.decoder.weight is m.model.embeddings.tok_embeddings.weight
