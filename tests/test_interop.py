"""Interop matrix: ModernBERT directories as users have them, in both directions, and what we
write in the tools users load it with.

Inward: each case is saved by transformers' own classes (random weights, perturbed so biases and
norm weights are not 0 and 1), loaded here and compared with transformers' reading of the same
directory (fp32, right-padded batch, max |diff| < 1e-4); then written back by us, reloaded by
transformers (no missing or unexpected tensors) and compared again. Every case keeps
transformers' default special ids (50281/50282) with a 1000-token vocabulary, as a config whose
author changed only ``vocab_size`` does: each loads with exactly one warning, and the ids survive
the round trip as metadata.

Outward: transformers ``pipeline("fill-mask")`` / ``pipeline("feature-extraction")``,
sentence-transformers, ONNX Runtime (above the sliding window) and ``AutoTokenizer`` framing on
directories we write; the CLI (check / convert / merge / finetune / fill-mask) on default-id
directories. Text: UI strings of this machine's gettext catalogues (English msgids and their
French / German / Russian translations); the tokenizer is trained on them here.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from test_hf_parity import ATOL, assert_real_close, batch
from transformers import (AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, AutoTokenizer, ModernBertConfig,
                          ModernBertForMaskedLM, ModernBertForSequenceClassification,
                          ModernBertForTokenClassification, ModernBertModel)

import mmbert.config
from mmbert import Encoder, MaskedLM, SequenceClassifier, TokenClassifier
from mmbert.cli import main
from mmbert.config import _ACTIVATIONS
from mmbert.data.sources import read_mo
from mmbert.errors import MmbertError

transformers.logging.set_verbosity_error()
# the special-id warning is asserted where it matters (recorded there); elsewhere it is expected
pytestmark = pytest.mark.filterwarnings("ignore:config.json.*outside the vocabulary")

DEFAULT_IDS = {"bos_token_id": 50281, "eos_token_id": 50282, "cls_token_id": 50281,
               "sep_token_id": 50282}
ID_FIELDS = ("pad_token_id", *DEFAULT_IDS)
ID_WARNING = "outside the vocabulary"
# transformers' own way to make a small model: vocabulary changed, special ids left as they are
BASE = dict(vocab_size=1000, pad_token_id=0, hidden_size=48, intermediate_size=64,
            num_hidden_layers=3, num_attention_heads=4, local_attention=16,
            max_position_embeddings=512, global_rope_theta=20000.0, local_rope_theta=500.0)
LONG = (150, 97, 33)  # longer than every window below (the largest is 128)

# kind -> (transformers class, our class, transformers Auto class, labels)
KINDS = {"mlm": (ModernBertForMaskedLM, MaskedLM, AutoModelForMaskedLM, None),
         "encoder": (ModernBertModel, Encoder, AutoModel, None),
         "seq": (ModernBertForSequenceClassification, SequenceClassifier,
                 AutoModelForSequenceClassification, 3),
         "tok": (ModernBertForTokenClassification, TokenClassifier,
                 AutoModelForTokenClassification, 5)}


@pytest.fixture(autouse=True)
def fresh_warning_registry(monkeypatch):
    """The special-id warning is given once per process; each test starts as a new process."""
    monkeypatch.setattr(mmbert.config, "_WARNED", set())


def id_warnings(log) -> list[str]:
    return [str(w.message) for w in log if ID_WARNING in str(w.message)]


def output(o) -> torch.Tensor:
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def perturbed(model: torch.nn.Module, seed: int, bf16_values: bool = False) -> torch.nn.Module:
    """Random non-trivial weights: zero biases and unit norm weights get noise too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
            if bf16_values:  # exactly representable in bf16: a bf16 file holds these weights
                p.copy_(p.to(torch.bfloat16).float())
    return model.eval()


# ---------------------------------------------------------------------------------------------
# config.json edits: the forms other transformers versions wrote
# ---------------------------------------------------------------------------------------------

def flat_448_config(d: Path) -> None:
    """config.json as transformers 4.48 wrote it (released mmBERT / ModernBERT checkpoints):
    flat global/local RoPE thetas and global_attn_every_n_layers, no layer_types or
    rope_parameters, torch_dtype, and keys of that era that 5.x no longer has."""
    c = json.loads((d / "config.json").read_text())
    layer_types, rope = c.pop("layer_types"), c.pop("rope_parameters")
    full = [i for i, t in enumerate(layer_types) if t == "full_attention"]
    c.update(global_attn_every_n_layers=full[1] if len(full) > 1 else len(layer_types),
             global_rope_theta=rope["full_attention"]["rope_theta"],
             local_rope_theta=rope["sliding_attention"]["rope_theta"],
             torch_dtype=c.pop("dtype"), transformers_version="4.48.0",
             reference_compile=True, gradient_checkpointing=False,
             position_embedding_type="absolute", repad_logits_with_grad=False)
    (d / "config.json").write_text(json.dumps(c, indent=2))


