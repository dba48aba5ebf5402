"""Inference API and CLI: embed, fill-mask, export-onnx (tiny model, tiny word-level tokenizer).

References are independent of the fast paths: embeddings against one-sequence-at-a-time calls
with hand-written pooling, fill-mask against transformers' ModernBertForMaskedLM loading the
same directory, ONNX against the torch encoder.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmbert.cli import main
from mmbert.config import ModelConfig
from mmbert.inference import embed_file, export_onnx, fill_mask, read_texts, run_onnx
from mmbert.model import Encoder, MaskedLM
from mmbert.text import token_batches as length_batches
from mmbert.tokenizer import load_tokenizer

WORDS = ("the a cat dog sat on mat house red blue green big small runs jumps over under "
         "river tree bird sings sun moon star sky water fire earth wind stone city road "
         "car train boat ship sea hill").split()
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]


def make_tokenizer(d):
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tk.save(str(d / "tokenizer.json"))
    return len(vocab)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_mlm")
    vocab = make_tokenizer(d)
    cfg = ModelConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96,
                      num_hidden_layers=4, num_attention_heads=4, local_attention=8,
                      max_position_embeddings=128, global_rope_theta=20000.0,
                      local_rope_theta=500.0)
    torch.manual_seed(0)
    m = MaskedLM(cfg)
    with torch.no_grad():  # a non-zero decoder bias, so it is not silently dropped
        m.decoder.bias.normal_(0, 0.5)
    m.save_pretrained(d)
    return d


def texts(n=23, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(1, 40))  # with bos/eos up to 41 tokens: > 4 local windows
        out.append(" ".join(rng.choice(WORDS, size=k)))
    return out


def reference_embeddings(model_dir, txts, pooling="mean"):
    enc = Encoder.from_pretrained(model_dir).eval()
    tok = load_tokenizer(model_dir)
    rows = []
    with torch.no_grad():
        for t in txts:
            ids = torch.tensor([[tok.bos_id, *tok.encode(t), tok.eos_id]])
            h = enc(ids).last_hidden_state[0]
            v = h.mean(0) if pooling == "mean" else h[0]
            rows.append(F.normalize(v, dim=-1))
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("fmt", ["txt", "jsonl"])
def test_embed_file_matches_one_at_a_time(model_dir, tmp_path, fmt):
    txts = texts()
    src = tmp_path / f"in.{fmt}"
    if fmt == "txt":
        src.write_text("\n".join(txts) + "\n\n", encoding="utf-8")
    else:
        src.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(txts)))
    out = tmp_path / "emb.npy"
    # small batches: several length-sorted batches, each packed
    r = embed_file(model_dir, src, out, batch_tokens=60)
    got = np.load(out)
    assert (r.count, r.dim) == got.shape == (len(txts), 64)
    np.testing.assert_allclose(got, reference_embeddings(model_dir, txts), atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_embed_cls_pooling_truncation_and_bf16(model_dir, tmp_path):
    txts = texts(7, seed=3)
    src = tmp_path / "in.txt"
    src.write_text("\n".join(txts))
    out = tmp_path / "e.npy"
    embed_file(model_dir, src, out, pooling="cls")
    np.testing.assert_allclose(np.load(out), reference_embeddings(model_dir, txts, "cls"),
                               atol=2e-5)
    # truncation keeps bos + first tokens + eos
    short = [" ".join(t.split()[:3]) for t in txts]
    embed_file(model_dir, src, out, max_length=5)
    np.testing.assert_allclose(np.load(out), reference_embeddings(model_dir, short), atol=2e-5)
    embed_file(model_dir, src, out, dtype="bf16")
    cos = (np.load(out) * reference_embeddings(model_dir, txts)).sum(1)
    assert cos.min() > 0.99


def test_length_batches_sorted_and_bounded():
    lengths = [5, 50, 7, 300, 20, 20, 1]
    batches = length_batches(lengths, 60)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    assert all(sum(lengths[i] for i in b) <= 60 or len(b) == 1 for b in batches)


def test_read_texts_errors(tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(Exception, match=r"x.jsonl:2: expected a JSON object"):
        read_texts(bad)
    with pytest.raises(Exception, match="no such file"):
        read_texts(tmp_path / "missing.txt")


def test_fill_mask_matches_transformers(model_dir):
    from transformers import ModernBertForMaskedLM

    text = "the cat <mask> on the mat and the <mask> sings"
    preds = fill_mask(model_dir, text, top_k=4)
    assert len(preds) == 2 and all(len(p) == 4 for p in preds)

    tok = load_tokenizer(model_dir)
    ref = ModernBertForMaskedLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    pieces = text.split("<mask>")
    ids = [tok.bos_id, *tok.encode(pieces[0]), tok.mask_id, *tok.encode(pieces[1]),
           tok.mask_id, *tok.encode(pieces[2]), tok.eos_id]
    with torch.no_grad():
        logits = ref(input_ids=torch.tensor([ids])).logits[0]
    where = [i for i, t in enumerate(ids) if t == tok.mask_id]
    for row, pos in zip(preds, where):
        p, i = logits[pos].softmax(-1).topk(4)
        assert [r["token_id"] for r in row] == i.tolist()
        np.testing.assert_allclose([r["score"] for r in row], p.numpy(), atol=1e-5)
        assert row[0]["token"] == tok.decode([i[0].item()])


def test_export_onnx_matches_torch(model_dir, tmp_path):
    import onnxruntime as ort

    res = export_onnx(model_dir, tmp_path / "onnx")
    assert res.max_abs_diff is not None and res.max_abs_diff < 1e-4
    assert (tmp_path / "onnx" / "config.json").is_file()
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    enc = Encoder.from_pretrained(model_dir).eval()
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(5, enc.config.vocab_size, (4, 50), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 30:] = 0  # right padding
    mask[1, :12] = 0  # left padding
    mask[3, 3:] = 0  # a 3-token sequence
    got = run_onnx(sess, ids, mask)
    with torch.no_grad():
        want = enc(ids, attention_mask=mask).last_hidden_state.numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)  # zeros at padding in both


def test_cli_embed_fill_mask_and_errors(model_dir, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("the red car\nbig blue sea\n")
    out = tmp_path / "sub" / "e.npy"
    assert main(["embed", str(model_dir), "--input", str(src), "--out", str(out)]) == 0
    assert np.load(out).shape == (2, 64)
    assert main(["fill-mask", str(model_dir), "the <mask> sat", "--top-k", "3"]) == 0
    text = capsys.readouterr().out
    assert "mask 1:" in text and "  3. " in text

    assert main(["fill-mask", str(model_dir), "no mask here"]) == 2
    assert "no <mask> token" in capsys.readouterr().err
    assert main(["embed", str(model_dir), "--input", str(tmp_path / "nope.txt"),
                 "--out", str(tmp_path / "x.npy")]) == 2
    assert main(["embed", str(model_dir), "--input", str(src), "--out",
                 str(tmp_path / "x.bin")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 2 and "Traceback" not in err
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "x.bin").exists()
