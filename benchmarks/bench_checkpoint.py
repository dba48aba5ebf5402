"""Training checkpoint size and save/load time for a model preset (weights + optimizer).

The checkpoint is the one ``mmbert pretrain`` writes (``mmbert.train.checkpoint``): the model
(safetensors, fp32, the tied decoder stored once), StableAdamW's two moments per parameter,
trainer.json and one RNG file per rank, a manifest of sha256 sums, every file fsync'ed. The
moments are real ones, from one optimizer step on random gradients.

Measured, each ``--repeats`` times (median reported):
- save: ``write_checkpoint`` as rank 0 calls it (weights, moments, JSON, sha256, fsync, rename);
- verify: the manifest check of a resume (sha256 of every file), page cache evicted first;
- load: ``read_checkpoint`` (with verify) + weights and moments copied into the model and the
  optimizer, page cache evicted first (``posix_fadvise(DONTNEED)``: the files are read from the
  disk, as by a job starting on another node).

Usage: ``python benchmarks/bench_checkpoint.py [--preset mmbert-small] [--out runs/bench-ckpt]
[--repeats 3]``; prints a table and writes ``OUT/bench_checkpoint.json``. Needs about 4x the
checkpoint size in memory and 1x on disk under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def evict(path: Path) -> None:
    """Drop ``path``'s files from the page cache (clean pages only; no root needed)."""
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(fn: Callable[[], Any], repeats: int, before: Callable[[], None] = lambda: None
          ) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs (``before`` runs untimed each time)."""
    out = []
    for _ in range(repeats):
        before()
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def model_and_optimizer(preset: str) -> tuple[Any, Any]:
    """The preset's MaskedLM and a StableAdamW with moments (one step on random gradients)."""
    import torch

    from mmbert.config import preset as get_preset
    from mmbert.model import MaskedLM
    from mmbert.train.optim import build_optimizer

    torch.manual_seed(0)
    model = MaskedLM(get_preset(preset))
    opt = build_optimizer(model, "stableadamw", 8e-4, (0.9, 0.95), 1e-8, 8e-5)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    opt.zero_grad(set_to_none=True)
    return model, opt


def bench(preset: str, out: Path, repeats: int) -> dict[str, Any]:
    import mmbert.train.checkpoint as ckpt
    from mmbert.train.records import TrainerRecord, TrainState
    from mmbert.train.trainer import load_model_weights, load_optimizer_state, optimizer_state

    model, opt = model_and_optimizer(preset)
    params = sum(p.numel() for p in model.parameters())
    root = out / "checkpoints"
    shutil.rmtree(root, ignore_errors=True)
    tensors, meta = optimizer_state(model, opt)
    record = TrainerRecord(TrainState(step=1), "pretrain", None, False, 1, {}, None).to_json()
    state = {"n": 0}

    def save() -> None:
        state["n"] += 1
        ckpt.write_checkpoint(root, state["n"], write_model=model.save_pretrained,
                              optim_tensors=tensors, optim_meta=meta, trainer_state=record,
                              rank_states=[{"rng": ckpt.rng_state()}], keep_last=1)

    save_s = timed(save, repeats)
    path = ckpt.list_checkpoints(root)[-1]
    files = {str(p.relative_to(path)): p.stat().st_size for p in path.rglob("*") if p.is_file()}

    def load() -> None:
        c = ckpt.read_checkpoint(path)
        load_model_weights(model, c.model_dir)
        load_optimizer_state(model, opt, c.optim_tensors, c.optim_meta)

    verify_s = timed(lambda: ckpt.verify(path), repeats, lambda: evict(path))
    load_s = timed(load, repeats, lambda: evict(path))
    shutil.rmtree(root, ignore_errors=True)
    return {"preset": preset, "parameters": params, "bytes": sum(files.values()),
            "files": files, "save_s": save_s, "verify_s": verify_s, "load_s": load_s,
            "repeats": repeats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", action="append", default=None,
                    help="model preset (repeatable; default mmbert-small)")
    ap.add_argument("--out", default="runs/bench-ckpt")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    import torch

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
           "results": [bench(p, out, a.repeats) for p in a.preset or ["mmbert-small"]]}
    print(f"{res['cpu']}, {res['cores']} cores, torch {res['torch']}")
    print(f"{'preset':14s} {'params':>9s} {'size':>9s} {'B/param':>8s} {'save s':>7s} "
          f"{'verify s':>9s} {'load s':>7s}")
    for r in res["results"]:
        print(f"{r['preset']:14s} {r['parameters'] / 1e6:8.1f}M {r['bytes'] / 2**20:7.0f}MiB "
              f"{r['bytes'] / r['parameters']:8.2f} {r['save_s']:7.2f} {r['verify_s']:9.2f} "
              f"{r['load_s']:7.2f}")
    (out / "bench_checkpoint.json").write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
