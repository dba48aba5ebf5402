"""`mmbert data prepare --executor datatrove-local|slurm|ray`: the same shards as the local path.

Every executor is compared byte for byte (every .bin, .idx and manifest.json) with
``--executor local`` on a sample of the demo corpus; Slurm through datatrove's generated sbatch
script (``--dry-run``), whose array tasks are then run the way Slurm would run them; resume
after a kill half-way; the one-line error without the ``scale`` extra.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mmbert.data.executors import ClusterOptions
from mmbert.data.shards import prepare
from mmbert.data.sources import scan_corpus
from mmbert.data.units import UnitPlan

LANGS = ["deu_Latn", "fra_Latn", "rus_Cyrl", "jpn_Jpan", "amh_Ethi"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def files(shards: Path) -> dict[str, str]:
    """sha256 of every file of a shard directory except the engine's logs."""
    return {str(p.relative_to(shards)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(shards.rglob("*")) if p.is_file() and ".datatrove" not in p.parts}


@pytest.fixture(scope="module")
def local(demo_corpus, demo_tokenizer, tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("local") / "shards"
    prepare(demo_corpus, demo_tokenizer, out, languages=LANGS, workers=1, progress=False)
    got = files(out)
    assert len(got) == 1 + 4 * len(LANGS)  # manifest + train/heldout .bin/.idx per language
    return got


def cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """The command in its own process group; once it has exited, whatever it started and left
    behind (datatrove's multiprocess manager outlives a SIGKILLed parent) is killed too, as a
    lost machine would take them all."""
    p = subprocess.Popen([sys.executable, "-m", "mmbert.cli", *args], env=env or ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        p.wait(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
    out, err = p.communicate(timeout=30)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def prepare_args(demo_corpus: Path, demo_tokenizer: Path, out: Path) -> list[str]:
    return ["data", "prepare", "--corpus", str(demo_corpus), "--tokenizer", str(demo_tokenizer),
            "--out", str(out), "--languages", ",".join(LANGS)]


@pytest.mark.parametrize("tasks,workers", [(1, 1), (3, 2)])
def test_datatrove_local_matches_local(local, demo_corpus, demo_tokenizer, tmp_path, tasks,
                                       workers):
    out = tmp_path / "shards"
    prepare(demo_corpus, demo_tokenizer, out, languages=LANGS, executor="datatrove-local",
            cluster=ClusterOptions(tasks=tasks, workers=workers))
    assert files(out) == local
    assert not (out / ".parts").exists()
    # a rerun finds every language done: nothing to run, the same files
    prepare(demo_corpus, demo_tokenizer, out, languages=LANGS, executor="datatrove-local",
            cluster=ClusterOptions(tasks=tasks, workers=workers))
    assert files(out) == local
    logs = next((out / ".datatrove").iterdir())
    assert sorted(p.name for p in (logs / "tokenize" / "completions").iterdir()) == [
        f"{r:05d}" for r in range(tasks)]


def test_ray_matches_local(local, demo_corpus, demo_tokenizer, tmp_path):
    out = tmp_path / "shards"
    prepare(demo_corpus, demo_tokenizer, out, languages=LANGS, executor="ray",
            cluster=ClusterOptions(tasks=2, workers=2))
    assert files(out) == local


def test_slurm_script_generated_and_its_tasks_make_the_same_shards(local, demo_corpus,
                                                                   demo_tokenizer, tmp_path):
    out = tmp_path / "shards"
    r = cli([*prepare_args(demo_corpus, demo_tokenizer, out), "--executor", "slurm",
             "--partition", "cpu-long", "--tasks", "3", "--cpus-per-task", "4", "--time",
             "02:00:00", "--dry-run"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "dry run, nothing submitted" in r.stdout
    logs = next((out / ".datatrove").iterdir())
    script = (logs / "tokenize" / "launch_script.slurm").read_text()
    assert script in r.stdout  # the generated script is shown
    for line in ("#SBATCH --partition=cpu-long", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --array=0-2", "#SBATCH --time=02:00:00",
                 "#SBATCH --job-name=mmbert-tokenize",
                 f"source {Path(sys.prefix) / 'bin' / 'activate'}",
                 f"launch_pickled_pipeline {logs / 'tokenize' / 'executor.pik'}"):
        assert line in script, line
    assert "#SBATCH --array=0-2" in (logs / "merge" / "launch_script.slurm").read_text()
    assert "#SBATCH --array=0-0" in (logs / "manifest" / "launch_script.slurm").read_text()
    assert not list((out / "train").iterdir())  # nothing ran
    # run the array tasks as Slurm would: the pickled executor, one SLURM_ARRAY_TASK_ID each
    # (datatrove asks `scontrol` for the node list: a stand-in echoes it)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text('#!/bin/sh\necho "$3"\n')
    (fake / "scontrol").chmod(0o755)
    env = dict(ENV, PATH=f"{fake}:{ENV['PATH']}", SLURM_NODELIST="node1", SLURM_JOB_ID="7")
    launch = Path(sys.executable).parent / "launch_pickled_pipeline"
    for job, tasks in (("tokenize", 3), ("merge", 3), ("manifest", 1)):
        for i in range(tasks):
            p = subprocess.run([str(launch), str(logs / job / "executor.pik")],
                               env=dict(env, SLURM_ARRAY_TASK_ID=str(i)), capture_output=True,
                               text=True, timeout=300)
            assert p.returncode == 0, p.stderr[-2000:]
    assert files(out) == local


def test_resume_after_kill_halfway(local, demo_corpus, demo_tokenizer, tmp_path):
    """Killed in the 3rd of 5 tasks (one worker, so in the command's own process): the rerun
    skips the tasks datatrove recorded as complete and ends with the same shards."""
    out = tmp_path / "shards"
    args = [*prepare_args(demo_corpus, demo_tokenizer, out), "--executor", "datatrove-local",
            "--tasks", "5", "--workers", "1"]
    plan = UnitPlan.build({k: v for k, v in scan_corpus(demo_corpus).items() if k in LANGS}, 5,
                          tokenizer="", out="", heldout_fraction=0, errors="strict", sources={})
    third = plan.units_of(2)[0]
    r = cli(args, env=dict(ENV, MMBERT_KILL_AT=f"shard:{third.stem}.train"))
    assert r.returncode == -9, r.stderr[-2000:]
    done = sorted(p.name for p in out.glob(".datatrove/*/tokenize/completions/*"))
    assert done == ["00000", "00001"]
    assert not (out / "train" / f"{third.lang}.bin").exists()
    r = cli(args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Skipping 2 already completed tasks" in r.stderr
    assert files(out) == local


def test_units_cover_every_input_once_and_plans_are_told_apart(demo_corpus):
    inputs = {k: v for k, v in scan_corpus(demo_corpus).items() if k in LANGS}
    kw = dict(tokenizer="t", out="o", heldout_fraction=0.0, errors="strict", sources={})
    for tasks in (1, 2, 3, 7, 100):
        plan = UnitPlan.build(inputs, tasks, **kw)
        assert plan.tasks == min(tasks, len(plan.units))
        got = sorted((u.lang, u.number) for r in range(plan.tasks) for u in plan.units_of(r))
        assert got == sorted((u.lang, u.number) for u in plan.units)
        assert plan.merge_tasks == min(plan.tasks, len(LANGS))
        merged = sorted(x for r in range(plan.merge_tasks) for x in plan.languages_of(r))
        assert merged == sorted(LANGS)
    a, b = UnitPlan.build(inputs, 2, **kw), UnitPlan.build(inputs, 3, **kw)
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == UnitPlan.build(inputs, 2, **kw).fingerprint()


def test_bad_options_and_missing_extra_are_one_line(demo_corpus, demo_tokenizer, tmp_path):
    base = prepare_args(demo_corpus, demo_tokenizer, tmp_path / "s")
    r = cli([*base, "--executor", "slurm", "--dry-run"])
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: --executor slurm needs --partition; expected the Slurm partition the tasks "
        "run in")
    r = cli([*base, "--executor", "datatrove-local", "--tasks", "0"])
    assert r.returncode == 2 and r.stderr.strip() == "error: --tasks 0: expected at least 1"
    r = cli([*base, "--executor", "ray", "--cpus-per-task", "0"])
    assert r.returncode == 2 and r.stderr.strip() == "error: --cpus-per-task 0: expected at least 1"
    # without the scale extra: datatrove (and ray) cannot be imported
    code = ("import sys; sys.modules['datatrove'] = sys.modules['ray'] = None; "
            "from mmbert.cli import main; sys.exit(main(sys.argv[1:]))")
    for executor, module in (("datatrove-local", "datatrove"), ("ray", "ray")):
        r = subprocess.run([sys.executable, "-c", code, *base, "--executor", executor],
                           env=ENV, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == (
            f"error: --executor {executor} needs {module}, which is not installed; expected "
            f"the scale extra: pip install 'mmbert[scale]'")
