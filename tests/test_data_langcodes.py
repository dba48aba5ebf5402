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


def _write_mo(path, entries, big_endian=False):
    """A GNU .mo file from {msgid: msgstr} (bytes), written with struct as msgfmt does."""
    import struct

    e = ">" if big_endian else "<"
    keys = sorted(entries)
    ids = b"".join(k + b"\0" for k in keys)
    strs = b"".join(entries[k] + b"\0" for k in keys)
    n = len(keys)
    o_tab, t_tab = 28, 28 + 8 * n
    data_start = 28 + 16 * n
    otable, ttable, oo, to = [], [], data_start, data_start + len(ids)
    for k in keys:
        otable += [len(k), oo]
        ttable += [len(entries[k]), to]
        oo += len(k) + 1
        to += len(entries[k]) + 1
    magic = 0x950412DE
    head = struct.pack(e + "7I", magic, 0, n, o_tab, t_tab, 0, 0)
    path.write_bytes(head + struct.pack(e + f"{2 * n}I", *otable) +
                     struct.pack(e + f"{2 * n}I", *ttable) + ids + strs)


@pytest.mark.parametrize("big_endian", [False, True])
def test_read_mo_context_plural_charset(tmp_path, big_endian):
    from mmbert.data.sources import msgid_key, read_mo

    entries = {
        b"": b"Content-Type: text/plain; charset=ISO-8859-1\n",
        b"Open": "Ouvrir".encode("latin-1"),
        b"menu\x04File": "Fichier".encode("latin-1"),
        b"%d file\x00%d files": "%d fichier\x00%d fichiers".encode("latin-1"),
        b"Caf\xe9": "Caf\xe9 cr\xe8me".encode("latin-1"),
    }
    p = tmp_path / "x.mo"
    _write_mo(p, entries, big_endian)
    msgs = {(m.context, m.msgid): m.msgstr for m in read_mo(p)}
    assert msgs == {(None, "Open"): "Ouvrir", ("menu", "File"): "Fichier",
                    (None, "%d file"): "%d fichier", (None, "Café"): "Café crème"}
    keys = {msgid_key(m) for m in read_mo(p)}
    assert len(keys) == 4 and all(len(k) == 16 for k in keys)
    p.write_bytes(b"\x00" * 40)
    with pytest.raises(MmbertError, match="bad magic number"):
        read_mo(p)
