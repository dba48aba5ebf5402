"""Language codes: everything becomes ISO 639-3 + ISO 15924 script, ``fra_Latn``, as FineWeb-2
names its directories.

Accepted inputs: ``fra_Latn`` / ``sr-Latn`` (already with a script), ISO 639-1 (``fr``), ISO 639-3
(``fra``), ISO 639-2/B (``fre``), BCP 47 with region or variant (``pt-BR``, ``de-1901``) and
gettext locales (``pt_BR``, ``sr@latin``, ``zh_TW``, ``uz@cyrillic``, ``ca@valencia``).

Choices (see docs/data.md):
- ISO 639-1 codes of macrolanguages map to the individual language FineWeb-2 and the UDHR use
  (``ar`` -> ``arb``, ``zh`` -> ``cmn``, ``fa`` -> ``pes``, ``lv`` -> ``lvs``, ...). An explicit
  3-letter code is kept as given.
- The script comes from, in order: an explicit script subtag or gettext modifier (``@latin``),
  the region for Chinese (``TW``/``HK``/``MO`` -> Hant), the text itself (dominant Unicode script
  of its letters, when text is given), a small table of default scripts. If none applies the code
  is rejected with :class:`MmbertError`.
- Regions are dropped (``pt_BR`` and ``pt_PT`` are both ``por_Latn``).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache

from mmbert.errors import MmbertError

# ISO 639-1 -> ISO 639-3 (all 184 codes), as pairs "xxyyy". Macrolanguages point to the
# individual language that FineWeb-2 and the UDHR use for the written standard.
_TWO = (
    "aaaar ababk aeave afafr akaka amamh anarg ararb asasm avava ayaym azazj babak bebel bgbul "
    "bibis bmbam bnben bobod brbre bsbos cacat ceche chcha cocos crcre csces cuchu cvchv cycym "
    "dadan dedeu dvdiv dzdzo eeewe elell eneng eoepo esspa etekk eueus fapes ffful fifin fjfij "
    "fofao frfra fyfry gagle gdgla glglg gngug guguj gvglv hahau heheb hihin hohmo hrhrv hthat "
    "huhun hyhye hzher iaina idind ieile igibo iiiii ikipk ioido isisl itita iuiku jajpn jvjav "
    "kakat kgkon kikik kjkua kkkaz klkal kmkhm knkan kokor krkau kskas kukmr kvkom kwcor kykir "
    "lalat lbltz lglug lilim lnlin lolao ltlit lulub lvlvs mgplt mhmah mimri mkmkd mlmal mnkhk "
    "mrmar mszsm mtmlt mymya nanau nbnob ndnde nenpi ngndo nlnld nnnno nonob nrnbl nvnav nynya "
    "ococi ojoji omgaz orory ososs papan pipli plpol pspbt ptpor quque rmroh rnrun roron rurus "
    "rwkin sasan scsrd sdsnd sesme sgsag shhbs sisin skslk slslv smsmo snsna sosom sqals srsrp "
    "ssssw stsot susun svswe swswh tatam tetel tgtgk ththa titir tktuk tltgl tntsn toton trtur "
    "tstso tttat twtwi tytah uguig ukukr ururd uzuzn veven vivie vovol wawln wowol xhxho yiydd "
    "yoyor zazha zhcmn zuzul "
    # deprecated ISO 639-1 codes still seen in locale directories
    "iwheb inind jiydd jwjav moron"
)
TWO_TO_THREE: dict[str, str] = {p[:2]: p[2:] for p in _TWO.split()}

_TWO_LETTER_LANGS = set(TWO_TO_THREE.values())

# ISO 639-2/B (bibliographic) codes that differ from ISO 639-3.
B_TO_T: dict[str, str] = {
    "tib": "bod", "cze": "ces", "wel": "cym", "ger": "deu", "gre": "ell", "baq": "eus",
    "per": "fas", "fre": "fra", "arm": "hye", "ice": "isl", "geo": "kat", "mac": "mkd",
    "mao": "mri", "may": "msa", "bur": "mya", "dut": "nld", "rum": "ron", "slo": "slk",
    "alb": "sqi", "chi": "zho",
}

# Codes that name no language: rejected.
NOT_LANGUAGES = {"und", "mul", "zxx", "mis", "qaa"}

# Default script of languages written mostly in one non-Latin script (used when neither the code
# nor the text tells). Other ISO 639-1 languages default to Latin; other 3-letter codes without
# a script or text are rejected (no guess).
_DEFAULT_SCRIPT = {
    "Cyrl": "rus ukr bel bul mkd srp kaz kir tgk tat bak chv che oss abk ava kom udm mhr sah tyv "
            "khk mon chu",
    "Arab": "arb ara pes fas prs urd pbt pus snd uig ckb azb pnb skr bal glk mzn ary arz apc kas "
            "acm ajp aeb arq",
    "Hebr": "heb ydd yid",
    "Grek": "ell grc",
    "Armn": "hye",
    "Geor": "kat",
    "Deva": "hin mar nep npi san mai bho awa mag new kok gom doi brx",
    "Beng": "ben asm mni",
    "Guru": "pan",
    "Gujr": "guj",
    "Orya": "ori ory",
    "Taml": "tam",
    "Telu": "tel",
    "Knda": "kan",
    "Mlym": "mal",
    "Sinh": "sin",
    "Thai": "tha",
    "Laoo": "lao",
    "Khmr": "khm",
    "Mymr": "mya shn",
    "Tibt": "bod dzo",
    "Ethi": "amh tir tig gez byn wal sgw",
    "Hang": "kor",
    "Jpan": "jpn",
    "Hans": "cmn zho wuu gan hsn",
    "Hant": "yue lzh",
    "Thaa": "div",
    "Syrc": "syr aii",
    "Tfng": "zgh",
    "Cher": "chr",
    "Cans": "iku ike cre",
    "Nkoo": "nqo",
    "Vaii": "vai",
    "Yiii": "iii",
    "Olck": "sat",
}
DEFAULT_SCRIPT: dict[str, str] = {
    lang: script for script, langs in _DEFAULT_SCRIPT.items() for lang in langs.split()
}

# Unicode character-name prefixes -> ISO 15924 (the first matching prefix wins).
_SCRIPT_NAMES = [
    ("LATIN", "Latn"), ("FULLWIDTH LATIN", "Latn"), ("CYRILLIC", "Cyrl"), ("GREEK", "Grek"),
    ("COPTIC", "Copt"), ("ARMENIAN", "Armn"), ("HEBREW", "Hebr"), ("ARABIC", "Arab"),
    ("SYRIAC", "Syrc"), ("THAANA", "Thaa"), ("NKO", "Nkoo"), ("SAMARITAN", "Samr"),
    ("MANDAIC", "Mand"), ("DEVANAGARI", "Deva"), ("BENGALI", "Beng"), ("GURMUKHI", "Guru"),
    ("GUJARATI", "Gujr"), ("ORIYA", "Orya"), ("TAMIL", "Taml"), ("TELUGU", "Telu"),
    ("KANNADA", "Knda"), ("MALAYALAM", "Mlym"), ("SINHALA", "Sinh"), ("THAI", "Thai"),
    ("LAO", "Laoo"), ("TIBETAN", "Tibt"), ("MYANMAR", "Mymr"), ("GEORGIAN", "Geor"),
    ("HANGUL", "Hang"), ("ETHIOPIC", "Ethi"), ("CHEROKEE", "Cher"), ("CANADIAN", "Cans"),
    ("OGHAM", "Ogam"), ("RUNIC", "Runr"), ("TAGALOG", "Tglg"), ("HANUNOO", "Hano"),
    ("BUHID", "Buhd"), ("TAGBANWA", "Tagb"), ("KHMER", "Khmr"), ("MONGOLIAN", "Mong"),
    ("LIMBU", "Limb"), ("TAI LE", "Tale"), ("NEW TAI LUE", "Talu"), ("BUGINESE", "Bugi"),
    ("TAI THAM", "Lana"), ("BALINESE", "Bali"), ("SUNDANESE", "Sund"), ("BATAK", "Batk"),
    ("LEPCHA", "Lepc"), ("OL CHIKI", "Olck"), ("GLAGOLITIC", "Glag"), ("TIFINAGH", "Tfng"),
    ("HIRAGANA", "Jpan"), ("KATAKANA", "Jpan"), ("BOPOMOFO", "Bopo"), ("CJK", "Hani"),
    ("YI ", "Yiii"), ("VAI ", "Vaii"), ("BAMUM", "Bamu"), ("JAVANESE", "Java"), ("CHAM", "Cham"),
    ("TAI VIET", "Tavt"), ("MEETEI MAYEK", "Mtei"), ("ADLAM", "Adlm"), ("OSAGE", "Osge"),
    ("GRANTHA", "Gran"), ("DESERET", "Dsrt"), ("SHAVIAN", "Shaw"), ("GOTHIC", "Goth"),
    ("KAYAH LI", "Kali"), ("SAURASHTRA", "Saur"), ("REJANG", "Rjng"), ("SORA SOMPENG", "Sora"),
    ("CHAKMA", "Cakm"), ("MIAO", "Plrd"), ("HANIFI ROHINGYA", "Rohg"), ("WANCHO", "Wcho"),
    ("MEDEFAIDRIN", "Medf"), ("GUNJALA GONDI", "Gong"), ("MASARAM GONDI", "Gonm"),
    ("PAHAWH HMONG", "Hmng"), ("NYIAKENG PUACHUE HMONG", "Hmnp"), ("OLD ITALIC", "Ital"),
    ("SYLOTI NAGRI", "Sylo"), ("KAITHI", "Kthi"), ("MODI", "Modi"), ("SHARADA", "Shrd"),
    ("TAKRI", "Takr"), ("TIRHUTA", "Tirh"), ("BRAHMI", "Brah"), ("KHOJKI", "Khoj"),
]

# A few very frequent characters that differ between Simplified and Traditional Chinese.
_SIMPLIFIED = ("这个们来说时会对为与学权认应当发经"
               "体无进动关开国过还种没样实现问题")
_TRADITIONAL = ("這個們來說時會對為與學權認應當發經"
                "體無進動關開國過還種沒樣實現問題")

_SCRIPT_RE = re.compile(r"^[A-Z][a-z]{3}$")
_CODE_RE = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")
_GETTEXT_MODIFIERS = {"latin": "Latn", "cyrillic": "Cyrl", "shaw": "Shaw", "iqtelif": "Latn",
                      "arabic": "Arab", "devanagari": "Deva", "latn": "Latn", "cyrl": "Cyrl"}
_HANT_REGIONS = {"tw", "hk", "mo"}
_HANS_REGIONS = {"cn", "sg", "my"}


@lru_cache(maxsize=65536)
def _char_script(ch: str) -> str | None:
    if not unicodedata.category(ch).startswith("L"):
        return None
    name = unicodedata.name(ch, "")
    for prefix, script in _SCRIPT_NAMES:
        if name.startswith(prefix):
            return script
    return None


def detect_script(text: str, max_chars: int = 20000) -> str | None:
    """Dominant ISO 15924 script of the letters in ``text`` (None when it has no letters).

    Japanese (kana with Han) is ``Jpan``; Han alone is ``Hani`` (callers refine it with
    :func:`han_variant`).
    """
    counts: Counter[str] = Counter()
    for ch, n in Counter(text[:max_chars]).items():  # count characters first (fast), then map
        s = _char_script(ch)
        if s is not None:
            counts[s] += n
    if not counts:
        return None
    if counts["Jpan"] and counts["Jpan"] >= 0.05 * (counts["Jpan"] + counts["Hani"]):
        counts["Jpan"] += counts.pop("Hani", 0)
    if counts["Hang"]:
        counts["Hang"] += counts.pop("Hani", 0)  # Hanja inside Korean text
    return counts.most_common(1)[0][0]


def han_variant(text: str) -> str | None:
    """``Hans`` or ``Hant`` from a handful of frequent characters that differ; None if unclear."""
    s = sum(text.count(c) for c in _SIMPLIFIED)
    t = sum(text.count(c) for c in _TRADITIONAL)
    if s == t:
        return None
    return "Hans" if s > t else "Hant"


def is_code(code: str) -> bool:
    """True for a normalised code such as ``fra_Latn``."""
    return bool(_CODE_RE.fullmatch(code))  # fullmatch: "$" would accept a trailing newline


def check_code(code: str, where: str = "language") -> str:
    """Validate an already normalised ``xxx_Scrp`` code (raises :class:`MmbertError`)."""
    if not is_code(code):
        raise MmbertError(f"{where}: {code!r} is not a language code; expected ISO 639-3 + "
                          f"script such as 'fra_Latn' or 'srp_Cyrl'")
    return code


def base_language(tag: str) -> str:
    """ISO 639-3 code of a tag's language subtag (raises :class:`MmbertError` if unknown)."""
    lang = re.split(r"[-_@.]", tag.strip(), maxsplit=1)[0].lower()
    if len(lang) == 2:
        if lang not in TWO_TO_THREE:
            raise MmbertError(f"language code {tag!r}: unknown ISO 639-1 code {lang!r}; expected "
                              f"an ISO 639-1/639-3 code such as 'fr', 'fra' or 'fra_Latn'")
        return TWO_TO_THREE[lang]
    if len(lang) == 3 and lang.isalpha() and lang.isascii():
        if lang in NOT_LANGUAGES:
            raise MmbertError(f"language code {tag!r}: {lang!r} names no single language; "
                              f"expected a language such as 'fra'")
        return B_TO_T.get(lang, lang)
    raise MmbertError(f"language code {tag!r}: expected an ISO 639-1/639-3 code such as 'fr', "
                      f"'fra', 'pt_BR', 'sr@latin' or 'fra_Latn'")


