"""One process per run directory (RUN_DIR/.lock, train/runlock.py): a second ``mmbert
pretrain`` on a directory in use refuses with one line naming it and the holder's pid; the lock
dies with its process, so a SIGKILLed run resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_train import data, one_thread, recipe_dict, write_recipe  # noqa: E402,F401

from mmbert.errors import MmbertError  # noqa: E402
from mmbert.train.runlock import LOCK_FILE, RunLock  # noqa: E402

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def test_lock_is_exclusive_and_released(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(MmbertError, match=rf"{run}: in use by another mmbert pretrain "
                                              rf"\(pid {os.getpid()}, holding"):
            with RunLock(run):
                pass
    with RunLock(run):  # released on exit
        pass


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def _wait(cond, p: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert p.poll() is None, f"process ended ({p.returncode}) before {what}"
        assert time.time() < deadline, f"timeout waiting for {what}"
        time.sleep(0.05)


def test_second_pretrain_refuses_and_killed_run_resumes(data, tmp_path):
    d = recipe_dict(data)
    d["phases"] = d["phases"][:1]
    d["phases"][0]["tokens"] = 512 * 5000  # minutes of training: still running when killed
    rec = write_recipe(tmp_path / "r.yaml", d)
    run = tmp_path / "run"
    args = [sys.executable, "-m", "mmbert.cli", "pretrain", "--recipe", str(rec), "--out",
            str(run)]
    metrics = run / "metrics.jsonl"
    a = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: _lines(metrics) >= 4, a, "the first run's steps")
        for extra in ([], ["--resume"]):
            t0 = time.time()
            b = subprocess.run([*args, *extra], env=ENV, capture_output=True, text=True,
                               timeout=120)
            assert b.returncode == 2, b.stderr
            lines = [ln for ln in b.stderr.splitlines() if ln.strip()]
            assert lines == [f"error: {run}: in use by another mmbert pretrain (pid {a.pid}, "
                             f"holding {run / LOCK_FILE}); wait for it to end or choose "
                             f"another --out"], b.stderr
            assert time.time() - t0 < 60 and a.poll() is None  # the first run goes on
        steps = _lines(metrics)
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait()
    assert steps >= 4 and a.returncode == -signal.SIGKILL
    # the kernel released the dead process's lock: --resume starts training again
    c = subprocess.Popen([*args, "--resume"], env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        before = _lines(metrics)  # resume first drops lines after its checkpoint
        _wait(lambda: (run / LOCK_FILE).read_text().strip() == str(c.pid), c, "the lock")
        _wait(lambda: _lines(metrics) > max(before, steps), c, "resumed steps")
    finally:
        c.send_signal(signal.SIGKILL)
        c.wait()
    assert "resumed from" in c.stderr.read()
