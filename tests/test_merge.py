"""TIES / linear merging: tensors computed by hand, directories, transformers loading, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mmbert.cli import main
from mmbert.config import preset
from mmbert.merge import (keep_count, linear_merge_tensors, magnitude_threshold, merge,
                          ties_merge_tensors)

T = torch.tensor


# ---------------------------------------------------------------------------------------------
# tensor level, computed by hand
# ---------------------------------------------------------------------------------------------

def test_ties_by_hand_with_ties_at_threshold_and_empty_entries():
    base = T([1.0, 1.0, 1.0, 1.0, 1.0])
    # task vectors; density 0.4 of 5 entries -> k = 2, keep |tau| >= 2nd largest magnitude
    tv1 = T([3.0, -1.0, 0.5, 2.0, -2.0])   # threshold 2: 3, 2 and -2 kept (tie at 2 -> 3 entries)
    tv2 = T([1.0, -4.0, 0.0, -1.0, 0.5])   # threshold 1: 1, -4 and -1 kept (tie at 1)
    tv3 = T([-2.0, 0.5, 0.1, 0.2, 3.0])    # threshold 2: -2 and 3 kept
    # trimmed: [3,0,0,2,-2], [1,-4,0,-1,0], [-2,0,0,0,3]; sum [2,-4,0,1,1] -> signs [+,-,0,+,+]
    # disjoint means: (3+1)/2=2, -4, nobody -> 0, 2 (only model 1 agrees), 3 (only model 3)
    models = [base + tv1, base + tv2, base + tv3]
    got = ties_merge_tensors(base, models, density=0.4)
    assert torch.allclose(got, T([3.0, -3.0, 1.0, 3.0, 4.0]))
    got = ties_merge_tensors(base, models, density=0.4, lam=0.5)
    assert torch.allclose(got, T([2.0, -1.0, 1.0, 2.0, 2.5]))


def test_ties_sign_cancellation_and_weighted_disjoint_mean():
    base = torch.zeros(2)
    # masses cancel in entry 0 (elected sign 0) -> 0; entry 1: both agree -> mean 1.5
    got = ties_merge_tensors(base, [T([1.0, 2.0]), T([-1.0, 1.0])], density=1.0)
    assert torch.equal(got, T([0.0, 1.5]))
    # weights 3:1, density 1: mass [1, 7, -4] -> entry 0 only model 1 agrees -> 1;
    # entry 1 (3*2 + 1*1) / 4 = 1.75; entry 2 (3*-1 + 1*-1) / 4 = -1
    base = torch.zeros(3)
    got = ties_merge_tensors(base, [T([1.0, 2.0, -1.0]), T([-2.0, 1.0, -1.0])],
                             weights=[3.0, 1.0], density=1.0)
    assert torch.allclose(got, T([1.0, 1.75, -1.0]))
    # weights scale the sign election: 1:3 flips entry 0 to model 2's sign
    got = ties_merge_tensors(base, [T([1.0, 2.0, -1.0]), T([-2.0, 1.0, -1.0])],
                             weights=[1.0, 3.0], density=1.0)
    assert torch.allclose(got, T([-2.0, 1.25, -1.0]))


def test_trim_is_per_tensor_not_per_row():
    base = torch.zeros(2, 2)
    m = T([[10.0, 9.0], [1.0, 2.0]])
    # k = 2 of 4: the two largest of the whole tensor survive; the second row is trimmed away
    assert torch.equal(ties_merge_tensors(base, [m], density=0.5), T([[10.0, 9.0], [0.0, 0.0]]))


def test_keep_count_and_threshold():
    assert keep_count(10, 0.7) == 7  # float noise (7.000000000000001) does not add an entry
    assert keep_count(10, 0.71) == 8
    assert keep_count(1000, 1e-6) == 1
    assert keep_count(5, 1.0) == 5
    assert keep_count(196_608_000, 0.2) == 39_321_600  # the mmBERT embedding: no off-by-one
    import numpy as np
    assert magnitude_threshold(np.array([5, 1, 4, 4, 2], dtype=np.float32), 0.4) == 4.0
    assert magnitude_threshold(np.array([5, 1, 4], dtype=np.float32), 1.0) == 0.0


def test_linear_is_weighted_mean_and_identities():
    a, b = T([1.0, 2.0, 3.0]), T([3.0, 6.0, -3.0])
    assert torch.allclose(linear_merge_tensors([a, b]), T([2.0, 4.0, 0.0]))
    # weights are normalised: 1:3 -> 0.25 a + 0.75 b
    assert torch.allclose(linear_merge_tensors([a, b], weights=[1, 3]), T([2.5, 5.0, -1.5]))
    assert torch.allclose(linear_merge_tensors([a, b], weights=[10, 30]), T([2.5, 5.0, -1.5]))
    # task arithmetic with a base: base + lam * mean(tau)
    base = torch.zeros(3)
    assert torch.allclose(linear_merge_tensors([a, b], base=base, lam=2.0), T([4.0, 8.0, 0.0]))
    # TIES with one model at density 1 returns that model
    x = torch.randn(4, 3)
    assert torch.allclose(ties_merge_tensors(torch.randn(4, 3), [x], density=1.0), x, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# directories
# ---------------------------------------------------------------------------------------------

TINY = preset("tiny").replace(vocab_size=96, hidden_size=64, intermediate_size=96,
                              num_hidden_layers=3, num_attention_heads=2)


def _save(dir_: Path, sd: dict[str, torch.Tensor], cfg=TINY, tokenizer: str | None = None,
          dtype=torch.float32) -> Path:
    dir_.mkdir(parents=True)
    cfg_d = cfg.to_hf_dict()
    cfg_d["dtype"] = str(dtype).removeprefix("torch.")
    (dir_ / "config.json").write_text(json.dumps(cfg_d))
    save_file({k: v.to(dtype).contiguous() for k, v in sd.items()}, str(dir_ / "model.safetensors"),
              metadata={"format": "pt"})
    if tokenizer is not None:
        (dir_ / "tokenizer.json").write_text(tokenizer)
    return dir_


def _random_sd(cfg=TINY, seed=0) -> dict[str, torch.Tensor]:
    """A ModernBertForMaskedLM state dict (as transformers builds it) without the tied decoder."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    torch.manual_seed(seed)
    m = ModernBertForMaskedLM(ModernBertConfig(**cfg.to_hf_dict()))
    return {k: v.detach().clone() for k, v in m.state_dict().items() if k != "decoder.weight"}


