"""Writing outputs: atomic files, JSON/JSONL I/O, and the one rule for output directories.

Files. :func:`atomic_file` writes ``path`` under a temporary sibling ``.<name>.tmp-<pid>`` and
renames it into place with ``os.replace`` on success, so a reader (or a killed run) never sees
half a file; on failure the temporary file is removed and ``path`` is untouched.
:func:`write_text`, :func:`write_json` and :func:`write_jsonl` are built on it.
:func:`read_json` and :func:`read_jsonl` read them back (:func:`read_mapping` is
:func:`read_json` for JSON or YAML); bad content is one :class:`~mmbert.errors.MmbertError`
line naming the file and what was expected.

Output directories (every command with an ``--out DIR`` that it creates: finetune, eval,
export-tasks, merge, init-small, export, export-onnx, convert, tokenizer fetch-gemma/train,
data fetch-demo). :class:`OutputDir` yields a temporary sibling directory to write into, and:

- ``DIR`` missing, or an empty directory: the result is renamed into place on success; on
  failure nothing is left at ``DIR`` (an empty one stays empty);
- ``DIR`` exists and is not empty: refused with ``DIR: exists and is not empty; expected a new
  or empty directory, or --overwrite to replace it``, unless ``overwrite=True``: then the new
  directory is completed first, the old one renamed away and deleted (if the write fails the
  old contents stay intact);
- ``DIR`` is a file: refused.

Commands that resume into a run directory (``pretrain --out RUN``, ``demo --out``, ``bench``,
``data prepare``) are not output directories in this sense; what they publish inside the run
(a phase's ``export/``, the run's tokenizer) uses ``OutputDir(..., overwrite=True)``, since a
rerun must replace it. Training checkpoints have their own publication protocol (manifest,
fsync, rotation) in :mod:`mmbert.train.checkpoint`, and so do token shards
(:mod:`mmbert.data.shards`, resumable per language).

Write failures. A full disk (``ENOSPC``, ``EDQUOT``), a read-only file system (``EROFS``) or a
missing permission (``EACCES``, ``EPERM``) while writing an output is a :class:`WriteError`
(an :class:`~mmbert.errors.MmbertError`, so the CLI prints one line and exits 2) naming the
path that was being written; the temporary file or directory is removed and whatever was
published before stays as it was. :func:`write_error` makes one from an ``OSError``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from mmbert.errors import MmbertError
from mmbert.faults import kill_point


# errno -> the words of a write failure that rerunning after fixing the machine can cure
WRITE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                errno.EPERM: "operation not permitted"}


class WriteError(MmbertError):
    """An output could not be written (disk full, read-only, no permission): ``path``, ``reason``."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: cannot write ({reason}); expected a writable location with "
                         "free space (nothing was published; free space or fix permissions and "
                         "rerun)")


def write_error(path: str | Path, e: BaseException) -> WriteError | None:
    """A :class:`WriteError` for ``path`` if ``e`` is a disk-full/read-only/permission OSError
    (one already a WriteError is kept, naming the innermost path); otherwise None."""
    if isinstance(e, WriteError):
        return e
    if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
        return WriteError(path, WRITE_ERRNOS[e.errno])
    return None


