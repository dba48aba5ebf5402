"""Fuzzing the packer and the masker: invariants over random documents, row counts, sequence
lengths, ratios and special-token sets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmbert.config import IGNORE_INDEX
from mmbert.data.masking import Masker
from mmbert.data.packing import Packer
from mmbert.errors import MmbertError


def fuzz(n: int) -> settings:
    return settings(derandomize=True, deadline=None, database=None, max_examples=n,
                    suppress_health_check=list(HealthCheck))


BOS, EOS = 2, 1


def _source(docs: list[list[int]], langs: list[int]):
    """A cycling document source: (key, lang, tokens)."""
    state = {"i": 0}

    def source():
        i = state["i"]
        state["i"] += 1
        k = i % len(docs)
        return k, langs[k], np.asarray(docs[k], dtype=np.int64)

    return source


@fuzz(400)
@given(docs=st.lists(st.lists(st.integers(5, 99), max_size=40), min_size=1, max_size=8),
       seq_len=st.integers(1, 64), num_rows=st.integers(1, 5), calls=st.integers(1, 3),
       data=st.data())
def test_packer_invariants(fuzz, docs, seq_len, num_rows, calls, data):
    fuzz.count("packing.Packer")
    langs = data.draw(st.lists(st.integers(0, 9), min_size=len(docs), max_size=len(docs)))
    packer = Packer(seq_len, BOS, EOS)
    src = _source(docs, langs)
    stream: list[int] = []
    for _ in range(calls):
        p = packer.pack(src, num_rows)
        n = num_rows * seq_len
        assert p.num_rows == num_rows
        assert p.input_ids.shape == (n,) and p.position_ids.shape == (n,)
        assert p.lang_ids.shape == (n,)
        assert p.input_ids.dtype == np.int64 and p.cu_seqlens.dtype == np.int32
        cu = p.cu_seqlens.astype(np.int64)
        assert cu[0] == 0 and cu[-1] == n
        assert np.all(np.diff(cu) > 0), "cu_seqlens must increase strictly"
        # every row boundary is a segment boundary: no segment crosses rows
        assert set(range(0, n + 1, seq_len)) <= set(cu.tolist())
        assert p.max_seqlen == int(np.diff(cu).max()) <= seq_len
        for a, b in zip(cu[:-1], cu[1:]):
            assert np.array_equal(p.position_ids[a:b], np.arange(b - a))
            assert len(set(p.lang_ids[a:b].tolist())) == 1
        stream.extend(p.input_ids.tolist())
    # the rows are the wrapped documents in order, cut at row ends only
    want: list[int] = []
    k = 0
    while len(want) < len(stream):
        want.extend([BOS, *docs[k % len(docs)], EOS])
        k += 1
    assert stream == want[:len(stream)]


@fuzz(200)
@given(docs=st.lists(st.lists(st.integers(5, 99), max_size=30), min_size=1, max_size=6),
       seq_len=st.integers(1, 32), rows=st.integers(1, 4))
def test_packer_resume(fuzz, docs, seq_len, rows):
    """A packer restored from ``state_dict`` continues exactly where the first one stopped."""
    fuzz.count("packing.Packer resume")
    langs = list(range(len(docs)))
    a = Packer(seq_len, BOS, EOS)
    src_a = _source(docs, langs)
    a.pack(src_a, rows)
    b = Packer(seq_len, BOS, EOS)
    b.load_state_dict(a.state_dict(), lambda key: np.asarray(docs[key], dtype=np.int64))
    # the restored packer's source continues after the documents the first one drew
    src_b = _source(docs, langs)
    for _ in range(_taken_before(docs, seq_len, rows)):
        src_b()
    next_a, next_b = a.pack(src_a, rows), b.pack(src_b, rows)
    assert np.array_equal(next_a.input_ids, next_b.input_ids)
    assert np.array_equal(next_a.cu_seqlens, next_b.cu_seqlens)
    assert np.array_equal(next_a.lang_ids, next_b.lang_ids)


def _taken_before(docs: list[list[int]], seq_len: int, rows: int) -> int:
    """How many documents a fresh packer draws to fill ``rows`` rows."""
    need, got, k = rows * seq_len, 0, 0
    while got < need:
        got += len(docs[k % len(docs)]) + 2
        k += 1
    return k


_SPECIALS = st.sets(st.integers(0, 40), max_size=8)


@fuzz(400)
@given(vocab=st.integers(2, 40), specials=_SPECIALS, ratio=st.floats(0, 1),
       mask_prob=st.floats(0, 1), random_share=st.floats(0, 1), seed=st.integers(0, 2**32 - 1),
       data=st.data())
def test_masker_invariants(fuzz, vocab, specials, ratio, mask_prob, random_share, seed, data):
    fuzz.count("masking.Masker")
    random_prob = (1 - mask_prob) * random_share
    mask_id = data.draw(st.integers(0, vocab - 1))
    specials = set(specials) | {mask_id}
    if all(i in specials for i in range(vocab)):
        specials.discard(vocab - 1 if mask_id != vocab - 1 else 0)
    ids = np.asarray(data.draw(st.lists(st.integers(0, vocab - 1), max_size=200)), dtype=np.int64)
    m = Masker(vocab, specials, mask_id, mask_prob=mask_prob, random_prob=random_prob)
    rng = np.random.default_rng(seed)
    sel = m.select(ids, ratio, rng)
    out, labels = m.corrupt(ids, sel, rng)
    special = np.isin(ids, list(specials))
    assert out.shape == ids.shape == labels.shape and out.dtype == labels.dtype == np.int64
    assert not np.any(sel & special), "a special token was selected"
    assert np.array_equal(labels == IGNORE_INDEX, ~sel), "labels -100 exactly where unselected"
    assert np.array_equal(labels[sel], ids[sel])
    assert np.array_equal(out[~sel], ids[~sel]), "unselected tokens changed"
    changed = sel & (out != ids)
    # a changed token is the mask or a random non-special token
    assert np.all((out[changed] == mask_id) | ~np.isin(out[changed], list(specials)))
    assert np.all((out >= 0) & (out < vocab))
    if ratio == 0:
        assert not sel.any()
    if ratio == 1:
        assert np.array_equal(sel, ~special)
    if mask_prob == 1:
        assert np.all(out[sel] == mask_id)


@fuzz(200)
@given(ratio=st.one_of(st.floats(allow_nan=True), st.floats(-1e9, 1e9)),
       mask_prob=st.floats(allow_nan=True), random_prob=st.floats(allow_nan=True))
def test_masker_bad_values(fuzz, ratio, mask_prob, random_prob):
    """Ratios outside [0, 1] and shares that are not a split of 1 are one error line."""
    fuzz.count("masking.Masker bad values")
    ok_shares = 0 <= mask_prob and 0 <= random_prob and mask_prob + random_prob <= 1
    m, err = fuzz.call(Masker, 10, {0, 1}, 4, mask_prob=mask_prob, random_prob=random_prob,
                       names=("mask",))
    assert (err is None) == ok_shares, (mask_prob, random_prob, err)
    if m is None:
        return
    rng = np.random.default_rng(0)
    sel, err = fuzz.call(m.select, np.arange(10), ratio, rng, names=("mask ratio",))
    assert (err is None) == (0 <= ratio <= 1)


def test_masker_rejects_nan_share():
    with pytest.raises(MmbertError, match="masking"):
        Masker(10, {0}, 4, mask_prob=float("nan"))
