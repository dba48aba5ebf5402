"""Shared pieces of the fine-tuning loops: tokenizer, packing, length batching, seeds, metrics.

Batches are *packed* (``input_ids [N]`` + ``cu_seqlens``): the encoder computes on real tokens
only, so sorting by length matters for the memory bound of a batch, not for padding waste.
Texts are framed as ModernBERT does: ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]`` with the
special ids of the model's config (Gemma's bos=cls 2, eos=sep 1).
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from mmbert.config import ModelConfig
from mmbert.errors import MmbertError
from mmbert.hf import TOKENIZER_FILES
from mmbert.outputs import write_json


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

@dataclass
class TextTokenizer:
    """A ``tokenizers.Tokenizer`` plus the model's special ids (from its config)."""

    tok: Any  # tokenizers.Tokenizer
    cls_id: int
    sep_id: int
    pad_id: int
    source: str

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def ids(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def ids_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def frame(self, a: list[int], b: list[int] | None = None, max_length: int = 512) -> list[int]:
        """``[CLS] a [SEP] (b [SEP])``, truncating the longer side first to ``max_length``."""
        a, b = list(a), (list(b) if b is not None else None)
        budget = max_length - (3 if b is not None else 2)
        if budget < 1:
            raise MmbertError(f"max_length {max_length}: too small; expected at least 4")
        if b is None:
            a = a[:budget]
            return [self.cls_id, *a, self.sep_id]
        while len(a) + len(b) > budget:
            (a if len(a) >= len(b) else b).pop()
        return [self.cls_id, *a, self.sep_id, *b, self.sep_id]


def load_text_tokenizer(model_dir: str | Path, config: ModelConfig,
                        tokenizer_path: str | Path | None = None) -> TextTokenizer:
    """The tokenizer stored with a model (``tokenizer.json``), checked against its vocabulary.

    A tokenizer whose vocabulary is larger than the model's embedding matrix would index out of
    range (or silently use the wrong rows): that is an error, said in one line. Framing uses the
    config's cls/sep ids; one outside the vocabulary (transformers' defaults left in a
    config.json with a small vocabulary) is taken from the tokenizer, else an error names it.
    """
    from mmbert.hf import tokenizer_special_ids
    from mmbert.tokenizer import load_tokenizer

    p = Path(tokenizer_path) if tokenizer_path is not None else Path(model_dir)
    f = p / "tokenizer.json" if p.is_dir() else p
    if not f.is_file():
        raise MmbertError(f"{p}: no tokenizer.json; expected the model's tokenizer next to "
                          "config.json (or pass --tokenizer)")
    tok = load_tokenizer(f).backend  # encode_special_tokens: "<mask>" in text stays text
    n = tok.get_vocab_size(with_added_tokens=True)
    if n > config.vocab_size:
        raise MmbertError(f"{f}: tokenizer has {n} tokens but the model's config.json has "
                          f"vocab_size {config.vocab_size}; expected the tokenizer the model was "
                          "trained with")
    ids = {}
    for field in ("cls_token_id", "sep_token_id"):
        ids[field] = getattr(config, field)
        if ids[field] >= config.vocab_size:
            ids[field] = tokenizer_special_ids(f).get(field)
            if ids[field] is None or ids[field] >= config.vocab_size:
                config.token_id(field, f"framing text as [CLS] ... [SEP] with {f}")  # raises
    return TextTokenizer(tok, ids["cls_token_id"], ids["sep_token_id"], config.pad_token_id,
                         str(f))


def copy_tokenizer_files(src: str | Path, dst: str | Path,
                         tt: "TextTokenizer | None" = None) -> None:
    """Copy the tokenizer files (those present) so the output loads with AutoTokenizer.

    With ``tt``, the copied tokenizer.json is made to frame text exactly as fine-tuning did
    (``[CLS] a [SEP]``, pairs ``[CLS] a [SEP] b [SEP]``): if its post-processor does not, a
    TemplateProcessing one is set, so transformers / sentence-transformers feed the same ids.
    A minimal tokenizer_config.json naming the special tokens is written when there is none.
    """
    s = Path(src)
    s = s if s.is_dir() else s.parent
    d = Path(dst)
    for name in TOKENIZER_FILES:
        if (s / name).is_file():
            shutil.copyfile(s / name, d / name)
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
# Batching
# ---------------------------------------------------------------------------------------------

@dataclass
class Packed:
    input_ids: torch.Tensor  # [N] long
    cu_seqlens: torch.Tensor  # [S+1] int32
    max_seqlen: int

    def kwargs(self) -> dict[str, Any]:
        return {"input_ids": self.input_ids, "cu_seqlens": self.cu_seqlens,
                "max_seqlen": self.max_seqlen}


def pack(seqs: Sequence[Sequence[int]]) -> Packed:
    lens = [len(s) for s in seqs]
    ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long)
    cu = torch.zeros(len(seqs) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lens, dtype=torch.int32), 0)
    return Packed(ids, cu, max(lens))


