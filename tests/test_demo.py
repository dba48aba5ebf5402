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


def test_report_has_tables_and_plots(tmp_path: Path) -> None:
    tier = {"a": TIERS[0], "c": TIERS[1], "d": TIERS[2]}
    acc = {"random init": {"a": 0.0, "c": 0.0, "d": 0.0},
           "end of midtrain": {"a": 0.2, "c": 0.1, "d": 0.0},
           "variant all": {"a": 0.2, "c": 0.1, "d": 0.1},
           "TIES merge": {"a": 0.3, "c": 0.1, "d": 0.05}}
    from mmbert.demo import _tier_means
    r = {"languages": {"pretrain": 1, "midtrain": 2, "decay/all": 3}, "tiers": tier,
         "train_tokens": {"a": 300, "c": 200, "d": 100},
         "sampling": {"pretrain": {"a": 1.0}, "decay/all": {"a": 0.5, "c": 0.3, "d": 0.2}},
         "mlm_accuracy": acc, "tier_means": {k: _tier_means(v, tier) for k, v in acc.items()},
         "loss_curves": {"pretrain": [(10, 9.0), (20, 8.0)]},
         "merge": {"method": "ties", "density": 0.5, "base": "end of midtrain", "models": ["all"]},
         "tokens_per_s": 1000.0, "train_wall_s": 12.0}
    report = write_demo_report(tmp_path, r)
    text = report.read_text()
    assert "| TIES merge | 30.0 | 10.0 | 5.0 | 15.0 |" in text
    assert "1 of 1 improved" in text  # d: 0.0 before the decay -> 0.05 merged
    for png in ("loss", "sampling", "mlm_per_language", "variants_merge"):
        assert (tmp_path / "plots" / f"{png}.png").stat().st_size > 1000
    assert json.loads((tmp_path / "results.json").read_text())["tiers"] == tier


def test_demo_without_recipe_is_one_clear_error(tmp_path: Path, capsys) -> None:
    rc = main(["demo", "--out", str(tmp_path / "d"), "--recipe", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "nope.yaml: no such recipe" in err[0]
    assert not (tmp_path / "d").exists()
