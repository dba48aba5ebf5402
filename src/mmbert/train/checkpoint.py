"""Training checkpoints: one directory per step, atomic, checksummed, never unpickled.

Layout of ``CKPTS/step-00000120/``::

    model/config.json, model/model.safetensors   the weights, transformers layout
    optimizer.safetensors                         AdamW moments, keyed "<param>.exp_avg[_sq]"
    optimizer.json                                per-parameter step counts, group settings
    trainer.json                                  step, tokens, phase position (the schedule
                                                  state), data-iterator state per data slot
                                                  (records.TrainerRecord)
    rank-00000.json ...                           RNG states per rank (python, numpy, torch)
    manifest.json                                 sha256 and size of every file above

Written by rank 0 into ``.tmp-step-...`` and renamed when complete, so a kill during the write
leaves only a temp directory (ignored and cleaned up later). The manifest is written last; a
directory whose files do not match it is corrupt (truncated, edited, bit rot). Tensors go to
safetensors, everything else to JSON: loading a checkpoint runs no pickle.

Phase-end checkpoints (``"phase_end": true`` in trainer.json) are never rotated away, so every
phase can be evaluated later; of the others the last ``keep_last`` are kept.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from mmbert.errors import MmbertError
from mmbert.faults import kill_point
from mmbert.outputs import WriteError, sha256_file, write_error
from mmbert.train.records import FORMAT, TRAINER_JSON, TrainerRecord, read_trainer_record

PREFIX = "step-"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
MANIFEST = "manifest.json"
# Test hook: SIGKILL ourselves half-way through writing the checkpoint of this step.
FAULT_ENV = "MMBERT_FAULT_KILL_IN_CHECKPOINT"


def step_dir_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())


def _fault(step: int) -> None:
    if os.environ.get(FAULT_ENV) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)
    kill_point(f"checkpoint:{step}")


# ---------------------------------------------------------------------------------------------
# RNG state as JSON
# ---------------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states as plain JSON data."""
    import random

    import numpy as np

    py = random.getstate()
    npst = np.random.get_state()
    d: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        d["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return d


def set_rng_state(d: dict[str, Any]) -> None:
    import random

    import numpy as np

    py = d["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = d["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.tensor(d["torch"], dtype=torch.uint8))
    if "cuda" in d and torch.cuda.is_available():
        states = [torch.tensor(s, dtype=torch.uint8) for s in d["cuda"]]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def write_checkpoint(root: Path, step: int, *, write_model: Callable[[Path], None],
                     optim_tensors: dict[str, torch.Tensor], optim_meta: dict[str, Any],
                     trainer_state: dict[str, Any], rank_states: list[dict[str, Any]],
                     keep_last: int) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically (rank 0 only), then rotate.
    ``trainer_state``: trainer.json's content (:meth:`TrainerRecord.to_json`). A full disk or
    a read-only ``root`` is a :class:`~mmbert.outputs.WriteError` naming the checkpoint."""
    final = root / step_dir_name(step)
    tmp = root / f"{TMP_PREFIX}{step_dir_name(step)}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        _write_step(root, step, tmp, final, write_model, optim_tensors, optim_meta,
                    trainer_state, rank_states)
    except BaseException as e:
        # a failed write leaves no temporary directory; the checkpoints before it stay as
        # they were (a SIGKILL cannot be caught: clean_temp removes its leftovers on resume)
        shutil.rmtree(tmp, ignore_errors=True)
        err = write_error(final, e)
        if err is None:
            raise
        raise WriteError(final, err.reason) from None
    rotate(root, keep_last)
    return final


def _write_step(root: Path, step: int, tmp: Path, final: Path, write_model: Callable[[Path], None],
                optim_tensors: dict[str, torch.Tensor], optim_meta: dict[str, Any],
                trainer_state: dict[str, Any], rank_states: list[dict[str, Any]]) -> None:
    from mmbert.safetensors_dir import save_file

    write_model(tmp / "model")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in optim_tensors.items()}
    save_file(tensors, tmp / "optimizer.safetensors")
    _fault(step)
    _write_json(tmp / "optimizer.json", optim_meta)
    _write_json(tmp / TRAINER_JSON, {"format": FORMAT, **trainer_state})
    for r, st in enumerate(rank_states):
        _write_json(tmp / f"rank-{r:05d}.json", st)
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    manifest = {"format": FORMAT, "step": step, "files": {
        str(p.relative_to(tmp)): {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files}}
    for p in files:  # make the data durable before the rename publishes it
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    _write_json(tmp / MANIFEST, manifest)
    _fsync_dir(tmp)
    if final.exists():  # re-saving a step (e.g. a resumed run): replace the old copy
        trash = root / f"{TRASH_PREFIX}{final.name}-{os.getpid()}"
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(root)


def _is_phase_end(path: Path) -> bool:
    try:
        return read_trainer_record(path).phase_end
    except MmbertError:
        return False


def list_checkpoints(root: Path) -> list[Path]:
    """Published checkpoint directories under ``root``, oldest first."""
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit():
            out.append(p)
    return sorted(out, key=lambda p: int(p.name[len(PREFIX):]))


def rotate(root: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` non-phase-end checkpoints (rename, then delete)."""
    rolling = [p for p in list_checkpoints(root) if not _is_phase_end(p)]
    for p in rolling[:-keep_last] if keep_last > 0 else rolling:
        trash = root / f"{TRASH_PREFIX}{p.name}-{os.getpid()}"
        os.replace(p, trash)
        shutil.rmtree(trash, ignore_errors=True)


def clean_temp(root: Path) -> None:
    """Remove leftovers of interrupted writes and deletions."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def verify(path: Path) -> None:
    """Raise MmbertError naming the first problem if ``path`` is not an intact checkpoint."""
    mf = path / MANIFEST
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
        files = manifest["files"]
        assert isinstance(files, dict) and files
    except FileNotFoundError:
        raise MmbertError(f"checkpoint {path}: {MANIFEST} missing (incomplete write?)") from None
    except (OSError, ValueError, KeyError, AssertionError, TypeError, UnicodeDecodeError):
        raise MmbertError(f"checkpoint {path}: {MANIFEST} unreadable or malformed") from None
    for rel, info in files.items():
        p = path / rel
        if not p.is_file():
            raise MmbertError(f"checkpoint {path}: {rel} missing")
        size = p.stat().st_size
        if size != info.get("bytes"):
            raise MmbertError(f"checkpoint {path}: {rel} has {size} bytes, manifest says "
                              f"{info.get('bytes')} (truncated?)")
        if sha256_file(p) != info.get("sha256"):
            raise MmbertError(f"checkpoint {path}: {rel} fails its sha256 check (corrupt)")


def find_latest_valid(root: Path, log: Callable[[str], None] = print) -> Path | None:
    """The newest intact checkpoint under ``root``; corrupt ones are reported and skipped.

    None if there are no checkpoints at all; MmbertError if there are some but none is intact
    (starting over silently would throw the run away).
    """
    found = list_checkpoints(root)
    problems = []
    for p in reversed(found):
        try:
            verify(p)
        except MmbertError as e:
            problems.append(str(e))
            log(f"warning: {e}; falling back to the previous checkpoint")
            continue
        return p
    if found:
        raise MmbertError(f"{root}: no intact checkpoint to resume from ({problems[0]}); "
                          f"expected at least one directory passing its manifest check")
    return None


@dataclass
class Checkpoint:
    """A verified checkpoint read back into memory (model weights stay on disk in ``model/``)."""

    path: Path
    trainer: dict[str, Any]  # trainer.json as read; typed: ``record``
    optim_meta: dict[str, Any]
    optim_tensors: dict[str, torch.Tensor]
    rank_states: list[dict[str, Any]]

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def record(self) -> TrainerRecord:
        return TrainerRecord.from_json(self.trainer, self.path)


def read_checkpoint(path: Path, *, check: bool = True) -> Checkpoint:
    from safetensors.torch import load_file

    if check:
        verify(path)
    try:
        trainer = json.loads((path / TRAINER_JSON).read_text(encoding="utf-8"))
        optim_meta = json.loads((path / "optimizer.json").read_text(encoding="utf-8"))
        ranks = sorted(path.glob("rank-*.json"))
        rank_states = [json.loads(p.read_text(encoding="utf-8")) for p in ranks]
    except (OSError, ValueError) as e:
        raise MmbertError(f"checkpoint {path}: unreadable state ({e})") from None
    if trainer.get("format") != FORMAT:
        raise MmbertError(f"checkpoint {path}: format {trainer.get('format')!r}; expected {FORMAT}")
    opt = path / "optimizer.safetensors"
    try:
        tensors = load_file(str(opt))
    except Exception as e:  # safetensors raises several types for a bad file; never unpickled
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MmbertError(f"checkpoint {path}: {opt.name} is not a readable safetensors file "
                          f"({msg}); expected the optimizer state this trainer wrote") from None
    return Checkpoint(path, trainer, optim_meta, tensors, rank_states)


def resolve(path: str | Path) -> Path:
    """A checkpoint directory, or a run/checkpoints directory (then its newest intact one)."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        return p
    for root in (p, p / "checkpoints"):
        if list_checkpoints(root):
            found = find_latest_valid(root)
            if found is not None:
                return found
    raise MmbertError(f"{p}: not a checkpoint (no {MANIFEST}) nor a run directory with "
                      f"checkpoints/step-*")
