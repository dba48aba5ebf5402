"""The encoder on its own: layouts, sparse prediction, RoPE theta, init, heads, bf16."""

import math

import pytest
import torch
import torch.nn.functional as F

from mmbert import Encoder, MaskedLM, ModelConfig, SentenceEmbedder, SequenceClassifier
from mmbert.model import unpad


def cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                num_attention_heads=2, local_attention=8, max_position_embeddings=256)
    base.update(kw)
    return ModelConfig(**base)


def padded_batch(lengths, vocab, seed=0, left=False):
    """Right-padded batch; ``left=True`` moves the same tokens to the end of each row."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), T), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids = ids * mask
    if left:
        ids = torch.stack([r.roll(T - n) for r, n in zip(ids, lengths)])
        mask = torch.stack([r.roll(T - n) for r, n in zip(mask, lengths)])
    return ids, mask


def pack(ids, mask):
    cu = F.pad(mask.sum(1).cumsum(0), (1, 0)).to(torch.int32)
    return ids[mask.bool()], cu


@pytest.fixture(scope="module")
def mlm():
    torch.manual_seed(0)
    return MaskedLM(cfg()).eval()


def test_packed_equals_padded_left_and_right(mlm):
    ids, mask = padded_batch([30, 17, 1, 25], mlm.config.vocab_size)
    with torch.no_grad():
        padded = mlm(ids, attention_mask=mask).logits
        flat, cu = pack(ids, mask)
        packed = mlm(flat, cu_seqlens=cu, max_seqlen=30).logits
        lids, lmask = padded_batch([30, 17, 1, 25], mlm.config.vocab_size, left=True)
        left = mlm(lids, attention_mask=lmask).logits
    torch.testing.assert_close(packed, padded[mask.bool()], atol=1e-5, rtol=0)
    torch.testing.assert_close(left[lmask.bool()], padded[mask.bool()], atol=1e-5, rtol=0)
    assert padded[~mask.bool()].abs().max() == 0  # padding positions are left at zero


def test_no_attention_across_sequences(mlm):
    """A sequence's outputs do not change when other sequences share the pack."""
    ids, mask = padded_batch([20, 13], mlm.config.vocab_size, seed=1)
    with torch.no_grad():
        alone = mlm(ids[:1, :20]).logits[0]
        flat, cu = pack(ids, mask)
        together = mlm(flat, cu_seqlens=cu).logits[:20]
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_explicit_position_ids_match_default(mlm):
    ids, mask = padded_batch([12, 7], mlm.config.vocab_size, seed=2)
    flat, cu = pack(ids, mask)
    pos = torch.cat([torch.arange(12), torch.arange(7)])
    with torch.no_grad():
        a = mlm(flat, cu_seqlens=cu).logits
        b = mlm(flat, cu_seqlens=cu, position_ids=pos).logits
        c = mlm(flat, cu_seqlens=cu, position_ids=pos + 5).logits  # RoPE is relative
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c, atol=1e-4, rtol=0)


def test_sparse_prediction_equals_full_logits(mlm):
    ids, mask = padded_batch([30, 17, 9], mlm.config.vocab_size, seed=3)
    labels = torch.full_like(ids, -100)
    chosen = [(0, 3), (0, 29), (1, 0), (1, 16), (2, 5)]
    for b, t in chosen:
        labels[b, t] = ids[b, t]
    with torch.no_grad():
        full = mlm(ids, attention_mask=mask).logits
        out = mlm(ids, attention_mask=mask, labels=labels)
    flat_pos = torch.tensor([b * ids.shape[1] + t for b, t in chosen])
    assert torch.equal(out.predict_positions, flat_pos)
    want = full.reshape(-1, full.shape[-1])[flat_pos]
    torch.testing.assert_close(out.logits, want, atol=1e-5, rtol=0)
    ce = F.cross_entropy(want, labels.reshape(-1)[flat_pos], reduction="none")
    torch.testing.assert_close(out.token_loss, ce, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, ce.mean(), atol=1e-5, rtol=0)
    # packed, with predict_positions and no labels
    flat, cu = pack(ids, mask)
    with torch.no_grad():
        packed_full = mlm(flat, cu_seqlens=cu).logits
        pp = torch.tensor([0, 31, 55])
        sparse = mlm(flat, cu_seqlens=cu, predict_positions=pp)
    assert sparse.loss is None
    torch.testing.assert_close(sparse.logits, packed_full[pp], atol=1e-5, rtol=0)


