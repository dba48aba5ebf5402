"""Vocabulary extension: new pieces for the languages a tokenizer covers worst.

``mmbert tokenizer extend`` (:func:`extend_tokenizer`) measures how many tokens each language
of a corpus needs, picks the worst-covered languages, continues BPE on their text from the
current tokenisation, appends the new pieces at the end of the vocabulary and, given a
masked-LM model, grows its embedding and decoder so that it runs with the new tokenizer.

Fertility (:func:`fertility`): tokens per word, where a word is a unit of the text between
whitespace (or the Ethiopic wordspace ``፡``, which Amharic and Tigrinya write between words).
Languages written without spaces between words (their script code is in
:data:`UNSPACED_SCRIPTS`: Han, Japanese, Thai, Lao, Khmer, Myanmar, Tibetan, Yi, ...) count
tokens per non-space character instead; a good tokenizer gives them about 0.5-1 token per
character, so one scale ranks both kinds. Measured on the corpus's held-out split when the
language has one, else on its train text (the report says which).

Languages extended (:func:`choose_languages`): the ``worst`` languages with the highest
fertility under the old tokenizer (ties by code), or the languages named by ``targets``.

Pieces (:func:`learn_pieces`), BPE continued on a language-balanced sample of those languages'
train text (:func:`mmbert.tokenizer.training_texts`): every text is tokenised with the current
tokenizer and cut into words (pre-tokenizer words, each split again before a token that starts
with ``▁`` and around pieces holding whitespace or ``፡``, so pieces never span two words); a
character the vocabulary lacks is one symbol worth its UTF-8 byte count (byte fallback). Each
step takes the best of

- merging the most frequent adjacent pair of pieces within words (saves one token per
  occurrence): a new piece ``a+b`` and the merge ``a b`` appended last (lowest priority);
- adding a character that falls back to bytes as its own piece (saves ``bytes - 1`` tokens per
  occurrence; no merge needed: BPE starts from the characters the vocabulary has),

with the counts of each language scaled so that every chosen language's tokens weigh the same
in total (a big language does not take all pieces); ties go to the smaller candidate key. Candidates seen fewer than ``min_count`` times, longer than
16 characters, or whose string is already in the vocabulary are skipped. Steps repeat until the
vocabulary size reaches a multiple of 64 at or above old size + ``add``.

Old ids keep their ids and the old merges keep their priority, so a text tokenises as before
except where a new piece applies: replacing each new piece by the old pieces it was merged from
gives back the old tokenisation exactly.

Model (:func:`resize_masked_lm`): each new embedding row, decoder row (untied decoder) and
decoder bias entry is the mean over the old pieces that spell the new piece (its string
tokenised by the old tokenizer's BPE model; a new character: its byte tokens).
"""

from __future__ import annotations

import heapq
import json
import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from mmbert.errors import MmbertError
from mmbert.outputs import OutputDir, atomic_file, write_json, write_text
from mmbert.tokenizer import META, Tokenizer, load_tokenizer

UNSPACED_SCRIPTS = frozenset({"Hans", "Hant", "Hani", "Jpan", "Hira", "Kana", "Thai", "Laoo",
                              "Khmr", "Mymr", "Tibt", "Yiii", "Bali", "Java", "Lana", "Tale",
                              "Talu", "Phag", "Nkgb"})
# Word separators that are not whitespace: Ethiopic wordspace (Amharic, Tigrinya, ...).
WORD_SEPARATORS = "\u1361"
_SEPARATORS_TO_SPACE = {ord(c): " " for c in WORD_SEPARATORS}
MULTIPLE = 64  # the extended vocabulary size is a multiple of this
MAX_PIECE_CHARS = 16  # as train_tokenizer's max_token_length


# ---------------------------------------------------------------------------------------------
# Typed records
# ---------------------------------------------------------------------------------------------

@dataclass
class LanguageFertility:
    """Tokens per unit of one language, before and (once measured) after the extension."""

    lang: str
    unit: str  # "word" (whitespace-separated) or "char" (non-space character)
    split: str  # "heldout" or "train": where the text came from
    units: int
    tokens_before: int
    tokens_after: int | None = None
    chosen: bool = False

    @property
    def before(self) -> float:
        return self.tokens_before / self.units

    @property
    def after(self) -> float | None:
        return None if self.tokens_after is None else self.tokens_after / self.units

    def to_json(self) -> dict:
        d = asdict(self)
        d["fertility_before"] = round(self.before, 4)
        d["fertility_after"] = None if self.after is None else round(self.after, 4)
        return d


