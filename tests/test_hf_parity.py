"""Exact parity with transformers' own ModernBERT (random weights), both directions.

Config: 5 layers (global attention on 0 and 3), sliding window 16 (8 each side) shorter than
the sequences (up to 64 tokens), non-default RoPE thetas so a global/local swap would show.
"""

import warnings

import pytest
import torch
import transformers
from transformers import (ModernBertConfig, ModernBertForMaskedLM, ModernBertForSequenceClassification,
                          ModernBertForTokenClassification, ModernBertModel)

from mmbert import Encoder, MaskedLM, ModelConfig, SequenceClassifier, TokenClassifier

transformers.logging.set_verbosity_error()
ATOL = 1e-4
LENGTHS = [64, 41, 23]


def tiny_config(**kw) -> ModelConfig:
    base = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=5,
                num_attention_heads=4, local_attention=16, max_position_embeddings=256,
                global_rope_theta=20000.0, local_rope_theta=500.0)
    base.update(kw)
    return ModelConfig(**base)


def hf_config(cfg: ModelConfig, attn: str = "sdpa", **kw) -> ModernBertConfig:
    d = {k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type")}
    d.update(kw)
    c = ModernBertConfig(**d)
    c._attn_implementation = attn
    return c


def batch(vocab: int, seed: int = 0, lengths: list[int] = LENGTHS):
    """Random ids in [5, vocab), right-padded with 0 to the longest of ``lengths``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids = ids * mask  # pad id 0 at padding
    return ids, mask


def packed(ids, mask):
    real = mask.bool()
    cu = torch.nn.functional.pad(mask.sum(1).cumsum(0), (1, 0)).to(torch.int32)
    return ids[real], cu, int(mask.sum(1).max())


def assert_real_close(ours, theirs, mask, atol=ATOL):
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=atol, rtol=0)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_masked_lm_from_transformers_dir_padded_and_packed(tmp_path, attn):
    torch.manual_seed(0)
    cfg = tiny_config()
    ref = ModernBertForMaskedLM(hf_config(cfg, attn)).eval()
    ref.save_pretrained(tmp_path)
    ours = MaskedLM.from_pretrained(tmp_path).eval()
    assert ours.decoder.weight is ours.model.embeddings.tok_embeddings.weight
    ids, mask = batch(cfg.vocab_size)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
        flat, cu, maxlen = packed(ids, mask)
        got_packed = ours(flat, cu_seqlens=cu, max_seqlen=maxlen).logits
    assert got.shape == want.shape == (3, 64, cfg.vocab_size)
    assert_real_close(got, want, mask)
    torch.testing.assert_close(got_packed, want[mask.bool()], atol=ATOL, rtol=0)


def test_transformers_loads_our_masked_lm_dir(tmp_path):
    torch.manual_seed(1)
    cfg = tiny_config(global_attn_every_n_layers=2)
    ours = MaskedLM(cfg).eval()
    ours.save_pretrained(tmp_path)
    ref = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert isinstance(ref, ModernBertForMaskedLM)
    assert ref.config.layer_types == ["full_attention", "sliding_attention"] * 2 + ["full_attention"]
    ids, mask = batch(cfg.vocab_size, seed=1)
    with torch.no_grad():
        assert_real_close(ours(ids, attention_mask=mask).logits,
                          ref(input_ids=ids, attention_mask=mask).logits, mask)


def test_encoder_hidden_states_both_directions(tmp_path):
    torch.manual_seed(2)
    cfg = tiny_config()
    ids, mask = batch(cfg.vocab_size, seed=2)
    # theirs -> ours (a bare ModernBertModel directory, keys without the `model.` prefix)
    ref = ModernBertModel(hf_config(cfg)).eval()
    ref.save_pretrained(tmp_path / "theirs")
    ours = Encoder.from_pretrained(tmp_path / "theirs").eval()
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        assert_real_close(ours(ids, attention_mask=mask).last_hidden_state, want, mask)
        flat, cu, maxlen = packed(ids, mask)
        torch.testing.assert_close(ours(flat, cu_seqlens=cu, max_seqlen=maxlen).last_hidden_state,
                                   want[mask.bool()], atol=ATOL, rtol=0)
    # ours -> theirs
    enc = Encoder(cfg).eval()
    enc.save_pretrained(tmp_path / "ours")
    ref2 = transformers.AutoModel.from_pretrained(tmp_path / "ours", attn_implementation="sdpa").eval()
    with torch.no_grad():
        assert_real_close(enc(ids, attention_mask=mask).last_hidden_state,
                          ref2(input_ids=ids, attention_mask=mask).last_hidden_state, mask)


def test_encoder_from_masked_lm_dir_ignores_head(tmp_path):
    torch.manual_seed(3)
    cfg = tiny_config()
    ref = ModernBertForMaskedLM(hf_config(cfg)).eval()
    ref.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # head/decoder tensors are expected: no warning
        enc = Encoder.from_pretrained(tmp_path).eval()
    ids, mask = batch(cfg.vocab_size, seed=3)
    with torch.no_grad():
        assert_real_close(enc(ids, attention_mask=mask).last_hidden_state,
                          ref.model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_sequence_classifier_both_directions(tmp_path, pooling):
    torch.manual_seed(4)
    cfg = tiny_config(classifier_pooling=pooling)
    ids, mask = batch(cfg.vocab_size, seed=4)
    ref = ModernBertForSequenceClassification(hf_config(cfg, num_labels=3)).eval()
    ref.save_pretrained(tmp_path / "theirs")
    ours = SequenceClassifier.from_pretrained(tmp_path / "theirs").eval()
    assert ours.num_labels == 3
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(ours(ids, attention_mask=mask).logits, want, atol=ATOL, rtol=0)
        flat, cu, maxlen = packed(ids, mask)
        torch.testing.assert_close(ours(flat, cu_seqlens=cu, max_seqlen=maxlen).logits, want,
                                   atol=ATOL, rtol=0)
        labels = torch.tensor([0, 2, 1])
        torch.testing.assert_close(ours(ids, attention_mask=mask, labels=labels).loss,
                                   ref(input_ids=ids, attention_mask=mask, labels=labels).loss,
                                   atol=ATOL, rtol=0)
    mine = SequenceClassifier(cfg, labels=["neg", "neu", "pos"]).eval()
    mine.save_pretrained(tmp_path / "ours")
    ref2 = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "ours").eval()
    assert ref2.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    with torch.no_grad():
        torch.testing.assert_close(mine(ids, attention_mask=mask).logits,
                                   ref2(input_ids=ids, attention_mask=mask).logits, atol=ATOL, rtol=0)


def test_token_classifier_both_directions(tmp_path):
    torch.manual_seed(5)
    cfg = tiny_config()
    ids, mask = batch(cfg.vocab_size, seed=5)
    ref = ModernBertForTokenClassification(hf_config(cfg, num_labels=5)).eval()
    ref.save_pretrained(tmp_path / "theirs")
    ours = TokenClassifier.from_pretrained(tmp_path / "theirs").eval()
    labels = torch.randint(0, 5, ids.shape).masked_fill(mask == 0, -100)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, labels=labels)
        got = ours(ids, attention_mask=mask, labels=labels)
    assert_real_close(got.logits, want.logits, mask)
    torch.testing.assert_close(got.loss, want.loss, atol=ATOL, rtol=0)
    mine = TokenClassifier(cfg, num_labels=4).eval()
    mine.save_pretrained(tmp_path / "ours")
    ref2 = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        assert_real_close(mine(ids, attention_mask=mask).logits,
                          ref2(input_ids=ids, attention_mask=mask).logits, mask)


def test_classifier_from_masked_lm_dir_keeps_head_and_inits_classifier(tmp_path):
    """Starting fine-tuning: encoder and prediction head come from the MLM checkpoint (as in
    transformers), the classifier is fresh (with a warning)."""
    torch.manual_seed(6)
    cfg = tiny_config()
    mlm = MaskedLM(cfg)
    mlm.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="classifier.weight"):
        clf = SequenceClassifier.from_pretrained(tmp_path, labels=["a", "b"])
    torch.testing.assert_close(clf.head.dense.weight, mlm.head.dense.weight)
    torch.testing.assert_close(clf.model.layers[2].attn.Wqkv.weight, mlm.model.layers[2].attn.Wqkv.weight)
    std = clf.classifier.weight.std().item()
    assert 0.3 * cfg.hidden_size ** -0.5 < std < 1.2 * cfg.hidden_size ** -0.5
    assert clf.classifier.bias.abs().max().item() == 0.0


def test_bf16_close_to_fp32(tmp_path):
    """bf16 (autocast, or weights cast to bf16) stays near fp32: max logit error under 2% of
    the largest logit (measured ~0.7%), arg-max agrees on > 90% of tokens (measured 99%)."""
    torch.manual_seed(7)
    cfg = tiny_config()
    model = MaskedLM(cfg).eval()
    ids, mask = batch(cfg.vocab_size, seed=7)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model(ids, attention_mask=mask).logits.float()
        half = model.to(torch.bfloat16)(ids, attention_mask=mask).logits.float()
    real = mask.bool()
    scale = ref[real].abs().max().item()
    for got in (auto, half):
        err = (got[real] - ref[real]).abs().max().item()
        assert err < 0.02 * scale, (err, scale)
        agree = (got[real].argmax(-1) == ref[real].argmax(-1)).float().mean().item()
        assert agree > 0.9


def test_sentence_embedder_dir_is_a_transformers_model(tmp_path):
    from mmbert import SentenceEmbedder

    torch.manual_seed(8)
    cfg = tiny_config()
    emb = SentenceEmbedder(cfg).eval()
    emb.save_pretrained(tmp_path)
    ref = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(ref, ModernBertModel)
    ids, mask = batch(cfg.vocab_size, seed=8)
    with torch.no_grad():
        h = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        want = torch.nn.functional.normalize((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
        torch.testing.assert_close(emb(ids, attention_mask=mask), want, atol=ATOL, rtol=0)
        again = SentenceEmbedder.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(again(ids, attention_mask=mask), want, atol=ATOL, rtol=0)
