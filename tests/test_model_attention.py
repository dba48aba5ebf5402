"""Attention backends against an obviously-correct dense masked reference."""

import pytest
import torch
import torch.nn.functional as F

from mmbert import attention as A


def _dense_window(q, k, v, n, window):
    """One sequence of length n, dense T x T mask: the definition of the sliding window."""
    pos = torch.arange(n)
    mask = (pos[:, None] - pos[None, :]).abs() <= window
    return F.scaled_dot_product_attention(q[..., :n, :], k[..., :n, :], v[..., :n, :], attn_mask=mask)


def test_chunked_sliding_window_matches_dense_at_1000_tokens():
    torch.manual_seed(0)
    B, H, T, D, w = 3, 2, 1000, 16, 64  # local_attention 128 -> 64 each side
    lengths = torch.tensor([1000, 777, 3])
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    out = A.sliding_window_attention(q, k, v, w, lengths)
    assert out.shape == (B, H, T, D)
    for b, n in enumerate(lengths.tolist()):
        ref = _dense_window(q[b], k[b], v[b], n, w)
        torch.testing.assert_close(out[b, :, :n], ref, atol=1e-5, rtol=1e-5)


def test_chunked_sliding_window_odd_sizes_and_gradients():
    torch.manual_seed(1)
    T, w = 37, 5  # T not a multiple of the block, window not a power of two
    q, k, v = (torch.randn(1, 2, T, 8, requires_grad=True) for _ in range(3))
    out = A.sliding_window_attention(q, k, v, w)
    ref = _dense_window(q[0], k[0], v[0], T, w)[None]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    g1 = torch.autograd.grad(out, (q, k, v), g)
    g2 = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_chunked_window_never_builds_full_score_matrix(monkeypatch):
    """The blocked kernel's SDPA calls see keys of at most 3 blocks, whatever the length."""
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append(k.shape[-2])
        return real(q, k, v, **kw)

    monkeypatch.setattr(A.F, "scaled_dot_product_attention", spy)
    q = torch.randn(1, 1, 4096, 8)
    A.sliding_window_attention(q, q, q, 32)
    assert seen == [96]


def test_varlen_buckets_match_reference_global_and_local():
    torch.manual_seed(2)
    lengths = [300, 5, 7, 260, 40, 41, 1, 600, 17, 0]
    cu = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    N, H, D = int(cu[-1]), 3, 8
    q, k, v = (torch.randn(N, H, D) for _ in range(3))
    plan = A.VarlenPlan.build(cu)
    assert len(plan.buckets()) > 1  # several buckets, some padded
    for window in (None, 4, 64):  # 64: the 600-token sequence takes the blocked path
        out = A.varlen_attention(q, k, v, plan, window)
        ref = A.reference_attention(q, k, v, cu, window)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_varlen_equal_lengths_fast_path():
    torch.manual_seed(3)
    cu = torch.arange(0, 4 * 50 + 1, 50, dtype=torch.int32)
    q, k, v = (torch.randn(200, 2, 8) for _ in range(3))
    plan = A.VarlenPlan.build(cu, 50)
    assert [b.index for b in plan.buckets()] == [None]
    for window in (None, 6):
        torch.testing.assert_close(A.varlen_attention(q, k, v, plan, window),
                                   A.reference_attention(q, k, v, cu, window), atol=1e-5, rtol=1e-5)


def test_bucketing_limits_padding():
    lengths = [512, 500, 480, 300, 290, 30, 20, 12, 3]
    groups = A._buckets(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        top = lengths[g[0]]
        assert all(lengths[i] >= 0.75 * top or top - lengths[i] <= 16 for i in g)


@pytest.mark.gpu
def test_varlen_attention_cuda_bf16_matches_fp32_reference():
    """On CUDA: flash-attn varlen when installed (bf16), else the SDPA bucket path on the GPU."""
    torch.manual_seed(4)
    lengths = [700, 130, 5, 64]
    cu = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    q, k, v = (torch.randn(int(cu[-1]), 4, 64) for _ in range(3))
    plan = A.VarlenPlan.build(cu.cuda())
    for window in (None, 64):
        out = A.varlen_attention(*(t.cuda().bfloat16() for t in (q, k, v)), plan, window)
        ref = A.reference_attention(q, k, v, cu, window)
        torch.testing.assert_close(out.float().cpu(), ref, atol=3e-2, rtol=3e-2)
