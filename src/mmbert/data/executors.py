"""Data preparation on datatrove: the same shards from one machine, a Slurm cluster or Ray.

``mmbert data prepare --executor datatrove-local|slurm|ray`` runs two datatrove pipelines, each
one step (:mod:`mmbert.data.datatrove_steps`) of :mod:`mmbert.data.units`:

1. *tokenize*: ``--tasks`` tasks, each tokenising its units into part files;
2. *merge*: one task concatenating the parts into ``OUT/<split>/<lang>.bin`` / ``.idx`` and
   writing ``manifest.json``.

datatrove provides the rest: the workers (``LocalPipelineExecutor``'s process pool, a Slurm job
array, Ray tasks), logs and stats under ``OUT/.datatrove/<plan>/{tokenize,merge}/``, and
resume: a rerun skips the tasks its ``completions/`` records as finished. ``<plan>`` is a
fingerprint of the units, tokenizer, options and task count, so a changed plan never reuses
another plan's completions. Slurm submits both jobs (the merge waits for the tokenize job with
``--dependency``) and returns; ``--dry-run`` writes datatrove's sbatch scripts and submits
nothing. Ray connects to ``--ray-address`` (or ``RAY_ADDRESS``), else starts a local Ray.

datatrove and Ray are the ``scale`` extra (``pip install 'mmbert[scale]'``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from mmbert.data.shards import DEFAULT_WORKERS, Manifest
from mmbert.data.units import UnitPlan
from mmbert.errors import MmbertError

EXECUTORS = ("local", "datatrove-local", "slurm", "ray")
LOG_DIR = ".datatrove"


@dataclass(frozen=True)
class ClusterOptions:
    """Options passed through to the engine. ``workers``: tasks running at once (local process
    pool, Ray; Slurm: the job array's ``%`` limit, None = no limit)."""

    tasks: int | None = None  # None: one task per unit, at most units.MAX_TASKS
    workers: int | None = None
    partition: str | None = None  # Slurm
    time: str = "24:00:00"        # Slurm: time limit per task
    cpus_per_task: int = 1
    mem_per_cpu_gb: float = 2.0
    env_command: str | None = None  # Slurm: shell line run before each task (default: this venv)
    dry_run: bool = False           # Slurm: write the scripts, submit nothing
    ray_address: str | None = None


def require(module: str, executor: str) -> Any:
    """Import a module of the ``scale`` extra, or stop with one line naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MmbertError(f"--executor {executor} needs {module.split('.')[0]}, which is not "
                          f"installed; expected the scale extra: pip install 'mmbert[scale]'"
                          ) from None


def _steps(executor: str) -> Any:
    """:mod:`mmbert.data.datatrove_steps` (imports datatrove), or one line naming the extra."""
    require("datatrove", executor)
    from mmbert.data import datatrove_steps

    return datatrove_steps


def _log_dir(plan: UnitPlan) -> Path:
    return Path(plan.out) / LOG_DIR / plan.fingerprint()


def _local(plan: UnitPlan, manifest: Manifest, opts: ClusterOptions) -> Manifest:
    steps = _steps("datatrove-local")
    ex = require("datatrove.executor", "datatrove-local")
    logs, workers = _log_dir(plan), opts.workers or DEFAULT_WORKERS
    ex.LocalPipelineExecutor([steps.TokenizeUnits(plan)], tasks=plan.tasks,
                             workers=min(workers, plan.tasks), logging_dir=str(logs / "tokenize"),
                             start_method="spawn").run()
    _check_complete(logs / "tokenize", plan.tasks)
    ex.LocalPipelineExecutor([steps.MergeShards(plan, manifest)], tasks=1, workers=1,
                             logging_dir=str(logs / "merge")).run()
    return Manifest.read(plan.out)


def _check_complete(logs: Path, tasks: int) -> None:
    """After a tokenize run returned: every task must be recorded as finished."""
    missing = [r for r in range(tasks) if not (logs / "completions" / f"{r:05d}").is_file()]
    if missing:
        raise MmbertError(f"{logs}: tasks {missing[:5]} of {tasks} did not finish (see "
                          f"{logs}/logs/); rerun the same command to retry them")


def _ray(plan: UnitPlan, manifest: Manifest, opts: ClusterOptions) -> Manifest:
    ray, steps = require("ray", "ray"), _steps("ray")
    RayExecutor = require("datatrove.executor.ray", "ray").RayPipelineExecutor
    started = not ray.is_initialized()
    if started:
        address = opts.ray_address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        logs = _log_dir(plan)
        common = dict(cpus_per_task=opts.cpus_per_task, mem_per_cpu_gb=opts.mem_per_cpu_gb)
        RayExecutor([steps.TokenizeUnits(plan)], tasks=plan.tasks, workers=opts.workers or -1,
                    logging_dir=str(logs / "tokenize"), **common).run()
        _check_complete(logs / "tokenize", plan.tasks)
        RayExecutor([steps.MergeShards(plan, manifest)], tasks=1, logging_dir=str(logs / "merge"),
                    **common).run()
    finally:
        if started:
            ray.shutdown()
    return Manifest.read(plan.out)


@dataclass(frozen=True)
class SlurmSubmission:
    """What ``--executor slurm`` submitted (or, with ``--dry-run``, would submit)."""

    scripts: tuple[Path, Path]  # the tokenize and merge sbatch scripts datatrove wrote
    job_ids: tuple[str, str]
    dry_run: bool


@contextlib.contextmanager
def _no_sbatch(slurm_module: Any, calls: list) -> Iterator[None]:
    """Dry run: datatrove writes its scripts and pickled executors; ``sbatch`` is not called."""
    real = slurm_module.launch_slurm_job

    def record(contents: str, job_id_retriever: Any, *args: str) -> str:
        calls.append(args)
        return f"dry-run-{len(calls)}"

    slurm_module.launch_slurm_job = record
    try:
        yield
    finally:
        slurm_module.launch_slurm_job = real


def _slurm(plan: UnitPlan, manifest: Manifest, opts: ClusterOptions) -> SlurmSubmission:
    slurm, steps = require("datatrove.executor.slurm", "slurm"), _steps("slurm")
    if not opts.partition:
        raise MmbertError("--executor slurm needs --partition; expected the Slurm partition "
                          "the tasks run in")
    logs = _log_dir(plan)
    env = opts.env_command or f"source {Path(sys.prefix) / 'bin' / 'activate'}"
    common = dict(time=opts.time, partition=opts.partition, cpus_per_task=opts.cpus_per_task,
                  mem_per_cpu_gb=max(1, round(opts.mem_per_cpu_gb)), env_command=env,
                  slurm_logs_folder=str(logs / "slurm"))
    tok = slurm.SlurmPipelineExecutor([steps.TokenizeUnits(plan)], tasks=plan.tasks,
                                      workers=opts.workers or -1, job_name="mmbert-tokenize",
                                      logging_dir=str(logs / "tokenize"), **common)
    merge = slurm.SlurmPipelineExecutor([steps.MergeShards(plan, manifest)], tasks=1,
                                        job_name="mmbert-merge", depends=tok,
                                        logging_dir=str(logs / "merge"), **common)
    calls: list = []
    with _no_sbatch(slurm, calls) if opts.dry_run else contextlib.nullcontext():
        merge.run()
    return SlurmSubmission((logs / "tokenize" / "launch_script.slurm",
                            logs / "merge" / "launch_script.slurm"),
                           (str(tok.job_id), str(merge.job_id)), opts.dry_run)


def run_executor(executor: str, plan: UnitPlan, manifest: Manifest,
                 opts: ClusterOptions) -> Manifest | SlurmSubmission:
    """Tokenise and merge ``plan`` on ``executor``; the manifest, or what Slurm was given."""
    run = {"datatrove-local": _local, "ray": _ray, "slurm": _slurm}.get(executor)
    if run is None:
        raise MmbertError(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    return run(plan, manifest, opts)
