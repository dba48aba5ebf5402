"""The ModernBERT / mmBERT encoder and its heads, in one file.

Architecture (ModernBERT, as used by mmBERT):

    token embedding -> LayerNorm -> dropout
    num_hidden_layers x pre-norm block:
        x = x + Wo(attention(RoPE(Wqkv(attn_norm(x)))))     # layer 0: attn_norm is Identity
        x = x + Wo(act(input) * gate), (input, gate) = Wi(mlp_norm(x))   # GeGLU
    final LayerNorm

Layers 0, n, 2n, ... (n = global_attn_every_n_layers) attend globally with RoPE theta
``global_rope_theta``; the others attend within a sliding window (token i sees j iff
|i - j| <= local_attention // 2) with ``local_rope_theta``. No linear or norm biases by default.

Compute is always *unpadded*: a padded ``[B, T]`` batch with an attention mask is flattened to
its real tokens (``[N]`` plus ``cu_seqlens``), run, and scattered back; packed input skips that
step. Attention kernels live in :mod:`mmbert.attention`.

Module and parameter names match transformers' ``ModernBertModel`` / ``ModernBertFor*`` exactly,
so state dicts map 1:1 (see :mod:`mmbert.hf` for loading and saving that layout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmbert import hf
from mmbert.attention import VarlenPlan, varlen_attention
from mmbert.config import IGNORE_INDEX, ModelConfig
from mmbert.errors import MmbertError
from mmbert.text import pool


def activation(name: str):
    """The activations transformers' ACT2FN gives these names (gelu = exact erf form)."""
    return {
        "gelu": F.gelu,
        "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
        "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "silu": F.silu,
        "relu": F.relu,
    }[name]


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------

@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor  # [B, T, H] (padded input) or [N, H] (packed input)


@dataclass
class MaskedLMOutput:
    loss: torch.Tensor | None  # mean of token_loss (with labels)
    logits: torch.Tensor  # [B, T, V] / [N, V], or [M, V] at predict_positions
    token_loss: torch.Tensor | None = None  # [M] unreduced cross-entropy (with labels)
    predict_positions: torch.Tensor | None = None  # [M] flat token indices the logits belong to


@dataclass
class ClassifierOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor  # sequence: [B, C] / [S, C]; token: [B, T, C] / [N, C]


# ---------------------------------------------------------------------------------------------
# Batch layout: padded [B, T] + mask, or packed [N] + cu_seqlens -> always unpadded inside
# ---------------------------------------------------------------------------------------------

@dataclass
class Unpadded:
    """A batch as flat real tokens, plus how to put results back into the caller's layout."""

    input_ids: torch.Tensor  # [N]
    position_ids: torch.Tensor  # [N]
    plan: VarlenPlan
    shape: tuple[int, int] | None = None  # (B, T) for padded input, None for packed
    indices: torch.Tensor | None = None  # [N] positions in the flattened [B*T]; None = all real

    @property
    def cu_seqlens(self) -> torch.Tensor:
        return self.plan.cu_seqlens

    def repad(self, x: torch.Tensor) -> torch.Tensor:
        """[N, ...] -> the caller's layout: [B, T, ...] (zeros at padding) or unchanged."""
        if self.shape is None:
            return x
        B, T = self.shape
        if self.indices is None:
            return x.view(B, T, *x.shape[1:])
        out = x.new_zeros(B * T, *x.shape[1:])
        out[self.indices] = x
        return out.view(B, T, *x.shape[1:])

    def flat_index(self, positions: torch.Tensor) -> torch.Tensor:
        """Flat caller positions (into [B*T] or [N]) -> rows of the unpadded tensor.

        Positions at padding map to -1."""
        if self.shape is None or self.indices is None:
            return positions
        B, T = self.shape
        inv = torch.full((B * T,), -1, dtype=torch.long, device=positions.device)
        inv[self.indices] = torch.arange(self.indices.numel(), device=positions.device)
        return inv[positions]


