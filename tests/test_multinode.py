"""Training across a change of process count (the data slots of mmbert.train.slots).

A run started in 1 process (2 phases, batch warmup), killed, resumed under torchrun on 2 ranks
(DDP, and FSDP2 with the strategy switched on resume), killed, resumed in 1 process: every step
has the data of the uninterrupted 1-process run (the loader states in every checkpoint are
identical, so are the masked-token counts and micro-batches per step), losses agree within 1e-5
relative and final weights within 1e-5 (reduction order differs between 1 and 2 ranks). The
batch warmup makes the 2-rank part run steps of 1 and 3 micro-batches, where one rank makes a
padding pass.

1 vs 2 processes on the plain recipe (DDP and FSDP2) is test_train.py's
``test_two_process_gloo_matches_one_process``; here also: the refusals and the pieces (slot
assignment, padding batches) in-process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmbert.cli import main as cli_main
from mmbert.errors import MmbertError
from mmbert.recipe import recipe_from_dict
from test_train import ENV, data, losses, one_thread, recipe_dict, write_recipe  # noqa: F401

TOL = 1e-5


def warmup_recipe(data: dict[str, Path]) -> dict:
    """Two phases; p1 grows from 1 to 4 micro-batches of 128 tokens per step (slots per step:
    1 1 1 2 2 2 3 3 4 4 4, then p2: 4 4 4 4), a checkpoint every 2 steps, all kept."""
    d = recipe_dict(data)
    d["phases"] = d["phases"][:2]
    d["phases"][0].update(tokens=3072, micro_batch_tokens=128, batch_warmup_tokens=2048,
                          batch_warmup_min_tokens=128)
    d["checkpoint"] = {"every_steps": 2, "keep_last": 100}
    return d


def launch(rec: Path, run: Path, nproc: int, *, resume: bool = False, kill_at: int | None = None,
           sets: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``mmbert pretrain`` in one process, or under torchrun on ``nproc`` ranks; ``kill_at``:
    every process SIGKILLs itself after that optimizer step."""
    args = ["-m", "mmbert.cli", "pretrain", "--recipe", str(rec), "--out", str(run)]
    args += ["--resume"] * resume + [x for s in sets for x in ("--set", s)]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                *args]
    env = dict(ENV, MMBERT_KILL_AT=f"step:{kill_at}") if kill_at else ENV
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=300)