def _finetuned(sd, seed, scale=0.02):
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in sd.items()}


def _read(dir_: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(dir_ / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    base = _random_sd(seed=0)
    sds = [_finetuned(base, s) for s in (1, 2, 3)]
    dirs = {"base": _save(root / "base", base, tokenizer='{"base": 1}')}
    for i, sd in enumerate(sds):
        dirs[f"m{i}"] = _save(root / f"m{i}", sd, tokenizer=f'{{"model": {i}}}' if i else None)
    return root, base, sds, dirs


def _load_hf(dir_: Path):
    from transformers import AutoModelForMaskedLM

    model, info = AutoModelForMaskedLM.from_pretrained(str(dir_), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[2, 5, 7, 9, 4, 1]])).logits
    assert logits.shape == (1, 6, model.config.vocab_size) and torch.isfinite(logits).all()
    return model


def test_ties_dirs_match_tensor_merge_and_load_in_transformers(family, tmp_path):
    root, base, sds, d = family
    out = merge([d["m0"], d["m1"], d["m2"]], tmp_path / "out", method="ties", base=d["base"],
                density=0.3, weights=[1.0, 2.0, 0.5], lam=0.8, chunk_elems=100)  # forces blocks
    got = _read(out)
    assert set(got) == set(base)  # tied decoder not written
    for k in base:
        want = ties_merge_tensors(base[k], [sd[k] for sd in sds], weights=[1.0, 2.0, 0.5],
                                  density=0.3, lam=0.8)
        assert torch.allclose(got[k], want, atol=1e-6), k
    # config from the first model, tokenizer from the first model that has one (m1)
    assert json.loads((out / "config.json").read_text()) == json.loads(
        (d["m0"] / "config.json").read_text())
    assert (out / "tokenizer.json").read_text() == '{"model": 1}'
    assert json.loads((out / "merge.json").read_text())["density"] == 0.3
    hf = _load_hf(out)
    emb = hf.model.embeddings.tok_embeddings.weight.detach()
    assert torch.allclose(emb, got["model.embeddings.tok_embeddings.weight"])
    assert torch.equal(hf.decoder.weight.detach(), emb)  # decoder tied to the merged embeddings
    assert not list(tmp_path.glob(".*tmp*"))


def test_linear_dirs_is_weighted_mean(family, tmp_path):
    root, base, sds, d = family
    out = merge([d["m0"], d["m2"]], tmp_path / "lin", method="linear", weights=[3, 1])
    got = _read(out)
    for k in base:
        assert torch.allclose(got[k], 0.75 * sds[0][k] + 0.25 * sds[2][k], atol=1e-6), k
    _load_hf(out)


