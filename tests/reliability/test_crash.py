"""The crash matrix: every command that writes something is SIGKILLed at named points
(:mod:`mmbert.faults`, ``MMBERT_KILL_AT``), then rerun; the result must be bit-identical to an
uninterrupted run.

For each point: the command runs in a subprocess (one thread, as in ``tests/test_train.py``)
and must die by SIGKILL there (return code -9); nothing partial may be visible afterwards (an
output directory is absent, only temporary names are left; published checkpoints pass their
manifest check; published shard pairs are complete); the same command is rerun (``--resume``
for pretrain, nothing else for the others) and must succeed; then its outputs are compared
with those of an uninterrupted run of the same command:

- ``data prepare``: every shard file byte for byte and manifest.json;
- ``pretrain``: the exported weights of every phase and variant, the optimizer state
  (``optimizer.safetensors`` / ``optimizer.json``) of every checkpoint, the checkpoint names,
  and the step records of every metrics.jsonl (without the timing field ``tokens_per_s``);
- ``merge``, ``export``, ``finetune``: every file of the output directory (JSON files without
  timing fields).

A sample of one point per command runs in ``make test``; the whole matrix is marked slow
(``make test-slow``). ``pytest -s`` prints the table (command, point, died, resumed, identical).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_train import data, recipe_dict, write_recipe  # noqa: F401 (fixture)

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
ENV.pop("MMBERT_KILL_AT", None)
TIMING = {"tokens_per_s", "wall_s", "time_s", "seconds", "elapsed_s"}
ROWS: list[tuple[str, str, bool, bool, bool]] = []


def cli(args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = dict(ENV, MMBERT_KILL_AT=kill_at) if kill_at else ENV
    return subprocess.run([sys.executable, "-m", "mmbert.cli", *args], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    if not ROWS:
        return
    w = max(len(r[1]) for r in ROWS)
    lines = [f"{'command':<10} {'kill point':<{w}}  died  resumed  identical"]
    for cmd, point, died, resumed, same in ROWS:
        yn = lambda b: "yes" if b else "NO"  # noqa: E731
        lines.append(f"{cmd:<10} {point:<{w}}  {yn(died):<4}  {yn(resumed):<7}  {yn(same)}")
    print("\n\ncrash matrix\n" + "\n".join(lines))


# ---------------------------------------------------------------------------------------------
# Comparing outputs
# ---------------------------------------------------------------------------------------------

def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _visible(root: Path) -> list[Path]:
    """Files under ``root`` outside temporary / trash names (no path part starting with '.')."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _content(path: Path):
    if path.suffix == ".json":
        return _strip(json.loads(path.read_text(encoding="utf-8")))
    if path.suffix == ".jsonl":
        return [_strip(json.loads(x)) for x in path.read_text(encoding="utf-8").splitlines()]
    return path.read_bytes()