def steps(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def trainer_json(ckpt: Path) -> dict:
    return json.loads((ckpt / "trainer.json").read_text())


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> tuple[Path, Path]:
    """The warmup recipe's uninterrupted 1-process run and its recipe file."""
    base = tmp_path_factory.mktemp("multinode_ref")
    rec = write_recipe(base / "recipe.yaml", warmup_recipe(data))
    r = launch(rec, base / "run", 1)
    assert r.returncode == 0, r.stderr[-3000:]
    return base / "run", rec


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_resume_one_two_one_processes(reference, tmp_path, strategy):
    ref, rec = reference
    run = tmp_path / "run"
    # 1 process, killed after step 3: the newest checkpoint is step 2
    assert launch(rec, run, 1, kill_at=3).returncode != 0
    # 2 ranks from step 2 (slots per step 1, 2, 3, 4: padding passes in steps 3, 7, 8),
    # across the end of p1 (step 11), killed after step 13: the newest checkpoint is step 12
    r = launch(rec, run, 2, resume=True, kill_at=13, sets=(f"distributed={strategy}",))
    assert r.returncode != 0
    assert "resumed from" in r.stderr and "step-00000002" in r.stderr
    assert f"2 rank(s), {strategy}" in r.stderr
    # 1 process from step 12 to the end
    r = launch(rec, run, 1, resume=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step-00000012" in r.stderr

    written_by = {p.name: trainer_json(p)["world_size"] for p in (run / "checkpoints").iterdir()}
    assert written_by == {"step-00000002": 1, "step-00000004": 2, "step-00000006": 2,
                          "step-00000008": 2, "step-00000010": 2, "step-00000011": 2,
                          "step-00000012": 2, "step-00000014": 1, "step-00000015": 1}
    a, b = steps(ref), steps(run)
    assert [s["micro_batches"] for s in a] == [1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 4, 4, 4, 4]
    assert [s["step"] for s in b] == list(range(1, 16))
    for x, y in zip(a, b):  # the same data: token and mask counts, languages
        for k in ("phase", "tokens", "batch_tokens", "masked_tokens", "micro_batches"):
            assert x[k] == y[k], (x["step"], k)
        assert x["lang_loss"].keys() == y["lang_loss"].keys(), x["step"]
    assert losses(run / "metrics.jsonl") == pytest.approx(losses(ref / "metrics.jsonl"), rel=TOL)
    # every data slot's stream at the same position in every checkpoint, whoever wrote it
    for p in (run / "checkpoints").iterdir():
        mine, theirs = trainer_json(p), trainer_json(ref / "checkpoints" / p.name)
        assert mine["data"] == theirs["data"], p.name
        assert mine["step"] == theirs["step"] and mine["tokens"] == theirs["tokens"]
    from safetensors.numpy import load_file

    for rel in ("export/p1", "export/p2"):
        wa = load_file(str(ref / rel / "model.safetensors"))
        wb = load_file(str(run / rel / "model.safetensors"))
        assert wa.keys() == wb.keys()
        assert max(float(np.abs(wa[k] - wb[k]).max()) for k in wa) <= TOL, rel


# ---------------------------------------------------------------------------------------------
# In-process: refusals, slot assignment, padding batches
# ---------------------------------------------------------------------------------------------

def test_world_size_not_dividing_the_slots_is_refused(data, tmp_path, monkeypatch, capsys):
    """2 micro-batches per step cannot be shared by 3 or 4 ranks: one line, before any work
    (the launch is simulated: the trainer sees a world size of 3 without a process group)."""
    import mmbert.train.trainer as trainer
    from mmbert.train.distributed import DistEnv

    d = recipe_dict(data)
    monkeypatch.setattr(trainer, "init_distributed", lambda: DistEnv(0, 3))
    with pytest.raises(MmbertError, match=r"r\.yaml: phases\[0\] \(p1\): 2 micro-batches per "
                                          r"step \(batch_tokens 512 / micro_batch_tokens 256\) "
                                          r"do not divide among 3 ranks; expected a number of "
                                          r"ranks dividing 2 \(1, 2\)"):
        trainer.pretrain(recipe_from_dict(d, "r.yaml"), tmp_path / "run", log=lambda m: None)
    assert not (tmp_path / "run").exists()
    rec = write_recipe(tmp_path / "r.yaml", d)
    assert cli_main(["pretrain", "--recipe", str(rec), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "among 3 ranks" in err


def test_slot_assignment_covers_every_slot_once(data):
    from mmbert.train.schedule import phase_slots, step_slots
    from mmbert.train.slots import check_world_size, rank_slots, step_assignment

    p1 = recipe_from_dict(warmup_recipe(data), "w.yaml").phases[0]
    assert phase_slots(p1) == 4 and step_slots(p1, 0) == 1
    for world in (1, 2, 4):
        check_world_size([("p1", p1)], world)
        held = sorted(s for r in range(world) for s in rank_slots(p1, world, r))
        assert held == [0, 1, 2, 3]
        for t in range(0, 3072, 128):
            plans = [step_assignment(p1, t, world, r) for r in range(world)]
            total = step_slots(p1, t)
            assert sorted(s for p in plans for s in p.mine) == list(range(total))
            assert all(p.passes == -(-total // world) >= len(p.mine) for p in plans)
            for r, p in enumerate(plans):  # a rank runs only slots it holds
                assert set(p.mine) <= set(rank_slots(p1, world, r))
    three = step_assignment(p1, 1536, 2, 1)  # 3 slots on 2 ranks: rank 1 pads once
    assert (three.total, three.mine, three.padding) == (3, (1,), 1)
    with pytest.raises(MmbertError, match="4 micro-batches per step .* among 3 ranks; expected "
                                          r"a number of ranks dividing 4 \(1, 2, 4\)"):
        check_world_size([("p1", p1)], 3)


def test_checkpoint_data_states_must_cover_the_slots(data):
    from mmbert.train.slots import check_states

    p1 = recipe_from_dict(recipe_dict(data), "r.yaml").phases[0]  # 2 slots
    check_states({"0": {}, "1": {}}, p1, "resume")
    for bad in ({"0": {}}, {"0": {}, "1": {}, "2": {}}, {"0": {}, "2": {}}):
        with pytest.raises(MmbertError, match=r"resume: data states for \d slot\(s\) .*; "
                                              r"expected one per slot 0\.\.1 of phase 'p1'"):
            check_states(bad, p1, "resume")


def test_padding_batch_trains_nothing(data):
    """A padding pass adds no loss and no gradient (but takes part in every collective)."""
    import torch

    from mmbert.data.loader import MLMLoader
    from mmbert.model import MaskedLM

    ld = MLMLoader(data["shards"], languages=3, seq_len=64, batch_tokens=128)
    state = json.dumps(ld.state_dict())
    pad = ld.padding_batch()
    assert json.dumps(ld.state_dict()) == state  # the stream did not move
    model = MaskedLM(recipe_from_dict(recipe_dict(data), "r.yaml").model_config(1024))
    out = model(pad.input_ids, cu_seqlens=pad.cu_seqlens, max_seqlen=pad.max_seqlen,
                position_ids=pad.position_ids, labels=pad.labels)
    assert out.token_loss.numel() == 0
    out.token_loss.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)  # DDP's reducer hears from every parameter
    assert all(float(g.abs().max()) == 0.0 for g in grads)
    real = next(ld)  # the same tensor types as a real batch
    fields = ("input_ids", "labels", "position_ids", "cu_seqlens", "lang_ids")
    assert [getattr(pad, f).dtype for f in fields] == [getattr(real, f).dtype for f in fields]
    assert isinstance(pad.input_ids, torch.Tensor) and pad.num_tokens == 2