V5_LAYERS = ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
V5_ROPE = {"full_attention": {"rope_type": "default", "rope_theta": 30000.0},
           "sliding_attention": {"rope_type": "default", "rope_theta": 700.0}}


def transformers_5_config(d: Path) -> None:
    """A config made the 5.x way (layer_types + rope_parameters) is written that way alone."""
    c = json.loads((d / "config.json").read_text())
    assert c["layer_types"] == V5_LAYERS and c["rope_parameters"] == V5_ROPE
    assert not {"global_rope_theta", "local_rope_theta", "global_attn_every_n_layers"} & set(c)


def torch_dtype_key(d: Path) -> None:
    """A bf16 directory as transformers 4.x wrote it: ``torch_dtype`` instead of ``dtype``."""
    c = json.loads((d / "config.json").read_text())
    assert c["dtype"] == "bfloat16"
    c["torch_dtype"] = c.pop("dtype")
    (d / "config.json").write_text(json.dumps(c, indent=2))


def case(name: str, kind: str = "mlm", *, lengths=(70, 41, 23), edit=None, bf16=False,
         load_as: str | None = None, attn: str = "sdpa", **config):
    return pytest.param(dict(kind=kind, lengths=lengths, edit=edit, bf16=bf16,
                             load_as=load_as or kind, attn=attn, config=config), id=name)


MATRIX = [
    case("default-token-ids"),
    case("biases", attention_bias=True, mlp_bias=True, norm_bias=True, decoder_bias=True,
         classifier_bias=True),
    case("no-decoder-bias", decoder_bias=False),
    *[case(f"activation-{a}", hidden_activation=a, classifier_activation=a)
      for a in _ACTIVATIONS],
    *[case(f"global-every-{n}-window-{w}", kind, num_hidden_layers=4,
           global_attn_every_n_layers=n, local_attention=w, lengths=LONG)
      for n, w, kind in ((1, 8, "encoder"), (2, 8, "mlm"), (2, 32, "encoder"),
                         (3, 16, "mlm"), (3, 64, "encoder"), (3, 128, "mlm"))],
    case("eager-attention", "encoder", attn="eager", global_attn_every_n_layers=2),
    case("sequence-cls-pooling", "seq", classifier_pooling="cls"),
    case("sequence-mean-pooling", "seq", classifier_pooling="mean"),
    case("token-classification", "tok"),
    case("masked-lm-dir-as-encoder", "mlm", load_as="encoder"),
    case("flat-4.48-config", edit=flat_448_config, global_attn_every_n_layers=2),
    case("transformers-5-config", edit=transformers_5_config, num_hidden_layers=4,
         layer_types=V5_LAYERS, rope_parameters=V5_ROPE, lengths=LONG),
    case("bf16-dtype-key", bf16=True),
    case("bf16-torch_dtype-key", bf16=True, edit=torch_dtype_key),
]


def compare(got: torch.Tensor, want: torch.Tensor, mask: torch.Tensor) -> None:
    if got.dim() == 2 and got.shape[0] == mask.shape[0] and got.shape[1] != mask.shape[1]:
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)  # one row per sequence
    else:
        assert_real_close(got, want, mask)


