"""Sequence classification (``text`` or ``premise`` + ``hypothesis`` -> ``label``).

The classifier is transformers' ModernBertForSequenceClassification layout (pooling from
``config.classifier_pooling``, mean by default for mmBERT); a masked-LM directory is a valid
start (its ``head.`` weights initialise the classifier's head, the final linear is fresh).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from mmbert.errors import MmbertError
from mmbert.outputs import OutputDir, write_json
from mmbert.tasks.common import (TextTokenizer, accuracy, copy_tokenizer_files, fit,
                                 finetuned_max_length, length_batches, load_text_tokenizer,
                                 macro_f1, pack)
from mmbert.tasks.io import SequenceExample, read_sequence_file


def encode_examples(tt: TextTokenizer, examples: Sequence[SequenceExample],
                    max_length: int) -> list[list[int]]:
    a = tt.ids_batch([ex.text for ex in examples])
    pairs = [ex.text_pair for ex in examples]
    b = tt.ids_batch([p for p in pairs if p is not None])
    it = iter(b)
    return [tt.frame(x, next(it) if p is not None else None, max_length) for x, p in zip(a, pairs)]


def to_ids(examples: Sequence[SequenceExample], label2id: dict[str, int], source: str) -> list[int]:
    try:
        return [label2id[ex.label] for ex in examples]
    except KeyError as e:
        raise MmbertError(f"{source}: label {e.args[0]!r} was not seen in training; expected one "
                          f"of {sorted(label2id)}") from None


def predict(model, seqs: list[list[int]], batch_size: int = 64) -> list[int]:
    out = [0] * len(seqs)
    model.eval()
    with torch.no_grad():
        for b in length_batches([len(s) for s in seqs], batch_size):
            logits = model(**pack([seqs[i] for i in b]).kwargs()).logits
            for i, y in zip(b, logits.argmax(-1).tolist()):
                out[i] = y
    return out


def sequence_metrics(pred: list[int], gold: list[int], num_labels: int) -> dict[str, float]:
    return {"accuracy": accuracy(pred, gold), "macro_f1": macro_f1(pred, gold, num_labels)}


def finetune_sequence(model_dir: str | Path, train_path: str | Path | None, out_dir: str | Path,
                      eval_path: str | Path | None = None, *, epochs: int = 3,
                      batch_size: int = 16, lr: float = 5e-5, weight_decay: float = 0.01,
                      max_length: int = 256, seed: int = 0, max_steps: int | None = None,
                      tokenizer: str | Path | None = None,
                      train_examples: list[SequenceExample] | None = None,
                      eval_examples: list[SequenceExample] | None = None,
                      overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune for sequence classification; write a transformers
    ``ModernBertForSequenceClassification`` directory with id2label/label2id."""
    from mmbert.hf import read_config
    from mmbert.model import SequenceClassifier

    out = OutputDir(out_dir, overwrite=overwrite)
    out.check()  # before any training
    config, _ = read_config(model_dir)
    tt = load_text_tokenizer(model_dir, config, tokenizer)
    train = train_examples if train_examples is not None else read_sequence_file(train_path)
    dev = eval_examples if eval_examples is not None else (
        read_sequence_file(eval_path) if eval_path else None)
    labels = sorted({ex.label for ex in train})
    if len(labels) < 2:
        raise MmbertError(f"{train_path}: only one label ({labels[0]!r}); expected at least two "
                          "classes")
    label2id = {l: i for i, l in enumerate(labels)}
    y_train = to_ids(train, label2id, str(train_path))
    y_dev = to_ids(dev, label2id, str(eval_path)) if dev is not None else None
    x_train = encode_examples(tt, train, max_length)
    x_dev = encode_examples(tt, dev, max_length) if dev is not None else None
    with warnings.catch_warnings():  # "classifier not stored; initialised freshly": expected
        warnings.simplefilter("ignore", UserWarning)
        model = SequenceClassifier.from_pretrained(model_dir, labels=labels)

    def make_batches(epoch: int):
        return length_batches([len(s) for s in x_train], batch_size, shuffle=True,
                              seed=seed * 1000 + epoch)

    def loss_fn(m, b):
        y = torch.tensor([y_train[i] for i in b], dtype=torch.long)
        return m(**pack([x_train[i] for i in b]).kwargs(), labels=y).loss

    def evaluate() -> dict[str, float]:
        m = sequence_metrics(predict(model, x_dev), y_dev, len(labels))
        return {f"eval_{k}": v for k, v in m.items()}

    with out as tmp:
        history = fit(model, make_batches, loss_fn, epochs=epochs, lr=lr,
                      weight_decay=weight_decay, seed=seed,
                      evaluate=evaluate if dev is not None else None,
                      log_path=tmp / "metrics.jsonl", desc="finetune sequence",
                      max_steps=max_steps)
        model.save_pretrained(tmp)
        copy_tokenizer_files(tt.source, tmp, tt)
        summary = {"task": "sequence", "labels": labels, "train_examples": len(train),
                   "eval_examples": len(dev) if dev is not None else 0, "history": history,
                   "seed": seed, "max_length": max_length}
        write_json(tmp / "finetune.json", summary)
    return summary


def evaluate_sequence(model_dir: str | Path, path: str | Path, *,
                      max_length: int | None = None) -> dict[str, float]:
    """Score a fine-tuned sequence classifier on a JSONL/CSV file."""
    from mmbert.hf import read_config
    from mmbert.model import SequenceClassifier

    config, _ = read_config(model_dir)
    tt = load_text_tokenizer(model_dir, config)
    max_length = max_length or finetuned_max_length(model_dir)
    model = SequenceClassifier.from_pretrained(model_dir)
    examples = read_sequence_file(path)
    gold = to_ids(examples, {l: i for i, l in enumerate(model.labels)}, str(path))
    return sequence_metrics(predict(model, encode_examples(tt, examples, max_length)), gold,
                            len(model.labels))