@dataclass
class Piece:
    """One added vocabulary entry."""

    token: str
    id: int
    kind: str  # "merge" (left + right) or "char" (a character that fell back to bytes)
    left: str | None
    right: str | None
    count: int  # occurrences in the learning text when it was chosen
    score: int  # tokens saved there, with the language weights


@dataclass
class Extension:
    """What :func:`learn_pieces` chose, with the sizes around it."""

    pieces: list[Piece]
    requested: int
    vocab_before: int
    languages: list[str]
    weights: dict[str, int]

    @property
    def added(self) -> int:
        return len(self.pieces)

    @property
    def vocab_after(self) -> int:
        return self.vocab_before + self.added


@dataclass
class ExtendResult:
    out: Path
    extension: Extension
    fertility: dict[str, LanguageFertility]
    model: bool  # whether a resized model was written
    files: list[str] = field(default_factory=list)


def target_size(vocab: int, add: int) -> int:
    """The smallest multiple of 64 at or above ``vocab + add``."""
    return math.ceil((vocab + add) / MULTIPLE) * MULTIPLE


# ---------------------------------------------------------------------------------------------
# Fertility
# ---------------------------------------------------------------------------------------------

def unit_of(lang: str) -> str:
    """``"char"`` for languages written without spaces between words, else ``"word"``."""
    script = lang.rsplit("_", 1)[-1] if "_" in lang else ""
    return "char" if script in UNSPACED_SCRIPTS else "word"


def count_units(text: str, unit: str) -> int:
    """Words (split at whitespace and at :data:`WORD_SEPARATORS`) or non-space characters."""
    if unit == "char":
        return sum(1 for ch in text if not ch.isspace())
    return len(text.translate(_SEPARATORS_TO_SPACE).split())


def measurement_texts(corpus: str | Path, languages: Sequence[str] | None,
                      max_chars: int) -> dict[str, tuple[str, list[str]]]:
    """Per language ``(split, texts)``: its held-out documents up to ``max_chars`` characters,
    or its train documents when it has none held out."""
    from mmbert.data.sources import iter_input, scan_corpus

    inputs = scan_corpus(Path(corpus))
    if languages is not None:
        missing = sorted(set(languages) - set(inputs))
        if missing:
            raise MmbertError(f"--languages: {missing[:5]} not in {corpus}; expected codes "
                              f"that the corpus has (e.g. {sorted(inputs)[:3]})")
        inputs = {lang: inputs[lang] for lang in languages}
    out: dict[str, tuple[str, list[str]]] = {}
    for lang, ins in sorted(inputs.items()):
        held = [i for i in ins if i.split == "heldout"]
        split, chosen = ("heldout", held) if held else ("train", ins)
        texts, n = [], 0
        for inp in chosen:
            for doc in iter_input(inp, lang):
                if n >= max_chars:
                    break
                texts.append(doc.text)
                n += len(doc.text)
        if any(t.strip() for t in texts):
            out[lang] = (split, texts)
    if not out:
        raise MmbertError(f"{corpus}: no text in any language; expected a corpus with documents")
    return out


def count_tokens(tok: Tokenizer, texts: list[str]) -> int:
    return sum(len(ids) for ids in tok.encode_batch(texts)) if texts else 0


def fertility(tok: Tokenizer, texts: dict[str, tuple[str, list[str]]]
              ) -> dict[str, LanguageFertility]:
    """Fertility of every language of ``texts`` (from :func:`measurement_texts`)."""
    out = {}
    for lang, (split, docs) in texts.items():
        unit = unit_of(lang)
        units = sum(count_units(t, unit) for t in docs)
        if units:
            out[lang] = LanguageFertility(lang, unit, split, units, count_tokens(tok, docs))
    return out


def choose_languages(fert: dict[str, LanguageFertility], worst: int,
                     targets: Sequence[str] | None = None) -> list[str]:
    """``targets`` if given (each must have been measured), else the ``worst`` languages with
    the highest fertility (ties by code)."""
    if targets:
        missing = [t for t in targets if t not in fert]
        if missing:
            raise MmbertError(f"--targets: {missing[:5]} have no text in the corpus (or are "
                              f"outside --languages); expected measured languages such as "
                              f"{sorted(fert)[:3]}")
        return list(dict.fromkeys(targets))
    if worst < 1:
        raise MmbertError(f"--worst {worst}: expected at least 1 language to extend for")
    ranked = sorted(fert.values(), key=lambda f: (-f.before, f.lang))
    return [f.lang for f in ranked[:worst]]


