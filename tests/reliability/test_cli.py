"""Command-line hygiene.

- Every command (the parser walked recursively, so a new command is covered without editing
  this file) has ``--help`` that exits 0 and lists every one of its options.
- A representative bad input per command (a missing input, an unknown preset, an output path
  that is a file) exits 2 with exactly one stderr line, ``error: ...`` naming the path or value.
  The table must name every command: a new command fails here until it has a case.
- Ctrl-C (SIGINT) during ``mmbert pretrain`` once the first checkpoint is on disk: exit 130 with
  one ``error: interrupted`` line (no traceback); ``--resume`` then finishes with final weights
  bit-identical to an uninterrupted run's.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmbert.cli import build_parser, main as cli_main
from test_train import MODEL, data, write_recipe  # noqa: F401 (fixture)

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def commands(p: argparse.ArgumentParser | None = None,
             path: tuple[str, ...] = ()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every command path (("data", "prepare"), ...) and its parser; groups included."""
    p = p or build_parser()
    out = {path: p} if path else {}
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                out.update(commands(sp, (*path, name)))
    return out


def leaves() -> list[tuple[str, ...]]:
    cmds = commands()
    return sorted(c for c, p in cmds.items()
                  if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions))


@pytest.mark.parametrize("path", sorted(commands()), ids=" ".join)
def test_help_exits_0_and_lists_options(path, capsys):
    parser = commands()[path]
    with pytest.raises(SystemExit) as e:
        cli_main([*path, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mmbert " + " ".join(path)), out[:200]
    for a in parser._actions:
        for opt in a.option_strings:
            assert opt in out, f"mmbert {' '.join(path)} --help does not list {opt}"
        if not a.option_strings and not isinstance(a, argparse._SubParsersAction):
            assert (a.metavar or a.dest) in out


def bad_inputs(t: Path) -> dict[tuple[str, ...], tuple[list[str], str]]:
    """command -> (arguments, text the error line must contain)."""
    n, f = str(t / "missing"), str(t / "afile")
    o = str(t / "o")
    return {
        ("info",): (["--preset", "nope"], "nope"),
        ("check",): ([n], n),
        ("convert",): ([n, "--out", o], n),
        ("data", "fetch-demo"): (["--out", f], f),
        ("data", "prepare"): (["--corpus", n, "--tokenizer", n, "--out", o], n),
        ("data", "plan"): (["--recipe", n], n),
        ("data", "verify"): ([n], n),
        ("tokenizer", "fetch-gemma"): (["--out", f], f),
        ("tokenizer", "train"): (["--corpus", n, "--vocab-size", "1000", "--out", o], n),
        ("tokenizer", "extend"): (["--tokenizer", n, "--corpus", n, "--add", "10", "--out", o],
                                  n),
        ("pretrain",): (["--recipe", n, "--out", o], n),
        ("export",): ([n, o], n),
        ("merge",): (["--method", "linear", "--models", n, "--out", o], n),
        ("init-small",): (["--from", n, "--out", o], n),
        ("finetune",): (["--task", "sequence", "--model", n, "--train", n, "--out", o], n),
        ("eval",): ([n, "--corpus", n, "--out", o], n),
        ("export-tasks",): (["--corpus", n, "--out", o], n),
        ("embed",): ([n, "--input", n, "--out", o + ".npy"], n),
        ("fill-mask",): ([n, "a [MASK]"], n),
        ("export-onnx",): ([n, "--out", o], n),
        ("bench",): (["--out", f, "--quick", "--models", "mmbert"], f),
        ("demo",): (["--recipe", n, "--out", o], n),
    }


def test_bad_input_table_covers_every_command(tmp_path):
    assert sorted(bad_inputs(tmp_path)) == leaves()


@pytest.mark.parametrize("path", leaves(), ids=" ".join)
def test_bad_input_is_one_line_exit_2(path, tmp_path, fuzz, capsys):
    (tmp_path / "afile").write_text("x")
    args, needle = bad_inputs(tmp_path)[path]
    rc, err = fuzz.cli([*path, *args], capsys)  # exit 2 comes with exactly one error line
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# Ctrl-C during pretrain, then --resume
# ---------------------------------------------------------------------------------------------

def _recipe(data) -> dict:  # noqa: F811
    return {"name": "sigint", "seed": 2, "shards": str(data["shards"]),
            "tokenizer": str(data["tokenizer"]), "precision": "fp32",
            "model": {"preset": "tiny", "overrides": dict(MODEL)},
            "checkpoint": {"every_steps": 2, "keep_last": 2},
            "phases": [{"name": "p1", "tokens": 32768, "languages": 3, "tau": 0.7,
                        "mask_ratio": 0.3, "seq_len": 64, "batch_tokens": 512,
                        "micro_batch_tokens": 256, "lr": 3e-3, "warmup_tokens": 1024}]}


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmbert.cli", *args], env=ENV,
                          capture_output=True, text=True, timeout=300)


def test_sigint_exits_130_and_resume_matches(data, tmp_path):  # noqa: F811
    rec = write_recipe(tmp_path / "r.yaml", _recipe(data))
    ref = _cli(["pretrain", "--recipe", str(rec), "--out", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr

    run = tmp_path / "run"
    args = ["pretrain", "--recipe", str(rec), "--out", str(run)]
    # SIGINT at its default in the child, even when this test runs in a background job (whose
    # SIGINT a non-interactive shell ignores, and Python then keeps ignoring)
    p = subprocess.Popen([sys.executable, "-m", "mmbert.cli", *args], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while p.poll() is None and time.time() < deadline and not list(
            (run / "checkpoints").glob("step-*")):
        time.sleep(0.01)
    assert p.poll() is None, "the run ended before the first checkpoint was seen"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert errors == ["error: interrupted"], err
    assert err.rstrip().endswith("error: interrupted"), err
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert not (run / "export" / "p1").exists()  # it stopped before the end

    r = _cli([*args, "--resume"])
    assert r.returncode == 0, r.stderr
    assert "resumed" in r.stderr
    want = (tmp_path / "ref" / "export" / "p1" / "model.safetensors").read_bytes()
    assert (run / "export" / "p1" / "model.safetensors").read_bytes() == want