def length_batches(lengths: Sequence[int], batch_size: int, *, max_tokens: int | None = None,
                   shuffle: bool = False, seed: int = 0) -> list[list[int]]:
    """Index batches of similar length: sort by length, cut into batches of at most
    ``batch_size`` rows (and ``max_tokens`` tokens); shuffled batch order for training."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_tokens = 0
    for i in order:
        if cur and (len(cur) >= batch_size or
                    (max_tokens is not None and cur_tokens + lengths[i] > max_tokens)):
            batches.append(cur)
            cur, cur_tokens = [], 0
        cur.append(i)
        cur_tokens += lengths[i]
    if cur:
        batches.append(cur)
    if shuffle:
        random.Random(seed).shuffle(batches)
    return batches


def random_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """Shuffled fixed-size batches (contrastive training wants mixed, not length-sorted, rows)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


# ---------------------------------------------------------------------------------------------
# Optimisation
# ---------------------------------------------------------------------------------------------

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


def finetuned_max_length(model_dir: str | Path, default: int = 512) -> int:
    """The ``max_length`` a model was fine-tuned with (its finetune.json), else ``default``."""
    f = Path(model_dir) / "finetune.json"
    try:
        return int(json.loads(f.read_text(encoding="utf-8"))["max_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return default


def batched(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


# ---------------------------------------------------------------------------------------------
# Metrics (shared with mmbert.evaluate)
# ---------------------------------------------------------------------------------------------

def accuracy(pred: Sequence[int], gold: Sequence[int]) -> float:
    if len(gold) == 0:
        return float("nan")
    return float(np.mean(np.asarray(pred) == np.asarray(gold)))


def macro_f1(pred: Sequence[int], gold: Sequence[int], num_labels: int) -> float:
    """Unweighted mean F1 over the classes that occur in ``gold`` or ``pred``."""
    p, g = np.asarray(pred), np.asarray(gold)
    f1s = []
    for c in range(num_labels):
        tp = int(((p == c) & (g == c)).sum())
        fp = int(((p == c) & (g != c)).sum())
        fn = int(((p != c) & (g == c)).sum())
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else float("nan")


def _spans(tags: Sequence[str]) -> set[tuple[int, int, str]]:
    """Entity spans of a BIO/IOB2 sequence (an I- without a matching B- starts a span)."""
    spans, start, kind = set(), None, None
    for i, t in enumerate(list(tags) + ["O"]):
        prefix, _, k = t.partition("-")
        if start is not None and (prefix in ("O", "B", "S") or k != kind or not k):
            spans.add((start, i, kind))
            start, kind = None, None
        if prefix in ("B", "S") or (prefix in ("I", "E") and start is None and k):
            start, kind = i, k
    return spans


def is_bio(labels: Sequence[str]) -> bool:
    return all(l == "O" or (l[:2] in ("B-", "I-", "E-", "S-") and len(l) > 2) for l in labels) \
        and any(l != "O" for l in labels)


def span_f1(pred_tags: Sequence[Sequence[str]], gold_tags: Sequence[Sequence[str]]) -> float:
    """Micro entity F1 (CoNLL-2003 style, exact span and type)."""
    tp = fp = fn = 0
    for p, g in zip(pred_tags, gold_tags):
        ps, gs = _spans(p), _spans(g)
        tp += len(ps & gs)
        fp += len(ps - gs)
        fn += len(gs - ps)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")


# ---------------------------------------------------------------------------------------------
# The training loop shared by the three tasks
# ---------------------------------------------------------------------------------------------

def fit(model: torch.nn.Module, make_batches, loss_fn, *, epochs: int, lr: float,
        weight_decay: float, seed: int, evaluate=None, log_path: Path | None = None,
        desc: str = "finetune", max_steps: int | None = None,
        grad_clip: float = 1.0) -> list[dict[str, Any]]:
    """Train ``epochs`` passes; after each, ``evaluate()`` -> metrics (logged, returned).

    ``make_batches(epoch)`` returns the epoch's list of batches; ``loss_fn(model, batch)``
    returns a scalar loss. Deterministic for a fixed seed (torch, numpy and batch order).
    """
    from tqdm.auto import tqdm

    set_seed(seed)
    n_per_epoch = len(make_batches(0))
    total = n_per_epoch * epochs if max_steps is None else min(max_steps, n_per_epoch * epochs)
    opt, sched = make_optimizer(model, lr, weight_decay, total)
    history: list[dict[str, Any]] = []
    step = 0
    bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, leave=False)
    for epoch in range(epochs):
        model.train()
        losses = []
        for batch in make_batches(epoch):
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