# ---------------------------------------------------------------------------------------------
# Words of the learning text, as the current tokenizer cuts them
# ---------------------------------------------------------------------------------------------

def _byte_value(token: str) -> int | None:
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        try:
            return int(token[3:5], 16)
        except ValueError:
            return None
    return None


def _symbols(tokens: list[str]) -> list[str] | None:
    """Tokens of one word with runs of byte tokens turned back into their characters."""
    out: list[str] = []
    raw = bytearray()
    for t in tokens + [""]:
        b = _byte_value(t)
        if b is not None:
            raw.append(b)
            continue
        if raw:
            try:
                out.extend(raw.decode("utf-8"))
            except UnicodeDecodeError:
                return None
            raw.clear()
        if t:
            out.append(t)
    return out


def word_counts(tok: Tokenizer, texts: Iterable[str], batch: int = 256) -> Counter:
    """``Counter`` of words as tuples of symbols (pieces, or characters that fall back to
    bytes). Words: pre-tokenizer words, cut again before every token starting with ``▁`` and
    around every piece holding whitespace or a word separator; tokens outside the BPE model
    (added tokens) end a word. So no new merge joins a piece holding whitespace or a word
    separator, and a new merge's right part never starts with ``▁``: merges learned within
    these words apply at the same places when the whole text is tokenised."""
    from itertools import islice

    added = {a.content for a in tok.backend.get_added_tokens_decoder().values()}
    counts: Counter = Counter()
    it = iter(texts)
    while chunk := list(islice(it, batch)):
        for enc in tok.backend.encode_batch(chunk, add_special_tokens=False):
            word: list[str] = []
            prev = None
            for t, w in zip(enc.tokens, enc.word_ids):
                if w is None or t in added:
                    _flush(word, counts)
                    prev = None
                    continue
                if w != prev or t.startswith(META):
                    _flush(word, counts)
                prev = w
                word.append(t)
            _flush(word, counts)
    return counts


def _is_boundary(symbol: str) -> bool:
    return any(ch.isspace() or ch in WORD_SEPARATORS for ch in symbol)


def _flush(word: list[str], counts: Counter) -> None:
    """Count the symbols of ``word`` (then emptied); a symbol holding whitespace (a newline
    inside a pre-tokenizer word) or a word separator is a word of its own."""
    syms = _symbols(word) if word else None
    word.clear()
    part: list[str] = []
    for s in (syms or []) + [" "]:
        if not _is_boundary(s):
            part.append(s)
            continue
        if part:
            counts[tuple(part)] += 1
            part = []
        if s != " ":
            counts[(s,)] += 1


# ---------------------------------------------------------------------------------------------
# BPE continued from the current tokenisation
# ---------------------------------------------------------------------------------------------

