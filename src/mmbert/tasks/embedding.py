"""Sentence embeddings: mean pooling, contrastive fine-tuning, sentence-transformers export.

Embedding = mean of the final hidden states over all real tokens of ``[CLS] text [SEP]``,
L2-normalised (what sentence-transformers' mean Pooling + Normalize compute on the exported
directory, so both give the same vectors).

Contrastive training is InfoNCE with in-batch negatives: for a batch of pairs (a_i, p_i) the
loss is the cross-entropy of ``cos(a_i, p_j) / temperature`` with target j = i, in both
directions (a -> p and p -> a, averaged). A low temperature (0.05) sharpens the softmax over
negatives, as in E5/SimCSE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mmbert.errors import MmbertError
from mmbert.outputs import OutputDir, write_json
from mmbert.tasks.common import (TextTokenizer, copy_tokenizer_files, fit,
                                 length_batches, load_text_tokenizer, pack, random_batches)
from mmbert.tasks.io import PairExample, read_pair_file


def mean_pool(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """[N, H] packed token states -> [S, H] L2-normalised means per sequence."""
    cu = cu_seqlens.long()
    seg = torch.repeat_interleave(torch.arange(cu.numel() - 1), cu.diff())
    sums = hidden.float().new_zeros(cu.numel() - 1, hidden.shape[-1]).index_add_(0, seg,
                                                                                hidden.float())
    return F.normalize(sums / cu.diff().clamp(min=1)[:, None].float(), dim=-1)


def embed_ids(encoder, seqs: Sequence[Sequence[int]], *, batch_size: int = 64,
              max_tokens: int = 16384) -> np.ndarray:
    """Embeddings of framed id sequences, batched by length (sort, batch, unsort)."""
    out = np.zeros((len(seqs), encoder.config.hidden_size), dtype=np.float32)
    encoder.eval()
    with torch.no_grad():
        for b in length_batches([len(s) for s in seqs], batch_size, max_tokens=max_tokens):
            p = pack([seqs[i] for i in b])
            h = encoder(**p.kwargs()).last_hidden_state
            out[b] = mean_pool(h, p.cu_seqlens).numpy()
    return out


def embed_texts(encoder, tt: TextTokenizer, texts: Sequence[str], *, batch_size: int = 64,
                max_length: int = 512) -> np.ndarray:
    """L2-normalised mean-pooled embeddings ``[len(texts), H]`` (float32 numpy)."""
    seqs = [tt.frame(ids, None, max_length) for ids in tt.ids_batch(list(texts))] if texts else []
    return embed_ids(encoder, seqs, batch_size=batch_size)


def retrieval_at1(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows i of ``a`` whose nearest row of ``b`` (cosine) is row i."""
    if len(a) == 0:
        return float("nan")
    return float(np.mean((a @ b.T).argmax(1) == np.arange(len(a))))


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
    from mmbert.hf import read_config
    from mmbert.model import Encoder

    if not temperature > 0:
        raise MmbertError(f"--temperature {temperature}: expected a positive number")
    out = OutputDir(out_dir, overwrite=overwrite)
    out.check()  # before any training
    config, _ = read_config(model_dir)
    tt = load_text_tokenizer(model_dir, config, tokenizer)
    train = train_examples if train_examples is not None else read_pair_file(train_path)
    dev = eval_examples if eval_examples is not None else (
        read_pair_file(eval_path) if eval_path else None)
    if len(train) < 2:
        raise MmbertError(f"{train_path}: {len(train)} pair; expected at least 2 (in-batch "
                          "negatives)")
    frame = lambda texts: [tt.frame(x, None, max_length) for x in tt.ids_batch(texts)]  # noqa: E731
    xa, xp = frame([e.anchor for e in train]), frame([e.positive for e in train])
    encoder = Encoder.from_pretrained(model_dir)

    def make_batches(epoch: int):
        batches = random_batches(len(train), batch_size, seed * 1000 + epoch)
        return [b for b in batches if len(b) > 1]

    def loss_fn(m, b):
        p = pack([xa[i] for i in b] + [xp[i] for i in b])
        emb = mean_pool(m(**p.kwargs()).last_hidden_state, p.cu_seqlens)
        return info_nce(emb[:len(b)], emb[len(b):], temperature)

    def evaluate() -> dict[str, float]:
        ea = embed_texts(encoder, tt, [e.anchor for e in dev], max_length=max_length)
        ep = embed_texts(encoder, tt, [e.positive for e in dev], max_length=max_length)
        return {"eval_acc@1_a2p": retrieval_at1(ea, ep), "eval_acc@1_p2a": retrieval_at1(ep, ea)}

    before = evaluate() if dev is not None else {}
    with out as tmp:
        history = fit(encoder, make_batches, loss_fn, epochs=epochs, lr=lr,
                      weight_decay=weight_decay, seed=seed,
                      evaluate=evaluate if dev is not None else None,
                      log_path=tmp / "metrics.jsonl", desc="finetune embedding",
                      max_steps=max_steps)
        encoder.save_pretrained(tmp)
        copy_tokenizer_files(tt.source, tmp, tt)
        write_sentence_transformers_files(tmp, config.hidden_size, max_length)
        summary = {"task": "embedding", "train_pairs": len(train),
                   "eval_pairs": len(dev) if dev is not None else 0,
                   "before": {k: v for k, v in before.items()}, "history": history, "seed": seed,
                   "temperature": temperature, "max_length": max_length}
        write_json(tmp / "finetune.json", summary)
    return summary
