"""What sequence and token classification share: labels from the training examples (sorted, so
the same file always gives the same ids), the classifier model, training rows, evaluation during
fine-tuning and the scoring of a fine-tuned classifier on a labelled file (``mmbert eval
--data``). A subclass says how examples are read, labelled, framed, predicted and scored.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from mmbert.errors import MmbertError
from mmbert.tasks.runner import Run, Sources, TrainOptions, finetuned_max_length
from mmbert.text import TextTokenizer, length_batches, load_text_tokenizer, pack


def label_ids(labels: Sequence[str], label2id: dict[str, int], source: str) -> list[int]:
    """Ids of ``labels``; a label not seen in training is an error naming ``source``."""
    try:
        return [label2id[l] for l in labels]
    except KeyError as e:
        raise MmbertError(f"{source}: label {e.args[0]!r} was not seen in training; expected one "
                          f"of {sorted(label2id)}") from None


class ClassifierTask:
    """Base of the classification tasks; subclasses set ``name`` and ``model_class`` (imported
    lazily: :mod:`mmbert.model` is torch-heavy) and the methods below that raise."""

    name = "classifier"
    model_class_name = ""

    @property
    def model_class(self) -> Any:
        import mmbert.model

        return getattr(mmbert.model, self.model_class_name)

    # -- what a subclass says -------------------------------------------------------------------
    def read(self, path: str | Path) -> list[Any]:
        raise NotImplementedError

    def example_labels(self, example: Any) -> Sequence[str]:
        """The label strings of one example."""
        raise NotImplementedError

    def gold(self, examples: Sequence[Any], label2id: dict[str, int], source: str) -> list[Any]:
        raise NotImplementedError

    def check_labels(self, labels: list[str], source: str) -> None:
        """Refuse a training label set the task cannot learn from."""

    def rows(self, tt: TextTokenizer, examples: Sequence[Any], gold: Sequence[Any],
             max_length: int) -> tuple[list[list[int]], list[list[int]]]:
        """Training rows: framed ids and the label ids of each row (flattened per batch)."""
        raise NotImplementedError

    def predict(self, model: torch.nn.Module, tt: TextTokenizer, examples: Sequence[Any],
                max_length: int) -> list[Any]:
        raise NotImplementedError

    def metrics(self, pred: list[Any], gold: list[Any], labels: list[str]) -> dict[str, float]:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    def prepare(self, model_dir: str | Path, tt: TextTokenizer, train: list[Any],
                dev: list[Any] | None, opts: TrainOptions, sources: Sources) -> Run:
        labels = sorted({l for ex in train for l in self.example_labels(ex)})
        self.check_labels(labels, sources.train)
        label2id = {l: i for i, l in enumerate(labels)}
        y_train = self.gold(train, label2id, sources.train)
        y_dev = self.gold(dev, label2id, sources.eval) if dev is not None else None
        seqs, targets = self.rows(tt, train, y_train, opts.max_length)
        with warnings.catch_warnings():  # "classifier not stored; initialised freshly": expected
            warnings.simplefilter("ignore", UserWarning)
            model = self.model_class.from_pretrained(model_dir, labels=labels)

        def make_batches(epoch: int) -> list[list[int]]:
            return length_batches([len(s) for s in seqs], opts.batch_size, shuffle=True,
                                  seed=opts.seed * 1000 + epoch)

        def loss(m: torch.nn.Module, b: list[int]) -> torch.Tensor:
            y = torch.tensor([t for i in b for t in targets[i]], dtype=torch.long)
            return m(**pack([seqs[i] for i in b]).kwargs(), labels=y).loss

        def evaluate() -> dict[str, float]:
            pred = self.predict(model, tt, dev, opts.max_length)
            return {f"eval_{k}": v for k, v in self.metrics(pred, y_dev, labels).items()}

        def summary(history: list[dict[str, Any]]) -> dict[str, Any]:
            return {"task": self.name, "labels": labels, "train_examples": len(train),
                    "eval_examples": len(dev) if dev is not None else 0, "history": history,
                    "seed": opts.seed, "max_length": opts.max_length}

        return Run(model, make_batches, loss, evaluate if dev is not None else None, summary)

    def score(self, model_dir: str | Path, path: str | Path, *,
              max_length: int | None = None) -> dict[str, float]:
        """Score a fine-tuned classifier on a labelled file (labels unknown to it: an error)."""
        from mmbert.hf import read_config

        config, _ = read_config(model_dir)
        tt = load_text_tokenizer(model_dir, config)
        max_length = max_length or finetuned_max_length(model_dir)
        model = self.model_class.from_pretrained(model_dir)
        examples = self.read(path)
        gold = self.gold(examples, {l: i for i, l in enumerate(model.labels)}, str(path))
        return self.metrics(self.predict(model, tt, examples, max_length), gold, model.labels)