def test_identical_models_and_base_copies_are_fixed_points(family, tmp_path):
    root, base, sds, d = family
    ft = _finetuned(base, 7)
    # bf16 on disk: fp32 math is exact here, and the output keeps bf16
    b16 = _save(tmp_path / "b16", base, dtype=torch.bfloat16)
    m16 = _save(tmp_path / "m16", ft, dtype=torch.bfloat16)
    want = _read(m16)
    out = merge([m16, m16, m16], tmp_path / "t1", base=b16, density=1.0)
    got = _read(out)
    assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], want[k]) for k in want)
    out = merge([m16], tmp_path / "t2", base=b16, density=1.0)  # one model, density 1
    assert all(torch.equal(_read(out)[k], want[k]) for k in want)
    out = merge([m16, m16], tmp_path / "lin", method="linear")
    assert all(torch.equal(_read(out)[k], want[k]) for k in want)
    # copies of the base merge to the base at any density
    out = merge([b16, b16], tmp_path / "t3", base=b16, density=0.2)
    bw = _read(b16)
    assert all(torch.equal(_read(out)[k], bw[k]) for k in bw)


def test_decoder_weight_in_file_is_merged_once_with_embeddings(family, tmp_path):
    root, base, sds, d = family
    emb = "model.embeddings.tok_embeddings.weight"
    with_dec = dict(sds[1], **{"decoder.weight": sds[1][emb].clone()})
    m1 = _save(tmp_path / "m1dec", with_dec)
    out = merge([d["m0"], m1], tmp_path / "out", base=d["base"], density=0.5)
    got = _read(out)
    assert "decoder.weight" not in got
    want = ties_merge_tensors(base[emb], [sds[0][emb], sds[1][emb]], density=0.5)
    assert torch.allclose(got[emb], want, atol=1e-6)


def test_sharded_input_reads_like_single_file(family, tmp_path):
    root, base, sds, d = family
    names = sorted(sds[1])
    shard = tmp_path / "sharded"
    shard.mkdir()
    (shard / "config.json").write_text((d["m1"] / "config.json").read_text())
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for fname, keys in halves.items():
        save_file({k: sds[1][k] for k in keys}, str(shard / fname), metadata={"format": "pt"})
    index = {"weight_map": {k: f for f, keys in halves.items() for k in keys}}
    (shard / "model.safetensors.index.json").write_text(json.dumps(index))
    a = merge([d["m0"], shard], tmp_path / "a", base=d["base"], density=0.5)
    b = merge([d["m0"], d["m1"]], tmp_path / "b", base=d["base"], density=0.5)
    ra, rb = _read(a), _read(b)
    assert set(ra) == set(rb) and all(torch.equal(ra[k], rb[k]) for k in ra)


# ---------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing left behind
# ---------------------------------------------------------------------------------------------

def _fails(args: list[str], capsys, needle: str, out: Path) -> None:
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert needle in err, err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp*"))


def test_bad_input(family, tmp_path, capsys):
    root, base, sds, d = family
    out = tmp_path / "out"
    m0, m1, b = str(d["m0"]), str(d["m1"]), str(d["base"])
    common = ["--out", str(out)]
    wide = TINY.replace(hidden_size=128, num_attention_heads=4)
    other = _save(tmp_path / "wide", _random_sd(wide), cfg=wide)
    _fails(["merge", "--base", b, "--models", m0, str(other), *common], capsys, "hidden_size", out)
    broken = dict(sds[1])
    broken["head.dense.weight"] = broken["head.dense.weight"][:, :32].contiguous()
    broken = _save(tmp_path / "broken", broken)
    _fails(["merge", "--base", b, "--models", m0, str(broken), *common], capsys, "shape", out)
    missing = {k: v for k, v in sds[1].items() if k != "head.norm.weight"}
    missing = _save(tmp_path / "missing", missing)
    _fails(["merge", "--base", b, "--models", m0, str(missing), *common], capsys, "head.norm", out)
    _fails(["merge", "--base", str(tmp_path / "nope"), "--models", m0, m1, *common], capsys,
           "no such directory", out)
    _fails(["merge", "--models", m0, m1, *common], capsys, "--base", out)
    for dens in ("0", "1.5", "-0.1"):
        _fails(["merge", "--base", b, "--models", m0, m1, "--density", dens, *common], capsys,
               "--density", out)
    _fails(["merge", "--base", b, "--models", m0, m1, "--weights", "1", *common], capsys,
           "--weights", out)
    _fails(["merge", "--base", b, "--models", m0, m1, "--weights", "1", "-1", *common], capsys,
           "--weights", out)
    _fails(["merge", "--method", "linear", "--models", m0, m1, "--density", "0.5", *common],
           capsys, "--density", out)
    _fails(["merge", "--method", "linear", "--models", m0, m1, "--lambda", "2", *common],
           capsys, "--lambda", out)
    _fails(["merge", "--base", b, "--models", m0, m1, "--out", m0], capsys, "--out",
           tmp_path / "unused")
    not_model = tmp_path / "notmodel"
    not_model.mkdir()
    (not_model / "config.json").write_text('{"model_type": "bert"}')
    _fails(["merge", "--base", b, "--models", m0, str(not_model), *common], capsys, "model_type",
           out)
    # and a good run through the CLI
    assert main(["merge", "--base", b, "--models", m0, m1, *common]) == 0
    assert (out / "model.safetensors").is_file()