class _Learner:
    """Pair and character statistics over weighted words, updated word by word as pieces are
    added; the best candidate comes from a heap with stale entries skipped."""

    def __init__(self, words: list[tuple[list[str], int, int]], vocab: set[str],
                 min_count: int, max_chars: int):
        self.words = words  # (symbols, weighted count, raw count)
        self.vocab = vocab
        self.min_count, self.max_chars = min_count, max_chars
        self.stats: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])  # key -> [score, count]
        self.where: dict[tuple, set[int]] = defaultdict(set)
        self.heap: list[tuple[int, tuple, str]] = []
        for i in range(len(words)):
            self._count(i, +1, None)
        for key in list(self.stats):
            self._push(key)

    def _keys(self, syms: list[str]) -> Iterable[tuple[tuple, int]]:
        """(candidate key, tokens saved per occurrence) of one word."""
        for j, s in enumerate(syms):
            if s not in self.vocab:
                n = len(s.encode("utf-8"))
                if n > 1:
                    yield ("char", s), n - 1
            elif j + 1 < len(syms) and syms[j + 1] in self.vocab:
                yield ("pair", s, syms[j + 1]), 1

    def _count(self, i: int, sign: int, touched: set | None) -> None:
        syms, w, f = self.words[i]
        for key, gain in self._keys(syms):
            st = self.stats[key]
            st[0] += sign * w * gain
            st[1] += sign * f
            if sign > 0:
                self.where[key].add(i)
            else:
                self.where[key].discard(i)
            if touched is not None:
                touched.add(key)

    def _token(self, key: tuple) -> str:
        return key[1] if key[0] == "char" else key[1] + key[2]

    def _push(self, key: tuple) -> None:
        score, count = self.stats[key]
        tok = self._token(key)
        if (score > 0 and count >= self.min_count and tok not in self.vocab
                and len(tok) <= self.max_chars):
            heapq.heappush(self.heap, (-score, key, tok))

    def best(self) -> tuple[tuple, str, int, int] | None:
        """The best candidate now: (key, token, score, count), or None when none is left."""
        while self.heap:
            neg, key, tok = heapq.heappop(self.heap)
            score, count = self.stats.get(key, (0, 0))
            if -neg == score and count >= self.min_count and tok not in self.vocab:
                return key, tok, score, count
        return None

    def apply(self, key: tuple) -> None:
        """Add the candidate's piece to the vocabulary and rewrite the words that hold it."""
        touched: set = set()
        ids = sorted(self.where[key])
        for i in ids:
            self._count(i, -1, touched)
        self.vocab.add(self._token(key))
        for i in ids:
            syms, w, f = self.words[i]
            if key[0] == "pair":
                syms = _merge(syms, key[1], key[2])
            self.words[i] = (syms, w, f)
            self._count(i, +1, touched)
        for k in touched:
            if self.stats[k][1] <= 0:
                self.stats.pop(k, None)
                self.where.pop(k, None)
            else:
                self._push(k)


def _merge(syms: list[str], a: str, b: str) -> list[str]:
    out, j = [], 0
    while j < len(syms):
        if j + 1 < len(syms) and syms[j] == a and syms[j + 1] == b:
            out.append(a + b)
            j += 2
        else:
            out.append(syms[j])
            j += 1
    return out


def language_weights(counts: dict[str, Counter], vocab: set[str]) -> dict[str, int]:
    """Integer weight per language so that each one's tokens weigh about the same: the language
    with the most tokens gets 1."""
    tokens = {lang: sum(f * word_tokens(w, vocab) for w, f in c.items())
              for lang, c in counts.items()}
    top = max(tokens.values(), default=1)
    return {lang: max(1, round(top / t)) if t else 0 for lang, t in tokens.items()}


def word_tokens(syms: Sequence[str], vocab: set[str]) -> int:
    """Tokens of a word: a piece is one, a character outside the vocabulary its UTF-8 bytes."""
    return sum(1 if s in vocab else len(s.encode("utf-8")) for s in syms)


def learn_pieces(tok: Tokenizer, counts: dict[str, Counter], add: int, *, min_count: int = 2,
                 progress: bool = False) -> Extension:
    """Add pieces until the vocabulary reaches :func:`target_size` (the module docstring has
    the rule). ``counts``: per language, :func:`word_counts` of its learning text."""
    from tqdm import tqdm

    vocab_before = tok.backend.get_vocab_size(with_added_tokens=True)
    vocab = set(tok.backend.get_vocab(with_added_tokens=True))
    weights = language_weights(counts, vocab)
    merged: dict[tuple[str, ...], list[int]] = {}
    for lang, c in counts.items():
        for w, f in c.items():
            e = merged.setdefault(w, [0, 0])
            e[0] += f * weights[lang]
            e[1] += f
    words = [(list(w), wf[0], wf[1]) for w, wf in merged.items()]
    learner = _Learner(words, vocab, min_count, MAX_PIECE_CHARS)
    goal = target_size(vocab_before, add) - vocab_before
    pieces: list[Piece] = []
    with tqdm(total=goal, desc="pieces", disable=not progress, unit="piece") as bar:
        while len(pieces) < goal:
            best = learner.best()
            if best is None:
                raise MmbertError(
                    f"the text of {', '.join(counts)} yields only {len(pieces)} new pieces seen "
                    f"at least {min_count} times; expected {goal} (--add {add} rounded up to a "
                    f"vocabulary of {vocab_before + goal}): lower --add, or give more text")
            key, token, score, count = best
            left, right = (None, None) if key[0] == "char" else (key[1], key[2])
            kind = "char" if key[0] == "char" else "merge"
            pieces.append(Piece(token, vocab_before + len(pieces), kind, left, right,
                                count, score))
            learner.apply(key)
            bar.update(1)
    return Extension(pieces, add, vocab_before, list(counts), weights)


