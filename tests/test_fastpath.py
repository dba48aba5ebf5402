"""Every fast path gives the reference path's outputs (no timings here: see benchmarks/).

Fast paths: automatic unpadding of a padded batch, length buckets, the equal-length reshape,
the flat chunked sliding window (forward and gradients), the fused RoPE with its hand-written
backward, sparse MLM prediction (forward and gradients), bf16, and the useful-FLOP counter the
benchmark reports.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmbert import attention as A
from mmbert import bench
from mmbert.config import ModelConfig
from mmbert.model import Encoder, MaskedLM, apply_rope, rope_cos_sin, rope_qkv

ATOL = 2e-5


def cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                num_attention_heads=4, local_attention=8, max_position_embeddings=512,
                global_rope_theta=20000.0, local_rope_theta=500.0)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return Encoder(cfg()).eval()


def padded(lengths, vocab=97, seed=0, left=False):
    ids, mask = bench.padded_batch(lengths, vocab, 0, seed)
    if left:  # move the real tokens to the right end of each row
        ids = torch.stack([torch.roll(r, int(r.numel() - n)) for r, n in zip(ids, lengths)])
        mask = torch.stack([torch.roll(r, int(r.numel() - n)) for r, n in zip(mask, lengths)])
    return ids, mask


def one_by_one(model, ids, mask):
    """Reference: each sequence alone, no padding, no mask."""
    out = torch.zeros(*ids.shape, model.config.hidden_size)
    for b in range(ids.shape[0]):
        real = mask[b].bool()
        out[b, real] = model(ids[b, real][None]).last_hidden_state[0]
    return out


@torch.no_grad()
@pytest.mark.parametrize("left", [False, True])
def test_padded_batch_is_unpadded_automatically(encoder, left):
    # 3 length buckets; 150 > 3 windows takes the flat chunked sliding-window kernel
    lengths = [150, 140, 37, 33, 5, 1]
    ids, mask = padded(lengths, left=left)
    got = encoder(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, one_by_one(encoder, ids, mask), atol=ATOL, rtol=0)
    assert bool((got[~mask.bool()] == 0).all())  # padding rows are zeros


@torch.no_grad()
def test_equal_lengths_reshape_path_equals_packed_and_unmasked(encoder):
    ids, mask = padded([64] * 3, seed=1)
    a = encoder(ids).last_hidden_state
    b = encoder(ids, attention_mask=mask).last_hidden_state
    c = encoder(ids.reshape(-1), cu_seqlens=torch.tensor([0, 64, 128, 192], dtype=torch.int32),
                max_seqlen=64).last_hidden_state
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(a.reshape(-1, 64), c, atol=ATOL, rtol=0)
    torch.testing.assert_close(a, one_by_one(encoder, ids, mask), atol=ATOL, rtol=0)


@torch.no_grad()
def test_long_sequence_matches_transformers_dense(encoder):
    """One 400-token sequence (50 windows): flat chunked local attention vs transformers' masked
    dense attention on the same weights."""
    from transformers import ModernBertModel

    ref = ModernBertModel(bench.hf_modernbert_config(encoder.config)).eval()
    ref.load_state_dict(encoder.state_dict())
    ids = torch.randint(5, 97, (1, 400), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(encoder(ids).last_hidden_state,
                               ref(input_ids=ids).last_hidden_state, atol=1e-4, rtol=0)


def test_sparse_prediction_loss_and_grads_equal_dense():
    torch.manual_seed(3)
    c = cfg(num_hidden_layers=3)
    model = MaskedLM(c)
    batch = bench.make_train_batch(c, rows=2, row_len=96, min_doc=10, seed=0)
    args = dict(cu_seqlens=batch.cu_seqlens, max_seqlen=batch.max_seqlen)
    out = model(batch.ids, labels=batch.labels, **args)
    out.loss.backward()
    sparse_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(batch.ids, **args).logits  # dense: every token
    dense = F.cross_entropy(logits, batch.labels, ignore_index=-100)
    dense.backward()
    torch.testing.assert_close(out.loss, dense, atol=1e-6, rtol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(sparse_grads[n], p.grad, atol=1e-6, rtol=1e-5, msg=n)
    assert out.logits.shape == (batch.num_masked, c.vocab_size)


@torch.no_grad()
def test_bf16_close_to_fp32(encoder):
    lengths = [90, 40, 7]
    ids, mask = padded(lengths, seed=4)
    want = encoder(ids, attention_mask=mask).last_hidden_state
    b16 = Encoder(encoder.config, init=False)
    b16.load_state_dict(encoder.state_dict())
    got = b16.to(torch.bfloat16).eval()(ids, attention_mask=mask).last_hidden_state
    assert got.dtype == torch.bfloat16
    real = mask.bool()
    cos = F.cosine_similarity(got[real].float(), want[real], dim=-1)
    assert cos.min() > 0.99


def test_flop_counter_counts_window_pairs():
    for n, w in [(1, 4), (5, 4), (9, 4), (50, 4), (300, 64), (20, None)]:
        i = np.arange(n)
        brute = int(((np.abs(i[:, None] - i[None, :]) <= (w if w is not None else n))).sum())
        assert bench.attention_pairs(n, w) == brute
    c = cfg()
    h, m = c.hidden_size, c.intermediate_size
    linear = 2 * c.num_hidden_layers * (3 * h * h + h * h + 2 * h * m + m * h)
    # one 9-token sequence: global layers 0 and 3 see 81 pairs, local ones 9 + 2*(8+7+6+5) ...
    want = linear * 9 + 4 * h * (2 * 81 + 2 * bench.attention_pairs(9, 4))
    assert bench.encoder_flops(c, [9]) == want


def test_bench_packing_and_padding_keep_the_same_tokens():
    c = cfg()
    b = bench.make_train_batch(c, rows=3, row_len=100, min_doc=10, seed=1)
    assert b.ids.numel() == 300 and int(b.cu_seqlens[-1]) == 300
    ids, mask, labels = bench.pad_docs(b.docs, c.pad_token_id)
    assert torch.equal(ids[mask.bool()], b.ids) and torch.equal(labels[mask.bool()], b.labels)
    assert 0.2 < b.num_masked / 300 < 0.4


@pytest.mark.parametrize("window", [1, 5, 16])
def test_flat_local_attention_matches_reference_with_grads(window):
    """Packed sequences of awkward lengths (shorter than a block, not block multiples, empty)."""
    torch.manual_seed(5)
    lengths = [1, 7, 0, 33, 16, 90, 2]
    cu = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    N = int(cu[-1])
    q, k, v = (torch.randn(N, 3, 8, requires_grad=True) for _ in range(3))
    plan = A.VarlenPlan.build(cu)
    assert plan.max_seqlen > A.FLAT_MIN_WINDOWS * window  # the dispatcher picks the flat path
    out = A.varlen_attention(q, k, v, plan, window, scale=0.3)
    flat = A.local_attention_flat(q, k, v, window, plan.flat_mask(window), scale=0.3)
    ref = A.reference_attention(q, k, v, cu, window, scale=0.3)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flat, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(flat, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_rope_matches_rotate_half_formula_and_gradients():
    torch.manual_seed(6)
    N, D = 11, 16
    x = torch.randn(N, 2, 3, D, dtype=torch.float64, requires_grad=True)
    pos = torch.randint(0, 500, (N,))
    cos, sin = (t.double() for t in rope_cos_sin(pos, D, 10000.0))
    # the half tables hold cos/sin of pos * theta^(-2i/D) (fp32 angles)
    inv = 1.0 / (10000.0 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    ang = (pos.double()[:, None] * inv)[:, None, None, :]
    torch.testing.assert_close(cos, ang.cos(), atol=1e-4, rtol=0)
    torch.testing.assert_close(sin, ang.sin(), atol=1e-4, rtol=0)
    # textbook form with the same tables: x * cos + rotate_half(x) * sin, full width
    x1, x2 = x.chunk(2, -1)
    want = x * torch.cat((cos, cos), -1) + torch.cat((-x2, x1), -1) * torch.cat((sin, sin), -1)
    got = apply_rope(x, cos, sin)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, cos, sin), (x,))
    # the fused q/k/v form (training): same values, gradient of the whole projection
    qkv = torch.randn(N, 3, 3, D, dtype=torch.float64, requires_grad=True)
    q, k, v = rope_qkv(qkv, cos, sin)
    torch.testing.assert_close(torch.stack((q, k), 1), apply_rope(qkv[:, :2], cos, sin))
    assert v.data_ptr() != qkv.data_ptr() and torch.equal(v, qkv[:, 2])
    assert torch.autograd.gradcheck(lambda t: torch.stack(rope_qkv(t, cos, sin), 1), (qkv,))
    b16 = apply_rope(x.detach().bfloat16(), cos.float(), sin.float())
    assert b16.dtype == torch.bfloat16
    torch.testing.assert_close(b16.double(), want.detach(), atol=0.05, rtol=0.02)


def test_cross_entropy_rows_matches_torch():
    from mmbert.model import cross_entropy_rows

    torch.manual_seed(7)
    z = (torch.randn(600, 50, dtype=torch.float64) * 4).requires_grad_()  # > 2 row chunks
    y = torch.randint(0, 50, (600,))
    g = torch.rand(600, dtype=torch.float64)
    got = cross_entropy_rows(z, y)
    want = F.cross_entropy(z, y, reduction="none")
    torch.testing.assert_close(got, want.float(), atol=1e-6, rtol=1e-6)
    ga, = torch.autograd.grad(got, z, g.float())
    gb, = torch.autograd.grad(want, z, g)
    torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-6)
    z32 = z.detach()[:599].float().requires_grad_()  # fp32: in-place backward,
    l32 = cross_entropy_rows(z32, y[:599])  # row count not a multiple of the chunk
    torch.testing.assert_close(l32, want[:599].float(), atol=1e-5, rtol=1e-5)
    g32, = torch.autograd.grad(l32, z32, g[:599].float())
    torch.testing.assert_close(g32, gb[:599].float(), atol=1e-6, rtol=1e-5)
    zb = z.detach().bfloat16().requires_grad_()  # bf16 logits: fp32 math, bf16 gradient
    lb = cross_entropy_rows(zb, y)
    assert lb.dtype == torch.float32
    torch.testing.assert_close(lb, F.cross_entropy(zb.float(), y, reduction="none"))
    lb.sum().backward()
    assert zb.grad.dtype == torch.bfloat16
    empty = torch.zeros(0, 50, requires_grad=True)
    assert cross_entropy_rows(empty, y[:0]).shape == (0,)