def normalize_lang(tag: str, text: str | None = None) -> str:
    """Normalise a language tag to ``xxx_Scrp`` (see the module docstring for the rules).

    ``text``, when given, is a sample of the language used to find the script if the tag has
    none. Raises :class:`MmbertError` for unknown codes or when the script cannot be told.
    """
    tag = tag.strip()
    if is_code(tag):
        return tag
    lang = base_language(tag)
    script: str | None = None
    region: str | None = None
    if "@" in tag:
        mod = tag.split("@", 1)[1].split(".")[0].lower()
        script = _GETTEXT_MODIFIERS.get(mod)
    for sub in re.split(r"[-_]", tag.split("@", 1)[0].split(".")[0])[1:]:
        if sub.isascii() and _SCRIPT_RE.fullmatch(sub.capitalize()):
            script = script or sub.capitalize()
        elif len(sub) == 2 and sub.isalpha():
            region = sub.lower()
    if script in (None, "Hani") and lang in ("cmn", "zho", "yue") and region:
        if region in _HANT_REGIONS:
            script = "Hant"
        elif region in _HANS_REGIONS:
            script = "Hans"
    if script is None and text:
        script = detect_script(text)
        if script == "Hani":
            script = han_variant(text) or DEFAULT_SCRIPT.get(lang, "Hans")
    if script is None:
        script = DEFAULT_SCRIPT.get(lang) or ("Latn" if lang in _TWO_LETTER_LANGS else None)
    if script is None:
        raise MmbertError(f"language code {tag!r}: cannot tell its script; expected a code with "
                          f"a script such as '{lang}_Latn'")
    return f"{lang}_{script}"
