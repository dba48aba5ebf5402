"""Data preparation on datatrove: the same shards from one machine, a Slurm cluster or Ray.

``mmbert data prepare --executor datatrove-local|slurm|ray`` runs three datatrove pipelines,
each one step of :mod:`mmbert.data.datatrove_steps` over the plan of :mod:`mmbert.data.units`:

1. *tokenize*: ``--tasks`` tasks, each tokenising its units into part files;
2. *merge*: up to ``--tasks`` tasks, each concatenating its languages' parts into
   ``OUT/<split>/<lang>.bin`` / ``.idx``;
3. *manifest*: one task writing ``manifest.json``.

datatrove provides the rest: the workers (``LocalPipelineExecutor``'s process pool, Slurm job
arrays, Ray tasks), logs and stats under ``OUT/.datatrove/<plan>/<stage>/``, and resume: a rerun
skips the tasks its ``completions/`` records as finished. ``<plan>`` is a fingerprint of the
units, tokenizer, options and task count, so a changed plan never reuses another plan's
completions. Slurm submits the three jobs (each waits for the one before with
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

    tasks: int | None = None  # None: units.UnitPlan.build's default
    workers: int | None = None
    partition: str | None = None  # Slurm
    time: str = "24:00:00"        # Slurm: time limit per task
    cpus_per_task: int = 1
    mem_per_cpu_gb: float = 2.0
    env_command: str | None = None  # Slurm: shell line run before each task (default: this venv)
    dry_run: bool = False           # Slurm: write the scripts, submit nothing
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.cpus_per_task < 1:
            raise MmbertError(f"--cpus-per-task {self.cpus_per_task}: expected at least 1")
        if not self.mem_per_cpu_gb > 0:
            raise MmbertError(f"--mem-per-cpu-gb {self.mem_per_cpu_gb}: expected a positive "
                              f"number of GB")


def require(module: str, executor: str) -> Any:
    """Import a module of the ``scale`` extra, or stop with one line naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MmbertError(f"--executor {executor} needs {module.split('.')[0]}, which is not "
                          f"installed; expected the scale extra: pip install 'mmbert[scale]'"
                          ) from None


def min_tasks(executor: str, opts: ClusterOptions) -> int:
    """The default task count's floor: four tasks per worker where the workers are known
    (local process pool, Ray), so that they stay busy to the end; 1 on Slurm."""
    if executor == "slurm":
        return 1
    return 4 * (opts.workers or DEFAULT_WORKERS)


def _steps(executor: str) -> Any:
    """:mod:`mmbert.data.datatrove_steps` (imports datatrove), or one line naming the extra."""
    require("datatrove", executor)
    from mmbert.data import datatrove_steps

    return datatrove_steps


def _log_dir(plan: UnitPlan) -> Path:
    return Path(plan.out) / LOG_DIR / plan.fingerprint()


@dataclass(frozen=True)
class Stage:
    """One datatrove pipeline of the three: its name (log folder), step and task count."""

    name: str
    step: Any
    tasks: int


def _stages(plan: UnitPlan, manifest: Manifest, executor: str) -> list[Stage]:
    steps = _steps(executor)
    return [Stage("tokenize", steps.TokenizeUnits(plan), plan.tasks),
            Stage("merge", steps.MergeShards(plan), plan.merge_tasks),
            Stage("manifest", steps.WriteManifest(plan, manifest), 1)]


def _check_complete(logs: Path, tasks: int) -> None:
    """After a stage returned: every task must be recorded as finished."""
    missing = [r for r in range(tasks) if not (logs / "completions" / f"{r:05d}").is_file()]
    if missing:
        raise MmbertError(f"{logs}: tasks {missing[:5]} of {tasks} did not finish (see "
                          f"{logs}/logs/); rerun the same command to retry them")


