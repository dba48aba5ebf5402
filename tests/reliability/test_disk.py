"""A full disk and a read-only output location, while writing outputs and checkpoints.

The full disk is injected where the bytes are written, the way each writer fails for real:

- safetensors' Rust writer (``save_pretrained``, checkpoint optimizer state): it reports
  ``SafetensorError("... (os error 28)")``, not an OSError, after writing part of the file;
- :class:`mmbert.safetensors_dir.SafetensorsStream` (``merge``): ``write`` raises ``OSError``
  ENOSPC after some bytes;
- ``shutil.copyfile`` (``export``): ENOSPC after a partial copy.

For ``export``, ``merge``, ``convert`` and a checkpoint write during ``pretrain``: exit 2 with
exactly one ``error:`` line naming the output and "no space left on device" (no traceback);
nothing is published, the previous output (``--overwrite``) or checkpoint stays intact and no
temporary file or directory is left; after "space is freed" (the injection removed) a rerun
completes, and a resumed training run ends with the same weights as an uninterrupted one.

Read-only: the output's parent is chmod 0o555. Tests may run as root, where the mode does not
stop writes; a probe detects that and the read-only file system (EROFS) and permission
(EACCES) failures are injected at ``mkdir``/``open`` under that parent instead, so the check
runs either way.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from mmbert.cli import main as cli_main
from test_train import MODEL, data, write_recipe  # noqa: F401 (fixture)

NOSPACE = "no space left on device"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread for every run here (module scope: before the module's reference run), so
    the runs compared bit for bit share their arithmetic."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class FullDisk:
    """Let ``budget`` write calls through, then fail every later one with ENOSPC."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, budget: int = 0):
        import safetensors.torch as st

        import mmbert.safetensors_dir as sd

        self.budget, self.failed = budget, 0
        real_serialize, real_copy = st.serialize_file, shutil.copyfile

        def serialize_file(tensors, filename, metadata=None):
            if self._spend():
                return real_serialize(tensors, filename, metadata=metadata)
            Path(filename).write_bytes(b"\0" * 100)  # the part that fitted
            from safetensors import SafetensorError

            raise SafetensorError('Error while serializing: I/O error: No space left on device '
                                  f'(os error 28) at path "{filename}"')

        def copyfile(src, dst, *a, **k):
            if self._spend():
                return real_copy(src, dst, *a, **k)
            Path(dst).write_bytes(Path(src).read_bytes()[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        class Full:
            def __init__(self, f):
                self.f = f

            def write(self, b):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            def __getattr__(self, k):
                return getattr(self.f, k)

        def stream_open(path, mode="r", *a, **k):
            f = open(path, mode, *a, **k)
            return f if self._spend() or "w" not in mode else Full(f)

        monkeypatch.setattr(st, "serialize_file", serialize_file)
        monkeypatch.setattr(shutil, "copyfile", copyfile)
        monkeypatch.setattr(sd, "open", stream_open, raising=False)

    def _spend(self) -> bool:
        if self.budget > 0:
            self.budget -= 1
            return True
        self.failed += 1
        return False


def _fails(argv: list[str], capsys, *needles: str) -> str:
    capsys.readouterr()
    rc = cli_main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _no_temp(parent: Path) -> None:
    left = [p.name for p in parent.rglob(".*") if ".tmp" in p.name or ".old" in p.name]
    assert not left, left


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    from mmbert.config import preset
    from mmbert.model import MaskedLM

    cfg = preset("tiny").replace(vocab_size=96, hidden_size=32, intermediate_size=48,
                                 num_hidden_layers=2, num_attention_heads=2)
    base = tmp_path_factory.mktemp("models")
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        MaskedLM(cfg).save_pretrained(base / f"m{seed}")
        out.append(base / f"m{seed}")
    return out[0], out[1]


def _commands(models, out: Path) -> dict[str, list[str]]:
    a, b = models
    return {"convert": ["convert", str(a), "--out", str(out)],
            "merge": ["merge", "--method", "linear", "--models", str(a), str(b),
                      "--out", str(out)]}


@pytest.mark.parametrize("cmd", ["convert", "merge"])
def test_full_disk_new_and_overwritten_output(cmd, models, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    argv = _commands(models, out)[cmd]
    with monkeypatch.context() as m:
        disk = FullDisk(m)
        _fails(argv, capsys, str(out), NOSPACE)
        assert disk.failed
    assert not out.exists()
    _no_temp(work)
    # space freed: the same command completes
    assert cli_main(argv) == 0
    before = _tree(out)
    assert "model.safetensors" in before
    # full again while replacing it: the previous output stays as it was
    with monkeypatch.context() as m:
        FullDisk(m)
        _fails([*argv, "--overwrite"], capsys, str(out), NOSPACE)
    assert _tree(out) == before
    _no_temp(work)
    assert cli_main([*argv, "--overwrite"]) == 0


def _recipe(data, every=1) -> dict:  # noqa: F811
    return {"name": "disk", "seed": 1, "shards": str(data["shards"]),
            "tokenizer": str(data["tokenizer"]), "precision": "fp32",
            "model": {"preset": "tiny", "overrides": dict(MODEL)},
            "checkpoint": {"every_steps": every, "keep_last": 5},
            "phases": [{"name": "p1", "tokens": 2048, "languages": 3, "tau": 0.7,
                        "mask_ratio": 0.3, "seq_len": 64, "batch_tokens": 512,
                        "micro_batch_tokens": 256, "lr": 3e-3, "warmup_tokens": 512}]}


def _weights(d: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(d / "model.safetensors"))


@pytest.fixture(scope="module")
def reference_run(data, tmp_path_factory) -> Path:  # noqa: F811
    base = tmp_path_factory.mktemp("disk_ref")
    rec = write_recipe(base / "r.yaml", _recipe(data))
    assert cli_main(["pretrain", "--recipe", str(rec), "--out", str(base / "run")]) == 0
    return base / "run"


def test_full_disk_during_checkpoint_write_then_resume(data, reference_run, tmp_path, capsys,
                                                        monkeypatch):  # noqa: F811
    from mmbert.train.checkpoint import verify

    rec = write_recipe(tmp_path / "r.yaml", _recipe(data))
    run = tmp_path / "run"
    argv = ["pretrain", "--recipe", str(rec), "--out", str(run)]
    # step 1's checkpoint: model + optimizer (2 safetensors writes); step 2's model write fails
    with monkeypatch.context() as m:
        FullDisk(m, budget=2)
        line = _fails(argv, capsys, NOSPACE, "step-00000002")
    assert str(run / "checkpoints") in line
    ckdir = run / "checkpoints"
    assert [p.name for p in ckdir.iterdir() if not p.name.startswith(".lock")] == [
        "step-00000001"]
    verify(ckdir / "step-00000001")  # the previous checkpoint is intact
    _no_temp(run)
    # space freed: resume completes, with the weights of an uninterrupted run
    assert cli_main([*argv, "--resume"]) == 0, capsys.readouterr().err
    a, b = _weights(reference_run / "export" / "p1"), _weights(run / "export" / "p1")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_full_disk_during_export(reference_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "hf"
    argv = ["export", str(reference_run), str(out)]
    with monkeypatch.context() as m:
        FullDisk(m)
        _fails(argv, capsys, str(out), NOSPACE)
    assert not out.exists()
    _no_temp(tmp_path)
    assert cli_main(argv) == 0
    before = _tree(out)
    with monkeypatch.context() as m:
        FullDisk(m)
        _fails([*argv, "--overwrite"], capsys, str(out), NOSPACE)
    assert _tree(out) == before
    _no_temp(tmp_path)


# ---------------------------------------------------------------------------------------------
# Read-only output location
# ---------------------------------------------------------------------------------------------

def _mode_blocks_writes(d: Path) -> bool:
    """Whether chmod 0o555 on ``d`` stops this process from creating files there (not as root
    or with CAP_DAC_OVERRIDE)."""
    probe = d / ".probe"
    try:
        probe.mkdir()
    except PermissionError:
        return True
    probe.rmdir()
    return False


def _inject(monkeypatch: pytest.MonkeyPatch, parent: Path, code: int) -> None:
    """Creating anything under ``parent`` fails with ``code`` (as a read-only mount would)."""
    real_mkdir, real_open = Path.mkdir, os.open

    def under(p) -> bool:
        try:
            return Path(p).resolve().is_relative_to(parent.resolve()) and \
                Path(p).resolve() != parent.resolve()
        except (OSError, ValueError):
            return False

    def mkdir(self, *a, **k):
        if under(self) and not self.exists():
            raise OSError(code, os.strerror(code), str(self))
        return real_mkdir(self, *a, **k)

    def os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(path):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", os_open)


@pytest.mark.parametrize("cmd", ["convert", "merge"])
def test_read_only_output_location(cmd, models, tmp_path, capsys, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    out = parent / "out"
    argv = _commands(models, out)[cmd]
    parent.chmod(0o555)
    try:
        if _mode_blocks_writes(parent):
            _fails(argv, capsys, str(out), "permission denied")
        else:  # root: the mode does not stop writes; fail them as a read-only mount does
            for code, words in ((errno.EROFS, "read-only file system"),
                                (errno.EACCES, "permission denied")):
                with monkeypatch.context() as m:
                    _inject(m, parent, code)
                    _fails(argv, capsys, str(out), words)
        assert not out.exists() and list(parent.iterdir()) == []
    finally:
        parent.chmod(stat.S_IRWXU)
    assert cli_main(argv) == 0  # writable again: it completes


def test_read_only_run_directory(data, tmp_path, capsys, monkeypatch):  # noqa: F811
    rec = write_recipe(tmp_path / "r.yaml", _recipe(data))
    parent = tmp_path / "ro"
    parent.mkdir()
    run = parent / "run"
    argv = ["pretrain", "--recipe", str(rec), "--out", str(run)]
    parent.chmod(0o555)
    try:
        with monkeypatch.context() as m:
            if not _mode_blocks_writes(parent):
                _inject(m, parent, errno.EROFS)
            _fails(argv, capsys, str(parent))
    finally:
        parent.chmod(stat.S_IRWXU)
