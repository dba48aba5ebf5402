"""Language code normalisation: ISO 639-1/2/3, BCP 47 and gettext locales -> xxx_Scrp."""

import pytest

from mmbert.data.langcodes import detect_script, normalize_lang
from mmbert.errors import MmbertError


@pytest.mark.parametrize("tag,want", [
    ("fr", "fra_Latn"), ("fra", "fra_Latn"), ("fre", "fra_Latn"), ("fra_Latn", "fra_Latn"),
    ("pt_BR", "por_Latn"), ("pt-PT", "por_Latn"), ("sr", "srp_Cyrl"), ("sr@latin", "srp_Latn"),
    ("sr-Latn", "srp_Latn"), ("zh_TW", "cmn_Hant"), ("zh_CN", "cmn_Hans"), ("zh_HK", "cmn_Hant"),
    ("zh_Hant", "cmn_Hant"), ("uz@cyrillic", "uzn_Cyrl"), ("ca@valencia", "cat_Latn"),
    ("de-1901", "deu_Latn"), ("ar", "arb_Arab"), ("lv", "lvs_Latn"), ("ja", "jpn_Jpan"),
    ("ko", "kor_Hang"), ("mo", "ron_Latn"), ("he", "heb_Hebr"), ("az-Cyrl", "azj_Cyrl"),
])
def test_normalize_without_text(tag, want):
    assert normalize_lang(tag) == want


def test_script_from_text():
    assert normalize_lang("sr@ije", "Свако има право на живот") == "srp_Cyrl"
    assert normalize_lang("tir", "ኩሉ ሰብ ብሕልና ዝተዓደለ") == "tir_Ethi"
    assert normalize_lang("cmn", "人人生而自由，在尊严和权利上一律平等。") == "cmn_Hans"
    assert normalize_lang("cmn", "人人生而自由，在尊嚴和權利上一律平等。") == "cmn_Hant"
    assert normalize_lang("xyz", "plain latin words") == "xyz_Latn"
    assert detect_script("これは日本語の文です") == "Jpan"
    assert detect_script("1234 !!") is None


@pytest.mark.parametrize("bad", ["qq", "und", "x", "toolong", "xyz", "12"])
def test_unknown_codes_are_clear_errors(bad):
    with pytest.raises(MmbertError) as e:
        normalize_lang(bad)
    assert repr(bad) in str(e.value) and "\n" not in str(e.value)
