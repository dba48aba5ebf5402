"""Fuzzing helpers (hypothesis): the ``fuzz`` fixture counts generated cases per target and
checks the error-path property; the counts are printed as a table at the end of the run.

The property for bad input: a call either succeeds or raises one
:class:`~mmbert.errors.MmbertError` whose message is a single non-empty line; any other
exception fails the test, and so does a call that runs longer than a few seconds (a hang).
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
from contextlib import contextmanager
from typing import Any, Callable

import pytest

from mmbert.errors import MmbertError

FUZZ_COUNTS: Counter[str] = Counter()
HANG_SECONDS = 10


class Hang(Exception):
    """A fuzzed call ran longer than HANG_SECONDS."""


@contextmanager
def no_hang(seconds: int = HANG_SECONDS):
    """Fail a call that runs longer than ``seconds`` (SIGALRM; main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _alarm(signum, frame):  # noqa: ARG001
        raise Hang(f"call ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


class Fuzz:
    counts = FUZZ_COUNTS

    def count(self, target: str) -> None:
        FUZZ_COUNTS[target] += 1

    def check_error(self, e: MmbertError, names: tuple[str, ...] = ()) -> str:
        """The message of ``e``: one non-empty line, naming one of ``names`` when given."""
        msg = str(e)
        assert msg.strip(), "empty error message"
        assert "\n" not in msg and "\r" not in msg, f"multi-line error message: {msg!r}"
        if names:
            assert any(n in msg for n in names), f"error names none of {names}: {msg!r}"
        return msg

    def call(self, fn: Callable[..., Any], *args: Any, names: tuple[str, ...] = (),
             **kwargs: Any) -> tuple[Any, str | None]:
        """``(result, None)`` or ``(None, message)`` of a call that may fail only with a
        one-line MmbertError."""
        with no_hang():
            try:
                return fn(*args, **kwargs), None
            except MmbertError as e:
                return None, self.check_error(e, names)

    def cli(self, argv: list[str], capsys: Any) -> tuple[int, str]:
        """Run ``mmbert.cli.main(argv)`` in-process: (exit code, stderr). Exit code 2 comes with
        exactly one ``error: ...`` line."""
        from mmbert.cli import main

        capsys.readouterr()
        with no_hang(30):
            rc = main(argv)
        err = capsys.readouterr().err
        if rc == 2:
            lines = [ln for ln in err.splitlines() if ln.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: "), err
        return rc, err


@pytest.fixture(scope="session")
def fuzz() -> Fuzz:
    return Fuzz()


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    if not FUZZ_COUNTS:
        return
    tr = terminalreporter
    tr.section("fuzzing: generated cases per target")
    width = max(len(k) for k in FUZZ_COUNTS)
    for target, n in sorted(FUZZ_COUNTS.items()):
        tr.write_line(f"{target:<{width}}  {n:>6}")
    tr.write_line(f"{'total':<{width}}  {sum(FUZZ_COUNTS.values()):>6}")
