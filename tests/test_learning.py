"""Learning, measured honestly: a real (small) pre-training run on one language beats that
language's unigram baseline on held-out text, with the mask token at every scored position;
and the demo's learning summary / targets arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmbert.evaluate.learning import RANDOM, UNIGRAM, beats, compare, learning_summary, targets

LANG = "deu_Latn"


def test_one_language_run_beats_its_unigram_baseline(demo_shards: Path, demo_tokenizer: Path,
                                                     tmp_path: Path) -> None:
    import torch

    from mmbert.recipe import recipe_from_dict
    from mmbert.evaluate.mlm import HeldoutMlm
    from mmbert.model import MaskedLM
    from mmbert.train import pretrain

    recipe = recipe_from_dict({
        "name": "one-language", "seed": 0, "shards": str(demo_shards),
        "tokenizer": str(demo_tokenizer), "precision": "fp32",
        "model": {"preset": "tiny", "overrides": {"num_hidden_layers": 2,
                                                  "max_position_embeddings": 128}},
        "checkpoint": {"every_steps": 1000, "keep_last": 1},
        "phases": [{"name": "p1", "tokens": "300k", "languages": [LANG], "tau": 0.7,
                    "mask_ratio": 0.3, "seq_len": 128, "batch_tokens": 1024, "lr": 1e-3,
                    "warmup_tokens": "5%", "decay_tokens": "20%", "decay_shape": "1-sqrt",
                    "global_rope_theta": 10000, "local_rope_theta": 10000}]}, "test.yaml")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = pretrain(recipe, tmp_path / "run", log=lambda m: None)
    finally:
        torch.set_num_threads(n)
    model = MaskedLM.from_pretrained(result.phases[0].export)
    held = HeldoutMlm(demo_shards, model.config, languages=[LANG], max_tokens=4096)
    trained = held.score(model)[LANG]
    unigram = held.score_unigram()[LANG]
    torch.manual_seed(0)
    random = held.score(MaskedLM(model.config))[LANG]
    assert trained.masked >= 400  # enough scored positions for the comparison to mean much
    assert random.accuracy < unigram.accuracy < trained.accuracy, (random, unigram, trained)
    assert trained.loss < unigram.loss < random.loss


def _scores(**models: dict[str, float]) -> dict[str, dict[str, dict[str, float]]]:
    return {m: {l: {"accuracy": a, "loss": 1.0} for l, a in v.items()}
            for m, v in models.items()}


def test_summary_and_targets_arithmetic() -> None:
    tiers = ("t1", "t2", "t3")
    tier = {"a": "t1", "b": "t1", "d": "t3", "e": "t3"}
    s = _scores(**{RANDOM: {"a": 0.0, "b": 0.0, "d": 0.0, "e": 0.0},
                   UNIGRAM: {"a": 0.02, "b": 0.04, "d": 0.05, "e": 0.05},
                   "end of p1": {"a": 0.10, "b": 0.20, "d": 0.01, "e": 0.03},
                   "end of p2": {"a": 0.12, "b": 0.22, "d": 0.02, "e": 0.04},
                   "variant x": {"a": 0.12, "b": 0.22, "d": 0.08, "e": 0.10},
                   "merge": {"a": 0.15, "b": 0.25, "d": 0.075, "e": 0.095}})
    assert beats(s["merge"], s[UNIGRAM], tier, tiers) == {"t1": (2, 2), "t2": (0, 0),
                                                         "t3": (2, 2), "all": (4, 4)}
    c = compare(s, "end of p2", "variant x", ["d", "e"])
    assert c["gain"] == pytest.approx(0.06) and c["gain_se"] == pytest.approx(0.0)
    summary = learning_summary(s, tier, tiers, "end of p1", "end of p2", "merge", ["variant x"])
    assert summary["merge_keeps"] == pytest.approx(0.055 / 0.06)
    got = {what: ok for what, ok, _ in targets(s, tier, tiers, "merge", summary)}
    assert got == {"t1 languages: at least 5x their unigram baseline": True,
                   "all languages: mean above the unigram baseline's mean": True,
                   "all languages: more than half beat their own unigram baseline": True,
                   "decay-only languages gain during the decay by > 3 standard errors": True,
                   "the merge keeps >= 90% of the best variant's decay-only gain": True,
                   "final model >= 3 points above the end of t1, all languages": True}


def test_targets_fail_when_the_model_does_not_learn() -> None:
    """The same arithmetic with a model below its baselines: every target reads NO, and a zero
    unigram baseline gives an infinite ratio instead of a division error."""
    tiers = ("t1", "t2", "t3")
    tier = {"a": "t1", "b": "t1", "d": "t3", "e": "t3"}
    s = _scores(**{RANDOM: {"a": 0.0, "b": 0.0, "d": 0.0, "e": 0.0},
                   UNIGRAM: {"a": 0.05, "b": 0.05, "d": 0.08, "e": 0.08},
                   "end of p1": {"a": 0.10, "b": 0.10, "d": 0.01, "e": 0.01},
                   "end of p2": {"a": 0.11, "b": 0.11, "d": 0.02, "e": 0.02},
                   "variant x": {"a": 0.11, "b": 0.11, "d": 0.03, "e": 0.05},
                   "merge": {"a": 0.12, "b": 0.11, "d": 0.0, "e": 0.01}})
    summary = learning_summary(s, tier, tiers, "end of p1", "end of p2", "merge", ["variant x"])
    rows = targets(s, tier, tiers, "merge", summary)
    assert [ok for _, ok, _ in rows] == [False] * 6, rows
    measured = dict((what, m) for what, _, m in rows)
    assert measured["t1 languages: at least 5x their unigram baseline"] == "11.5 vs 5.0 (2.3x)"
    assert measured["all languages: more than half beat their own unigram baseline"] == "2 of 4"
    # the variant's paired gain (+1, +3 points) is under 3 standard errors (2 ± 1)
    assert measured["decay-only languages gain during the decay by > 3 standard errors"] == \
        "variant x: +2.0 ± 1.0"
    assert measured["all languages: mean above the unigram baseline's mean"] == "6.0 vs 6.5"
    assert measured["the merge keeps >= 90% of the best variant's decay-only gain"] == "-75%"
    assert measured["final model >= 3 points above the end of t1, all languages"] == "+0.5 ± 0.6"
    s[UNIGRAM] = {l: {"accuracy": 0.0, "loss": 1.0} for l in tier}
    top = targets(s, tier, tiers, "merge", summary)[0]
    assert top[1] is True and top[2] == "11.5 vs 0.0 (infx)"


def test_first_sentence_takes_the_earliest_end_after_20_characters() -> None:
    from mmbert.evaluate.learning import _first_sentence

    text = "All human beings are born free; they are equal. And more: here."
    assert _first_sentence(text) == "All human beings are born free;"
    assert _first_sentence("Short. " + "x" * 30 + ". tail") == "Short. " + "x" * 30 + "."
    assert _first_sentence("y" * 300) == "y" * 160


def test_cloze_sentences_mask_one_word_of_held_out_text(demo_corpus: Path,
                                                        demo_tokenizer: Path) -> None:
    """One cloze per language from its held-out UDHR text (never training text): the masked
    token is alphabetic, sits inside the sentence, and the framed ids hold the mask there."""
    from mmbert.evaluate.corpus import Corpus
    from mmbert.evaluate.learning import cloze_sentences
    from mmbert.tokenizer import load_tokenizer

    tok = load_tokenizer(demo_tokenizer)
    langs = ["deu_Latn", "fra_Latn", "zzz_Zzzz"]  # the last has no text: skipped
    clozes = cloze_sentences(demo_corpus, tok, langs, tok.mask_id, "<mask>")
    assert [c.lang for c in clozes] == ["deu_Latn", "fra_Latn"]
    held: dict[str, str] = {}
    for r in Corpus.open(demo_corpus).udhr:
        if r["split"] == "heldout":
            held[r["lang"]] = held.get(r["lang"], "") + r["text"]
    for c in clozes:
        assert c.ids[0] == tok.bos_id and c.ids[-1] == tok.eos_id
        assert c.ids[c.position] == tok.mask_id and c.ids.count(tok.mask_id) == 1
        assert 1 < c.position < len(c.ids) - 2 and tok.decode([c.answer]).strip().isalpha()
        filled = c.text.replace("<mask>", tok.decode([c.answer]).strip())
        assert filled.replace(" ", "") in held[c.lang].replace(" ", "")
        train = " ".join(r["text"] for r in Corpus.open(demo_corpus).udhr
                         if r["lang"] == c.lang and r["split"] == "train")
        assert filled.replace(" ", "") not in train.replace(" ", "")