def sibling(path: Path, tag: str = "tmp") -> Path:
    """``.<name>.<tag>-<pid>`` beside ``path``: where a write in progress lives until renamed."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; it replaces ``path`` when the block succeeds."""
    p = Path(path)
    tmp = sibling(p, "tmp")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        kill_point(f"atomic:{p.name}")
        os.replace(tmp, p)
    except OSError as e:
        err = write_error(p, e)
        if err is None:
            raise
        raise err from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only parent: nothing could have been created there
            pass


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text(path: str | Path, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """``obj`` as UTF-8 JSON (indent 2, non-ASCII kept), with a trailing newline."""
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, records: Iterable[Any]) -> Path:
    """One JSON object per line (non-ASCII kept)."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return Path(path)


def read_mapping(path: str | Path, what: str, *, fmt: str = "JSON",
                 loads: Callable[[str], Any] = json.loads,
                 errors: tuple[type[Exception], ...] = (json.JSONDecodeError,),
                 missing: str = "no such file") -> dict[str, Any]:
    """The mapping in a JSON (or, with ``fmt="YAML"``, ``loads=yaml.safe_load``,
    ``errors=(yaml.YAMLError,)``, a YAML) file. A missing, unparsable or non-mapping file is one
    error line naming the file and ``what`` was expected; ``missing`` words the first case."""
    p = Path(path)
    if not p.is_file():
        raise MmbertError(f"{p}: {missing}; expected {what}")
    try:
        d = loads(p.read_text(encoding="utf-8"))
    # ValueError: also an integer too long to convert; RecursionError: too deeply nested
    except (ValueError, RecursionError, *errors) as e:
        msg = " ".join(str(e).split())  # YAML's messages span lines
        raise MmbertError(f"{p}: not valid {fmt} ({msg}); expected {what}") from None
    if not isinstance(d, dict):
        noun = "object" if fmt == "JSON" else "mapping"
        raise MmbertError(f"{p}: not a {fmt} {noun}; expected {what}")
    return d


def read_json(path: str | Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; a missing, unreadable or non-object file is one error line
    naming the file and ``what`` was expected."""
    return read_mapping(path, what)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL log (metrics.jsonl). Lines that do not parse as an object are
    skipped: a run killed mid-write leaves a torn last line. A missing file reads as empty."""
    p = Path(path)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict):
            out.append(r)
    return out


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``), so an output
    replaced with ``--overwrite`` is never missing, even if the process dies mid-way. False
    where the system or filesystem cannot (the caller falls back to two renames)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


class OutputDir:
    """``with OutputDir(out, overwrite=...) as tmp:`` write the whole output into ``tmp``; it
    becomes ``out`` when the block succeeds (the rule is in this module's docstring)."""

    def __init__(self, out: str | Path, *, overwrite: bool = False):
        self.out = Path(out)
        self.overwrite = overwrite
        self.tmp = sibling(self.out, "tmp")

    def check(self) -> None:
        """Refuse ``out`` now (before any work) if the rule says so."""
        if self.out.exists() and not self.out.is_dir():
            raise MmbertError(f"{self.out}: exists and is not a directory; expected a new or "
                              "empty directory")
        if not self.overwrite and self.out.is_dir() and any(self.out.iterdir()):
            raise MmbertError(f"{self.out}: exists and is not empty; expected a new or empty "
                              "directory, or --overwrite to replace it")

    def __enter__(self) -> Path:
        self.check()
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir()
        except OSError as e:
            err = write_error(self.out, e)
            if err is None:
                raise
            raise err from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, (OSError, WriteError)):
                err = write_error(self.out, exc)
                if isinstance(exc, WriteError):  # name the output, not its temporary sibling
                    err = WriteError(self.out / exc.path.relative_to(self.tmp)
                                     if exc.path.is_relative_to(self.tmp) else exc.path,
                                     exc.reason)
                if err is not None:
                    raise err from None
            return
        try:
            self._publish()
        except OSError as e:
            shutil.rmtree(self.tmp, ignore_errors=True)
            err = write_error(self.out, e)
            if err is None:
                raise
            raise err from None

    def _publish(self) -> None:
        kill_point(f"publish:{self.out.name}")
        if self.out.is_dir() and _exchange(self.tmp, self.out):
            shutil.rmtree(self.tmp, ignore_errors=True)  # now the previous output
            return
        old = None
        if self.out.is_dir():  # no atomic exchange here: two renames, the old one put back
            old = sibling(self.out, "old")
            shutil.rmtree(old, ignore_errors=True)
            self.out.rename(old)
        try:
            self.tmp.rename(self.out)
        except OSError:
            if old is not None:  # put the previous output back
                old.rename(self.out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
