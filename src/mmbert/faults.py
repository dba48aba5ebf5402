"""Crash injection for tests: named points where a process can be made to SIGKILL itself.

``kill_point(name)`` is called at the places where a crash matters for what a rerun or a
resume finds on disk (a shard file before its rename, an atomic file before ``os.replace``,
an output directory before it is published, a training step, a checkpoint write, a phase
boundary). With ``MMBERT_KILL_AT`` unset it does nothing; the variable is read once per
process, so the points cost one dictionary lookup when unused.

``MMBERT_KILL_AT=NAME`` kills the process the first time it reaches the point ``NAME``;
``MMBERT_KILL_AT=NAME:N`` the N-th time (counted per process). The kill is
``os.kill(os.getpid(), SIGKILL)``: no handler, ``finally`` block or atexit hook runs, as
after the kernel's OOM killer or a lost machine. Names in use:

========================  ======================================================================
``atomic:<file name>``    :func:`mmbert.outputs.atomic_file`, the temp file is written and
                          not yet renamed (e.g. ``atomic:manifest.json`` for shards)
``publish:<dir name>``    :class:`mmbert.outputs.OutputDir`, the temp directory is complete and
                          not yet renamed into place (merge, export, finetune, phase exports)
``shard:<split>/<lang>``  ``data prepare``: a language's ``.bin`` is written under its temp
                          name, nothing renamed yet
``step:<step>``           ``pretrain``: after the optimizer step ``<step>`` (global step
                          number; decay variants count on from the trunk, so ``step:13`` is
                          the first step of the first variant, ``step:13:2`` of the second)
``checkpoint:<step>``     ``pretrain``: half-way through writing the checkpoint of ``<step>``
``phase-end:<label>``     ``pretrain``: the phase-end checkpoint of ``<label>`` (``p1``,
                          ``p3/a``) is written, its export not yet
========================  ======================================================================

Tests: ``tests/reliability/test_crash.py`` (the crash matrix, also in docs/reliability.md).
"""

from __future__ import annotations

import os
import signal

ENV = "MMBERT_KILL_AT"
_SPEC = os.environ.get(ENV, "").strip()
_SEEN: dict[str, int] = {}


def _nth(name: str) -> int | None:
    """Which occurrence of ``name`` the spec asks for (``NAME`` or ``NAME:N``), else None.
    Names may end in ``:<number>`` themselves (``step:13``): the whole spec is tried first."""
    if _SPEC == name:
        return 1
    head, sep, count = _SPEC.rpartition(":")
    return int(count) if sep and head == name and count.isdigit() else None


def kill_point(name: str) -> None:
    """SIGKILL this process if ``MMBERT_KILL_AT`` names this point (and this is the N-th time
    it is reached, for ``NAME:N``); otherwise do nothing."""
    if not _SPEC:
        return
    n = _nth(name)
    if n is None:
        return
    _SEEN[name] = _SEEN.get(name, 0) + 1
    if _SEEN[name] == n:
        os.kill(os.getpid(), signal.SIGKILL)