def _local(plan: UnitPlan, manifest: Manifest, opts: ClusterOptions) -> Manifest:
    ex = require("datatrove.executor", "datatrove-local")
    logs, workers = _log_dir(plan), opts.workers or DEFAULT_WORKERS
    for st in _stages(plan, manifest, "datatrove-local"):
        ex.LocalPipelineExecutor([st.step], tasks=st.tasks, workers=min(workers, st.tasks),
                                 logging_dir=str(logs / st.name), start_method="spawn").run()
        _check_complete(logs / st.name, st.tasks)
    return Manifest.read(plan.out)


def _ray(plan: UnitPlan, manifest: Manifest, opts: ClusterOptions) -> Manifest:
    ray = require("ray", "ray")
    RayExecutor = require("datatrove.executor.ray", "ray").RayPipelineExecutor
    stages = _stages(plan, manifest, "ray")
    started = not ray.is_initialized()
    if started:
        address = opts.ray_address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        logs = _log_dir(plan)
        for st in stages:
            RayExecutor([st.step], tasks=st.tasks, workers=opts.workers or -1,
                        logging_dir=str(logs / st.name), cpus_per_task=opts.cpus_per_task,
                        mem_per_cpu_gb=opts.mem_per_cpu_gb).run()
            _check_complete(logs / st.name, st.tasks)
    finally:
        if started:
            ray.shutdown()
    return Manifest.read(plan.out)


@dataclass(frozen=True)
class SlurmSubmission:
    """What ``--executor slurm`` submitted (or, with ``--dry-run``, would submit): one job per
    stage, each after the one before (``--dependency=afterok``)."""

    scripts: dict[str, Path]  # stage -> the sbatch script datatrove wrote
    job_ids: dict[str, str]
    dry_run: bool


@contextlib.contextmanager
def _no_sbatch(slurm_module: Any) -> Iterator[None]:
    """Dry run: datatrove writes its scripts and pickled executors; ``sbatch`` is not called."""
    real, calls = slurm_module.launch_slurm_job, []

    def record(contents: str, job_id_retriever: Any, *args: str) -> str:
        calls.append(args)
        return f"dry-run-{len(calls)}"

    slurm_module.launch_slurm_job = record
    try:
        yield
    finally:
        slurm_module.launch_slurm_job = real


def _slurm(plan: UnitPlan, manifest: Manifest, opts: ClusterOptions) -> SlurmSubmission:
    slurm = require("datatrove.executor.slurm", "slurm")
    if not opts.partition:
        raise MmbertError("--executor slurm needs --partition; expected the Slurm partition "
                          "the tasks run in")
    logs = _log_dir(plan)
    env = opts.env_command or f"source {Path(sys.prefix) / 'bin' / 'activate'}"
    jobs: dict[str, Any] = {}
    before = None
    for st in _stages(plan, manifest, "slurm"):
        before = jobs[st.name] = slurm.SlurmPipelineExecutor(
            [st.step], tasks=st.tasks, workers=opts.workers or -1, job_name=f"mmbert-{st.name}",
            logging_dir=str(logs / st.name), depends=before, time=opts.time,
            partition=opts.partition, cpus_per_task=opts.cpus_per_task,
            mem_per_cpu_gb=max(1, round(opts.mem_per_cpu_gb)), env_command=env,
            slurm_logs_folder=str(logs / "slurm"))
    with _no_sbatch(slurm) if opts.dry_run else contextlib.nullcontext():
        before.run()  # launches the stages it depends on first
    return SlurmSubmission({n: logs / n / "launch_script.slurm" for n in jobs},
                           {n: str(j.job_id) for n, j in jobs.items()}, opts.dry_run)


def run_executor(executor: str, plan: UnitPlan, manifest: Manifest,
                 opts: ClusterOptions) -> Manifest | SlurmSubmission:
    """Tokenise and merge ``plan`` on ``executor``; the manifest, or what Slurm was given."""
    run = {"datatrove-local": _local, "ray": _ray, "slurm": _slurm}.get(executor)
    if run is None:
        raise MmbertError(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    return run(plan, manifest, opts)
