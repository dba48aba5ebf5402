"""Held-out masked-LM accuracy per language.

Each language's held-out documents (token shards' ``heldout`` split, or the corpus'
``heldout/<lang>.txt`` tokenised with the model's tokenizer) are cut into ``[CLS] ... [SEP]``
windows of at most ``seq_len`` tokens, up to ``max_tokens`` tokens per language. A fixed share
(15% by default) of the non-special tokens is masked with the pre-training 80/10/10 rule, from a
generator seeded by (seed, language), so a language's score does not depend on which other
languages are evaluated. Accuracy = argmax prediction equals the original token, over all
masked positions (replaced by [MASK], random, or kept).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from mmbert.data.masking import mask_tokens
from mmbert.errors import MmbertError
from mmbert.tasks.common import length_batches, load_text_tokenizer, pack


def _rng(seed: int, lang: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(lang.encode("utf-8"))])


def windows(docs: Sequence[Sequence[int]], seq_len: int, cls_id: int, sep_id: int,
            max_tokens: int | None) -> list[list[int]]:
    """Frame each document ``[CLS] ... [SEP]``, splitting long ones into ``seq_len`` windows."""
    body = seq_len - 2
    out: list[list[int]] = []
    total = 0
    for d in docs:
        d = [int(t) for t in d]
        for i in range(0, max(len(d), 1), body):
            piece = d[i:i + body]
            if not piece:
                continue
            if max_tokens is not None and total + len(piece) > max_tokens:
                piece = piece[:max_tokens - total]
                if len(piece) < 8:
                    return out
            out.append([cls_id, *piece, sep_id])
            total += len(piece)
            if max_tokens is not None and total >= max_tokens:
                return out
    return out


def _load(model_or_dir):
    """(MaskedLM, model dir or None)."""
    from mmbert.model import MaskedLM

    if isinstance(model_or_dir, (str, Path)):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return MaskedLM.from_pretrained(model_or_dir), Path(model_or_dir)
    if isinstance(model_or_dir, MaskedLM):
        return model_or_dir, None
    raise MmbertError("mlm_accuracy_per_language: expected a model directory or a MaskedLM")


def heldout_documents(data: str | Path, languages: Sequence[str] | None, split: str,
                      tokenizer=None) -> dict[str, list[np.ndarray]]:
    """Token documents per language: from a shards directory (``manifest.json``) or a corpus
    directory (``corpus.json``; text tokenised with ``tokenizer``)."""
    p = Path(data)
    if (p / "manifest.json").is_file():
        from mmbert.data.shards import ShardSet

        ss = ShardSet(p, split=split)
        langs = list(languages) if languages is not None else list(ss.languages)
        return {l: [ss.doc(l, i) for i in range(ss.num_docs(l))] for l in langs
                if l in ss.languages}
    if (p / "corpus.json").is_file():
        if tokenizer is None:
            raise MmbertError(f"{p}: a corpus directory needs the model's tokenizer")
        from mmbert.evaluate.corpus import Corpus

        c = Corpus.open(p)
        langs = list(languages) if languages is not None else c.languages
        out = {}
        for l in langs:
            docs = c.documents(l, split)
            if docs:
                out[l] = [np.asarray(x, dtype=np.int64) for x in tokenizer.ids_batch(docs)]
        return out
    raise MmbertError(f"{p}: neither a shards directory (manifest.json) nor a corpus directory "
                      "(corpus.json)")


def check_shards_tokenizer(shards: str | Path, config, tokenizer_dir: str | Path | None) -> None:
    """Shards made with another vocabulary would score garbage: refuse them in one line."""
    import warnings

    from mmbert.data.shards import read_manifest

    info = read_manifest(shards).get("tokenizer", {})
    n = info.get("vocab_size")
    if isinstance(n, int) and n > config.vocab_size:
        raise MmbertError(f"{shards}: shards use a {n}-token vocabulary but the model's "
                          f"vocab_size is {config.vocab_size}; expected shards made with the "
                          "model's tokenizer")
    t = Path(tokenizer_dir) if tokenizer_dir is not None else None
    if t is None or not (t.is_file() or (t / "tokenizer.json").is_file()):
        return  # shards are already tokenised: a bare checkpoint without tokenizer is fine
    tt = load_text_tokenizer(t, config)
    if isinstance(n, int) and n != tt.vocab_size:
        raise MmbertError(f"{shards}: shards were made with a {n}-token tokenizer but the model's "
                          f"tokenizer ({tt.source}) has {tt.vocab_size}; expected the same "
                          "tokenizer")
    from mmbert.tokenizer import load_tokenizer

    fp = info.get("fingerprint")
    if fp and fp != load_tokenizer(tt.source).fingerprint():
        warnings.warn(f"{shards}: tokenizer fingerprint {fp} differs from the model's "
                      f"tokenizer.json; MLM accuracy assumes the same vocabulary", stacklevel=3)


def mlm_accuracy_per_language(model_dir_or_model, data: str | Path, split: str = "heldout", *,
                              languages: Sequence[str] | None = None, mask_ratio: float = 0.15,
                              seed: int = 0, seq_len: int = 256, max_tokens: int = 2048,
                              batch_tokens: int = 8192, tokenizer_dir: str | Path | None = None,
                              details: bool = False) -> dict[str, Any]:
    """Held-out MLM accuracy per language ``{lang: accuracy}`` (cheap: capped per language).

    ``data`` is a shards directory or a demo corpus directory. With ``details=True`` returns
    ``{lang: {"accuracy", "masked", "tokens"}}`` instead. A model object needs
    ``tokenizer_dir`` when ``data`` is a corpus.
    """
    if not 0 < mask_ratio < 1:
        raise MmbertError(f"mask_ratio {mask_ratio}: expected a value in (0, 1)")
    model, mdir = _load(model_dir_or_model)
    config = model.config
    tok = None
    if (Path(data) / "manifest.json").is_file():
        check_shards_tokenizer(data, config, tokenizer_dir or mdir)
    elif (Path(data) / "corpus.json").is_file():
        tok = load_text_tokenizer(tokenizer_dir or mdir, config)
    docs = heldout_documents(data, languages, split, tok)
    special = np.array(sorted({config.pad_token_id, config.cls_token_id, config.sep_token_id,
                               config.mask_token_id, config.bos_token_id, config.eos_token_id}))
    model.eval()
    # Mask every language first (own generator each), then run one length-sorted pass over all
    # windows: big batches of similar length are far cheaper than one small batch per language.
    seqs: list[list[int]] = []
    labels: list[np.ndarray] = []
    owner: list[str] = []
    tokens: dict[str, int] = {}
    for lang in sorted(docs):
        win = windows(docs[lang], seq_len, config.cls_token_id, config.sep_token_id, max_tokens)
        rng = _rng(seed, lang)
        for w in win:
            x, y = mask_tokens(np.asarray(w), rng, ratio=mask_ratio, mask_id=config.mask_token_id,
                               vocab_size=config.vocab_size, special=special)
            seqs.append(x.tolist())
            labels.append(y)
            owner.append(lang)
        if win:
            tokens[lang] = sum(len(w) - 2 for w in win)
    correct = dict.fromkeys(tokens, 0)
    total = dict.fromkeys(tokens, 0)
    batches = length_batches([len(s) for s in seqs], 10**9, max_tokens=batch_tokens)
    with torch.no_grad():
        for b in tqdm(batches, desc="mlm accuracy", unit="batch", leave=False, disable=None):
            p = pack([seqs[i] for i in b])
            y = torch.from_numpy(np.concatenate([labels[i] for i in b]))
            res = model(**p.kwargs(), labels=y)
            hit = (res.logits.argmax(-1) == y[res.predict_positions]).numpy()
            row = np.repeat(np.arange(len(b)), [len(seqs[i]) for i in b])[
                res.predict_positions.numpy()]
            for r, h in zip(row.tolist(), hit.tolist()):
                lang = owner[b[r]]
                total[lang] += 1
                correct[lang] += int(h)
    out: dict[str, Any] = {}
    for lang in sorted(tokens):
        acc = correct[lang] / total[lang] if total[lang] else float("nan")
        out[lang] = ({"accuracy": acc, "masked": total[lang], "tokens": tokens[lang]}
                     if details else acc)
    return out
