"""Attention backends against an obviously-correct dense masked reference."""

import pytest
import torch
import torch.nn.functional as F

from mmbert import attention as A


def test_local_attention_never_builds_full_score_matrix(monkeypatch):
    """Local layers on a long sequence: every SDPA call sees keys of at most 3 blocks (the flat
    chunked kernel), whatever the length."""
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append(k.shape[-2])
        return real(q, k, v, **kw)

    monkeypatch.setattr(A.F, "scaled_dot_product_attention", spy)
    q = torch.randn(4096, 1, 8)
    plan = A.VarlenPlan.build(torch.tensor([0, 4096], dtype=torch.int32))
    A.varlen_attention(q, q, q, plan, 32)
    assert seen and max(seen) == 96


def test_varlen_buckets_match_reference_global_and_local():
    torch.manual_seed(2)
    lengths = [300, 5, 7, 260, 40, 41, 1, 600, 17, 0]
    cu = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    N, H, D = int(cu[-1]), 3, 8
    q, k, v = (torch.randn(N, H, D) for _ in range(3))
    plan = A.VarlenPlan.build(cu)
    assert len(plan.buckets()) > 1  # several buckets, some padded
    for window in (None, 4, 64):  # local: 600 tokens > 3 windows, the flat chunked kernel
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