@pytest.mark.parametrize("c", MATRIX)
def test_matrix(c, tmp_path):
    hf_cls, _, _, labels = KINDS[c["kind"]]
    _, ours_cls, auto, _ = KINDS[c["load_as"]]
    kw = copy.deepcopy({**BASE, **c["config"], **({"num_labels": labels} if labels else {})})
    cfg = ModernBertConfig(**kw)
    ref = perturbed(hf_cls(cfg), seed=0, bf16_values=c["bf16"])
    ids, mask = batch(BASE["vocab_size"], seed=1, lengths=list(c["lengths"]))
    with torch.no_grad():
        want = output((ref.model if c["load_as"] != c["kind"] else ref)(input_ids=ids,
                                                                        attention_mask=mask))
    (ref.to(torch.bfloat16) if c["bf16"] else ref).save_pretrained(tmp_path / "theirs")
    if c["edit"]:
        c["edit"](tmp_path / "theirs")
    kw = dict(attn_implementation=c["attn"])
    stored = torch.bfloat16 if c["bf16"] else torch.float32

    # transformers reads the (edited) directory as the model it saved
    theirs = auto.from_pretrained(tmp_path / "theirs", dtype=torch.float32, **kw).eval()
    with torch.no_grad():
        compare(output(theirs(input_ids=ids, attention_mask=mask)), want, mask)
    assert auto.from_pretrained(tmp_path / "theirs", dtype="auto").dtype == stored

    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        ours = ours_cls.from_pretrained(tmp_path / "theirs").eval()
        ours_auto = ours_cls.from_pretrained(tmp_path / "theirs", dtype="auto").eval()
    got_warnings = id_warnings(log)
    assert len(got_warnings) == 1 and all(f"{k}={v}" in got_warnings[0]
                                          for k, v in DEFAULT_IDS.items()), got_warnings
    assert next(ours_auto.parameters()).dtype == stored
    with torch.no_grad():
        compare(output(ours(ids, attention_mask=mask)), want, mask)

    # written back by us: transformers loads every tensor, same outputs, same dtype and ids
    ours_auto.save_pretrained(tmp_path / "ours")
    back, info = auto.from_pretrained(tmp_path / "ours", output_loading_info=True, **kw)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert back.dtype == stored
    for f in ID_FIELDS:
        assert getattr(back.config, f) == getattr(theirs.config, f), f
    assert back.config.layer_types == theirs.config.layer_types
    with torch.no_grad():
        back = back.float().eval()
        compare(output(back(input_ids=ids, attention_mask=mask)), want, mask)


def test_encoder_dir_as_masked_lm(tmp_path):
    """transformers loads a bare ModernBertModel directory as a masked LM with a freshly
    initialised head (reported as missing tensors), so its predictions are noise. We refuse that
    in one line naming the missing tensor and pointing to Encoder, and load it as an Encoder."""
    ref = perturbed(ModernBertModel(ModernBertConfig(**BASE)), seed=3)
    ref.save_pretrained(tmp_path)
    _, info = AutoModelForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == {"head.dense.weight", "head.norm.weight", "decoder.bias"}
    with pytest.raises(MmbertError, match=r"head\.dense\.weight.*missing.*load it with Encoder"):
        MaskedLM.from_pretrained(tmp_path)
    ids, mask = batch(BASE["vocab_size"], seed=3)
    with torch.no_grad():
        assert_real_close(Encoder.from_pretrained(tmp_path)(ids, attention_mask=mask)
                          .last_hidden_state, ref(input_ids=ids, attention_mask=mask)
                          .last_hidden_state, mask)


@pytest.mark.parametrize("field, value, expected", [
    ("pad_token_id", 50283, "the embedding's padding row"),
    ("cls_token_id", -1, "a non-negative integer token id"),
    ("sep_token_id", "[SEP]", "a non-negative integer token id"),
    ("bos_token_id", True, "a non-negative integer token id"),
])
def test_wrong_ids_still_refused(tmp_path, field, value, expected):
    """Ids that are really wrong stay errors. A pad id outside the vocabulary: transformers
    cannot build the model either (nn.Embedding's padding_idx assertion)."""
    ModernBertModel(ModernBertConfig(**BASE)).save_pretrained(tmp_path)
    c = json.loads((tmp_path / "config.json").read_text())
    c[field] = value
    (tmp_path / "config.json").write_text(json.dumps(c))
    if field == "pad_token_id":
        with pytest.raises(AssertionError, match="Padding_idx"):
            AutoModel.from_pretrained(tmp_path)
    with pytest.raises(MmbertError, match=f"'{field}'.*{expected}") as e:
        Encoder.from_pretrained(tmp_path)
    assert "\n" not in str(e.value) and "config.json" in str(e.value)


# ---------------------------------------------------------------------------------------------
# Real text, our tokenizer, a transformers directory with default ids plus our tokenizer files
# ---------------------------------------------------------------------------------------------

LOCALES = {"fra_Latn": "fr", "deu_Latn": "de", "rus_Cyrl": "ru"}
DOMAINS = ("apt", "adduser", "Linux-PAM")


