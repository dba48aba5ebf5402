"""Sequence classification (``text`` or ``premise`` + ``hypothesis`` -> ``label``).

The classifier is transformers' ModernBertForSequenceClassification layout (pooling from
``config.classifier_pooling``, mean by default for mmBERT); a masked-LM directory is a valid
start (its ``head.`` weights initialise the classifier's head, the final linear is fresh).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from mmbert.errors import MmbertError
from mmbert.scores import accuracy, macro_f1
from mmbert.tasks.classifier import ClassifierTask, label_ids
from mmbert.tasks.io import SequenceExample, read_sequence_file
from mmbert.tasks.runner import TrainOptions, run_finetune
from mmbert.text import TextTokenizer, length_batches, packed_batches


def encode_examples(tt: TextTokenizer, examples: Sequence[SequenceExample],
                    max_length: int) -> list[list[int]]:
    return tt.frame_pairs([ex.text for ex in examples], [ex.text_pair for ex in examples],
                          max_length)


def predict(model, seqs: list[list[int]], batch_size: int = 64) -> list[int]:
    out = [0] * len(seqs)
    model.eval()
    with torch.no_grad():
        batches = length_batches([len(s) for s in seqs], batch_size)
        for b, p in packed_batches(seqs, batches):
            for i, y in zip(b, model(**p.kwargs()).logits.argmax(-1).tolist()):
                out[i] = y
    return out


class SequenceTask(ClassifierTask):
    name = "sequence"
    model_class_name = "SequenceClassifier"

    def read(self, path: str | Path) -> list[SequenceExample]:
        return read_sequence_file(path)

    def example_labels(self, example: SequenceExample) -> list[str]:
        return [example.label]

    def gold(self, examples: Sequence[SequenceExample], label2id: dict[str, int],
             source: str) -> list[int]:
        return label_ids([ex.label for ex in examples], label2id, source)

    def check_labels(self, labels: list[str], source: str) -> None:
        if len(labels) < 2:
            raise MmbertError(f"{source}: only one label ({labels[0]!r}); expected at least two "
                              "classes")

    def rows(self, tt: TextTokenizer, examples: Sequence[SequenceExample], gold: Sequence[int],
             max_length: int) -> tuple[list[list[int]], list[list[int]]]:
        return encode_examples(tt, examples, max_length), [[y] for y in gold]

    def predict(self, model, tt: TextTokenizer, examples: Sequence[SequenceExample],
                max_length: int) -> list[int]:
        return predict(model, encode_examples(tt, examples, max_length))

    def metrics(self, pred: list[int], gold: list[int], labels: list[str]) -> dict[str, float]:
        return {"accuracy": accuracy(pred, gold), "macro_f1": macro_f1(pred, gold, len(labels))}


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
    opts = TrainOptions(epochs, batch_size, lr, weight_decay, max_length, seed, max_steps)
    return run_finetune(SequenceTask(), model_dir, train_path, out_dir, eval_path, opts,
                        tokenizer=tokenizer, train_examples=train_examples,
                        eval_examples=eval_examples, overwrite=overwrite)