def test_loss_with_no_labelled_token_is_zero_and_differentiable():
    torch.manual_seed(4)
    m = MaskedLM(cfg())
    ids = torch.randint(5, 97, (2, 10))
    out = m(ids, labels=torch.full_like(ids, -100))
    assert out.loss.item() == 0.0 and out.logits.shape == (0, 97)
    out.loss.backward()


def test_training_step_reduces_loss_and_grads_reach_every_parameter():
    torch.manual_seed(5)
    m = MaskedLM(cfg())
    ids, mask = padded_batch([16, 11], 97, seed=5)
    labels = ids.masked_fill(mask == 0, -100)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        loss = m(ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert losses[-1] < losses[0] - 0.1
    assert all(p.grad is not None for p in m.parameters())
    assert m.decoder.weight is m.model.embeddings.tok_embeddings.weight  # still tied


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(6)
    m = MaskedLM(cfg())
    ids, mask = padded_batch([16, 11], 97, seed=6)
    labels = ids.masked_fill(mask == 0, -100)
    m(ids, attention_mask=mask, labels=labels).loss.backward()
    g1 = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.model.gradient_checkpointing = True
    m(ids, attention_mask=mask, labels=labels).loss.backward()
    for a, p in zip(g1, m.parameters()):
        torch.testing.assert_close(p.grad, a, atol=1e-6, rtol=1e-5)


def test_set_rope_theta_equals_model_built_with_those_thetas(mlm):
    ids, mask = padded_batch([40, 33], mlm.config.vocab_size, seed=7)
    # sharpen attention (random init makes it nearly uniform, hiding the positions)
    sd = {k: v * 30 if "Wqkv" in k else v for k, v in mlm.state_dict().items()}
    m = MaskedLM(mlm.config).eval()
    m.load_state_dict(sd)
    with torch.no_grad():
        before = m(ids, attention_mask=mask).logits
        m.set_rope_theta(1000.0, 77.0)
        after = m(ids, attention_mask=mask).logits
        fresh = MaskedLM(mlm.config.replace(global_rope_theta=1000.0, local_rope_theta=77.0)).eval()
        fresh.load_state_dict(sd)
        want = fresh(ids, attention_mask=mask).logits
    assert m.config.global_rope_theta == 1000.0 and m.config.local_rope_theta == 77.0
    assert (before - after).abs().max() > 1e-2
    torch.testing.assert_close(after, want)


def test_rope_rotation_written_for_torch_compile_equals_the_eager_one(monkeypatch):
    """Under torch.compile the rotation takes a functional form (no out= into views); it must
    give what the in-place eager form gives, forwards (sign 1) and backwards (sign -1)."""
    from mmbert import model as M

    torch.manual_seed(8)
    x = torch.randn(7, 2, 3, 8)
    cos, sin = M.rope_cos_sin(torch.arange(7) * 3, 8, 500.0)
    for sign in (1.0, -1.0):
        want = M._rotate(x, cos, sin, sign)
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        got = M._rotate(x, cos, sin, sign)
        buf = torch.zeros(7, 3, 3, 8)[:, :2]  # a strided view, as in the fused q/k/v buffer
        into = M._rotate(x, cos, sin, sign, out=buf)
        monkeypatch.undo()
        assert into is buf
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(buf, want)
    assert (M._rotate(x, cos, sin, 1.0) - x).abs().max() > 0.1  # it does rotate


def test_cross_entropy_written_for_torch_compile_equals_the_eager_one(monkeypatch):
    """Under torch.compile the loss is plain F.cross_entropy (no chunk loops to unroll): the
    same values and gradients as the chunked autograd Function, fp32 and bf16 logits."""
    from mmbert import model as M

    torch.manual_seed(9)
    target = torch.randint(0, 50, (11,))
    base = 3 * torch.randn(11, 50)
    for dtype in (torch.float32, torch.bfloat16):
        results = []
        for compiling in (False, True):
            logits = base.to(dtype, copy=True).requires_grad_(True)
            monkeypatch.setattr(torch.compiler, "is_compiling", lambda c=compiling: c)
            loss = M.cross_entropy_rows(logits, target)
            monkeypatch.undo()
            loss.backward(torch.linspace(0.5, 1.5, 11))
            results.append((loss.detach(), logits.grad.float()))
        (l0, g0), (l1, g1) = results
        assert l0.dtype == l1.dtype == torch.float32
        tol = 1e-6 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(l1, l0, atol=tol, rtol=tol)
        torch.testing.assert_close(g1, g0, atol=tol, rtol=tol)


def test_layer_pattern_and_names_match_transformers_layout():
    m = MaskedLM(cfg(num_hidden_layers=7, global_attn_every_n_layers=3), init=False)
    assert [layer.attn.window for layer in m.model.layers] == [None, 4, 4, None, 4, 4, None]
    assert isinstance(m.model.layers[0].attn_norm, torch.nn.Identity)
    names = set(m.state_dict())
    for n in ("model.embeddings.tok_embeddings.weight", "model.embeddings.norm.weight",
              "model.layers.0.attn.Wqkv.weight", "model.layers.0.attn.Wo.weight",
              "model.layers.1.attn_norm.weight", "model.layers.0.mlp.Wi.weight",
              "model.layers.0.mlp.Wo.weight", "model.layers.0.mlp_norm.weight",
              "model.final_norm.weight", "head.dense.weight", "head.norm.weight",
              "decoder.weight", "decoder.bias"):
        assert n in names, n
    assert "model.layers.0.attn_norm.weight" not in names
    assert not any(n.endswith(".bias") and n != "decoder.bias" for n in names)


def test_modernbert_initialisation():
    torch.manual_seed(8)
    c = cfg(hidden_size=128, intermediate_size=256, num_hidden_layers=8, num_attention_heads=4)
    m = MaskedLM(c)
    std_in, std_out = 0.02, 0.02 / math.sqrt(2 * 8)

    def check(w, std):  # truncated at 2 std: empirical std ~0.88 std, nothing beyond 2 std
        assert abs(w.std().item() - 0.88 * std) < 0.1 * std
        assert w.abs().max().item() <= 2 * std + 1e-7

    check(m.model.embeddings.tok_embeddings.weight, std_in)
    check(m.model.layers[3].attn.Wqkv.weight, std_in)
    check(m.model.layers[3].mlp.Wi.weight, std_in)
    check(m.model.layers[3].attn.Wo.weight, std_out)
    check(m.model.layers[3].mlp.Wo.weight, std_out)
    check(m.head.dense.weight, std_out)
    assert m.decoder.bias.abs().max() == 0 and torch.all(m.model.final_norm.weight == 1)


def test_sentence_embedder_mean_pools_real_tokens_and_normalises():
    torch.manual_seed(9)
    enc = Encoder(cfg()).eval()
    emb = SentenceEmbedder(enc.config).eval()
    emb.model.load_state_dict(enc.state_dict())
    ids, mask = padded_batch([12, 5], 97, seed=9)
    with torch.no_grad():
        e = emb(ids, attention_mask=mask)
        h = enc(ids, attention_mask=mask).last_hidden_state
    want = F.normalize((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    torch.testing.assert_close(e, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(2))


def test_sequence_classifier_losses():
    torch.manual_seed(10)
    ids, mask = padded_batch([9, 6], 97, seed=10)
    reg = SequenceClassifier(cfg(), num_labels=1)
    out = reg(ids, attention_mask=mask, labels=torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), torch.tensor([0.5, -1.0])))
    multi = SequenceClassifier(cfg(), num_labels=3)
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    out = multi(ids, attention_mask=mask, labels=y)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, y))


def test_long_sequence_runs_with_linear_local_cost():
    """2048 tokens through a model whose local window is 8: the local layers take the flat
    chunked path (no 2048 x 2048 matrix); the result equals packing the same tokens as one segment."""
    torch.manual_seed(11)
    m = Encoder(cfg(num_hidden_layers=2, max_position_embeddings=4096)).eval()
    ids = torch.randint(5, 97, (1, 2048))
    with torch.no_grad():
        a = m(ids).last_hidden_state[0]
        b = m(ids[0], cu_seqlens=torch.tensor([0, 2048], dtype=torch.int32)).last_hidden_state
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b)


def test_unpad_validates_layouts():
    with pytest.raises(ValueError):
        unpad(torch.zeros(5, dtype=torch.long))  # packed without cu_seqlens
    with pytest.raises(ValueError):
        unpad(torch.zeros(5, dtype=torch.long), cu_seqlens=torch.tensor([0, 4], dtype=torch.int32))