def catalogue(locale: str) -> list[tuple[str, str]]:
    """(English msgid, translation) pairs of a few Debian gettext catalogues on this machine."""
    pairs = []
    for dom in DOMAINS:
        for m in read_mo(Path("/usr/share/locale") / locale / "LC_MESSAGES" / f"{dom}.mo"):
            a, b = " ".join(m.msgid.split()), " ".join(m.msgstr.split())
            if 3 <= len(a) <= 160 and 3 <= len(b) <= 160:
                pairs.append((a, b))
    assert len(pairs) > 100, (locale, len(pairs))
    return pairs


@pytest.fixture(scope="module")
def texts() -> dict[str, list[tuple[str, str]]]:
    return {lang: catalogue(loc) for lang, loc in LOCALES.items()}


@pytest.fixture(scope="module")
def tok_dir(texts, tmp_path_factory) -> Path:
    """A BPE tokenizer (1000 tokens, byte fallback) trained on the catalogues' strings."""
    from mmbert.tokenizer import train_tokenizer

    corpus = tmp_path_factory.mktemp("corpus")
    (corpus / "eng_Latn.txt").write_text("\n\n".join(a for a, _ in texts["fra_Latn"]))
    for lang, pairs in texts.items():
        (corpus / f"{lang}.txt").write_text("\n\n".join(b for _, b in pairs))
    out = tmp_path_factory.mktemp("tok") / "bpe"
    train_tokenizer(corpus, 1000, out)
    return out


@pytest.fixture(scope="module")
def default_id_dir(tok_dir, tmp_path_factory) -> Path:
    """ModernBertForMaskedLM saved by transformers with its default special ids and the
    vocabulary of our tokenizer, whose files sit next to it (window 16, global every 3rd)."""
    from mmbert.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_dir)
    d = tmp_path_factory.mktemp("hf") / "default-ids"
    cfg = ModernBertConfig(**{**BASE, "vocab_size": tok.vocab_size})
    perturbed(ModernBertForMaskedLM(cfg), seed=7).save_pretrained(d)
    tok.save(d)
    assert all(json.loads((d / "config.json").read_text())[k] == v for k, v in DEFAULT_IDS.items())
    return d


def sample(texts, n: int = 4) -> list[str]:
    return [p[1] for lang in sorted(texts) for p in texts[lang][:n]] + \
        [a for a, _ in texts["fra_Latn"][:n]]


def test_loading_takes_ids_from_the_tokenizer(default_id_dir):
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        m = MaskedLM.from_pretrained(default_id_dir)
    (msg,) = id_warnings(log)
    assert "using the tokenizer's" in msg and "cls_token_id=2" in msg and "sep_token_id=1" in msg
    c = m.config
    # Gemma's layout of the trained tokenizer; mask is not a transformers config field at all
    assert (c.pad_token_id, c.eos_token_id, c.bos_token_id, c.cls_token_id, c.sep_token_id,
            c.mask_token_id) == (0, 1, 2, 2, 1, 4)
    assert json.loads((default_id_dir / "config.json").read_text())["cls_token_id"] == 50281