def unpad(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
          cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None,
          position_ids: torch.Tensor | None = None) -> Unpadded:
    """Normalise padded or packed input to :class:`Unpadded`.

    Padded: ``input_ids [B, T]``, ``attention_mask [B, T]`` (1 = real token; the real tokens of a
    row form one sequence, in order; left or right padding both work). Packed: ``input_ids [N]``
    with ``cu_seqlens [S+1]``. Positions restart at 0 in every sequence unless given.
    """
    device = input_ids.device
    if input_ids.dim() == 2:
        if cu_seqlens is not None:
            raise ValueError("pass either padded input_ids [B, T] (+ attention_mask) or packed "
                             "input_ids [N] + cu_seqlens, not both")
        B, T = input_ids.shape
        if attention_mask is None or bool(attention_mask.all()):
            lengths = torch.full((B,), T, dtype=torch.int32, device=device)
            indices = None
            ids = input_ids.reshape(-1)
            pos = None if position_ids is None else position_ids.expand(B, T).reshape(-1)
        else:
            mask = attention_mask.bool().reshape(-1)
            indices = mask.nonzero().squeeze(1)
            lengths = attention_mask.bool().sum(1, dtype=torch.int32)
            ids = input_ids.reshape(-1)[indices]
            pos = None if position_ids is None else position_ids.expand(B, T).reshape(-1)[indices]
        cu = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
        plan = VarlenPlan.build(cu, int(lengths.max()) if B > 0 else 0)
        shape: tuple[int, int] | None = (B, T)
    elif input_ids.dim() == 1:
        if cu_seqlens is None:
            raise ValueError("packed input_ids [N] need cu_seqlens")
        if attention_mask is not None:
            raise ValueError("packed input takes no attention_mask")
        ids, pos, indices, shape = input_ids, position_ids, None, None
        plan = VarlenPlan.build(cu_seqlens.to(device), max_seqlen)
        if plan.num_tokens != ids.numel():
            raise ValueError(f"cu_seqlens ends at {plan.num_tokens} but there are "
                             f"{ids.numel()} tokens")
    else:
        raise ValueError(f"input_ids must be [B, T] or [N], got shape {tuple(input_ids.shape)}")
    if pos is None:  # restart at 0 in every sequence
        cu = plan.cu_seqlens.long()
        starts = torch.repeat_interleave(cu[:-1], cu.diff(), output_size=ids.numel())
        pos = torch.arange(ids.numel(), device=device) - starts
    return Unpadded(ids, pos.long(), plan, shape, indices)


# ---------------------------------------------------------------------------------------------
# Cross-entropy over a large vocabulary
# ---------------------------------------------------------------------------------------------

# Rows per chunk. The loss is memory-bound (a few passes over each row of 256k logits): chunks
# of a few rows keep every pass inside the last-level cache (4 x 256k fp32 = 4 MB), measured
# ~2x faster than 256-row chunks (1 GB per pass, from DRAM) on a 32 MB-L3 EPYC.
_CE_ROWS = 4


class _CrossEntropyRows(torch.autograd.Function):
    """Unreduced cross-entropy ``logsumexp(z) - z[target]`` per row, in fp32, with a backward
    that writes ``softmax(z) - onehot`` straight into one gradient buffer.

    ``F.cross_entropy`` keeps a full ``[M, V]`` log-softmax for backward and zero-fills another
    ``[M, V]`` tensor there; at 256k vocabulary and thousands of masked tokens that is gigabytes
    per step. Here only the row log-sum-exps ``[M]`` are saved (the logits are kept by the caller
    anyway) and fp32 temporaries are chunked."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for a in range(0, logits.shape[0], _CE_ROWS):
            lse[a:a + _CE_ROWS] = torch.logsumexp(logits[a:a + _CE_ROWS].float(), dim=-1)
        picked = logits.gather(1, target[:, None]).squeeze(1).float()
        ctx.save_for_backward(logits, target, lse)
        return lse - picked

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        logits, target, lse = ctx.saved_tensors
        g = grad.float()
        out = torch.empty_like(logits)
        for a in range(0, logits.shape[0], _CE_ROWS):
            rows = slice(a, a + _CE_ROWS)
            if logits.dtype == torch.float32:  # softmax * grad, computed in place in `out`
                o = torch.sub(logits[rows], lse[rows, None], out=out[rows])
                o.exp_().mul_(g[rows, None])
            else:  # through an fp32 temporary, cast to the logits' dtype
                out[rows] = (logits[rows].float() - lse[rows, None]).exp_().mul_(g[rows, None])
        rows = torch.arange(logits.shape[0], device=logits.device)
        out[rows, target] -= g.to(out.dtype)
        return out, None


def cross_entropy_rows(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy(logits.float(), target, reduction="none")`` for ``[M, V]`` logits and
    valid targets ``[M]``, without ``[M, V]`` fp32 copies kept for backward.

    Under ``torch.compile`` it is that formula itself: the compiler fuses it, while the chunk
    loops of :class:`_CrossEntropyRows` would unroll into ``M / 4`` pieces of graph (thousands
    for a 16k-token batch)."""
    if logits.shape[0] == 0:
        return logits.new_zeros(0, dtype=torch.float32) + 0.0 * logits.sum()
    if torch.compiler.is_compiling():
        return F.cross_entropy(logits.float(), target, reduction="none")
    return _CrossEntropyRows.apply(logits, target)


