"""Variable-length ("unpadded") attention for the encoder.

All tokens of a batch live in one flat tensor ``[N, heads, head_dim]``; ``cu_seqlens`` (int32,
``[S+1]``) marks where each of the ``S`` sequences starts and ends. No token attends across
sequences. Local (sliding-window) layers let token ``i`` see token ``j`` iff ``|i - j| <= window``,
where ``window = local_attention // 2`` (64 for mmBERT); global layers pass ``window=None``.

Backends, picked per call by :func:`varlen_attention`:

* **flash-attn** (``flash_attn_varlen_func``) when the package imports, the tensors are on CUDA
  and in fp16/bf16. Its ``window_size=(w, w)`` is inclusive, exactly our ``|i - j| <= w``.
* **SDPA per length bucket** otherwise (CPU, or fp32 on GPU). Sequences of similar length are
  grouped (:func:`_buckets`), padded only within their bucket and run through
  ``torch.nn.functional.scaled_dot_product_attention`` with a boolean mask. A batch whose
  sequences all have the same length needs neither gather nor mask (a plain reshape).
* **flat chunked sliding window** (:func:`local_attention_flat`), the CPU default for local
  layers once a sequence is longer than three windows: queries in blocks of ``window`` tokens
  attend to keys of their own and the two neighbouring blocks only, so cost and memory grow
  linearly with length instead of ``T x T``; the blocks are cut straight from the packed
  ``[N, H, D]`` stream with no buckets, gathers or padding. Query block ``n`` (``window``
  tokens) and its ``3 * window`` keys are strided views (``unfold``) of the stream, a mask keeps
  each query inside its own sequence and window, and one SDPA call covers every block. ~2x
  less time than dense masked buckets at 512 tokens, and linear in length.

The per-batch bookkeeping (buckets, gather indices, masks) does not depend on the layer, so it
is computed once per forward in a :class:`VarlenPlan` and shared by all layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

try:  # optional GPU kernel
    from flash_attn import flash_attn_varlen_func  # type: ignore[import-not-found]
except Exception:  # ImportError, or a broken CUDA build
    flash_attn_varlen_func = None

# Local layers use :func:`local_attention_flat` once the longest sequence exceeds this many
# windows (3 = the keys one block sees): shorter batches gain nothing from skipping work.
FLAT_MIN_WINDOWS = 3


def flash_available(x: torch.Tensor) -> bool:
    """Whether the flash-attn varlen kernel can run on tensors like ``x``."""
    return (flash_attn_varlen_func is not None and x.is_cuda
            and x.dtype in (torch.float16, torch.bfloat16))


def flat_block_mask(cu_seqlens: torch.Tensor, num_tokens: int, window: int) -> torch.Tensor:
    """Boolean mask ``[nc, 1, b, 3b]`` (``b = window``, ``nc = ceil(N / b)``) for
    :func:`local_attention_flat`: query ``r`` of block ``n`` is token ``n*b + r`` of the packed
    stream, key ``c`` is token ``n*b - b + c``; allowed iff both are in the same sequence and
    ``|r - (c - b)| <= window``. Query slots past the end see every key (never an empty row)."""
    device = cu_seqlens.device
    b = max(1, int(window))
    N = int(num_tokens)
    nc = -(-N // b)
    Np = nc * b
    cu = cu_seqlens.long()
    seg = torch.repeat_interleave(torch.arange(cu.numel() - 1, device=device), cu.diff(),
                                  output_size=N)
    kseg = F.pad(seg, (b, Np - N + b), value=-1).unfold(0, 3 * b, b)  # [nc, 3b]
    qseg = F.pad(seg, (0, Np - N), value=-2).view(nc, b)
    r = torch.arange(b, device=device)
    c = torch.arange(3 * b, device=device)
    near = (r[:, None] - (c[None, :] - b)).abs() <= window  # [b, 3b]
    mask = (near[None] & (qseg[:, :, None] == kseg[:, None, :])) | (qseg == -2)[:, :, None]
    return mask[:, None]


def local_attention_flat(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                         mask: torch.Tensor, *, scale: float | None = None,
                         dropout_p: float = 0.0) -> torch.Tensor:
    """Sliding-window attention straight on the packed stream: ``[N, H, D]`` -> ``[N, H, D]``.

    Blocks of ``window`` queries are a reshape of the (end-padded) stream; the ``3 * window``
    keys of block ``n`` (blocks ``n-1, n, n+1``) are an overlapping ``unfold`` view, so nothing
    is gathered or copied besides one pad of ``k`` and ``v``. ``mask`` comes from
    :func:`flat_block_mask` (built once per batch, shared by all local layers). Differentiable
    (autograd goes through ``unfold``); costs ``N * 3 * window`` scores whatever the lengths."""
    N, H, D = q.shape
    b = max(1, int(window))
    nc = mask.shape[0]
    Np = nc * b
    qb = F.pad(q, (0, 0, 0, 0, 0, Np - N)).view(nc, b, H, D).transpose(1, 2)
    kb = F.pad(k, (0, 0, 0, 0, b, Np - N + b)).unfold(0, 3 * b, b).transpose(-1, -2)
    vb = F.pad(v, (0, 0, 0, 0, b, Np - N + b)).unfold(0, 3 * b, b).transpose(-1, -2)
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, dropout_p=dropout_p,
                                         scale=scale)  # [nc, H, b, D]
    return out.transpose(1, 2).reshape(Np, H, D)[:N]


# ---------------------------------------------------------------------------------------------
# Per-batch plan: buckets of similar length, gather indices, masks
# ---------------------------------------------------------------------------------------------

def _buckets(lengths: list[int], max_waste: float = 0.25, slack: int = 16) -> list[list[int]]:
    """Group sequence indices so that padding within a group stays small.

    Longest first; a sequence joins the current group while it is at least ``1 - max_waste`` of
    the group's longest or within ``slack`` tokens of it (many short sequences share one call).
    """
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    top = 0
    for i in order:
        n = lengths[i]
        if groups and (n >= (1 - max_waste) * top or top - n <= slack):
            groups[-1].append(i)
        else:
            groups.append([i])
            top = n
    return groups


@dataclass
class _Bucket:
    """Sequences padded to a common length ``T`` within one SDPA call."""

    T: int
    lengths: torch.Tensor  # [nb] long
    index: torch.Tensor | None  # [nb, T] flat token index (pads point at a real token); None = view
    valid: torch.Tensor | None  # [nb * T] bool, True at real tokens; None = no padding
    masks: dict = field(default_factory=dict)  # window -> boolean SDPA mask


@dataclass
class VarlenPlan:
    """What every layer's attention needs to know about the batch layout (built once)."""

    cu_seqlens: torch.Tensor  # int32 [S+1]
    max_seqlen: int
    num_tokens: int
    _buckets: list[_Bucket] | None = None
    _flat_masks: dict = field(default_factory=dict)  # window -> flat_block_mask

    def flat_mask(self, window: int) -> torch.Tensor:
        """:func:`flat_block_mask` for this batch (built once, shared by all local layers)."""
        if window not in self._flat_masks:
            self._flat_masks[window] = flat_block_mask(self.cu_seqlens, self.num_tokens, window)
        return self._flat_masks[window]

    @classmethod
    def build(cls, cu_seqlens: torch.Tensor, max_seqlen: int | None = None) -> "VarlenPlan":
        cu = cu_seqlens.to(torch.int32)
        if max_seqlen is None:
            max_seqlen = int(cu.diff().max()) if cu.numel() > 1 else 0
        return cls(cu_seqlens=cu, max_seqlen=int(max_seqlen), num_tokens=int(cu[-1]))

    def buckets(self) -> list[_Bucket]:
        """Buckets for the SDPA path (built lazily: the flash path never needs them)."""
        if self._buckets is None:
            self._buckets = self._make_buckets()
        return self._buckets

    def _make_buckets(self) -> list[_Bucket]:
        device = self.cu_seqlens.device
        cu = self.cu_seqlens.tolist()
        lengths = [b - a for a, b in zip(cu[:-1], cu[1:])]
        if lengths and min(lengths) == max(lengths) > 0:  # equal lengths: a reshape does it
            n = lengths[0]
            return [_Bucket(T=n, lengths=torch.full((len(lengths),), n, device=device),
                            index=None, valid=None)]
        out = []
        for group in _buckets(lengths):
            T = lengths[group[0]]
            starts = torch.tensor([cu[i] for i in group], device=device)
            lens = torch.tensor([lengths[i] for i in group], device=device)
            pos = torch.arange(T, device=device)
            valid = pos[None, :] < lens[:, None]  # [nb, T]
            # padded slots gather the sequence's first token: finite values, masked out as keys
            index = starts[:, None] + torch.where(valid, pos[None, :], 0)
            out.append(_Bucket(T=T, lengths=lens, index=index, valid=valid.reshape(-1)))
        return out


