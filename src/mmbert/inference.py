"""Inference helpers: sentence embeddings, fill-mask, ONNX export.

* :func:`embed_texts` / :func:`embed_file` (``mmbert embed``): texts are tokenized, sorted by
  length (longest first) and cut into batches of at most ``batch_tokens`` real tokens, run
  *packed* (no padding at all: ``cu_seqlens``), mean-pooled (or first token) per text,
  L2-normalised and returned in the input order (:mod:`mmbert.text`). Sorting keeps sequences
  of similar length together, which keeps the attention buckets of :mod:`mmbert.attention` free
  of padding too.
* :func:`fill_mask` (``mmbert fill-mask``): top-k tokens at every mask position; the decoder runs
  only at those positions (``predict_positions``).
* :func:`export_onnx` (``mmbert export-onnx``): the unpadded path has data-dependent shapes
  (``nonzero``, per-length buckets chosen in Python) that a trace would freeze, so the export
  runs the same weights through a dense masked-attention formulation (:class:`DenseEncoder`):
  padded ``input_ids`` + ``attention_mask`` -> ``last_hidden_state`` (zeros at padding), exactly
  what ``Encoder`` returns. It costs ``T x T`` attention per layer, fine up to a few thousand
  tokens. The export is checked against torch with onnxruntime when it is installed.

Texts get the model's ``bos`` (= CLS) and ``eos`` (= SEP) ids around them, as mmBERT's tokenizer
does, and are cut to ``max_length`` tokens including those two.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmbert.errors import MmbertError
from mmbert.outputs import OutputDir, atomic_file
from mmbert.tasks.io import json_line
from mmbert.text import TextTokenizer, embed_ids, token_batches

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16}


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise MmbertError(f"--dtype {name!r}: expected fp32 or bf16")
    return DTYPES[name]


def _model_dir(path: str | Path) -> Path:
    p = Path(path)
    if not (p / "config.json").is_file():
        raise MmbertError(f"{p}: not a model directory (no config.json); expected a "
                          "transformers ModernBERT directory")
    return p


def load_tokenizer_for(model_dir: str | Path):
    """The tokenizer saved next to the weights (``mmbert.tokenizer.load_tokenizer``)."""
    from mmbert.tokenizer import load_tokenizer

    d = _model_dir(model_dir)
    if not (d / "tokenizer.json").is_file():
        raise MmbertError(f"{d}: no tokenizer.json; expected the tokenizer saved with the model")
    return load_tokenizer(d)


def mask_token_string(model_dir: str | Path, mask_id: int) -> str:
    """The mask token's text (``<mask>`` for Gemma) as the model directory's tokenizer spells it.

    Read from tokenizer.json's added tokens (where special tokens live), then from
    special_tokens_map.json / tokenizer_config.json."""
    d = Path(model_dir)
    try:
        tj = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
        for t in tj.get("added_tokens", []):
            if t.get("id") == mask_id:
                return str(t["content"])
    except (OSError, ValueError, KeyError):
        pass
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        try:
            m = json.loads((d / name).read_text(encoding="utf-8")).get("mask_token")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(m, dict):
            m = m.get("content")
        if isinstance(m, str) and m:
            return m
    raise MmbertError(f"{d}: cannot find the mask token (id {mask_id}) in tokenizer.json or "
                      "special_tokens_map.json")


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------

def read_texts(path: str | Path) -> list[str]:
    """One text per line, or JSONL objects with a ``text`` field (``.jsonl``/``.json`` files,
    or any file whose first non-empty line starts with ``{``). Empty lines are skipped in
    plain-text files (so the output row count is the number of non-empty lines)."""
    p = Path(path)
    if not p.is_file():
        raise MmbertError(f"{p}: no such file; expected one text per line or JSONL with 'text'")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise MmbertError(f"{p}: not UTF-8 text ({e})") from None
    first = next((ln for ln in lines if ln.strip()), "")
    jsonl = p.suffix in (".jsonl", ".json") or first.lstrip().startswith("{")
    texts: list[str] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not jsonl:
            texts.append(line)
            continue
        obj = json_line(p, n, line, '{"text": "..."} per line')
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise MmbertError(f"{p}:{n}: expected a JSON object with a string field 'text'")
        texts.append(obj["text"])
    if not texts:
        raise MmbertError(f"{p}: no texts; expected one text per line or JSONL with 'text'")
    return texts


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """``[bos] + ids + [eos]``, cut to ``max_length`` (keeping the final eos)."""
    if max_length < 3:
        raise MmbertError(f"--max-length {max_length}: expected at least 3 (bos, a token, eos)")
    return TextTokenizer.from_tokenizer(tokenizer).frame_texts(texts, max_length)


def load_encoder(model_dir: str | Path, dtype: str = "fp32", device: str = "cpu"):
    from mmbert.model import Encoder

    return Encoder.from_pretrained(_model_dir(model_dir), dtype=parse_dtype(dtype),
                                   device=device).eval()


def embed_texts(model_dir: str | Path, texts: list[str], *, dtype: str = "fp32",
                batch_tokens: int = 16384, max_length: int | None = None,
                pooling: str = "mean", normalize: bool = True, device: str = "cpu",
                progress: bool = False) -> np.ndarray:
    """Sentence embeddings of ``texts`` with the model (and tokenizer) in ``model_dir``."""
    encoder = load_encoder(model_dir, dtype, device)
    tok = load_tokenizer_for(model_dir)
    seqs = tokenize(tok, texts, max_length or encoder.config.max_position_embeddings)
    if pooling not in ("mean", "cls"):
        raise MmbertError(f"--pooling {pooling!r}: expected mean or cls")
    return embed_ids(encoder, seqs, token_batches([len(s) for s in seqs], batch_tokens),
                     pooling=pooling, normalize=normalize, progress=progress)


@dataclass
class EmbedResult:
    out: Path
    count: int
    dim: int


def embed_file(model_dir: str | Path, input_path: str | Path, out: str | Path, **kw: Any
               ) -> EmbedResult:
    """``mmbert embed``: texts from a file -> ``[n, hidden]`` float32 ``.npy`` (atomic write)."""
    out = Path(out)
    if out.suffix != ".npy":
        raise MmbertError(f"--out {out}: expected a .npy file name")
    texts = read_texts(input_path)
    emb = embed_texts(model_dir, texts, **kw)
    with atomic_file(out) as tmp, open(tmp, "wb") as f:
        np.save(f, emb)
    return EmbedResult(out, emb.shape[0], emb.shape[1])


# ---------------------------------------------------------------------------------------------
# Fill-mask
# ---------------------------------------------------------------------------------------------

def encode_with_masks(tokenizer: Any, text: str, mask_token: str) -> list[int]:
    """Token ids of ``text`` with ``mask_token`` occurrences as the mask id, inside bos/eos.

    The whole text is encoded when the tokenizer turns the mask string into the mask id itself
    (so the neighbouring tokens are what the model saw in training); otherwise the text is cut
    at the mask strings and the pieces encoded separately."""
    ids = list(tokenizer.encode(text))
    want = text.count(mask_token)
    if ids.count(tokenizer.mask_id) != want:
        ids = []
        for k, piece in enumerate(text.split(mask_token)):
            if k:
                ids.append(tokenizer.mask_id)
            if piece:
                ids.extend(tokenizer.encode(piece))
    return TextTokenizer.from_tokenizer(tokenizer).frame(ids, None, len(ids) + 3)  # no cut


@torch.inference_mode()
def predict_masks(model: nn.Module, ids: list[int], mask_id: int, top_k: int
                  ) -> list[list[tuple[int, float]]]:
    """Top-k (token id, probability) at each mask position of one sequence."""
    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    where = (x[0] == mask_id).nonzero().squeeze(1)
    logits = model(x, predict_positions=where).logits.float()
    probs = logits.softmax(-1)
    p, i = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return [list(zip(i[r].tolist(), p[r].tolist())) for r in range(len(where))]


def fill_mask(model_dir: str | Path, text: str, *, top_k: int = 5, dtype: str = "fp32",
              device: str = "cpu") -> list[list[dict]]:
    """For each mask token in ``text`` (in order), the ``top_k`` predictions as
    ``{"token_id", "token", "score"}`` dicts, most likely first."""
    from mmbert.model import MaskedLM

    if top_k < 1:
        raise MmbertError(f"--top-k {top_k}: expected a positive integer")
    d = _model_dir(model_dir)
    tok = load_tokenizer_for(d)
    mask = mask_token_string(d, tok.mask_id)
    if mask not in text:
        raise MmbertError(f"text: no {mask} token in {text!r}; expected the mask token "
                          f"{mask} where a word should be predicted")
    model = MaskedLM.from_pretrained(d, dtype=parse_dtype(dtype), device=device).eval()
    ids = encode_with_masks(tok, text, mask)
    limit = model.config.max_position_embeddings
    if len(ids) > limit:
        raise MmbertError(f"text: {len(ids)} tokens; expected at most {limit}")
    preds = predict_masks(model, ids, tok.mask_id, top_k)
    return [[{"token_id": t, "token": tok.decode([t]), "score": s} for t, s in row]
            for row in preds]


# ---------------------------------------------------------------------------------------------
# ONNX export
# ---------------------------------------------------------------------------------------------

class DenseEncoder(nn.Module):
    """The encoder's weights in a padded, dense masked-attention form that exports to ONNX.

    Same math as :class:`mmbert.model.Encoder`: positions count real tokens only (left or right
    padding both work), a query sees real keys of its own row (and, in local layers, only those
    within ``local_attention // 2`` positions); outputs at padding are zero."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        c = encoder.config
        self.heads, self.head_dim = c.num_attention_heads, c.head_dim
        self.window = c.local_attention // 2
        for theta in (c.global_rope_theta, c.local_rope_theta):
            if theta <= 0:  # pragma: no cover - validated by ModelConfig
                raise ValueError("rope theta must be positive")

    def _rope(self, pos: torch.Tensor, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.head_dim
        inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        f = pos.float()[..., None] * inv  # [B, T, D/2]
        emb = torch.cat((f, f), dim=-1)[:, :, None, :]  # [B, T, 1, D]
        return emb.cos(), emb.sin()

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        x1, x2 = xf.chunk(2, dim=-1)
        return (xf * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        c = enc.config
        B, T = input_ids.shape
        real = attention_mask > 0
        pos = (real.long().cumsum(1) - 1).clamp(min=0)
        # distances in positions (not slots), so masks with holes behave as the unpadded path
        near = (pos[:, :, None] - pos[:, None, :]).abs() <= self.window  # [B, T, T]
        kvalid = real[:, None, None, :]  # [B, 1, 1, T]
        any_real = real.any(1)[:, None, None, None]
        # rows with no real token at all would be all -inf; let them see everything (zeroed below)
        mask_global = kvalid | ~any_real
        mask_local = (kvalid & near[:, None]) | ~any_real
        # padded query rows in local layers: let them see all real keys (never an empty row)
        mask_local = mask_local | (kvalid & ~real[:, None, :, None])
        ropes = {True: self._rope(pos, c.global_rope_theta),
                 False: self._rope(pos, c.local_rope_theta)}
        x = enc.embeddings(input_ids)
        for layer in enc.layers:
            a = layer.attn
            h = layer.attn_norm(x)
            q, k, v = a.Wqkv(h).view(B, T, 3, self.heads, self.head_dim).unbind(2)
            cos, sin = ropes[a.is_global]
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            o = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                attn_mask=mask_global if a.is_global else mask_local,
                scale=self.head_dim ** -0.5)
            x = x + a.Wo(o.transpose(1, 2).reshape(B, T, -1))
            x = x + layer.mlp(layer.mlp_norm(x))
        x = enc.final_norm(x)
        return x * real[..., None].to(x.dtype)


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float | None  # onnxruntime vs torch on a check batch (None: not checked)


def export_onnx(model_dir: str | Path, out_dir: str | Path, *, opset: int = 17,
                check: bool = True, atol: float = 1e-4, overwrite: bool = False) -> ExportResult:
    """``mmbert export-onnx``: ``OUT/model.onnx`` (inputs ``input_ids``, ``attention_mask``
    ``[batch, seq]`` int64; output ``last_hidden_state`` ``[batch, seq, hidden]`` float32),
    plus the model's config and tokenizer files. fp32 (ONNX Runtime has no fast bf16 on CPU).
    With ``check`` the file is run with onnxruntime and compared with torch. ``out_dir`` is an
    output directory (:class:`mmbert.outputs.OutputDir`)."""
    import warnings

    d = _model_dir(model_dir)
    out = Path(out_dir)
    od = OutputDir(out, overwrite=overwrite)
    od.check()
    encoder = load_encoder(d, "fp32")
    dense = DenseEncoder(encoder).eval()
    c = encoder.config
    B, T = 2, min(16, c.max_position_embeddings)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, c.vocab_size, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, T // 2:] = 0
    with od as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                dense, (ids, mask), str(tmp / "model.onnx"), dynamo=False,
                input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                              "attention_mask": {0: "batch", 1: "seq"},
                              "last_hidden_state": {0: "batch", 1: "seq"}},
                opset_version=opset, do_constant_folding=True)
        diff = _check_onnx(tmp / "model.onnx", encoder, c.vocab_size) if check else None
        if diff is not None and diff > atol:
            raise MmbertError(f"{out}/model.onnx: onnxruntime output differs from torch by "
                              f"{diff:.2e} (> {atol}); expected a faithful export")
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json",
                     "special_tokens_map.json"):
            if (d / name).is_file():
                shutil.copyfile(d / name, tmp / name)
    return ExportResult(out / "model.onnx", diff)


def _check_onnx(path: Path, encoder: nn.Module, vocab: int) -> float | None:
    """Max |onnxruntime - torch| on real tokens of a right- and left-padded batch whose shape
    differs from the traced one (so dynamic axes are exercised). None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1)
    T = min(37, encoder.config.max_position_embeddings)
    ids = torch.randint(5, vocab, (3, T), generator=g)
    mask = torch.ones(3, T, dtype=torch.long)
    mask[1, T - 9:] = 0  # right padding
    mask[2, :5] = 0  # left padding
    got = run_onnx(sess, ids, mask)
    with torch.inference_mode():
        want = encoder(ids, attention_mask=mask).last_hidden_state.numpy()
    real = mask.bool().numpy()
    return float(np.abs(got[real] - want[real]).max())


def run_onnx(session: Any, input_ids: torch.Tensor | np.ndarray,
             attention_mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """``last_hidden_state`` from an onnxruntime session of an exported encoder."""
    feed = {"input_ids": np.asarray(input_ids, dtype=np.int64),
            "attention_mask": np.asarray(attention_mask, dtype=np.int64)}
    return session.run(["last_hidden_state"], feed)[0]