# ---------------------------------------------------------------------------------------------
# Rotary position embedding
# ---------------------------------------------------------------------------------------------

def rope_cos_sin(position_ids: torch.Tensor, head_dim: int,
                 theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of the rotation angles, ``[N, 1, 1, head_dim // 2]`` in fp32, broadcasting over
    ``[N, 2 (q, k), heads, head_dim // 2]``. Built once per forward and shared by every layer
    of the same kind (the two halves of a head use the same angles, so half tables suffice)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32,
                                             device=position_ids.device) / head_dim))
    freqs = (position_ids.float()[:, None] * inv_freq[None, :])[:, None, None, :]
    return freqs.cos(), freqs.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """``(x1, x2) -> (x1 cos - s x2 sin, x2 cos + s x1 sin)`` for the halves of the last dim
    (``s = sign``; -1 rotates back, which is the backward pass). Two fused passes over the
    halves, written straight into ``out`` (a fresh tensor when None) instead of
    neg + cat + 2 mul + add.

    Under ``torch.compile`` the same rotation is written functionally: ``out=`` into strided
    views does not trace (inductor fails on the resulting ``as_strided_scatter``), and the
    compiler fuses the elementwise ops on its own."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    if torch.compiler.is_compiling():
        r = torch.cat((x1 * cos - sign * (x2 * sin), x2 * cos + sign * (x1 * sin)), dim=-1)
        return r if out is None else out.copy_(r)
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    o1, o2 = out[..., :h], out[..., h:]
    torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-sign)
    torch.mul(x2, cos, out=o2).addcmul_(x1, sin, value=sign)
    return out


class _Rope(torch.autograd.Function):
    """RoPE with a hand-written backward: the gradient is the inverse rotation, so only the
    cos/sin tables (shared by all layers) are saved, not the rotated activations' inputs."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, 1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, -1.0), None, None


class _RopeQKV(torch.autograd.Function):
    """``[N, 3, H, D]`` fused projections -> one ``[N, 3, H, D]`` tensor with q and k rotated and
    v copied. One output (and one gradient buffer in backward) instead of two overlapping
    views of the projection, whose gradients autograd would zero-fill and add."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        out = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
        _rotate(qkv[:, :2], cos, sin, 1.0, out=out[:, :2])
        out[:, 2] = qkv[:, 2]
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        out = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
        _rotate(grad[:, :2], cos, sin, -1.0, out=out[:, :2])
        out[:, 2] = grad[:, 2]
        return out, None, None


def rope_qkv(qkv: torch.Tensor, cos: torch.Tensor,
             sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k (rotated) and v from the fused projection ``[N, 3, H, D]``."""
    if qkv.requires_grad and qkv.dtype in (torch.float32, torch.float64):
        return _RopeQKV.apply(qkv, cos, sin).unbind(1)
    q, k = apply_rope(qkv[:, :2], cos, sin).unbind(1)
    return q, k, qkv[:, 2]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + D/2) of ``x [N, ..., D]`` by the angles of :func:`rope_cos_sin`
    (broadcast over the middle dims); computed in fp32 (fp64 stays fp64), returned in x's dtype."""
    if x.dtype in (torch.float32, torch.float64):
        return _Rope.apply(x, cos, sin)
    return _Rope.apply(x.float(), cos, sin).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------

def _layer_norm(config: ModelConfig) -> nn.LayerNorm:
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)


