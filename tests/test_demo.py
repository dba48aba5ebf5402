"""The demo's own logic: language tiers, metrics reading, report writing, bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from mmbert.cli import main
from mmbert.demo.analysis import TIERS, language_tiers, read_metrics
from mmbert.demo.report import write_demo_report


def test_language_tiers_follow_the_cascade() -> None:
    langs = {"pretrain": ["a", "b"], "midtrain": ["a", "b", "c"],
             "decay/high": ["a"], "decay/all": ["a", "b", "c", "d", "e"]}
    tier = language_tiers(langs, ["pretrain", "midtrain"])
    assert tier == {"a": TIERS[0], "b": TIERS[0], "c": TIERS[1], "d": TIERS[2], "e": TIERS[2]}


def _fake_checkpoint(root: Path, step: int, **state) -> None:
    from mmbert.train.checkpoint import step_dir_name

    d = root / step_dir_name(step)
    (d / "model").mkdir(parents=True)
    (d / "trainer.json").write_text(json.dumps({"step": step, **state}))


def test_run_models_lists_kept_checkpoints_in_training_order(tmp_path: Path) -> None:
    """Baselines, then the trunk's rolling checkpoints and phase ends, then each variant's, then
    the merge; a rolling checkpoint at a phase's last step is that phase's end (listed once)."""
    import pytest

    from mmbert.recipe import load_recipe
    from mmbert.demo.analysis import run_models
    from mmbert.errors import MmbertError
    from mmbert.train.trainer import PhaseResult, RunResult

    rec = load_recipe(Path(__file__).parents[1] / "configs" / "demo.yaml")
    p1, p2 = rec.phases[0].tokens, rec.phases[1].tokens
    run = tmp_path / "run"
    ck, vck = run / "checkpoints", run / "variants" / "all" / "checkpoints"
    _fake_checkpoint(ck, 400, phase="pretrain", tokens=409_600, phase_tokens=409_600)
    _fake_checkpoint(ck, 1465, phase="pretrain", tokens=p1, phase_tokens=p1, phase_end=True)
    _fake_checkpoint(ck, 1600, phase="midtrain", tokens=p1 + 136_000, phase_tokens=136_000)
    _fake_checkpoint(ck, 2000, phase="midtrain", tokens=p1 + p2, phase_tokens=p2)  # = the end
    _fake_checkpoint(ck, 2001, phase="midtrain", tokens=p1 + p2, phase_tokens=p2, phase_end=True)
    _fake_checkpoint(vck, 2400, phase="decay", variant="all", tokens=p1 + p2 + 409_600,
                     phase_tokens=409_600)
    _fake_checkpoint(vck, 2700, phase="decay", variant="all", tokens=p1 + p2 + 700_000,
                     phase_tokens=700_000, phase_end=True)
    result = RunResult(run, phases=[PhaseResult(n, run / n, run / "export" / n, 0, t, None)
                                    for n, t in (("pretrain", p1), ("midtrain", p1 + p2))],
                       variants={"all": PhaseResult("decay/all", vck, run / "v-all", 0,
                                                    p1 + p2 + 700_000, None)})
    pts = run_models(rec, result, run, tmp_path / "merged")
    assert [(p.name, p.branch, p.kind, p.phase_end, p.tokens) for p in pts] == [
        ("random init", "baseline", "random", False, 0),
        ("unigram", "baseline", "unigram", False, 0),
        ("pretrain @ 0.41M tokens", "trunk", "model", False, 409_600),
        ("end of pretrain", "trunk", "model", True, p1),
        (f"midtrain @ {(p1 + 136_000) / 1e6:.2f}M tokens", "trunk", "model", False, p1 + 136_000),
        ("end of midtrain", "trunk", "model", True, p1 + p2),
        (f"decay/all @ {(p1 + p2 + 409_600) / 1e6:.2f}M tokens", "all", "model", False,
         p1 + p2 + 409_600),
        ("variant all", "all", "model", True, p1 + p2 + 700_000),
        ("TIES merge", "merge", "model", True, p1 + p2 + 700_000)]
    assert pts[2].path == str(ck / "step-00000400" / "model")
    assert pts[3].path == str(run / "export" / "pretrain")
    # two rolling checkpoints that round to the same name: refused, not silently merged
    _fake_checkpoint(ck, 401, phase="pretrain", tokens=410_000, phase_tokens=410_000)
    with pytest.raises(MmbertError, match="share the report name 'pretrain @ 0.41M tokens'"):
        run_models(rec, result, run, tmp_path / "merged")
    (ck / "step-00000401" / "trainer.json").write_text("{trunc")
    with pytest.raises(MmbertError, match="step-00000401: trainer.json unreadable"):
        run_models(rec, result, run, tmp_path / "merged")


def test_read_metrics_keeps_phases_and_variants_apart(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "variants" / "all").mkdir(parents=True)
    recs = [{"step": 1, "phase": "pretrain", "variant": None, "tokens": 10, "loss": 9.0},
            {"step": 2, "phase": "pretrain", "variant": None, "tokens": 20, "loss": 8.0},
            # a resumed run repeats step 2: the later record wins
            {"step": 2, "phase": "pretrain", "variant": None, "tokens": 20, "loss": 7.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + "{broken\n")
    (run / "variants" / "all" / "metrics.jsonl").write_text(json.dumps(
        {"step": 3, "phase": "decay", "variant": "all", "tokens": 30, "loss": 6.0}) + "\n")
    curves = read_metrics(run)
    assert curves == {"pretrain": [(10, 9.0), (20, 7.5)], "decay/all": [(30, 6.0)]}


def test_training_time_sums_steps_of_trunk_and_variants(tmp_path: Path) -> None:
    from mmbert.demo.analysis import training_time

    run = tmp_path / "run"
    (run / "variants" / "all").mkdir(parents=True)
    recs = [{"step": 1, "batch_tokens": 1000, "tokens_per_s": 500.0},
            {"step": 2, "batch_tokens": 1000, "tokens_per_s": 250.0},
            {"step": 2, "batch_tokens": 1000, "tokens_per_s": 1000.0}]  # resumed: last wins
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (run / "variants" / "all" / "metrics.jsonl").write_text(
        json.dumps({"step": 2, "batch_tokens": 300, "tokens_per_s": 100.0}) + "\nnot json\n")
    assert training_time(run) == (2300, 2.0 + 1.0 + 3.0)


def _report_input() -> dict:
    """A demo results dict as evaluate_demo builds it, for languages a, c (trained) and d."""
    from mmbert.evaluate.learning import (ModelPoint, learning_summary, targets, tier_means)

    tier = {"a": TIERS[0], "c": TIERS[1], "d": TIERS[2]}
    acc = {"random init": {"a": 0.0, "c": 0.0, "d": 0.0},
           "unigram": {"a": 0.05, "c": 0.05, "d": 0.02},
           "end of pretrain": {"a": 0.1, "c": 0.0, "d": 0.0},
           "end of midtrain": {"a": 0.2, "c": 0.1, "d": 0.0},
           "variant all": {"a": 0.2, "c": 0.1, "d": 0.1},
           "TIES merge": {"a": 0.3, "c": 0.1, "d": 0.05}}
    mlm = {k: {l: {"accuracy": a, "loss": 5.0 - 10 * a} for l, a in v.items()}
           for k, v in acc.items()}
    points = [ModelPoint("random init", "x", 0, "baseline", kind="random"),
              ModelPoint("unigram", "x", 0, "baseline", kind="unigram"),
              ModelPoint("end of pretrain", "p", 100, "trunk", phase_end=True),
              ModelPoint("end of midtrain", "m", 200, "trunk", phase_end=True),
              ModelPoint("variant all", "v", 300, "all", phase_end=True),
              ModelPoint("TIES merge", "t", 300, "merge", phase_end=True)]
    summary = learning_summary(mlm, tier, TIERS, "end of pretrain", "end of midtrain",
                               "TIES merge", ["variant all"])
    return {"languages": {"pretrain": 1, "midtrain": 2, "decay/all": 3}, "tiers": tier,
            "train_tokens": {"a": 300, "c": 200, "d": 100},
            "sampling": {"pretrain": {"a": 1.0}, "decay/all": {"a": 0.5, "c": 0.3, "d": 0.2}},
            "models": [dataclasses.asdict(p) for p in points], "mlm": mlm,
            "tier_means": {k: tier_means(v, tier, TIERS) for k, v in mlm.items()},
            "tier_loss": {k: tier_means(v, tier, TIERS, "loss") for k, v in mlm.items()},
            "learning": summary, "targets": targets(mlm, tier, TIERS, "TIES merge", summary),
            "fill_mask": [{"lang": "a", "text": "x <mask> y", "answer": "b", "top": ["b", "c"],
                           "correct": True, "in_top": True}],
            "loss_curves": {"pretrain": [(10, 9.0), (20, 8.0)]},
            "merge": {"method": "ties", "density": 0.5, "base": "end of midtrain",
                      "models": ["all"]},
            "tokens_per_s": 1000.0, "train_wall_s": 12.0, "eval_tokens": 512}


def test_report_has_tables_baselines_and_plots(tmp_path: Path) -> None:
    r = _report_input()
    text = write_demo_report(tmp_path, r).read_text()
    # per tier, baselines first; in brackets: languages above their own unigram baseline
    assert "| unigram | 0 | 5.0 | 5.0 | 2.0 | 4.0 | 4.60 |" in text
    assert "| TIES merge | 300 | 30.0 (1) | 10.0 (1) | 5.0 (1) | 15.0 (3) | 3.50 |" in text
    assert text.index("| random init |") < text.index("| end of pretrain |")
    # the targets, measured: phase-1 tier 30.0 vs 5.0 = 6x; decay-only gain +5 only via merge
    assert "| phase 1 languages: at least 5x their unigram baseline | yes | 30.0 vs 5.0 (6.0x) |" \
        in text
    assert "the merge keeps >= 90% of the best variant's decay-only gain | NO | 50% |" in text
    # end of phase 1 (end of pretrain) -> merge: a +20, c +10, d +5 points; mean +11.7
    assert "| 3 | 3.3 | 15.0 | +11.7 ± 4.4 | 3 / 0 |" in text
    assert "(end of midtrain -> variant all) | 1 | 0.0 | 10.0 | +10.0 ± 0.0 | 1 / 0 |" in text
    assert "| a | x <mask> y | 'b' | **'b'**, 'c' |" in text
    assert "1 of 1 improved" in text  # d: 0.0 before the decay -> 0.05 merged
    for png in ("learning_curve", "loss", "sampling", "mlm_per_language"):
        assert (tmp_path / "plots" / f"{png}.png").stat().st_size > 1000
    assert json.loads((tmp_path / "results.json").read_text())["tiers"] == r["tiers"]


def test_learning_summary_pairs_languages() -> None:
    from mmbert.evaluate.learning import learning_summary

    tier = {"a": TIERS[0], "b": TIERS[0], "d": TIERS[2], "e": TIERS[2]}
    acc = {"random init": dict.fromkeys("abde", 0.0),
           "end of p1": {"a": 0.1, "b": 0.3, "d": 0.0, "e": 0.02},
           "end of p2": {"a": 0.2, "b": 0.2, "d": 0.01, "e": 0.03},
           "variant all": {"a": 0.2, "b": 0.2, "d": 0.05, "e": 0.01},
           "TIES merge": {"a": 0.3, "b": 0.3, "d": 0.03, "e": 0.03}}
    scores = {k: {l: {"accuracy": a} for l, a in v.items()} for k, v in acc.items()}
    s = learning_summary(scores, tier, TIERS, "end of p1", "end of p2", "TIES merge",
                         ["variant all"])
    f = s["final_vs_first"]
    assert (f["from"], f["to"], f["languages"], f["up"], f["down"]) == \
        ("end of p1", "TIES merge", 4, 3, 0)  # b unchanged
    assert abs(f["gain"] - (0.2 + 0.0 + 0.03 + 0.01) / 4) < 1e-12
    d = s["decay_only"]["variant all"]  # only d and e, from the end of the last trunk phase
    assert d["languages"] == 2 and (d["up"], d["down"]) == (1, 1)
    assert abs(d["gain"] - (0.04 - 0.02) / 2) < 1e-12 and abs(d["gain_se"] - 0.03) < 1e-12
    assert abs(s["merge_keeps"] - 0.01 / 0.01) < 1e-12  # merge +1.0 on d/e vs variant +1.0


def test_demo_without_recipe_is_one_clear_error(tmp_path: Path, capsys) -> None:
    rc = main(["demo", "--out", str(tmp_path / "d"), "--recipe", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "nope.yaml: no such recipe" in err[0]
    assert not (tmp_path / "d").exists()
    # bad values are refused before any work: nothing fetched, nothing created
    for args, msg in [(["--procs", "0"], "--procs 0: expected at least 1"),
                      (["--eval-tokens", "4"], "--eval-tokens 4: expected at least 16"),
                      (["--set", "phases.0.tau=2"], "phases[0].tau = 2"),
                      (["--set", "phases.2.variants=[]"], "needs a last phase with decay")]:
        assert main(["demo", "--out", str(tmp_path / "d"), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
        assert not (tmp_path / "d").exists()


def test_demo_end_to_end_in_two_processes(demo_corpus: Path, tmp_path: Path, capfd,
                                          monkeypatch) -> None:
    """`mmbert demo` as `make demo` runs it (2 training processes under torchrun), on the real
    demo corpus with a token budget cut to seconds: every stage runs, the report and its plots
    are written, and every phase end, variant and the merge is an HF directory."""
    out = tmp_path / "demo"
    out.mkdir()
    (out / "corpus").symlink_to(demo_corpus, target_is_directory=True)  # fetched once per run
    rc = main(["demo", "--out", str(out), "--procs", "2", "--vocab-size", "1024",
               "--eval-tokens", "32", "--set", "phases.0.tokens=6k", "--set",
               "phases.1.tokens=4k", "--set", "phases.2.tokens=2k"])
    assert rc == 0
    captured = capfd.readouterr()
    assert "2 rank(s)" in captured.out + captured.err  # the trainer ran data-parallel
    r = json.loads((out / "results.json").read_text())
    n_lang = len(r["mlm"]["TIES merge"])  # languages with held-out text
    assert n_lang >= 400 and r["learning"]["final_vs_first"]["languages"] == n_lang
    # both baselines on the same languages; every scored language has a unigram baseline
    assert set(r["mlm"]["random init"]) == set(r["mlm"]["TIES merge"]) == set(r["mlm"]["unigram"])
    assert [p["name"] for p in r["models"]][:2] == ["random init", "unigram"]
    assert len(r["targets"]) == 6 and r["fill_mask"]
    assert set(r["learning"]["decay_only"]) == {"variant all", "variant cont", "variant high",
                                                "TIES merge"}
    assert r["tokens_per_s"] > 0 and r["train_wall_s"] > 0
    text = (out / "report.md").read_text()
    assert "## Does the demo learn?" in text and "end of phase 1 -> final model" in text
    assert "## Fill-mask on held-out sentences" in text and "| unigram |" in text
    assert (out / "plots" / "learning_curve.png").is_file()
    for d in ["run/export/pretrain", "run/export/midtrain", "merged",
              *(f"run/variants/{v}/export" for v in ("high", "cont", "all"))]:
        assert (out / d / "model.safetensors").is_file() and (out / d / "tokenizer.json").is_file()
    # a rerun resumes: every stage is found done, nothing is trained again; a failed torchrun
    # launch falls back to this process (which here finds every phase done)
    steps = (out / "run" / "metrics.jsonl").read_text().count("\n")
    monkeypatch.setattr("mmbert.demo.pipeline.train_in_processes", lambda *a: 1)
    assert main(["demo", "--out", str(out), "--procs", "2", "--vocab-size", "1024",
                 "--eval-tokens", "32", "--set", "phases.0.tokens=6k", "--set",
                 "phases.1.tokens=4k", "--set", "phases.2.tokens=2k"]) == 0
    assert (out / "run" / "metrics.jsonl").read_text().count("\n") == steps
    assert "training in 2 processes failed (torchrun exit 1)" in capfd.readouterr().out
    # the adaptation step on the finished demo: 40 unseen languages, extended tokenizer, a
    # short decay with replay, before/after scores on the same positions and texts
    assert main(["demo", "--out", str(out), "--procs", "2", "--adapt", "--vocab-size", "1024",
                 "--set", "phases.0.tokens=6k", "--set", "phases.1.tokens=4k", "--set",
                 "phases.2.tokens=2k", "--adapt-set", "phases.0.tokens=3k"]) == 0
    a = json.loads((out / "adapt" / "results.json").read_text())
    assert len(a["new"]) == 40 and not set(a["new"]) & set(a["old"])
    assert set(a["new"]) <= set(a["mlm"]["adapted"]) == set(a["mlm"]["start"]) \
        == set(a["mlm"]["unigram"]) == set(a["mlm"]["random init"])
    assert a["fertility"]["vocab_size_after"] % 64 == 0 and a["added"] >= 256
    assert a["summary"]["gains"]["mlm new"]["n"] == 40 and a["summary"]["gains"]["udhr new"]["n"]
    text = (out / "adapt" / "report.md").read_text()
    assert "## Held-out MLM accuracy" in text and "| new (40) |" in text
    assert (out / "adapt" / "adapt_mlm.png").is_file()


def test_paired_gain_by_hand() -> None:
    from mmbert.demo.adapt import paired_gain

    g = paired_gain({"a": 0.1, "b": 0.2, "c": 0.3, "x": 0.9}, {"a": 0.2, "b": 0.4, "c": 0.3})
    # differences 0.1, 0.2, 0.0: mean 0.1, sample sd 0.1, se 0.1 / sqrt(3)
    assert g.n == 3 and abs(g.mean - 0.1) < 1e-12 and abs(g.se - 0.1 / 3 ** 0.5) < 1e-12
    assert abs(g.z - 3 ** 0.5) < 1e-9 and abs(g.before - 0.2) < 1e-12
