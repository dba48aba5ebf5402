"""One fine-tuning runner for every task: read, prepare (the task's part), train, write.

A task (:class:`FinetuneTask`) reads its examples and prepares a :class:`Run`: the model, the
epoch's batches, the loss of a batch, the evaluation on the eval examples, and its summary.
:func:`run_finetune` does the rest the same way for all tasks: the output directory, the model's
tokenizer, the training loop (:func:`fit`), the model and tokenizer files and ``finetune.json``.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from mmbert.safetensors_dir import copy_tokenizer
from mmbert.outputs import OutputDir, write_json
from mmbert.text import TextTokenizer, load_text_tokenizer

Batch = list[int]  # row indices into the training examples
History = list[dict[str, Any]]


@dataclass(frozen=True)
class TrainOptions:
    """The options every task takes (``mmbert finetune`` flags of the same names)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    max_length: int
    seed: int
    max_steps: int | None


@dataclass(frozen=True)
class Sources:
    """Where the examples came from (for error messages)."""

    train: str
    eval: str


@dataclass
class Run:
    """What a task prepares for one fine-tuning run."""

    model: torch.nn.Module
    make_batches: Callable[[int], list[Batch]]  # epoch -> batches
    loss: Callable[[torch.nn.Module, Batch], torch.Tensor]
    evaluate: Callable[[], dict[str, float]] | None  # None without eval examples
    summary: Callable[[History], dict[str, Any]]  # -> finetune.json
    write_files: Callable[[Path], None] | None = None  # files besides model and tokenizer


class FinetuneTask(Protocol):
    name: str

    def read(self, path: str | Path) -> list[Any]: ...

    def prepare(self, model_dir: str | Path, tt: TextTokenizer, train: list[Any],
                dev: list[Any] | None, opts: TrainOptions, sources: Sources) -> Run: ...