class Embeddings(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        # padding_idx as transformers: the pad row gets no gradient
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
                                           padding_idx=config.pad_token_id)
        self.norm = _layer_norm(config)
        self.drop = nn.Dropout(config.embedding_dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.drop(self.norm(self.tok_embeddings(input_ids)))


class MLP(nn.Module):
    """GeGLU: Wi projects to 2 x intermediate (input, gate); out = Wo(act(input) * gate)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.Wi = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_bias)
        self.act = activation(config.hidden_activation)
        self.drop = nn.Dropout(config.mlp_dropout)
        self.Wo = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp, gate = self.Wi(x).chunk(2, dim=-1)
        return self.Wo(self.drop(self.act(inp) * gate))


class Attention(nn.Module):
    """Fused-QKV multi-head attention over unpadded tokens, global or sliding-window."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.is_global = config.is_global_layer(layer_idx)
        self.window = None if self.is_global else config.local_attention // 2
        self.dropout = config.attention_dropout
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.attention_bias)
        self.Wo = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)
        self.out_drop = nn.Dropout(self.dropout) if self.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                plan: VarlenPlan) -> torch.Tensor:
        N = x.shape[0]
        qkv = self.Wqkv(x).view(N, 3, self.num_heads, self.head_dim)
        q, k, v = rope_qkv(qkv, *rope)  # q and k rotated in one go
        out = varlen_attention(q, k, v, plan, self.window, scale=self.head_dim ** -0.5,
                               dropout_p=self.dropout if self.training else 0.0)
        return self.out_drop(self.Wo(out.reshape(N, -1)))


class EncoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        # layer 0 follows the embedding LayerNorm directly, so it has no attention norm
        self.attn_norm = nn.Identity() if layer_idx == 0 else _layer_norm(config)
        self.attn = Attention(config, layer_idx)
        self.mlp_norm = _layer_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                plan: VarlenPlan) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope, plan)
        return x + self.mlp(self.mlp_norm(x))


class PredictionHead(nn.Module):
    """dense -> activation -> LayerNorm (the MLM head, also used by the classifiers)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.classifier_bias)
        self.act = activation(config.classifier_activation)
        self.norm = _layer_norm(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(x)))


# ---------------------------------------------------------------------------------------------
# Shared behaviour: initialisation, rope theta, loading and saving
# ---------------------------------------------------------------------------------------------

class PreTrained(nn.Module):
    """Base class: ModernBERT initialisation and the transformers directory layout."""

    hf_architecture = "ModernBertModel"
    config: ModelConfig

    def init_weights(self) -> None:
        """ModernBERT's init: truncated normal (cut at +-cutoff std), std by module role.

        Input projections and embeddings: ``initializer_range``; output projections (attention
        Wo, MLP Wo, head dense): ``initializer_range / sqrt(2 * num_layers)``; classifiers:
        ``hidden_size ** -0.5``; biases zero, LayerNorm weights one.
        """
        c = self.config
        std_in = c.initializer_range
        std_out = c.initializer_range / math.sqrt(2.0 * c.num_hidden_layers)
        std_final = c.hidden_size ** -0.5

        def init(lin: nn.Module, std: float) -> None:
            a = c.initializer_cutoff_factor * std
            nn.init.trunc_normal_(lin.weight, mean=0.0, std=std, a=-a, b=a)
            if getattr(lin, "bias", None) is not None:
                nn.init.zeros_(lin.bias)

        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, Embeddings):
                init(m.tok_embeddings, std_in)
            elif isinstance(m, (MLP, Attention)):
                init(m.Wqkv if isinstance(m, Attention) else m.Wi, std_in)
                init(m.Wo, std_out)
            elif isinstance(m, PredictionHead):
                init(m.dense, std_out)
        if isinstance(getattr(self, "decoder", None), nn.Linear):
            if not c.tie_word_embeddings:
                init(self.decoder, std_out)
            elif self.decoder.bias is not None:
                nn.init.zeros_(self.decoder.bias)
        if isinstance(getattr(self, "classifier", None), nn.Linear):
            init(self.classifier, std_final)

    def tie_weights(self) -> None:
        """Re-tie shared parameters (needed after ``to_empty``); no-op without a tied decoder."""

    def set_rope_theta(self, global_theta: float, local_theta: float) -> None:
        """Change RoPE bases (context extension between phases) without rebuilding the model."""
        encoder = self if isinstance(self, Encoder) else self.model
        encoder.config = encoder.config.replace(global_rope_theta=float(global_theta),
                                                local_rope_theta=float(local_theta))

    # what a transformers directory may lack for this class: tensors under these prefixes are
    # initialised freshly (a classifier on a pre-trained encoder), and the hint added when a
    # required tensor is missing
    hf_fresh_prefixes: tuple[str, ...] = ()
    hf_missing_hint = ""

    def hf_config_extra(self) -> dict[str, Any]:
        """Extra config.json entries of this class (labels for classifiers)."""
        return {}

    @classmethod
    def hf_init_kwargs(cls, raw: dict[str, Any], source: Path) -> dict[str, Any]:
        """Constructor arguments read from a config.json (``raw``), e.g. a classifier's labels."""
        return {}

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype | str | None = None,
                        device: torch.device | str = "cpu", **kwargs: Any):
        """Load a transformers ModernBERT directory (config.json + safetensors).

        ``dtype``: None = float32, ``"auto"`` = as stored, or a torch dtype / its name.
        Classifier kwargs (``num_labels``, ``labels``) go to the constructor."""
        return hf.load_pretrained(cls, path, dtype=dtype, device=device, **kwargs)

    def save_pretrained(self, path: str | Path) -> None:
        """Write config.json + model.safetensors in transformers' layout (atomic per file)."""
        hf.save_pretrained(self, path)

    def num_parameters(self) -> int:
        """Parameters counted once (a tied decoder shares the embedding matrix)."""
        return sum(p.numel() for p in self.parameters())


