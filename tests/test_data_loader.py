"""Sampler, packer, masker and MLMLoader on the demo shards."""

import json

import numpy as np
import pytest

from mmbert.data.loader import MLMLoader
from mmbert.data.masking import IGNORE_INDEX, Masker
from mmbert.data.packing import Packer
from mmbert.data.sampler import epochs, language_probs, plan, select_languages
from mmbert.data.shards import ShardSet
from mmbert.errors import MmbertError


def test_language_probs_and_epochs():
    counts = {"a": 1000, "b": 100, "c": 10}
    p = language_probs(counts, 0.5)
    w = np.sqrt([1000, 100, 10])
    assert np.allclose([p["a"], p["b"], p["c"]], w / w.sum())
    assert language_probs(counts, 0.0) == pytest.approx({k: 1 / 3 for k in counts})
    assert language_probs(counts, 1.0)["a"] == pytest.approx(1000 / 1110)
    ep = epochs(counts, p, 1e4)
    assert ep["c"] == pytest.approx(1e4 * p["c"] / 10)
    with pytest.raises(MmbertError, match="0 tokens"):
        language_probs({"a": 10, "z": 0}, 0.5)


def test_select_languages_and_plan(demo_shards):
    ss = ShardSet(demo_shards)
    counts = ss.token_counts()
    top3 = select_languages(ss, 3)
    assert top3 == sorted(counts, key=lambda k: -counts[k])[:3]
    assert select_languages(ss, "all") == select_languages(ss, len(counts))
    assert set(select_languages(ss, "fra_Latn,amh_Ethi")) == {"fra_Latn", "amh_Ethi"}
    rows = plan(demo_shards, "all", 0.3, 1e7)
    assert abs(sum(r["p"] for r in rows) - 1) < 1e-9
    small = min(rows, key=lambda r: r["tokens"])
    big = max(rows, key=lambda r: r["tokens"])
    assert small["epochs"] > big["epochs"]  # low-resource data is repeated more
    assert small["epochs"] == pytest.approx(1e7 * small["p"] / small["tokens"])


def test_sampling_frequencies_match_p(demo_shards):
    ld = MLMLoader(demo_shards, languages="all", tau=0.5, seq_len=512, batch_tokens=16384,
                   mask_ratio=0.15, seed=3, as_torch=False)
    counts = np.zeros(len(ld.languages))
    for _ in range(480):  # ~8M tokens: sampling noise ~1/sqrt(documents), TV ~0.01
        counts += np.bincount(next(ld).lang_ids, minlength=len(ld.languages))
    measured = counts / counts.sum()
    p = np.array([ld.probs[lang] for lang in ld.languages])
    assert 0.5 * np.abs(measured - p).sum() < 0.02  # total variation distance
    assert np.all(np.abs(measured - p) < 0.15 * p + 0.002), list(zip(ld.languages, measured, p))


def test_packing_fills_rows_and_keeps_documents(demo_shards):
    rng = np.random.default_rng(0)
    docs = [rng.integers(10, 4000, size=n) for n in rng.integers(0, 300, size=400)]
    it = iter(range(len(docs)))

    def source():
        i = next(it)
        return i, i % 3, docs[i]

    pk = Packer(128, bos_id=2, eos_id=1)
    batches = [pk.pack(source, 6) for _ in range(40)]
    stream = np.concatenate([b.input_ids for b in batches])
    used = sum(len(d) + 2 for d in docs[:next(it)])  # documents drawn so far
    wrapped = np.concatenate([np.r_[2, d, 1] for d in docs])
    assert np.array_equal(stream, wrapped[:len(stream)])  # order kept, splits continue
    assert len(stream) <= used
    for b in batches:
        n = len(b.input_ids)
        assert n == 6 * 128  # every slot holds a real token: efficiency 1.0 >= 0.98
        cu = b.cu_seqlens
        assert cu[0] == 0 and cu[-1] == n and np.all(np.diff(cu) > 0)
        assert set(range(0, n + 1, 128)) <= set(cu.tolist())  # no segment crosses a row
        assert b.max_seqlen == np.diff(cu).max() <= 128
        for s, e in zip(cu[:-1], cu[1:]):
            assert np.array_equal(b.position_ids[s:e], np.arange(e - s))
            assert len(set(b.lang_ids[s:e].tolist())) == 1


