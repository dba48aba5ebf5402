"""Non-finite steps (recipe ``on_nonfinite``): skip, rollback and stop, with the loss or one
gradient made NaN/inf at a chosen step by the trainer's test hook (MMBERT_FAULT_NONFINITE).

Runs: the first phase of tests/test_train.py's recipe (tiny model, 8 steps of 512 tokens), in
process; ``stop`` through the CLI (exit code 2, one line)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_train import data, one_thread, recipe_dict, write_recipe  # noqa: E402,F401

from mmbert.errors import MmbertError  # noqa: E402
from mmbert.recipe import recipe_from_dict  # noqa: E402
from mmbert.train import checkpoint as ckpt  # noqa: E402
from mmbert.train import pretrain  # noqa: E402
from mmbert.train.trainer import FAULT_NONFINITE_ENV, MAX_NONFINITE  # noqa: E402

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def one_phase(data, every: int = 3, **top) -> dict:
    d = recipe_dict(data, **top)
    d["phases"] = d["phases"][:1]  # 8 steps
    d["checkpoint"] = {"every_steps": every, "keep_last": 20}
    return d


def run(d: dict, out: Path, monkeypatch, fault: str | None) -> list[str]:
    """pretrain in process with the fault hook set; the log lines."""
    if fault:
        monkeypatch.setenv(FAULT_NONFINITE_ENV, fault)
    else:
        monkeypatch.delenv(FAULT_NONFINITE_ENV, raising=False)
    lines: list[str] = []
    pretrain(recipe_from_dict(d, "nonfinite.yaml"), out, log=lines.append)
    return lines


def records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def tensors(path: Path, name: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path / name))


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / ckpt.step_dir_name(step)


def assert_finite(run_dir: Path) -> None:
    """Never silently poisoned: every weight of the final model is finite."""
    w = tensors(run_dir / "export" / "p1", "model.safetensors")
    assert all(np.isfinite(v).all() for v in w.values())


@pytest.fixture(scope="module")
def clean(data, tmp_path_factory) -> Path:
    """The same recipe without a fault, a checkpoint every step."""
    out = tmp_path_factory.mktemp("clean") / "run"
    pretrain(recipe_from_dict(one_phase(data, every=1), "clean.yaml"), out, log=lambda m: None)
    return out


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_skip_leaves_weights_and_optimizer_untouched(data, clean, tmp_path, monkeypatch, kind):
    out = tmp_path / "run"
    log = run(one_phase(data, every=1, on_nonfinite="skip"), out, monkeypatch, f"5:{kind}")
    assert any("step 5" in m and "update skipped" in m for m in log), log
    # before the fault: bit-identical to the clean run (the hook changes nothing else)
    assert same(tensors(step_dir(out, 4) / "model", "model.safetensors"),
                tensors(step_dir(clean, 4) / "model", "model.safetensors"))
    # the skipped step: weights, AdamW moments and step counts exactly as before it
    for name in ("model/model.safetensors", "optimizer.safetensors"):
        d, f = name.rsplit("/", 1) if "/" in name else ("", name)
        assert same(tensors(step_dir(out, 4) / d, f), tensors(step_dir(out, 5) / d, f)), name
    opt = lambda s: json.loads((step_dir(out, s) / "optimizer.json").read_text())["steps"]  # noqa: E731
    assert opt(4) == opt(5) and opt(6) != opt(5)
    assert not same(tensors(step_dir(clean, 4) / "model", "model.safetensors"),
                    tensors(step_dir(clean, 5) / "model", "model.safetensors"))
    # schedule and data position move on: step 5 consumed its batch (trainer.json tokens)
    tr = lambda s: json.loads((step_dir(out, s) / "trainer.json").read_text())  # noqa: E731
    assert tr(5)["tokens"] == tr(4)["tokens"] + 512 and tr(5)["data"] != tr(4)["data"]
    recs = records(out)
    assert [r["step"] for r in recs] == list(range(1, 9))
    assert [r.get("nonfinite") for r in recs] == [None] * 4 + ["skip"] + [None] * 3
    if kind == "loss":
        assert recs[4]["loss"] is None and recs[4]["grad_norm"] is None
    else:
        assert math.isfinite(recs[4]["loss"]) and recs[4]["grad_norm"] is None
    assert all("nonfinite" not in r for r in records(clean))  # normal runs: no new field
    assert_finite(out)


def test_skip_continues_like_a_reference_that_skipped(data, tmp_path, monkeypatch):
    """NaN loss and inf gradient at the same step: two different faults, one skipped update,
    the same run afterwards (weights, optimizer, losses bit-identical)."""
    a, b = tmp_path / "a", tmp_path / "b"
    run(one_phase(data, on_nonfinite="skip"), a, monkeypatch, "5")
    run(one_phase(data, on_nonfinite="skip"), b, monkeypatch, "5:grad")
    for name in ("model/model.safetensors", "optimizer.safetensors"):
        d, f = name.rsplit("/", 1) if "/" in name else ("", name)
        assert same(tensors(step_dir(a, 8) / d, f), tensors(step_dir(b, 8) / d, f)), name
    la, lb = [r["loss"] for r in records(a)], [r["loss"] for r in records(b)]
    assert la[:4] == lb[:4] and la[5:] == lb[5:]


def test_rollback_goes_back_and_moves_past_the_bad_batch(data, clean, tmp_path, monkeypatch):
    out = tmp_path / "run"
    log = run(one_phase(data, on_nonfinite="rollback"), out, monkeypatch, "5")
    assert any("rolled back to" in m and "step-00000003" in m for m in log), log
    recs = records(out)
    assert [r["step"] for r in recs] == list(range(1, 9))  # the discarded steps 4-5 dropped
    assert recs[3]["nonfinite"] == "rollback" and recs[3]["rolled_back_from"] == 5
    assert all("nonfinite" not in r for i, r in enumerate(recs) if i != 3)
    assert all(math.isfinite(r["loss"]) for r in recs)
    # steps 1-3 as the clean run; step 4 on other data (the batches after the bad one)
    clean_loss = [r["loss"] for r in records(clean)]
    assert [r["loss"] for r in recs[:3]] == clean_loss[:3] and recs[3]["loss"] != clean_loss[3]
    assert recs[-1]["tokens"] == records(clean)[-1]["tokens"]  # the same token budget
    ckpt.verify(step_dir(out, 8))
    assert_finite(out)


def test_rollback_without_a_checkpoint_and_too_many_faults_stop(data, tmp_path, monkeypatch):
    with pytest.raises(MmbertError, match=r"rollback: no checkpoint of phase 'p1'"):
        run(one_phase(data, on_nonfinite="rollback"), tmp_path / "a", monkeypatch, "2")
    faults = ",".join(str(s) for s in range(2, 3 + MAX_NONFINITE))
    with pytest.raises(MmbertError, match=rf"step {2 + MAX_NONFINITE} .*non-finite loss.*"
                                          rf"{MAX_NONFINITE} non-finite steps"):
        run(one_phase(data, every=20, on_nonfinite="skip"), tmp_path / "b", monkeypatch, faults)


def test_stop_exits_2_with_one_line_and_an_intact_checkpoint(data, tmp_path):
    rec = write_recipe(tmp_path / "r.yaml", one_phase(data))  # on_nonfinite: stop (default)
    out = tmp_path / "run"
    args = [sys.executable, "-m", "mmbert.cli", "pretrain", "--recipe", str(rec), "--out",
            str(out)]
    r = subprocess.run(args, env=dict(ENV, **{FAULT_NONFINITE_ENV: "5:grad"}),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "step 5 (p1): non-finite gradient" in errors[0], r.stderr
    assert "step-00000003" in errors[0]
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step-00000003"]
    ckpt.verify(step_dir(out, 3))
    assert [r["step"] for r in records(out)] == [1, 2, 3, 4]  # nothing of step 5
    # the policy may change on resume: go past it
    r = subprocess.run([*args, "--resume", "--set", "on_nonfinite=skip"], env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert_finite(out)