def test_autotokenizer_frames_as_our_pipeline(default_id_dir, texts):
    """What fine-tuning (load_text_tokenizer + frame), embedding and fill-mask feed the model
    equals what AutoTokenizer feeds it, singles and pairs."""
    from mmbert.hf import read_config
    from mmbert.inference import tokenize
    from mmbert.text import load_text_tokenizer
    from mmbert.tokenizer import load_tokenizer

    hf = AutoTokenizer.from_pretrained(default_id_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tt = load_text_tokenizer(default_id_dir, read_config(default_id_dir)[0])
    mine = load_tokenizer(default_id_dir)
    xs = sample(texts)
    singles = [tt.frame(tt.ids(x), None, 10**6) for x in xs]
    assert singles == hf(xs)["input_ids"] == tokenize(mine, xs, 10**6)
    pairs = list(zip(xs, xs[1:]))
    assert [tt.frame(tt.ids(a), tt.ids(b), 10**6) for a, b in pairs] == \
        hf([a for a, _ in pairs], [b for _, b in pairs])["input_ids"]


def test_pipelines_on_what_we_write(default_id_dir, texts, tmp_path, capsys):
    """`mmbert convert` output in transformers' fill-mask and feature-extraction pipelines."""
    from transformers import pipeline

    from mmbert.inference import fill_mask

    out = tmp_path / "converted"
    assert main(["convert", str(default_id_dir), "--out", str(out)]) == 0
    written = json.loads((out / "config.json").read_text())
    assert (written["cls_token_id"], written["sep_token_id"]) == (2, 1)  # the tokenizer's
    text = f"{texts['fra_Latn'][0][1]} <mask> {texts['fra_Latn'][1][1]}"
    theirs = pipeline("fill-mask", model=str(out), top_k=5)(text)
    ours = fill_mask(out, text, top_k=5)[0]
    assert [p["token"] for p in theirs] == [p["token_id"] for p in ours]
    np.testing.assert_allclose([p["score"] for p in theirs], [p["score"] for p in ours],
                               atol=1e-5)

    fe = pipeline("feature-extraction", model=str(out))
    enc = Encoder.from_pretrained(out).eval()
    hf_tok = AutoTokenizer.from_pretrained(out)
    for x in sample(texts, 2):
        feats = torch.tensor(fe(x))[0]
        with torch.no_grad():
            mine = enc(torch.tensor([hf_tok(x)["input_ids"]])).last_hidden_state[0]
        torch.testing.assert_close(feats, mine, atol=ATOL, rtol=0)


def test_onnx_above_the_sliding_window(default_id_dir, tmp_path):
    """The exported encoder at 120 tokens (window 16): ONNX Runtime equals our PyTorch, and
    differs from the same weights with the window ignored (so the check can fail)."""
    import onnxruntime as ort

    from mmbert.inference import export_onnx, run_onnx

    r = export_onnx(default_id_dir, tmp_path / "onnx")
    assert r.max_abs_diff is not None and r.max_abs_diff < ATOL
    sess = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"])
    vocab = json.loads((default_id_dir / "config.json").read_text())["vocab_size"]
    ids, mask = batch(vocab, seed=5, lengths=[120, 77])
    got = torch.from_numpy(run_onnx(sess, ids, mask))
    enc = Encoder.from_pretrained(default_id_dir).eval()
    no_window = Encoder(enc.config.replace(local_attention=1024), init=False)
    no_window.load_state_dict(enc.state_dict())
    with torch.no_grad():
        want = enc(ids, attention_mask=mask).last_hidden_state
        global_only = no_window.eval()(ids, attention_mask=mask).last_hidden_state
    assert_real_close(got, want, mask)
    assert (global_only - want)[mask.bool()].abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------
# The CLI on default-id directories: works, one warning; needs a tokenizer -> one-line error
# ---------------------------------------------------------------------------------------------

def cli(capsys, *argv) -> tuple[int, str, str, list[str]]:
    """Run `mmbert ...` as a fresh process would (warning registry empty)."""
    mmbert.config._WARNED.clear()
    capsys.readouterr()  # drop what earlier steps printed (transformers' progress bars)
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err, id_warnings(log)


def one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, err


def test_cli_check_convert_merge(tmp_path, capsys):
    dirs = []
    for seed in range(3):
        d = tmp_path / f"m{seed}"
        perturbed(ModernBertForMaskedLM(ModernBertConfig(**BASE)), seed=seed).save_pretrained(d)
        dirs.append(d)
    rc, out, _, w = cli(capsys, "check", dirs[0])
    assert rc == 0 and "MaskedLM" in out and len(w) == 1

    rc, _, _, w = cli(capsys, "convert", dirs[0], "--out", tmp_path / "conv")
    assert rc == 0 and len(w) == 1
    rc, _, _, w = cli(capsys, "merge", "--method", "ties", "--base", dirs[0], "--models",
                      dirs[1], dirs[2], "--out", tmp_path / "merged")
    assert rc == 0 and len(w) == 1
    ids, mask = batch(BASE["vocab_size"], seed=2)
    for d in (tmp_path / "conv", tmp_path / "merged"):
        c = json.loads((d / "config.json").read_text())
        assert {k: c[k] for k in DEFAULT_IDS} == DEFAULT_IDS  # metadata kept
        hf = AutoModelForMaskedLM.from_pretrained(d).eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert_real_close(MaskedLM.from_pretrained(d)(ids, attention_mask=mask).logits,
                              hf(input_ids=ids, attention_mask=mask).logits, mask)

    # what needs a special id, without a tokenizer to take it from: one line each
    rc, _, err, _ = cli(capsys, "fill-mask", dirs[0], "a <mask> b")
    one_line_error(rc, err, "no tokenizer.json")
    rc, _, err, _ = cli(capsys, "finetune", "--task", "sequence", "--model", dirs[0], "--train",
                        tmp_path / "x.jsonl", "--out", tmp_path / "ft")
    one_line_error(rc, err, "no tokenizer.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MaskedLM.from_pretrained(dirs[0])
    with pytest.raises(MmbertError, match=r"50281 \(cls_token_id = bos_token_id\) and 50282 "
                       r"\(sep_token_id = eos_token_id\).*tokenizer\.json"):
        m(torch.tensor([[m.config.cls_token_id, 5, 6, m.config.sep_token_id]]))


def test_cli_fill_mask_and_finetune(default_id_dir, texts, tmp_path, capsys):
    rc, out, _, w = cli(capsys, "fill-mask", default_id_dir, "Unable to <mask> the file")
    assert rc == 0 and "mask 1:" in out and len(w) == 1

    train = tmp_path / "train.jsonl"
    rows = [{"text": b, "label": lang} for lang in ("fra_Latn", "deu_Latn")
            for _, b in texts[lang][:24]]
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    rc, _, err, w = cli(capsys, "finetune", "--task", "sequence", "--model", default_id_dir,
                        "--train", train, "--out", tmp_path / "seq", "--epochs", "1",
                        "--max-steps", "2", "--batch-size", "8", "--max-length", "64")
    assert rc == 0 and len(w) == 1, err
    c = json.loads((tmp_path / "seq" / "config.json").read_text())
    assert (c["cls_token_id"], c["sep_token_id"]) == (2, 1)
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "seq").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "seq")
    enc = tok(sample(texts, 2), padding=True, return_tensors="pt")
    ours = SequenceClassifier.from_pretrained(tmp_path / "seq").eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(**enc).logits, hf(**enc).logits, atol=ATOL, rtol=0)