def test_loader_packing_efficiency_and_batch_fields(demo_shards):
    ld = MLMLoader(demo_shards, languages=5, tau=0.7, seq_len=256, batch_tokens=2048,
                   mask_ratio=0.3, seed=0)
    b = next(ld)
    assert b.num_rows == 8 and b.num_tokens == 2048
    assert b.input_ids.dtype.is_floating_point is False and str(b.cu_seqlens.dtype) == "torch.int32"
    ids = np.where(b.labels.numpy() != IGNORE_INDEX, b.labels.numpy(), b.input_ids.numpy())
    assert (ids != 0).mean() >= 0.98  # no padding
    assert b.lang_ids.max() < 5 and len(ld.languages) == 5


def test_mask_statistics(demo_shards):
    ss = ShardSet(demo_shards)
    m = Masker(ss.vocab_size, ss.special_ids, ss.mask_id)
    ids = np.concatenate([np.r_[2, ss.doc(lang, i), 1] for lang in ss.languages
                          for i in range(min(40, ss.num_docs(lang)))]).astype(np.int64)
    special = np.isin(ids, list(ss.special_ids))
    for ratio in (0.3, 0.05):
        out, labels = m(ids, ratio, np.random.default_rng(1))
        sel = labels != IGNORE_INDEX
        assert not (sel & special).any()  # never a special token
        assert np.array_equal(labels[sel], ids[sel])
        assert np.array_equal(out[~sel], ids[~sel])  # unselected tokens untouched
        assert abs(sel.sum() / (~special).sum() - ratio) < 0.01
        k = sel.sum()
        masked = (out[sel] == ss.mask_id).mean()
        same = (out[sel] == ids[sel]).mean()
        rand = 1 - masked - same
        assert abs(masked - 0.8) < 0.02 and abs(same - 0.1) < 0.02 and abs(rand - 0.1) < 0.02, k
        assert not np.isin(out[sel & (out != ss.mask_id)], list(ss.special_ids)).any()


def _same(a, b):
    return all(np.array_equal(getattr(a, f).numpy(), getattr(b, f).numpy())
               for f in ("input_ids", "labels", "position_ids", "cu_seqlens", "lang_ids")) \
        and a.max_seqlen == b.max_seqlen


@pytest.mark.parametrize("rank", [0, 1])
def test_resume_gives_identical_batches(demo_shards, rank):
    kw = dict(languages="all", tau=0.3, seq_len=512, batch_tokens=4096, mask_ratio=0.3, seed=7,
              rank=rank, world_size=2)
    a = MLMLoader(demo_shards, **kw)
    for _ in range(9):
        next(a)
    state = json.loads(json.dumps(a.state_dict()))  # JSON round trip
    assert len(json.dumps(state)) < 4000
    assert state["carry"] is not None  # a document is split across the boundary
    expect = [next(a) for _ in range(6)]
    b = MLMLoader(demo_shards, **kw)
    b.load_state_dict(state)
    assert all(_same(x, y) for x, y in zip(expect, (next(b) for _ in range(6))))
    fresh = MLMLoader(demo_shards, **kw)
    first = [next(fresh) for _ in range(15)]
    assert all(_same(x, y) for x, y in zip(first[9:], expect))  # = an uninterrupted run
    other = MLMLoader(demo_shards, **dict(kw, seed=8))
    assert not _same(next(other), first[0])
    with pytest.raises(MmbertError, match="seed"):
        other.load_state_dict(state)


def test_ranks_read_disjoint_documents_and_epochs_reshuffle(demo_shards):
    lang = "fao_Latn"
    n = ShardSet(demo_shards).num_docs(lang)
    lds = [MLMLoader(demo_shards, languages=[lang], seq_len=128, batch_tokens=128, seed=1,
                     rank=r, world_size=2) for r in range(2)]
    per_rank = [[ld._next_doc()[0][1] for _ in range(len(ld._rank_order(0, 0)))] for ld in lds]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(n))
    # the language ran out: the loader goes on with a new epoch in a new order
    second = [[ld._next_doc()[0][1] for _ in range(len(ld._rank_order(0, 1)))] for ld in lds]
    assert lds[0]._epoch[0] == 2 and second[0] != per_rank[0]
    assert not set(second[0]) & set(second[1])
    assert sorted(second[0] + second[1]) == list(range(n))
    for _ in range(50):
        next(lds[0])  # infinite


def test_language_without_train_tokens_is_an_error(demo_shards):
    with pytest.raises(MmbertError, match="xxx_Latn"):
        MLMLoader(demo_shards, languages=["fra_Latn", "xxx_Latn"], seq_len=128,
                  batch_tokens=128)