def _dense_mask(bucket: _Bucket, window: int | None, device: torch.device) -> torch.Tensor | None:
    """Boolean SDPA mask ``[nb, 1, T or 1, T]`` for one bucket (None when nothing is masked)."""
    if window in bucket.masks:
        return bucket.masks[window]
    T = bucket.T
    mask = None
    pos = torch.arange(T, device=device)
    if bucket.valid is not None:
        kvalid = pos[None, :] < bucket.lengths[:, None]  # [nb, T]
        mask = kvalid[:, None, None, :]  # global layers: key padding only, broadcast over rows
    if window is not None and window < T - 1:
        near = (pos[:, None] - pos[None, :]).abs() <= window  # [T, T]
        if mask is None:
            mask = near[None, None]
        else:
            qpad = ~kvalid[:, :, None]  # padded query rows see all real keys (no empty row)
            mask = (near[None] | qpad) & kvalid[:, None, :]
            mask = mask[:, None]
    bucket.masks[window] = mask
    return mask


def _sdpa_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: VarlenPlan,
                 window: int | None, scale: float | None, dropout_p: float) -> torch.Tensor:
    N, H, D = q.shape
    out = q.new_empty(N, H, D)
    for bucket in plan.buckets():
        T = bucket.T
        nb = bucket.lengths.numel()
        if bucket.index is None:
            qb, kb, vb = (t.view(nb, T, H, D).transpose(1, 2) for t in (q, k, v))
        else:
            idx = bucket.index.reshape(-1)
            qb, kb, vb = (t[idx].view(nb, T, H, D).transpose(1, 2) for t in (q, k, v))
        # local layers get here only when every sequence is at most FLAT_MIN_WINDOWS windows
        # long (longer ones take local_attention_flat): a dense masked bucket is cheap then
        mask = _dense_mask(bucket, window, q.device)
        ob = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, dropout_p=dropout_p,
                                            scale=scale)
        ob = ob.transpose(1, 2).reshape(nb * T, H, D)
        if bucket.index is None:
            return ob  # one bucket covering every token, already in flat order
        out[bucket.index.reshape(-1)[bucket.valid]] = ob[bucket.valid]
    return out


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: VarlenPlan,
                     window: int | None = None, *, scale: float | None = None,
                     dropout_p: float = 0.0) -> torch.Tensor:
    """Attention over packed sequences. ``q, k, v``: ``[N, H, D]`` -> ``[N, H, D]``.

    ``window``: half-width of the sliding window (``local_attention // 2``), None for global.
    """
    if q.shape[0] == 0:
        return q.clone()
    if flash_available(q):
        ws = (-1, -1) if window is None else (int(window), int(window))
        return flash_attn_varlen_func(q, k, v, plan.cu_seqlens, plan.cu_seqlens, plan.max_seqlen,
                                      plan.max_seqlen, dropout_p=dropout_p, softmax_scale=scale,
                                      causal=False, window_size=ws)
    if window is not None and plan.max_seqlen > FLAT_MIN_WINDOWS * window:
        return local_attention_flat(q, k, v, window, plan.flat_mask(window), scale=scale,
                                    dropout_p=dropout_p)
    return _sdpa_varlen(q, k, v, plan, window, scale, dropout_p)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        cu_seqlens: torch.Tensor, window: int | None = None,
                        scale: float | None = None) -> torch.Tensor:
    """Slow, obviously-correct dense reference (one masked ``N x N`` matrix); for tests."""
    N = q.shape[0]
    seg = torch.repeat_interleave(torch.arange(cu_seqlens.numel() - 1, device=q.device),
                                  cu_seqlens.diff().long())
    pos = torch.arange(N, device=q.device)
    mask = seg[:, None] == seg[None, :]
    if window is not None:
        mask &= (pos[:, None] - pos[None, :]).abs() <= window
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                         attn_mask=mask, scale=scale)
    return out.transpose(0, 1)
