"""The demo's own logic: language tiers, metrics reading, report writing, bad input."""

from __future__ import annotations

import json
from pathlib import Path

from mmbert.cli import main
from mmbert.demo import TIERS, language_tiers, read_metrics, write_demo_report


def test_language_tiers_follow_the_cascade() -> None:
    langs = {"pretrain": ["a", "b"], "midtrain": ["a", "b", "c"],
             "decay/high": ["a"], "decay/all": ["a", "b", "c", "d", "e"]}
    tier = language_tiers(langs, ["pretrain", "midtrain"])
    assert tier == {"a": TIERS[0], "b": TIERS[0], "c": TIERS[1], "d": TIERS[2], "e": TIERS[2]}


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
    from mmbert.demo import training_time

    run = tmp_path / "run"
    (run / "variants" / "all").mkdir(parents=True)
    recs = [{"step": 1, "batch_tokens": 1000, "tokens_per_s": 500.0},
            {"step": 2, "batch_tokens": 1000, "tokens_per_s": 250.0},
            {"step": 2, "batch_tokens": 1000, "tokens_per_s": 1000.0}]  # resumed: last wins
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (run / "variants" / "all" / "metrics.jsonl").write_text(
        json.dumps({"step": 2, "batch_tokens": 300, "tokens_per_s": 100.0}) + "\nnot json\n")
    assert training_time(run) == (2300, 2.0 + 1.0 + 3.0)


def test_report_has_tables_and_plots(tmp_path: Path) -> None:
    tier = {"a": TIERS[0], "c": TIERS[1], "d": TIERS[2]}
    acc = {"random init": {"a": 0.0, "c": 0.0, "d": 0.0},
           "end of midtrain": {"a": 0.2, "c": 0.1, "d": 0.0},
           "variant all": {"a": 0.2, "c": 0.1, "d": 0.1},
           "TIES merge": {"a": 0.3, "c": 0.1, "d": 0.05}}
    from mmbert.demo import _tier_means, learning_summary
    acc["end of pretrain"] = {"a": 0.1, "c": 0.0, "d": 0.0}
    r = {"languages": {"pretrain": 1, "midtrain": 2, "decay/all": 3}, "tiers": tier,
         "train_tokens": {"a": 300, "c": 200, "d": 100},
         "sampling": {"pretrain": {"a": 1.0}, "decay/all": {"a": 0.5, "c": 0.3, "d": 0.2}},
         "mlm_accuracy": acc, "tier_means": {k: _tier_means(v, tier) for k, v in acc.items()},
         "learning": learning_summary(acc, tier, ["pretrain", "midtrain"]),
         "loss_curves": {"pretrain": [(10, 9.0), (20, 8.0)]},
         "merge": {"method": "ties", "density": 0.5, "base": "end of midtrain", "models": ["all"]},
         "tokens_per_s": 1000.0, "train_wall_s": 12.0}
    report = write_demo_report(tmp_path, r)
    text = report.read_text()
    assert "| TIES merge | 30.0 | 10.0 | 5.0 | 15.0 |" in text
    assert "1 of 1 improved" in text  # d: 0.0 before the decay -> 0.05 merged
    # first checkpoint (end of pretrain) -> merge: a +20, c +10, d +5 points; mean +11.7
    assert "| 3 | 3.3 | 15.0 | +11.7 ± 4.4 | 3 / 0 |" in text
    # the decay-only language d under variant all: 0 -> 10
    assert "(end of midtrain -> variant all) | 1 | 0.0 | 10.0 | +10.0 ± 0.0 | 1 / 0 |" in text
    for png in ("loss", "sampling", "mlm_per_language", "variants_merge"):
        assert (tmp_path / "plots" / f"{png}.png").stat().st_size > 1000
    assert json.loads((tmp_path / "results.json").read_text())["tiers"] == tier


def test_learning_summary_pairs_languages() -> None:
    from mmbert.demo import learning_summary

    tier = {"a": TIERS[0], "b": TIERS[0], "d": TIERS[2], "e": TIERS[2]}
    acc = {"random init": dict.fromkeys("abde", 0.0),
           "end of p1": {"a": 0.1, "b": 0.3, "d": 0.0, "e": 0.02},
           "end of p2": {"a": 0.2, "b": 0.2, "d": 0.01, "e": 0.03},
           "variant all": {"a": 0.2, "b": 0.2, "d": 0.05, "e": 0.01},
           "TIES merge": {"a": 0.3, "b": 0.3, "d": 0.03, "e": 0.03}}
    s = learning_summary(acc, tier, ["p1", "p2"])
    f = s["final_vs_first"]
    assert (f["from"], f["to"], f["languages"], f["up"], f["down"]) == \
        ("end of p1", "TIES merge", 4, 3, 0)  # b unchanged
    assert abs(f["gain"] - (0.2 + 0.0 + 0.03 + 0.01) / 4) < 1e-12
    d = s["decay_only"]["variant all"]  # only d and e, from the end of the last trunk phase
    assert d["languages"] == 2 and (d["up"], d["down"]) == (1, 1)
    assert abs(d["gain"] - (0.04 - 0.02) / 2) < 1e-12 and abs(d["gain_se"] - 0.03) < 1e-12


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
    n_lang = len(r["mlm_accuracy"]["TIES merge"])  # languages with held-out text
    assert n_lang >= 400 and r["learning"]["final_vs_first"]["languages"] == n_lang
    assert set(r["learning"]["decay_only"]) == {"variant all", "variant cont", "variant high",
                                                "TIES merge"}
    assert r["tokens_per_s"] > 0 and r["train_wall_s"] > 0
    text = (out / "report.md").read_text()
    assert "## Does the demo learn?" in text and "first checkpoint -> final model" in text
    for d in ["run/export/pretrain", "run/export/midtrain", "merged",
              *(f"run/variants/{v}/export" for v in ("high", "cont", "all"))]:
        assert (out / d / "model.safetensors").is_file() and (out / d / "tokenizer.json").is_file()
    # a rerun resumes: every stage is found done, nothing is trained again; a failed torchrun
    # launch falls back to this process (which here finds every phase done)
    steps = (out / "run" / "metrics.jsonl").read_text().count("\n")
    monkeypatch.setattr("mmbert.demo.train_in_processes", lambda *a: 1)
    assert main(["demo", "--out", str(out), "--procs", "2", "--vocab-size", "1024",
                 "--eval-tokens", "32", "--set", "phases.0.tokens=6k", "--set",
                 "phases.1.tokens=4k", "--set", "phases.2.tokens=2k"]) == 0
    assert (out / "run" / "metrics.jsonl").read_text().count("\n") == steps
    assert "training in 2 processes failed (torchrun exit 1)" in capfd.readouterr().out