def test_sentence_transformers_loads_finetuned_embedder(default_id_dir, texts, tmp_path,
                                                        capsys):
    """`mmbert finetune --task embedding` from a default-id transformers directory; the output
    is a sentence-transformers directory giving our vectors."""
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    from mmbert.inference import embed_texts

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"anchor": a, "positive": b}, ensure_ascii=False) + "\n"
                             for a, b in texts["fra_Latn"][:32]))
    rc, _, err, w = cli(capsys, "finetune", "--task", "embedding", "--model", default_id_dir,
                        "--train", pairs, "--out", tmp_path / "emb", "--max-steps", "2",
                        "--batch-size", "16", "--max-length", "64")
    assert rc == 0 and len(w) == 1, err
    xs = sample(texts, 3)
    st = SentenceTransformer(str(tmp_path / "emb"), device="cpu")
    assert int(sentence_transformers.__version__.split(".")[0]) >= 3
    theirs = st.encode(xs)
    np.testing.assert_allclose(theirs, Encoder.from_pretrained(tmp_path / "emb").encode(xs),
                               atol=1e-5)
    np.testing.assert_allclose(theirs, embed_texts(tmp_path / "emb", xs), atol=1e-5)


def test_finetune_with_a_separate_tokenizer(tok_dir, texts, tmp_path, capsys):
    """A default-id transformers directory without tokenizer files, fine-tuned with
    `--tokenizer`: framing takes the tokenizer's ids; the output frames alike in AutoTokenizer."""
    from mmbert.tokenizer import load_tokenizer

    cfg = ModernBertConfig(**{**BASE, "vocab_size": load_tokenizer(tok_dir).vocab_size})
    perturbed(ModernBertForTokenClassification(cfg), seed=9).save_pretrained(tmp_path / "m")
    conll = tmp_path / "train.conll"
    sents = [b.split()[:12] for _, b in texts["deu_Latn"][:16]]
    conll.write_text("\n\n".join("\n".join(f"{w} {'B-X' if i == 0 else 'O'}"
                                           for i, w in enumerate(s)) for s in sents) + "\n")
    rc, _, err, w = cli(capsys, "finetune", "--task", "token", "--model", tmp_path / "m",
                        "--tokenizer", tok_dir, "--train", conll, "--out", tmp_path / "tok",
                        "--max-steps", "2", "--batch-size", "8", "--max-length", "64")
    assert rc == 0 and len(w) == 1, err
    hf = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert hf("Datei öffnen")["input_ids"][0] == 2 and hf("Datei öffnen")["input_ids"][-1] == 1
    ref = AutoModelForTokenClassification.from_pretrained(tmp_path / "tok").eval()
    enc = hf(sample(texts, 2), padding=True, return_tensors="pt")
    with torch.no_grad():
        assert_real_close(TokenClassifier.from_pretrained(tmp_path / "tok")(**enc).logits,
                          ref(**enc).logits, enc["attention_mask"])