def run_finetune(task: FinetuneTask, model_dir: str | Path, train_path: str | Path | None,
                 out_dir: str | Path, eval_path: str | Path | None, opts: TrainOptions, *,
                 tokenizer: str | Path | None = None, train_examples: list[Any] | None = None,
                 eval_examples: list[Any] | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune ``model_dir`` for ``task``; write ``out_dir`` (an :class:`OutputDir`, checked
    before any training) and return the summary written to its ``finetune.json``."""
    from mmbert.hf import read_config

    out = OutputDir(out_dir, overwrite=overwrite)
    out.check()  # before any training
    config, _ = read_config(model_dir)
    tt = load_text_tokenizer(model_dir, config, tokenizer)
    train = train_examples if train_examples is not None else task.read(train_path)
    dev = eval_examples if eval_examples is not None else (
        task.read(eval_path) if eval_path else None)
    set_seed(opts.seed)  # the new head's initialisation too: the same --seed, the same model
    run = task.prepare(model_dir, tt, train, dev, opts, Sources(str(train_path), str(eval_path)))
    with out as tmp:
        history = fit(run.model, run.make_batches, run.loss, epochs=opts.epochs, lr=opts.lr,
                      weight_decay=opts.weight_decay, seed=opts.seed, evaluate=run.evaluate,
                      log_path=tmp / "metrics.jsonl", desc=f"finetune {task.name}",
                      max_steps=opts.max_steps)
        run.model.save_pretrained(tmp)
        copy_tokenizer_files(tt.source, tmp, tt)
        if run.write_files is not None:
            run.write_files(tmp)
        summary = run.summary(history)
        write_json(tmp / "finetune.json", summary)
    return summary


def finetuned_max_length(model_dir: str | Path, default: int = 512) -> int:
    """The ``max_length`` a model was fine-tuned with (its finetune.json), else ``default``."""
    f = Path(model_dir) / "finetune.json"
    try:
        return int(json.loads(f.read_text(encoding="utf-8"))["max_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return default


def copy_tokenizer_files(src: str | Path, dst: str | Path,
                         tt: TextTokenizer | None = None) -> None:
    """Copy the tokenizer files (those present) so the output loads with AutoTokenizer.

    With ``tt``, the copied tokenizer.json is made to frame text exactly as fine-tuning did
    (``[CLS] a [SEP]``, pairs ``[CLS] a [SEP] b [SEP]``): if its post-processor does not, a
    TemplateProcessing one is set, so transformers / sentence-transformers feed the same ids.
    A minimal tokenizer_config.json naming the special tokens is written when there is none.
    """
    s = Path(src)
    s = s if s.is_dir() else s.parent
    d = Path(dst)
    copy_tokenizer(s, d)
    if tt is None or not (d / "tokenizer.json").is_file():
        return
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    probe_a, probe_b = tt.ids("a b"), tt.ids("c")
    want_single = tt.frame(probe_a, None, 10**6)
    want_pair = tt.frame(probe_a, probe_b, 10**6)
    if tok.encode("a b").ids != want_single or tok.encode("a b", "c").ids != want_pair:
        cls_t, sep_t = tok.id_to_token(tt.cls_id), tok.id_to_token(tt.sep_id)
        tok.post_processor = TemplateProcessing(
            single=f"{cls_t} $A {sep_t}", pair=f"{cls_t} $A {sep_t} $B:1 {sep_t}:1",
            special_tokens=[(cls_t, tt.cls_id), (sep_t, tt.sep_id)])
        tok.save(str(d / "tokenizer.json"))
    if not (d / "tokenizer_config.json").is_file():
        names = {"pad_token": tt.pad_id, "cls_token": tt.cls_id, "sep_token": tt.sep_id,
                 "bos_token": tt.cls_id, "eos_token": tt.sep_id}
        cfg: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
        cfg.update({k: tok.id_to_token(v) for k, v in names.items() if tok.id_to_token(v)})
        for k, t in (("mask_token", "<mask>"), ("unk_token", "<unk>")):
            if tok.token_to_id(t) is not None:
                cfg[k] = t
        write_json(d / "tokenizer_config.json", cfg)


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------

def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, total_steps: int,
                   warmup_ratio: float = 0.1):
    """AdamW (no decay on norms/biases/embeddings) with linear warmup then linear decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embeddings" in name or "norm" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98),
                            eps=1e-6)
    warm = max(1, int(math.ceil(warmup_ratio * total_steps)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _train_epoch(model: torch.nn.Module, batches: Sequence[Batch], loss_fn, opt, sched, bar,
                 step: int, total: int, grad_clip: float) -> tuple[int, list[float]]:
    """One pass (stopping at ``total`` steps): the step reached and the batch losses."""
    model.train()
    losses = []
    for batch in batches:
        if step >= total:
            break
        loss = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return step, losses


def fit(model: torch.nn.Module, make_batches, loss_fn, *, epochs: int, lr: float,
        weight_decay: float, seed: int, evaluate=None, log_path: Path | None = None,
        desc: str = "finetune", max_steps: int | None = None,
        grad_clip: float = 1.0) -> History:
    """Train ``epochs`` passes; after each, ``evaluate()`` -> metrics (logged, returned).

    ``make_batches(epoch)`` returns the epoch's list of batches; ``loss_fn(model, batch)``
    returns a scalar loss. Deterministic for a fixed seed (torch, numpy and batch order).
    """
    from tqdm.auto import tqdm

    set_seed(seed)
    n_per_epoch = len(make_batches(0))
    total = n_per_epoch * epochs if max_steps is None else min(max_steps, n_per_epoch * epochs)
    opt, sched = make_optimizer(model, lr, weight_decay, total)
    history: History = []
    step = 0
    bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, leave=False)
    for epoch in range(epochs):
        step, losses = _train_epoch(model, make_batches(epoch), loss_fn, opt, sched, bar, step,
                                    total, grad_clip)
        model.eval()
        rec: dict[str, Any] = {"epoch": epoch + 1, "step": step,
                               "train_loss": float(np.mean(losses)) if losses else float("nan")}
        if evaluate is not None:
            with torch.no_grad():
                rec.update(evaluate())
        history.append(rec)
        bar.write(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in rec.items()))
        if log_path is not None:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
        if step >= total:
            break
    bar.close()
    return history