def tree_differences(a: Path, b: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Files that differ between two output trees (names, bytes; JSON without timing)."""
    fa = [p for p in _visible(a) if not str(p).startswith(skip)]
    fb = [p for p in _visible(b) if not str(p).startswith(skip)]
    if fa != fb:
        return [f"file lists differ: {sorted(set(map(str, fa)) ^ set(map(str, fb)))}"]
    return [str(p) for p in fa if _content(a / p) != _content(b / p)]


def run_differences(ref: Path, run: Path) -> list[str]:
    """pretrain: exports, checkpoints (names, optimizer state, weights), metrics, recipe."""
    diff = []
    for sub in ["export", "variants/a/export", "variants/b/export", "tokenizer"]:
        diff += [f"{sub}/{d}" for d in tree_differences(ref / sub, run / sub)]
    for ck in ["checkpoints", "variants/a/checkpoints", "variants/b/checkpoints"]:
        na = sorted(p.name for p in (ref / ck).glob("step-*"))
        nb = sorted(p.name for p in (run / ck).glob("step-*"))
        if na != nb:
            diff.append(f"{ck}: {na} vs {nb}")
            continue
        for n in na:
            for f in ("optimizer.safetensors", "optimizer.json", "model/model.safetensors"):
                if (ref / ck / n / f).read_bytes() != (run / ck / n / f).read_bytes():
                    diff.append(f"{ck}/{n}/{f}")
    for m in ["metrics.jsonl", "variants/a/metrics.jsonl", "variants/b/metrics.jsonl"]:
        if _content(ref / m) != _content(run / m):
            diff.append(m)
    if _content(ref / "recipe.json") != _content(run / "recipe.json"):
        diff.append("recipe.json")
    return diff


# ---------------------------------------------------------------------------------------------
# What may be visible after a kill
# ---------------------------------------------------------------------------------------------

def assert_no_partial_dir(out: Path) -> None:
    """An output directory: absent; beside it at most temporary siblings."""
    assert not out.exists(), f"{out} is visible after the kill"
    for p in out.parent.iterdir():
        if p.name.startswith(out.name):
            pytest.fail(f"{p}: visible beside the output")


def assert_consistent_shards(shards: Path) -> None:
    """Every published .bin/.idx pair is complete; the manifest (if any) lists only those."""
    for split in ("train", "heldout"):
        d = shards / split
        if not d.is_dir():
            continue
        names = {p.stem for p in d.iterdir() if not p.name.startswith(".")}
        for lang in names:
            b, i = d / f"{lang}.bin", d / f"{lang}.idx"
            assert b.is_file() and i.is_file(), f"{d}/{lang}: half a pair is visible"
            offsets = np.fromfile(i, dtype="<u8")
            assert offsets[0] == 0 and int(offsets[-1]) * 4 == b.stat().st_size, f"{b}: partial"
    mf = shards / "manifest.json"
    if mf.exists():
        m = json.loads(mf.read_text())  # parses: never half written
        for lang, e in m["languages"].items():
            for split in e["splits"]:
                assert (shards / split / f"{lang}.bin").is_file(), (lang, split)


def assert_consistent_run(run: Path) -> None:
    """Published checkpoints pass their manifest; published exports are complete."""
    from mmbert.train.checkpoint import verify

    for ck in run.rglob("step-*"):
        if ck.is_dir() and not any(p.startswith(".") for p in ck.relative_to(run).parts):
            verify(ck)
    for exp in [*run.glob("export/*"), *run.glob("variants/*/export")]:
        if exp.name.startswith("."):
            continue
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
            p.name for p in exp.iterdir()}, f"{exp}: incomplete export visible"
    if (run / "recipe.json").exists():
        json.loads((run / "recipe.json").read_text())


# ---------------------------------------------------------------------------------------------
# The commands: a reference run each (module fixtures), and the kill-rerun-compare cycle
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("crash")


@pytest.fixture(scope="module")
def recipe(data, base) -> Path:  # noqa: F811
    return write_recipe(base / "recipe.yaml", recipe_dict(data))


@pytest.fixture(scope="module")
def ref_run(recipe, base) -> Path:
    r = cli(["pretrain", "--recipe", str(recipe), "--out", str(base / "ref_run")])
    assert r.returncode == 0, r.stderr
    return base / "ref_run"


def prepare_args(data, out: Path) -> list[str]:  # noqa: F811
    return ["data", "prepare", "--corpus", str(data["shards"].parent / "corpus"), "--tokenizer",
            str(data["tokenizer"]), "--out", str(out), "--workers", "1"]


@pytest.fixture(scope="module")
def ref_shards(data, base) -> Path:  # noqa: F811
    r = cli(prepare_args(data, base / "ref_shards"))
    assert r.returncode == 0, r.stderr
    return base / "ref_shards"


@pytest.fixture(scope="module")
def finetune_files(data, base) -> Path:  # noqa: F811
    """A small sequence-classification set: German (0) vs French (1) catalogue sentences."""
    corpus = data["shards"].parent / "corpus"
    rows = []
    for label, code in enumerate(["deu_Latn", "fra_Latn"]):
        docs = (corpus / f"{code}.txt").read_text(encoding="utf-8").split("\n\n")[:24]
        rows += [{"text": d[:120], "label": str(label)} for d in docs if d.strip()]
    p = base / "seq_train.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return p


def command_args(cmd: str, ref: Path, out: Path, files: Path | None = None) -> list[str]:
    if cmd == "merge":
        return ["merge", "--method", "linear", "--models", str(ref / "variants/a/export"),
                str(ref / "variants/b/export"), "--out", str(out)]
    if cmd == "export":
        return ["export", str(ref / "checkpoints"), str(out)]
    assert cmd == "finetune"
    return ["finetune", "--task", "sequence", "--model", str(ref / "export/p2"), "--train",
            str(files), "--out", str(out), "--epochs", "1", "--batch-size", "8",
            "--max-length", "32", "--max-steps", "4", "--seed", "1"]


def _record(cmd: str, point: str, died: bool, resumed: bool, same: bool) -> None:
    ROWS.append((cmd, point, died, resumed, same))


def crash_prepare(data, ref_shards: Path, tmp: Path, point: str) -> None:  # noqa: F811
    out = tmp / "shards"
    args = prepare_args(data, out)
    r = cli(args, point)
    died = r.returncode == -signal.SIGKILL
    _record("prepare", point, died, False, False)
    assert died, f"{point}: rc {r.returncode}, {r.stderr[-2000:]}"
    assert_consistent_shards(out)
    r = cli(args)
    assert r.returncode == 0, r.stderr
    ROWS[-1] = ("prepare", point, True, True, False)
    diff = tree_differences(ref_shards, out)
    ROWS[-1] = ("prepare", point, True, True, not diff)
    assert not diff, f"{point}: rerun differs from an uninterrupted run: {diff}"


def crash_pretrain(recipe: Path, ref_run: Path, tmp: Path, point: str) -> None:
    run = tmp / "run"
    args = ["pretrain", "--recipe", str(recipe), "--out", str(run)]
    r = cli(args, point)
    died = r.returncode == -signal.SIGKILL
    _record("pretrain", point, died, False, False)
    assert died, f"{point}: rc {r.returncode}, {r.stderr[-2000:]}"
    assert_consistent_run(run)
    r = cli([*args, "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    ROWS[-1] = ("pretrain", point, True, True, False)
    diff = run_differences(ref_run, run)
    ROWS[-1] = ("pretrain", point, True, True, not diff)
    assert not diff, f"{point}: resumed run differs from an uninterrupted run: {diff}"


def crash_output(cmd: str, ref_run: Path, files: Path | None, tmp: Path, point: str) -> None:
    ref_out, out = tmp / "ref_out", tmp / "out"
    r = cli(command_args(cmd, ref_run, ref_out, files))
    assert r.returncode == 0, r.stderr[-3000:]
    args = command_args(cmd, ref_run, out, files)
    r = cli(args, point.replace("OUT", out.name))
    died = r.returncode == -signal.SIGKILL
    _record(cmd, point, died, False, False)
    assert died, f"{point}: rc {r.returncode}, {r.stderr[-2000:]}"
    assert_no_partial_dir(out)
    r = cli(args)  # the same command: nothing was published, so no --overwrite
    assert r.returncode == 0, r.stderr[-3000:]
    ROWS[-1] = (cmd, point, True, True, False)
    diff = tree_differences(ref_out, out)
    ROWS[-1] = (cmd, point, True, True, not diff)
    assert not diff, f"{point}: rerun differs from an uninterrupted run: {diff}"


# ---------------------------------------------------------------------------------------------
# The matrix
# ---------------------------------------------------------------------------------------------

# data prepare --workers 1 tokenises the largest language first: deu, fra, spa, pol, fin, swe;
# manifest.json is written once before the first language, after each one, and at the end
PREPARE = ["shard:train/deu_Latn", "shard:train/pol_Latn", "atomic:manifest.json",
           "atomic:manifest.json:3", "atomic:manifest.json:8"]
# the recipe: p1 steps 1-8, p2 9-12 (checkpoints every 3 steps and at phase ends), decay
# variants a and b: steps 13-14 each, run one after the other
PRETRAIN = ["atomic:recipe.json", "publish:tokenizer", "step:1", "step:5", "checkpoint:3",
            "checkpoint:8", "phase-end:p1", "publish:p1", "step:10", "checkpoint:12",
            "phase-end:p2", "publish:p2", "step:13", "checkpoint:14", "phase-end:p3/a",
            "publish:export", "step:13:2", "step:14:2", "publish:export:2"]
OUTPUT = [("merge", "publish:OUT"), ("merge", "atomic:merge.json"),
          ("export", "publish:OUT"), ("export", "atomic:tokenizer_config.json"),
          ("finetune", "publish:OUT"), ("finetune", "atomic:finetune.json")]
SAMPLE = {"shard:train/pol_Latn", "phase-end:p1", ("merge", "publish:OUT"),
          ("export", "publish:OUT"), ("finetune", "publish:OUT")}


def _marks(key) -> list:
    return [] if key in SAMPLE else [pytest.mark.slow]


@pytest.mark.parametrize("point", [pytest.param(p, marks=_marks(p)) for p in PREPARE])
def test_crash_prepare(data, ref_shards, tmp_path, point):  # noqa: F811
    crash_prepare(data, ref_shards, tmp_path, point)


@pytest.mark.parametrize("point", [pytest.param(p, marks=_marks(p)) for p in PRETRAIN])
def test_crash_pretrain(recipe, ref_run, tmp_path, point):
    crash_pretrain(recipe, ref_run, tmp_path, point)


@pytest.mark.parametrize("cmd,point", [pytest.param(c, p, marks=_marks((c, p)))
                                       for c, p in OUTPUT])
def test_crash_output_commands(cmd, point, ref_run, finetune_files, tmp_path):
    crash_output(cmd, ref_run, finetune_files, tmp_path, point)


def test_killed_prepare_worker_stops_then_rerun_completes(data, ref_shards,  # noqa: F811
                                                          tmp_path):
    """A tokenizer worker killed mid-write (the out-of-memory killer picks one process) stops
    `data prepare --workers 2` with one error line instead of leaving it waiting forever; the
    rerun finishes the same shards as an uninterrupted run."""
    out = tmp_path / "shards"
    args = [*prepare_args(data, out)[:-1], "2"]  # --workers 2
    r = subprocess.run([sys.executable, "-m", "mmbert.cli", *args], capture_output=True,
                       text=True, env=dict(ENV, MMBERT_KILL_AT="shard:train/fin_Latn"),
                       timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith("error: data prepare: a tokenizer worker process died"), err
    assert_consistent_shards(out)
    assert cli(args).returncode == 0
    assert not tree_differences(ref_shards, out)
