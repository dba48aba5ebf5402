"""Checkpoint files (atomic, checksummed, rotation), RNG state, and the optimizers."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mmbert.config import preset
from mmbert.errors import MmbertError
from mmbert.train import checkpoint as ckpt
from mmbert.train.optim import AdamW, build_optimizer, param_groups, set_hparams

TINY = preset("tiny").replace(vocab_size=300, hidden_size=32, intermediate_size=48,
                              num_hidden_layers=2, num_attention_heads=2, local_attention=8,
                              max_position_embeddings=64)


def _save(root: Path, step: int, *, phase_end: bool = False, keep_last: int = 2) -> Path:
    from mmbert.model import MaskedLM

    torch.manual_seed(step)
    model = MaskedLM(TINY)
    tensors = {"w.exp_avg": torch.randn(3, 4), "w.exp_avg_sq": torch.rand(3, 4)}
    return ckpt.write_checkpoint(
        root, step, write_model=model.save_pretrained, optim_tensors=tensors,
        optim_meta={"steps": {"w": step}, "groups": []},
        trainer_state={"step": step, "phase_end": phase_end, "data": {"0": {"i": step}}},
        rank_states=[{"rng": ckpt.rng_state()}], keep_last=keep_last)


def test_write_read_verify_roundtrip(tmp_path):
    p = _save(tmp_path, 7)
    assert p.name == "step-00000007" and not list(tmp_path.glob(".tmp-*"))
    manifest = json.loads((p / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model/config.json", "model/model.safetensors",
                                      "optimizer.safetensors", "optimizer.json", "trainer.json",
                                      "rank-00000.json"}
    c = ckpt.read_checkpoint(p)
    assert c.trainer["step"] == 7 and c.trainer["data"] == {"0": {"i": 7}}
    assert c.optim_meta["steps"] == {"w": 7} and c.optim_tensors["w.exp_avg"].shape == (3, 4)
    assert (c.model_dir / "config.json").is_file()


@pytest.mark.parametrize("damage,match", [
    ("flip", "fails its sha256 check"),
    ("truncate", "truncated"),
    ("delete", "optimizer.json missing"),
    ("manifest", "manifest.json missing"),
])
def test_corruption_is_detected_and_resume_falls_back(tmp_path, damage, match):
    _save(tmp_path, 3)
    p = _save(tmp_path, 6)
    if damage == "flip":
        f = p / "model" / "model.safetensors"
        b = bytearray(f.read_bytes())
        b[-5] ^= 0xFF
        f.write_bytes(bytes(b))
    elif damage == "truncate":
        f = p / "optimizer.safetensors"
        f.write_bytes(f.read_bytes()[:50])
    elif damage == "delete":
        (p / "optimizer.json").unlink()
    else:
        (p / "manifest.json").unlink()
    with pytest.raises(MmbertError, match=match):
        ckpt.verify(p)
    said: list[str] = []
    assert ckpt.find_latest_valid(tmp_path, log=said.append).name == "step-00000003"
    assert len(said) == 1 and "falling back" in said[0] and match.split()[0] in said[0]


def test_no_intact_checkpoint_is_an_error_but_none_at_all_is_a_fresh_start(tmp_path):
    assert ckpt.find_latest_valid(tmp_path / "nothing") is None
    (tmp_path / ".tmp-step-00000005-123").mkdir()  # a write killed before its rename
    assert ckpt.find_latest_valid(tmp_path) is None
    p = _save(tmp_path, 5)
    (p / "trainer.json").write_text("{}")
    with pytest.raises(MmbertError, match="no intact checkpoint"):
        ckpt.find_latest_valid(tmp_path, log=lambda m: None)
    ckpt.clean_temp(tmp_path)
    assert not list(tmp_path.glob(".tmp-*"))


def test_rotation_keeps_phase_ends(tmp_path):
    for step in range(1, 8):
        _save(tmp_path, step, phase_end=step in (2, 5), keep_last=2)
    names = [p.name[-2:] for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["02", "05", "06", "07"]


def test_fault_hook_kills_mid_write(tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, %r); import test_checkpoint as t; from pathlib "
            "import Path; t._save(Path(%r), 4)" % (str(Path(__file__).parent), str(tmp_path)))
    env = dict(os.environ, **{ckpt.FAULT_ENV: "4"})
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert r.returncode == -9
    assert ckpt.list_checkpoints(tmp_path) == [] and list(tmp_path.glob(".tmp-step-00000004-*"))


def test_rng_state_roundtrip_is_json():
    st = json.loads(json.dumps(ckpt.rng_state()))
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(st)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


# ---------------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------------

def test_no_weight_decay_on_norms_biases_embeddings():
    from mmbert.model import MaskedLM

    m = MaskedLM(TINY)
    decay, keep = param_groups(m, 0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    kept = {names[id(p)] for p in keep["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "model.embeddings.tok_embeddings.weight" in kept  # also the tied decoder
    assert "decoder.bias" in kept and "model.final_norm.weight" in kept
    assert "model.layers.0.attn.Wqkv.weight" in decayed and "head.dense.weight" in decayed
    assert not any("norm" in n or "embeddings" in n for n in decayed)
    assert len(kept) + len(decayed) == len(list(m.parameters()))


def _run(opt_cls, grads, **kw):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 5))
    opt = opt_cls([p], **kw)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


def test_adamw_without_clipping_matches_torch():
    torch.manual_seed(1)
    grads = [torch.randn(4, 5) for _ in range(5)]
    ours = _run(AdamW, grads, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, update_clip=False)
    ref = _run(torch.optim.AdamW, grads, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)


def test_decoupled_weight_decay_scales_with_schedule_not_lr():
    p = torch.nn.Parameter(torch.ones(3))
    opt = AdamW([{"params": [p], "group": "decay"}], lr=1e-3, weight_decay=0.1,
                update_clip=False)
    set_hparams(opt, lr=5e-4, wd_scale=0.5, weight_decay=0.1)
    p.grad = torch.zeros(3)  # zero gradient: the Adam update is 0, only the decay acts
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((3,), 1 - 0.1 * 0.5))


def test_stableadamw_clips_update_of_a_gradient_spike():
    torch.manual_seed(2)
    grads = [torch.randn(4, 5) * 1e-3 for _ in range(60)] + [torch.randn(4, 5) * 1e3]
    jump_plain, jump_stable = (
        (_run(AdamW, grads, lr=1e-2, update_clip=c) - _run(AdamW, grads[:-1], lr=1e-2,
                                                           update_clip=c)).abs().max().item()
        for c in (False, True))
    # Adam's normalised step after a spike is ~ lr * (1 - b1) / sqrt(1 - b2) = 0.7 lr; the
    # update clipping divides it by rms = sqrt(g^2 / v_hat) ~ 1 / sqrt(1 - b2) = 7
    assert jump_plain > 0.5e-2
    assert jump_stable < jump_plain / 3
    # a steady gradient has v_hat = g^2, rms = 1: no clipping, the two agree
    calm = [torch.randn(4, 5)] * 3
    torch.testing.assert_close(_run(AdamW, calm, lr=1e-2, update_clip=True),
                               _run(AdamW, calm, lr=1e-2, update_clip=False))


def test_build_optimizer_names():
    m = torch.nn.Linear(3, 3)
    assert build_optimizer(m, "stableadamw", 1e-3, (0.9, 0.98), 1e-6, 0.0).defaults["update_clip"]
    assert not build_optimizer(m, "adamw", 1e-3, (0.9, 0.98), 1e-6, 0.0).defaults["update_clip"]