# ---------------------------------------------------------------------------------------------
# The extended tokenizer
# ---------------------------------------------------------------------------------------------

def _spec(tok: Tokenizer) -> dict:
    tok.backend.encode_special_tokens = False  # not part of the definition (as Tokenizer.save)
    try:
        return json.loads(tok.backend.to_str())
    finally:
        tok.backend.encode_special_tokens = True


def check_bpe(spec: dict, tok: Tokenizer, where: str) -> None:
    """Refuse tokenizers whose model (``spec``: their tokenizer.json) this extension cannot
    continue."""
    model = spec["model"]
    if model.get("type") != "BPE":
        raise MmbertError(f"{where}: a {model.get('type')} tokenizer; expected a BPE tokenizer "
                          f"(mmbert tokenizer train, or Gemma 2)")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise MmbertError(f"{where}: BPE with a continuing-subword prefix or end-of-word "
                          f"suffix; expected plain BPE pieces (SentencePiece style: ▁ for "
                          f"spaces)")
    ids = list(model["vocab"].values()) + [a["id"] for a in spec["added_tokens"]]
    if max(ids) + 1 != tok.vocab_size:
        raise MmbertError(f"{where}: ids run to {max(ids)} but the vocabulary has "
                          f"{tok.vocab_size} entries; expected ids 0..{tok.vocab_size - 1}")


def extended_tokenizer(tok: Tokenizer, ext: Extension, spec: dict | None = None) -> Tokenizer:
    """``tok`` with the pieces appended to the BPE vocabulary (and their merges, last);
    ``spec``: its tokenizer.json if already read (it is changed in place)."""
    from tokenizers import Tokenizer as HFTokenizer

    spec = spec if spec is not None else _spec(tok)
    model = spec["model"]
    vocab, merges = model["vocab"], model["merges"]
    as_strings = bool(merges) and isinstance(merges[0], str)
    for p in ext.pieces:
        vocab[p.token] = p.id
        if p.kind == "merge":
            if as_strings and (" " in p.left or " " in p.right):
                raise MmbertError(f"piece {p.token!r} holds a space, which merges stored as "
                                  f"'a b' strings cannot express; expected pieces without spaces")
            merges.append(f"{p.left} {p.right}" if as_strings else [p.left, p.right])
    backend = HFTokenizer.from_str(json.dumps(spec, ensure_ascii=False))
    config = dict(tok.config)
    config["extended"] = {"from_vocab_size": ext.vocab_before, "added": ext.added,
                          "languages": ext.languages}
    new = Tokenizer(backend, dict(tok.special_tokens), config)
    if new.vocab_size != ext.vocab_after:
        raise MmbertError(f"extended tokenizer has {new.vocab_size} entries; expected "
                          f"{ext.vocab_after} (a piece collided with an existing one)")
    return new


def spelling(old: Tokenizer, piece: Piece) -> list[int]:
    """Old ids that spell ``piece``: its string through the old tokenizer's BPE model (with
    byte fallback, so a new character gives its byte tokens)."""
    return [t.id for t in old.backend.model.tokenize(piece.token)]


def expansion(pieces: list[Piece], old: Tokenizer) -> dict[int, list[int]]:
    """New id -> the old ids it was merged from (recursively), for comparing tokenisations."""
    by_token = {p.token: p for p in pieces}
    out: dict[int, list[int]] = {}

    def ids(token: str) -> list[int]:
        p = by_token.get(token)
        if p is None:
            i = old.backend.token_to_id(token)
            return [i] if i is not None else spelling(old, Piece(token, -1, "char", None, None,
                                                                 0, 0))
        if p.id not in out:
            out[p.id] = spelling(old, p) if p.kind == "char" else ids(p.left) + ids(p.right)
        return out[p.id]

    for p in pieces:
        ids(p.token)
    return out


# ---------------------------------------------------------------------------------------------
# The resized model
# ---------------------------------------------------------------------------------------------

def check_model_dir(path: str | Path, tok: Tokenizer, where: str) -> None:
    """Before any work: ``path`` is a masked-LM directory whose vocabulary is ``tok``'s."""
    from mmbert.hf import read_config
    from mmbert.model import MaskedLM
    from mmbert.modeldir import model_class_for

    cfg, raw = read_config(path)
    if model_class_for(raw) is not MaskedLM:
        raise MmbertError(f"{path}: architectures {raw.get('architectures')}; expected a "
                          f"masked-LM directory (ModernBertForMaskedLM) for --init-from")
    if cfg.vocab_size != tok.vocab_size:
        raise MmbertError(f"{path}: vocab_size {cfg.vocab_size} does not match {where} "
                          f"({tok.vocab_size} entries); expected the model trained with that "
                          f"tokenizer")


