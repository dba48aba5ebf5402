"""Token classification (NER, POS, language tagging): word labels on the first subword.

Alignment works from character offsets, not from pre-tokenised input: the words are joined with
single spaces into running text and tokenised as the model saw text in pre-training (Gemma's
vocabulary has no prefix-space tokens, so tokenising words one by one would give pieces the
model never saw). Each token belongs to the first word its character span overlaps; the first
token of each word carries the word's label, every other token gets -100 (ignored by the loss).
A bare word-boundary piece (``▁`` alone, as before digits) spans only the space and belongs to
no word, so the label sits on the first piece with the word's characters.
Empty words (and words of whitespace only) get no token: their label is dropped without
shifting the others. Words cut off by ``max_length`` are dropped too; evaluation counts them as
wrong (``words_lost``), so truncation cannot flatter a score. The alignment itself is
:func:`mmbert.text.encode_words` (the evaluation's word features use it too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from mmbert.config import IGNORE_INDEX
from mmbert.scores import accuracy, is_bio, macro_f1, span_f1
from mmbert.tasks.classifier import ClassifierTask, label_ids
from mmbert.tasks.io import TokenExample, read_token_file
from mmbert.tasks.runner import TrainOptions, run_finetune
from mmbert.text import (TextTokenizer, encode_words, first_token_rows, length_batches,
                         packed_batches)


def align_labels(word_of_token: Sequence[int], word_labels: Sequence[int]) -> list[int]:
    """Token labels: the word's label on its first token, -100 elsewhere."""
    out, seen = [], set()
    for w in word_of_token:
        if w < 0 or w in seen:
            out.append(IGNORE_INDEX)
        else:
            seen.add(w)
            out.append(int(word_labels[w]))
    return out


def predict_words(model, tt: TextTokenizer, examples: Sequence[TokenExample], *,
                  max_length: int = 512, batch_size: int = 32) -> list[list[int]]:
    """Predicted label id per word (-1 for words without a token)."""
    encs = [encode_words(tt, ex.words, max_length) for ex in examples]
    n_words = [len(ex.words) for ex in examples]
    preds: list[list[int]] = [[] for _ in examples]
    model.eval()
    with torch.no_grad():
        batches = length_batches([len(e.ids) for e in encs], batch_size)
        for b, p in packed_batches([e.ids for e in encs], batches):
            arg = model(**p.kwargs()).logits.argmax(-1).tolist()  # [N]
            for i, rows in zip(b, first_token_rows(encs, b, n_words)):
                preds[i] = [arg[r] if r >= 0 else -1 for r in rows]
    return preds


def token_metrics(pred: list[list[int]], gold: list[list[int]],
                  labels: list[str]) -> dict[str, float]:
    """Word accuracy and macro-F1 (lost words count as wrong), entity F1 for BIO tag sets."""
    p = [x for s in pred for x in s]
    g = [x for s in gold for x in s]
    out = {"accuracy": accuracy(p, g), "macro_f1": macro_f1(p, g, len(labels)),
           "words": len(g), "words_lost": int(sum(x < 0 for x in p))}
    if is_bio(labels):
        name = lambda i: labels[i] if i >= 0 else "O"  # noqa: E731
        out["entity_f1"] = span_f1([[name(i) for i in s] for s in pred],
                                   [[name(i) for i in s] for s in gold])
    return out


class TokenTask(ClassifierTask):
    """Word labels from a CoNLL file's ``label_column`` (CoNLL-U; CoNLL-2003: the last)."""

    name = "token"
    model_class_name = "TokenClassifier"

    def __init__(self, label_column: str = "upos") -> None:
        self.label_column = label_column

    def read(self, path: str | Path) -> list[TokenExample]:
        return read_token_file(path, self.label_column)

    def example_labels(self, example: TokenExample) -> list[str]:
        return example.labels

    def gold(self, examples: Sequence[TokenExample], label2id: dict[str, int],
             source: str) -> list[list[int]]:
        return [label_ids(ex.labels, label2id, source) for ex in examples]

    def rows(self, tt: TextTokenizer, examples: Sequence[TokenExample],
             gold: Sequence[list[int]], max_length: int) -> tuple[list[list[int]], list[list[int]]]:
        encs = [encode_words(tt, ex.words, max_length) for ex in examples]
        return [e.ids for e in encs], [align_labels(e.word_of_token, y)
                                       for e, y in zip(encs, gold)]

    def predict(self, model, tt: TextTokenizer, examples: Sequence[TokenExample],
                max_length: int) -> list[list[int]]:
        return predict_words(model, tt, examples, max_length=max_length)

    def metrics(self, pred: list[list[int]], gold: list[list[int]],
                labels: list[str]) -> dict[str, float]:
        return token_metrics(pred, gold, labels)


def finetune_token(model_dir: str | Path, train_path: str | Path, out_dir: str | Path,
                   eval_path: str | Path | None = None, *, label_column: str = "upos",
                   epochs: int = 3, batch_size: int = 16, lr: float = 5e-5,
                   weight_decay: float = 0.01, max_length: int = 256, seed: int = 0,
                   max_steps: int | None = None, tokenizer: str | Path | None = None,
                   train_examples: list[TokenExample] | None = None,
                   eval_examples: list[TokenExample] | None = None,
                   overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune a ModernBERT directory for token classification; write a transformers
    ``ModernBertForTokenClassification`` directory (id2label/label2id in config.json)."""
    opts = TrainOptions(epochs, batch_size, lr, weight_decay, max_length, seed, max_steps)
    return run_finetune(TokenTask(label_column), model_dir, train_path, out_dir, eval_path, opts,
                        tokenizer=tokenizer, train_examples=train_examples,
                        eval_examples=eval_examples, overwrite=overwrite)