def _check_input_ids(input_ids: torch.Tensor, config: ModelConfig,
                     outside: dict[str, int]) -> None:
    """An input id outside the vocabulary, when the config carries special ids outside it, is
    most likely one of those (framing or masking from the config): say which, in one line."""
    if input_ids.numel() == 0 or int(input_ids.max()) < config.vocab_size:
        return
    held: dict[int, list[str]] = {}
    for field, v in outside.items():
        if v in held or bool((input_ids == v).any()):
            held.setdefault(v, []).append(field)
    if held:
        what = " and ".join(f"{v} ({' = '.join(fs)})" for v, fs in held.items())
        raise MmbertError(
            f"input_ids hold {what}: special ids from the model's config.json that lie outside "
            f"the vocabulary (vocab_size={config.vocab_size}); expected a tokenizer.json next to "
            "config.json (its special ids are used then) or those fields set in config.json")
    raise MmbertError(f"input_ids: token id {int(input_ids.max())} is outside the vocabulary "
                      f"(vocab_size={config.vocab_size})")


# ---------------------------------------------------------------------------------------------
# The encoder (= transformers' ModernBertModel)
# ---------------------------------------------------------------------------------------------

class Encoder(PreTrained):
    hf_architecture = "ModernBertModel"

    def __init__(self, config: ModelConfig, *, init: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = _layer_norm(config)
        self.gradient_checkpointing = False  # recompute layers in backward (long sequences)
        if init:
            self.init_weights()

    def encode(self, texts: str | list[str], tokenizer: Any = None, *,
               batch_size: int = 64, max_length: int = 512) -> Any:
        """L2-normalised mean-pooled sentence embeddings (numpy float32 ``[n, H]``, ``[H]`` for
        one str), through :mod:`mmbert.text` as everywhere else.

        Each text is ``[CLS] text [SEP]`` (cut to ``max_length``), as in fine-tuning and as the
        saved tokenizer frames it for sentence-transformers; the config's cls/sep ids when they
        name a row of the vocabulary, else the tokenizer's bos/eos. Batched by length: sorted,
        packed (no padding), then put back in input order. ``tokenizer``: an mmbert Tokenizer,
        a path, or None for the directory the model was loaded from."""
        from mmbert.text import embed_ids, length_batches, model_text_tokenizer
        from mmbert.tokenizer import load_tokenizer

        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if tokenizer is None or isinstance(tokenizer, (str, Path)):
            src = tokenizer or getattr(self, "name_or_path", None)
            if src is None:
                raise ValueError("encode(texts): pass tokenizer= (this Encoder was not loaded "
                                 "with from_pretrained)")
            tokenizer = load_tokenizer(src)
        seqs = model_text_tokenizer(tokenizer, self.config).frame_texts(texts, max_length)
        out = embed_ids(self, seqs, length_batches([len(s) for s in seqs], batch_size))
        return out[0] if single else out

    def hidden_states(self, batch: Unpadded) -> torch.Tensor:
        """Hidden states ``[N, H]`` of the real tokens of an :class:`Unpadded` batch."""
        c = self.config
        outside = c.ids_outside_vocab()
        if outside:  # only configs carrying out-of-vocabulary ids (metadata) pay for the check
            _check_input_ids(batch.input_ids, c, outside)
        x = self.embeddings(batch.input_ids)
        rope = {
            True: rope_cos_sin(batch.position_ids, c.head_dim, c.global_rope_theta),
            False: rope_cos_sin(batch.position_ids, c.head_dim, c.local_rope_theta),
        }
        for layer in self.layers:
            r = rope[layer.attn.is_global]
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, r, batch.plan, use_reentrant=False)
            else:
                x = layer(x, r, batch.plan)
        return self.final_norm(x)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None,
                position_ids: torch.Tensor | None = None) -> EncoderOutput:
        batch = unpad(input_ids, attention_mask, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                      position_ids=position_ids)
        return EncoderOutput(batch.repad(self.hidden_states(batch)))

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any):
        """As :meth:`PreTrained.from_pretrained`; remembers ``path`` (its tokenizer.json) for
        ``encode(texts)``."""
        model = super().from_pretrained(path, **kwargs)
        model.name_or_path = str(path)
        return model