def resize_masked_lm(model, old: Tokenizer, ext: Extension):
    """A copy of ``model`` (a :class:`mmbert.model.MaskedLM`) with ``ext.vocab_after`` rows:
    old rows unchanged, each new row (embedding, untied decoder, decoder bias) the mean of the
    old rows that spell the piece (:func:`spelling`)."""
    import torch

    from mmbert.model import MaskedLM

    cfg = model.config.replace(vocab_size=ext.vocab_after)
    dtype = next(model.parameters()).dtype
    with torch.device("meta"):
        new = MaskedLM(cfg, init=False).to(dtype)
    new.to_empty(device="cpu")
    new.tie_weights()
    index = [spelling(old, p) for p in ext.pieces]
    state = dict(model.state_dict())
    emb = "model.embeddings.tok_embeddings.weight"
    grown = [emb, "decoder.bias"] + ([] if cfg.tie_word_embeddings else ["decoder.weight"])
    for name in grown:
        if name in state:
            state[name] = _grow(state[name], index)
    if cfg.tie_word_embeddings:
        state["decoder.weight"] = state[emb]
    new.load_state_dict(state, strict=True)
    new.tie_weights()
    return new.eval()


def _grow(t, index: list[list[int]]):
    """``t`` (rows = vocabulary) with one row appended per entry: the mean of the listed rows
    (computed in float32, stored in ``t``'s dtype)."""
    import torch

    rows = [t[ids].float().mean(0).to(t.dtype) for ids in index]
    return torch.cat([t.detach(), torch.stack(rows)]) if rows else t.detach()


# ---------------------------------------------------------------------------------------------
# Report: fertility.json, fertility.md, fertility.png
# ---------------------------------------------------------------------------------------------

RULE = ("fertility = tokens per word (units between whitespace or the Ethiopic wordspace); "
        "languages whose script writes no "
        "spaces between words (" + ", ".join(sorted(UNSPACED_SCRIPTS)) + ") count tokens per "
        "non-space character. Pieces are learned for the chosen languages (the highest "
        "fertility under the old tokenizer, or --targets) by BPE continued from the current "
        "tokenisation, each language's counts scaled to weigh the same.")


def report_dict(ext: Extension, fert: dict[str, LanguageFertility], tokenizer: str,
                corpus: str, model: str | None) -> dict:
    rounded = ext.added - ext.requested
    return {
        "tokenizer": tokenizer, "corpus": corpus, "init_from": model, "rule": RULE,
        "requested": ext.requested, "added": ext.added,
        "rounded_up_by": rounded, "multiple": MULTIPLE,
        "vocab_size_before": ext.vocab_before, "vocab_size_after": ext.vocab_after,
        "chosen": ext.languages, "weights": ext.weights,
        "languages": {lang: f.to_json() for lang, f in sorted(fert.items())},
        "pieces": [asdict(p) for p in ext.pieces],
    }


def report_markdown(ext: Extension, fert: dict[str, LanguageFertility]) -> str:
    lines = [
        "# Vocabulary extension: fertility before and after", "",
        f"Added {ext.added} pieces (requested {ext.requested}, rounded up so that the "
        f"vocabulary, {ext.vocab_before} -> {ext.vocab_after}, is a multiple of {MULTIPLE}) "
        f"for {', '.join(ext.languages)}.", "", RULE, "",
        "| language | unit | text | units | before | after | change | chosen |",
        "|---|---|---|---:|---:|---:|---:|---|"]
    for f in sorted(fert.values(), key=lambda f: (not f.chosen, -f.before, f.lang)):
        after = f.after if f.after is not None else f.before
        change = 100.0 * (after - f.before) / f.before if f.before else 0.0
        lines.append(f"| {f.lang} | {f.unit} | {f.split} | {f.units} | {f.before:.3f} | "
                     f"{after:.3f} | {change:+.1f}% | {'yes' if f.chosen else ''} |")
    return "\n".join(lines) + "\n"


