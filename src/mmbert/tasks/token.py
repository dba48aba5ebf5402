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
wrong (``words_lost``), so truncation cannot flatter a score.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from mmbert.config import IGNORE_INDEX
from mmbert.errors import MmbertError
from mmbert.outputs import OutputDir, write_json
from mmbert.tasks.common import (TextTokenizer, accuracy, copy_tokenizer_files, fit,
                                 is_bio, length_batches, finetuned_max_length,
                                 load_text_tokenizer, macro_f1, pack,
                                 span_f1)
from mmbert.tasks.io import TokenExample, read_token_file


@dataclass
class WordEncoding:
    ids: list[int]  # [CLS] tokens [SEP]
    word_of_token: list[int]  # per id: index into the words, -1 for specials / no word

    def first_tokens(self, n_words: int) -> list[int]:
        """Position of each word's first token, -1 where the word has none (empty/truncated)."""
        first = [-1] * n_words
        for pos, w in enumerate(self.word_of_token):
            if w >= 0 and first[w] < 0:
                first[w] = pos
        return first


def encode_words(tt: TextTokenizer, words: Sequence[str], max_length: int = 512) -> WordEncoding:
    """Tokenise pre-split words as running text and map every token back to its word."""
    starts: list[int] = []
    ends: list[int] = []
    index: list[int] = []
    parts: list[str] = []
    pos = 0
    for j, w in enumerate(words):
        if not w or w.isspace():
            continue
        if parts:
            pos += 1  # the joining space
        starts.append(pos)
        ends.append(pos + len(w))
        index.append(j)
        parts.append(w)
        pos += len(w)
    if not parts:
        return WordEncoding([tt.cls_id, tt.sep_id], [-1, -1])
    enc = tt.tok.encode(" ".join(parts), add_special_tokens=False)
    word_of: list[int] = []
    for s, e in enc.offsets:
        k = bisect_right(ends, s)  # first word ending after the token starts
        word_of.append(index[k] if k < len(ends) and starts[k] < max(e, s + 1) else -1)
    keep = max_length - 2
    return WordEncoding([tt.cls_id, *enc.ids[:keep], tt.sep_id], [-1, *word_of[:keep], -1])


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


# ---------------------------------------------------------------------------------------------
# Data, prediction, metrics
# ---------------------------------------------------------------------------------------------

def label_ids(examples: list[TokenExample], label2id: dict[str, int],
              source: str) -> list[list[int]]:
    out = []
    for ex in examples:
        try:
            out.append([label2id[l] for l in ex.labels])
        except KeyError as e:
            raise MmbertError(f"{source}: label {e.args[0]!r} was not seen in training; expected "
                              f"one of {sorted(label2id)}") from None
    return out


def predict_words(model, tt: TextTokenizer, examples: Sequence[TokenExample], *,
                  max_length: int = 512, batch_size: int = 32) -> list[list[int]]:
    """Predicted label id per word (-1 for words without a token)."""
    encs = [encode_words(tt, ex.words, max_length) for ex in examples]
    preds: list[list[int]] = [[] for _ in examples]
    model.eval()
    with torch.no_grad():
        for b in length_batches([len(e.ids) for e in encs], batch_size):
            p = pack([encs[i].ids for i in b])
            logits = model(**p.kwargs()).logits  # [N, C]
            arg = logits.argmax(-1).tolist()
            off = 0
            for i in b:
                n = len(encs[i].ids)
                first = encs[i].first_tokens(len(examples[i].words))
                preds[i] = [arg[off + f] if f >= 0 else -1 for f in first]
                off += n
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


# ---------------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------------

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
    from mmbert.hf import read_config
    from mmbert.model import TokenClassifier

    out = OutputDir(out_dir, overwrite=overwrite)
    out.check()  # before any training
    config, _ = read_config(model_dir)
    tt = load_text_tokenizer(model_dir, config, tokenizer)
    train = (train_examples if train_examples is not None
             else read_token_file(train_path, label_column))
    dev = eval_examples if eval_examples is not None else (
        read_token_file(eval_path, label_column) if eval_path else None)
    labels = sorted({l for ex in train for l in ex.labels})
    label2id = {l: i for i, l in enumerate(labels)}
    y_train = label_ids(train, label2id, str(train_path))
    y_dev = label_ids(dev, label2id, str(eval_path)) if dev is not None else None

    encs = [encode_words(tt, ex.words, max_length) for ex in train]
    tok_labels = [align_labels(e.word_of_token, y) for e, y in zip(encs, y_train)]
    with warnings.catch_warnings():  # "classifier not stored; initialised freshly": expected
        warnings.simplefilter("ignore", UserWarning)
        model = TokenClassifier.from_pretrained(model_dir, labels=labels)

    def make_batches(epoch: int):
        return length_batches([len(e.ids) for e in encs], batch_size, shuffle=True,
                              seed=seed * 1000 + epoch)

    def loss_fn(m, b):
        p = pack([encs[i].ids for i in b])
        y = torch.tensor([t for i in b for t in tok_labels[i]], dtype=torch.long)
        return m(**p.kwargs(), labels=y).loss

    def evaluate() -> dict[str, float]:
        pred = predict_words(model, tt, dev, max_length=max_length)
        return {f"eval_{k}": v for k, v in token_metrics(pred, y_dev, labels).items()}

    with out as tmp:
        history = fit(model, make_batches, loss_fn, epochs=epochs, lr=lr,
                      weight_decay=weight_decay, seed=seed,
                      evaluate=evaluate if dev is not None else None,
                      log_path=tmp / "metrics.jsonl", desc="finetune token", max_steps=max_steps)
        model.save_pretrained(tmp)
        copy_tokenizer_files(tt.source, tmp, tt)
        summary = {"task": "token", "labels": labels, "train_examples": len(train),
                   "eval_examples": len(dev) if dev is not None else 0, "history": history,
                   "seed": seed, "max_length": max_length}
        write_json(tmp / "finetune.json", summary)
    return summary


def evaluate_token(model_dir: str | Path, path: str | Path, *, label_column: str = "upos",
                   max_length: int | None = None) -> dict[str, float]:
    """Score a fine-tuned token classifier on a CoNLL file (unknown labels are an error)."""
    from mmbert.hf import read_config
    from mmbert.model import TokenClassifier

    config, _ = read_config(model_dir)
    tt = load_text_tokenizer(model_dir, config)
    max_length = max_length or finetuned_max_length(model_dir)
    model = TokenClassifier.from_pretrained(model_dir)
    examples = read_token_file(path, label_column)
    label2id = {l: i for i, l in enumerate(model.labels)}
    gold = label_ids(examples, label2id, str(path))
    return token_metrics(predict_words(model, tt, examples, max_length=max_length), gold,
                         model.labels)