# ---------------------------------------------------------------------------------------------
# Masked language model (= ModernBertForMaskedLM), with sparse prediction
# ---------------------------------------------------------------------------------------------

class MaskedLM(PreTrained):
    hf_architecture = "ModernBertForMaskedLM"
    hf_missing_hint = "a bare encoder directory has no masked-LM head: load it with Encoder"

    def __init__(self, config: ModelConfig, *, init: bool = True):
        super().__init__()
        self.model = Encoder(config, init=False)
        self.head = PredictionHead(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=config.decoder_bias)
        self.tie_weights()
        if init:
            self.init_weights()

    @property
    def config(self) -> ModelConfig:  # type: ignore[override]
        return self.model.config

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.decoder.weight = self.model.embeddings.tok_embeddings.weight

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None,
                position_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                predict_positions: torch.Tensor | None = None) -> MaskedLMOutput:
        """Logits everywhere, or only where needed (sparse prediction).

        With ``labels`` (shape of input_ids, -100 = not predicted) the head and the decoder run
        only at labelled positions: the vocabulary projection dominates the cost otherwise.
        ``predict_positions`` (flat indices into the packed or flattened padded tokens) asks for
        logits at chosen positions without a loss.
        """
        if labels is not None and predict_positions is not None:
            raise ValueError("pass labels or predict_positions, not both")
        batch = unpad(input_ids, attention_mask, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                      position_ids=position_ids)
        hidden = self.model.hidden_states(batch)
        if labels is None and predict_positions is None:  # full logits, padding left at 0
            return MaskedLMOutput(None, batch.repad(self.decoder(self.head(hidden))))

        if labels is not None:
            flat_labels = labels.reshape(-1)
            predict_positions = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)
        rows = batch.flat_index(predict_positions)
        if bool((rows < 0).any()):
            raise ValueError("predict_positions/labels point at padding tokens")
        logits = self.decoder(self.head(hidden[rows]))
        if labels is None:
            return MaskedLMOutput(None, logits, predict_positions=predict_positions)
        token_loss = cross_entropy_rows(logits, flat_labels[predict_positions])
        loss = token_loss.sum() / max(token_loss.numel(), 1)  # 0 (with a graph) if none labelled
        return MaskedLMOutput(loss, logits, token_loss, predict_positions)


# ---------------------------------------------------------------------------------------------
# Fine-tuning heads
# ---------------------------------------------------------------------------------------------

