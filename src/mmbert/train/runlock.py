"""One process per run directory: an advisory lock on RUN_DIR/.lock.

``mmbert pretrain`` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on RUN_DIR/.lock before it touches
the run (rank 0 only under torchrun: it alone writes there) and holds it until the run returns
or the process dies: the kernel releases a dead process's flock, so a run killed with SIGKILL is
resumed without clean-up. A second process on the same directory gets one error line naming the
directory and the holder's pid (written into the lock file) instead of interleaving its writes
with the first one's. The file itself stays: removing it would race with a process opening it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import TracebackType
from typing import Callable

from mmbert.errors import MmbertError

LOCK_FILE = ".lock"


class RunLock:
    """``with RunLock(run_dir):`` hold RUN_DIR/.lock (created, with its parents, if missing)."""

    def __init__(self, run_dir: Path, log: Callable[[str], None] = print):
        self.run_dir, self.path, self.log = run_dir, run_dir / LOCK_FILE, log
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        import fcntl

        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise MmbertError(f"{self.run_dir}: in use by another mmbert pretrain (pid "
                                  f"{holder(self.path)}, holding {self.path}); wait for it to "
                                  f"end or choose another --out") from None
            self.log(f"warning: {self.path}: cannot lock ({e.strerror}); nothing stops a second "
                     f"process from writing to this run directory")
            return self
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


def holder(path: Path) -> str:
    """The pid written into a lock file, or "unknown" (not yet written, unreadable)."""
    try:
        pid = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return "unknown"
    return pid if pid.isdigit() else "unknown"