def plot_fertility(fert: dict[str, LanguageFertility], path: Path, worst: int = 30) -> Path:
    """Left: bars before/after for the chosen languages and the worst others; right: every
    language's fertility after against before (below the diagonal: fewer tokens)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = sorted(fert.values(), key=lambda f: (not f.chosen, -f.before, f.lang))[:worst]
    fig, (ax, sc) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [2, 1]})
    x = range(len(ranked))
    ax.bar([i - 0.2 for i in x], [f.before for f in ranked], 0.4, label="before")
    ax.bar([i + 0.2 for i in x], [f.after or 0 for f in ranked], 0.4, label="after")
    ax.set_xticks(list(x))
    ax.set_xticklabels([f.lang + (" *" if f.chosen else "") for f in ranked], rotation=60,
                       ha="right", fontsize=7)
    ax.set_ylabel("tokens per word (per character: unspaced scripts)")
    ax.set_title("chosen (*) and worst-covered languages", fontsize=10)
    ax.legend(fontsize=8)
    pts = list(fert.values())
    sc.scatter([f.before for f in pts], [f.after or 0 for f in pts], s=10,
               c=["tab:red" if f.chosen else "tab:blue" for f in pts])
    top = max([f.before for f in pts] + [1.0]) * 1.05
    sc.plot([0, top], [0, top], color="grey", lw=1, ls="--")
    sc.set_xlabel("fertility before")
    sc.set_ylabel("fertility after")
    sc.set_title(f"all {len(pts)} languages (red: chosen)", fontsize=10)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------

def extend_tokenizer(tokenizer: str | Path, corpus: str | Path, add: int, out: str | Path, *,
                     init_from: str | Path | None = None,
                     languages: Sequence[str] | None = None,
                     targets: Sequence[str] | None = None, worst: int = 3,
                     max_chars: int = 10_000_000, eval_chars: int = 200_000,
                     tau: float = 0.3, min_count: int = 2, progress: bool = False,
                     overwrite: bool = False) -> ExtendResult:
    """``mmbert tokenizer extend``: see the module docstring. ``languages``: the languages
    measured (default: all of the corpus); ``out``: an output directory
    (:class:`mmbert.outputs.OutputDir`) receiving the tokenizer (and the resized model with
    ``init_from``) and the fertility report. Bad input raises before anything is written."""
    from mmbert.tokenizer import training_texts

    if add < 1:
        raise MmbertError(f"--add {add}: expected a positive number of pieces to add")
    for flag, v in (("--min-count", min_count), ("--max-chars", max_chars),
                    ("--eval-chars", eval_chars)):
        if v < 1:
            raise MmbertError(f"{flag} {v}: expected a positive number")
    od = OutputDir(out, overwrite=overwrite)
    od.check()
    old = load_tokenizer(tokenizer)
    spec = _spec(old)
    check_bpe(spec, old, str(tokenizer))
    if init_from is not None:
        check_model_dir(init_from, old, f"the tokenizer {tokenizer}")
    texts = measurement_texts(corpus, languages, eval_chars)
    fert = fertility(old, texts)
    if not fert:
        raise MmbertError(f"{corpus}: no words in any language; expected text documents")
    chosen = choose_languages(fert, worst, targets)
    learn = training_texts(corpus, max_chars, tau, chosen)
    if not learn:
        raise MmbertError(f"{corpus}: no train text for {', '.join(chosen)}; expected "
                          f"documents in their train split")
    counts = {lang: word_counts(old, docs) for lang, docs in learn.items()}
    ext = learn_pieces(old, counts, add, min_count=min_count, progress=progress)
    new = extended_tokenizer(old, ext, spec)
    for lang, f in fert.items():
        f.tokens_after = count_tokens(new, texts[lang][1])
        f.chosen = lang in ext.languages
    model = None
    if init_from is not None:
        from mmbert.model import MaskedLM

        model = resize_masked_lm(MaskedLM.from_pretrained(init_from, dtype="auto"), old, ext)
    report = report_dict(ext, fert, str(tokenizer), str(corpus),
                         None if init_from is None else str(init_from))
    with od as tmp:
        if model is not None:
            model.save_pretrained(tmp)
        new.save(tmp)
        write_json(tmp / "fertility.json", report)
        write_text(tmp / "fertility.md", report_markdown(ext, fert))
        plot_fertility(fert, tmp / "fertility.png")
        files = sorted(p.name for p in tmp.iterdir())
    return ExtendResult(Path(out), ext, fert, model is not None, files)