class _Classifier(PreTrained):
    """Encoder + PredictionHead + dropout + linear classifier (transformers' layout)."""

    hf_fresh_prefixes = ("classifier.",)

    def __init__(self, config: ModelConfig, num_labels: int = 2, *,
                 labels: list[str] | None = None, problem_type: str | None = None,
                 init: bool = True):
        super().__init__()
        if labels is not None:
            num_labels = len(labels)
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.num_labels = num_labels
        self.labels = list(labels) if labels is not None else [f"LABEL_{i}" for i in range(num_labels)]
        self.problem_type = problem_type
        self.model = Encoder(config, init=False)
        self.head = PredictionHead(config)
        self.drop = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, num_labels)  # with bias, as transformers
        if init:
            self.init_weights()

    @property
    def config(self) -> ModelConfig:  # type: ignore[override]
        return self.model.config

    @classmethod
    def hf_init_kwargs(cls, raw: dict[str, Any], source: Path) -> dict[str, Any]:
        """``labels`` from ``id2label`` (ordered by id) and ``problem_type``, when present."""
        out: dict[str, Any] = {}
        id2label = raw.get("id2label")
        if isinstance(id2label, dict):
            try:
                out["labels"] = [id2label[k] for k in sorted(id2label, key=int)]
            except (ValueError, TypeError):
                raise MmbertError(f"{source}: id2label keys must be integers") from None
        if isinstance(raw.get("problem_type"), str):
            out["problem_type"] = raw["problem_type"]
        return out

    def hf_config_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "id2label": {str(i): name for i, name in enumerate(self.labels)},
            "label2id": {name: i for i, name in enumerate(self.labels)},
        }
        if self.problem_type is not None:
            extra["problem_type"] = self.problem_type
        return extra

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None,
                position_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> ClassifierOutput:
        batch = unpad(input_ids, attention_mask, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                      position_ids=position_ids)
        logits = self.logits(self.model.hidden_states(batch), batch)
        return ClassifierOutput(self.loss(logits, labels) if labels is not None else None, logits)

    def logits(self, hidden: torch.Tensor, batch: Unpadded) -> torch.Tensor:  # pragma: no cover
        """[N, H] token states -> the head's logits in the caller's layout."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class SequenceClassifier(_Classifier):
    """= ModernBertForSequenceClassification: pool (``config.classifier_pooling``: first token
    of each sequence, or mean over its real tokens) -> head -> dropout -> classifier.

    Loss as transformers: regression (MSE) for one label, cross-entropy for integer labels,
    BCE-with-logits for float multi-label targets (or as ``problem_type`` says)."""

    hf_architecture = "ModernBertForSequenceClassification"

    def pool(self, hidden: torch.Tensor, batch: Unpadded) -> torch.Tensor:
        """[N, H] token states -> [S, H], one vector per sequence."""
        return pool(hidden, batch.cu_seqlens, self.config.classifier_pooling)

    def logits(self, hidden: torch.Tensor, batch: Unpadded) -> torch.Tensor:
        return self.classifier(self.drop(self.head(self.pool(hidden, batch))))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        kind = self.problem_type
        if kind is None:
            if self.num_labels == 1:
                kind = "regression"
            elif labels.dtype in (torch.long, torch.int):
                kind = "single_label_classification"
            else:
                kind = "multi_label_classification"
        logits = logits.float()
        if kind == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.float().view(-1)) if self.num_labels == 1 \
                else F.mse_loss(logits, labels.float())
        if kind == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.float())


class TokenClassifier(_Classifier):
    """= ModernBertForTokenClassification: head -> dropout -> classifier on every token.
    Loss: cross-entropy, labels -100 ignored."""

    hf_architecture = "ModernBertForTokenClassification"

    def logits(self, hidden: torch.Tensor, batch: Unpadded) -> torch.Tensor:
        return batch.repad(self.classifier(self.drop(self.head(hidden))))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float().reshape(-1, self.num_labels), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX)


class SentenceEmbedder(PreTrained):
    """Sentence embeddings: mean of the final hidden states over real tokens, L2-normalised.

    Same weights as :class:`Encoder` (saved as a bare ``ModernBertModel``); ``forward`` returns a
    tensor ``[B, H]`` (padded input) or ``[S, H]`` (packed input)."""

    hf_architecture = "ModernBertModel"

    def __init__(self, config: ModelConfig, *, normalize: bool = True, init: bool = True):
        super().__init__()
        self.model = Encoder(config, init=init)
        self.normalize = normalize

    @property
    def config(self) -> ModelConfig:  # type: ignore[override]
        return self.model.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        batch = unpad(input_ids, attention_mask, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                      position_ids=position_ids)
        hidden = self.model.hidden_states(batch)
        emb = pool(hidden.float(), batch.cu_seqlens)
        if self.normalize:
            emb = F.normalize(emb, dim=-1)
        return emb.to(hidden.dtype)
