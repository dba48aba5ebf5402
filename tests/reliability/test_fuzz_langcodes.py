"""Fuzzing language-code normalisation: any tag (and sample text) gives a valid ``xxx_Scrp``
code or one MmbertError line naming the tag."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmbert.data.langcodes import B_TO_T, TWO_TO_THREE, base_language, is_code, normalize_lang


def fuzz(n: int) -> settings:
    return settings(derandomize=True, deadline=None, database=None, max_examples=n,
                    suppress_health_check=list(HealthCheck))


# tags built from plausible pieces (ISO codes, scripts, regions, gettext modifiers) and noise
_langs = st.sampled_from(sorted(TWO_TO_THREE) + sorted(TWO_TO_THREE.values()) + sorted(B_TO_T)
                         + ["und", "mul", "zxx", "xx", "q", "abcd", "", "FR", "Zh"])
_subtags = st.one_of(
    st.sampled_from(["Latn", "Cyrl", "Hant", "Hans", "latn", "LATN", "Arab", "Zzzz", "BR", "tw",
                     "TW", "hk", "cn", "1901", "x", "valencia", "Latn\n", "ﬀoo", "ﬁx"]),
    st.text(max_size=6))
_seps = st.sampled_from(["-", "_", "@", ".", "-x-", " ", "\n", ""])


@st.composite
def tags(draw) -> str:
    parts = [draw(_langs)]
    for _ in range(draw(st.integers(0, 3))):
        parts.append(draw(_seps) + draw(_subtags))
    tag = "".join(parts)
    if draw(st.booleans()):
        tag = draw(st.sampled_from(["", " ", "\t", "\n"])) + tag + draw(
            st.sampled_from(["", " ", "\n", "\r\n"]))
    return tag


_texts = st.one_of(st.none(), st.text(max_size=80),
                   st.sampled_from(["这个们来说", "這個們來說", "日本語のテキスト", "한국어 텍스트",
                                    "Русский текст", "نص عربي", "ελληνικά", "1234 !!"]))


def _check(fuzz, tag: str, text: str | None) -> None:
    code, err = fuzz.call(normalize_lang, tag, text, names=("language code",))
    if err is None:
        assert is_code(code), (tag, code)
        assert code == code.strip() and code.isascii()
        # the language part is the tag's own language (a normalised tag is kept as given)
        if not is_code(tag.strip()):
            assert code[:3] == base_language(tag)
        # normalising is idempotent
        assert normalize_lang(code) == code


@fuzz(900)
@given(tag=tags(), text=_texts)
def test_normalize_lang_structured(fuzz, tag, text):
    fuzz.count("langcodes.normalize_lang (structured tags)")
    _check(fuzz, tag, text)


@fuzz(500)
@given(tag=st.text(max_size=20), text=_texts)
def test_normalize_lang_random_text(fuzz, tag, text):
    fuzz.count("langcodes.normalize_lang (random text)")
    _check(fuzz, tag, text)


@fuzz(300)
@given(code=st.one_of(st.text(max_size=10),
                      st.from_regex(r"[a-z]{3}_[A-Z][a-z]{3}\s?", fullmatch=True)))
def test_is_code(fuzz, code):
    fuzz.count("langcodes.is_code")
    ok = (len(code) == 8 and code[3] == "_" and code[:3].isascii() and code[:3].isalpha()
          and code[:3].islower() and code[4:].isascii() and code[4].isupper()
          and code[5:].isalpha() and code[5:].islower())
    assert is_code(code) == ok, code
