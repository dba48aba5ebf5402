"""Sentence embeddings: contrastive fine-tuning, sentence-transformers export.

Embedding (:func:`mmbert.text.embed_texts`) = mean of the final hidden states over all real
tokens of ``[CLS] text [SEP]``, L2-normalised (what sentence-transformers' mean Pooling +
Normalize compute on the exported directory, so both give the same vectors).

Contrastive training is InfoNCE with in-batch negatives: for a batch of pairs (a_i, p_i) the
loss is the cross-entropy of ``cos(a_i, p_j) / temperature`` with target j = i, in both
directions (a -> p and p -> a, averaged). A low temperature (0.05) sharpens the softmax over
negatives, as in E5/SimCSE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmbert.errors import MmbertError
from mmbert.outputs import write_json
from mmbert.scores import retrieval_at1
from mmbert.tasks.io import PairExample, read_pair_file
from mmbert.tasks.runner import Run, Sources, TrainOptions, run_finetune
from mmbert.text import TextTokenizer, embed_texts, mean_pool, pack, random_batches


# ---------------------------------------------------------------------------------------------
# sentence-transformers directory
# ---------------------------------------------------------------------------------------------

def write_sentence_transformers_files(d: Path, hidden_size: int, max_seq_length: int) -> None:
    """modules.json + sentence_bert_config.json + 1_Pooling + 2_Normalize, the transformer at
    the root (the classic layout: sentence-transformers 2.x through 6.x load it)."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"},
    ]
    write_json(d / "modules.json", modules)
    write_json(d / "sentence_bert_config.json", {"max_seq_length": max_seq_length,
                                                 "do_lower_case": False})
    (d / "1_Pooling").mkdir(exist_ok=True)
    write_json(d / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden_size, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False, "include_prompt": True})
    (d / "2_Normalize").mkdir(exist_ok=True)
    write_json(d / "config_sentence_transformers.json", {
        "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"})


# ---------------------------------------------------------------------------------------------
# Contrastive fine-tuning
# ---------------------------------------------------------------------------------------------

def info_nce(a: torch.Tensor, p: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives on L2-normalised embeddings."""
    logits = (a @ p.T) / temperature
    target = torch.arange(len(a))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@dataclass(frozen=True)
class EmbeddingTask:
    temperature: float
    name: str = "embedding"

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise MmbertError(f"--temperature {self.temperature}: expected a positive number")

    def read(self, path: str | Path) -> list[PairExample]:
        return read_pair_file(path)

    def prepare(self, model_dir: str | Path, tt: TextTokenizer, train: list[PairExample],
                dev: list[PairExample] | None, opts: TrainOptions, sources: Sources) -> Run:
        from mmbert.model import Encoder

        if len(train) < 2:
            raise MmbertError(f"{sources.train}: {len(train)} pair; expected at least 2 "
                              "(in-batch negatives)")
        xa = tt.frame_texts([e.anchor for e in train], opts.max_length)
        xp = tt.frame_texts([e.positive for e in train], opts.max_length)
        encoder = Encoder.from_pretrained(model_dir)

        def make_batches(epoch: int) -> list[list[int]]:
            batches = random_batches(len(train), opts.batch_size, opts.seed * 1000 + epoch)
            return [b for b in batches if len(b) > 1]

        def loss(m: torch.nn.Module, b: list[int]) -> torch.Tensor:
            p = pack([xa[i] for i in b] + [xp[i] for i in b])
            emb = mean_pool(m(**p.kwargs()).last_hidden_state, p.cu_seqlens)
            return info_nce(emb[:len(b)], emb[len(b):], self.temperature)

        def evaluate() -> dict[str, float]:
            ea = embed_texts(encoder, tt, [e.anchor for e in dev], max_length=opts.max_length)
            ep = embed_texts(encoder, tt, [e.positive for e in dev], max_length=opts.max_length)
            return {"eval_acc@1_a2p": retrieval_at1(ea, ep),
                    "eval_acc@1_p2a": retrieval_at1(ep, ea)}

        before = evaluate() if dev is not None else {}

        def summary(history: list[dict[str, Any]]) -> dict[str, Any]:
            return {"task": self.name, "train_pairs": len(train),
                    "eval_pairs": len(dev) if dev is not None else 0, "before": before,
                    "history": history, "seed": opts.seed, "temperature": self.temperature,
                    "max_length": opts.max_length}

        def write_files(d: Path) -> None:
            write_sentence_transformers_files(d, encoder.config.hidden_size, opts.max_length)

        return Run(encoder, make_batches, loss, evaluate if dev is not None else None, summary,
                   write_files)


def finetune_embedding(model_dir: str | Path, train_path: str | Path | None, out_dir: str | Path,
                       eval_path: str | Path | None = None, *, epochs: int = 1,
                       batch_size: int = 32, lr: float = 5e-5, weight_decay: float = 0.01,
                       temperature: float = 0.05, max_length: int = 256, seed: int = 0,
                       max_steps: int | None = None, tokenizer: str | Path | None = None,
                       train_examples: list[PairExample] | None = None,
                       eval_examples: list[PairExample] | None = None,
                       overwrite: bool = False) -> dict[str, Any]:
    """Contrastive fine-tuning on text pairs; writes a sentence-transformers directory whose
    root is a transformers ``ModernBertModel``."""
    opts = TrainOptions(epochs, batch_size, lr, weight_decay, max_length, seed, max_steps)
    return run_finetune(EmbeddingTask(temperature), model_dir, train_path, out_dir, eval_path,
                        opts, tokenizer=tokenizer, train_examples=train_examples,
                        eval_examples=eval_examples, overwrite=overwrite)
