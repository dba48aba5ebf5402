"""`mmbert data plan --recipe`: per-phase shares and epochs of a whole recipe, summed along the
trunk and each decay variant, with over-repeated languages flagged."""

import json

import yaml

from mmbert.cli import main
from mmbert.data.plan import plan_recipe
from mmbert.data.shards import ShardSet
from mmbert.recipe import load_recipe


def _recipe(path, shards, cap):
    base = {"seq_len": 64, "global_rope_theta": 10000, "local_rope_theta": 10000,
            "batch_tokens": 256, "micro_batch_tokens": 256, "lr": 1e-3}
    d = {"name": "plan-test", "shards": str(shards), "epoch_cap": cap, "phases": [
        {"name": "p1", "tokens": 200_000, "languages": 4, "tau": 0.7, "mask_ratio": 0.3, **base},
        {"name": "p2", "tokens": 100_000, "languages": 10, "tau": 0.5},
        {"name": "decay", "tokens": 50_000, "languages": "all", "tau": 0.3, "mask_ratio": 0.05,
         "variants": [{"name": "few", "languages": 4}, {"name": "all"}]}]}
    path.write_text(yaml.safe_dump(d))
    return path


def test_plan_sums_epochs_along_each_line(tmp_path, demo_shards):
    rp = plan_recipe(load_recipe(_recipe(tmp_path / "r.yaml", demo_shards, 5.0)))
    assert [p.label for p in rp.phases] == ["p1", "p2", "decay/few", "decay/all"]
    counts = ShardSet(demo_shards, "train").token_counts()
    p2 = rp.phases[1]
    # shares and epochs computed here by hand: p ∝ tokens ** tau, epochs = budget * p / tokens
    z = sum(counts[s.lang] ** 0.5 for s in p2.languages)
    for s in p2.languages:
        share = counts[s.lang] ** 0.5 / z
        assert abs(s.share - share) < 1e-9
        assert abs(s.epochs - 100_000 * share / counts[s.lang]) < 1e-6
    first = {s.lang: s.epochs for s in rp.phases[0].languages}
    for s in p2.languages:  # the trunk adds up; a language new in p2 starts from 0
        assert abs(s.total_epochs - (first.get(s.lang, 0.0) + s.epochs)) < 1e-9
    trunk = {s.lang: s.total_epochs for s in p2.languages}
    for variant in rp.phases[2:]:  # each variant sits on the trunk, not on the other variant
        for s in variant.languages:
            assert abs(s.total_epochs - (trunk.get(s.lang, 0.0) + s.epochs)) < 1e-9


def test_plan_flags_over_repeated_language(tmp_path, demo_shards, capsys):
    rp = plan_recipe(load_recipe(_recipe(tmp_path / "r.yaml", demo_shards, 5.0)))
    totals = sorted(s.total_epochs for p in rp.phases for s in p.languages)
    cap = totals[len(totals) // 2]  # some languages above, some below
    recipe = _recipe(tmp_path / "r2.yaml", demo_shards, cap)
    over = plan_recipe(load_recipe(recipe)).over_cap()
    worst_lang = max(over, key=lambda x: x[1].total_epochs)[1].lang
    assert over and all(s.total_epochs > cap for _, s in over)
    rc = main(["data", "plan", "--recipe", str(recipe), "--png", str(tmp_path / "plan.png"),
               "--strict"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "over the epoch cap" in out and worst_lang in out.split("over the epoch cap")[1]
    assert (tmp_path / "plan.png").read_bytes()[:4] == b"\x89PNG"
    rc = main(["data", "plan", "--recipe", str(recipe), "--set", "epoch_cap=1000"])
    assert rc == 0 and "no language over the epoch cap 1000" in capsys.readouterr().out


def test_plan_needs_recipe_or_shards(capsys):
    assert main(["data", "plan", "--tau", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--recipe" in err


def test_replay_share(tmp_path, demo_shards):
    """Replay languages get exactly replay_share of the tokens, tokens ** tau among themselves;
    the loader and the plan use the same shares."""
    import pytest

    from mmbert.data.loader import MLMLoader
    from mmbert.data.sampler import phase_probs
    from mmbert.errors import MmbertError
    from mmbert.recipe import recipe_from_dict

    counts = ShardSet(demo_shards, "train").token_counts()
    ranked = sorted(counts, key=lambda lang: -counts[lang])
    new, replay = ranked[-3:], ranked[:5]
    p = phase_probs({lang: counts[lang] for lang in new + replay}, 0.3, replay, 0.25)
    assert abs(sum(p[lang] for lang in replay) - 0.25) < 1e-12
    assert abs(sum(p[lang] for lang in new) - 0.75) < 1e-12
    a, b = replay[0], replay[1]
    assert abs(p[a] / p[b] - (counts[a] / counts[b]) ** 0.3) < 1e-9
    ld = MLMLoader(demo_shards, languages=new + replay, tau=0.3, seq_len=64, batch_tokens=64,
                   replay=replay, replay_share=0.25)
    assert ld.probs == p
    d = yaml.safe_load(_recipe(tmp_path / "r.yaml", demo_shards, 5.0).read_text())
    d["phases"] = [{**d["phases"][0], "languages": new, "tau": 0.3,
                    "replay_languages": replay, "replay_share": 0.25}]
    write = tmp_path / "replay.yaml"
    write.write_text(yaml.safe_dump(d))
    shares = {s.lang: s.share for s in plan_recipe(load_recipe(write)).phases[0].languages}
    assert shares == p
    plain = load_recipe(write).to_dict()  # as a run's recipe.json holds it (resume compares)
    assert json.loads(json.dumps(plain)) == plain
    for bad, msg in (({"replay_share": 0.25}, "without replay_languages"),
                     ({"replay_languages": replay, "replay_share": 1.0}, "replay_share")):
        ph = {**d["phases"][0], "replay_languages": None, "replay_share": 0.0, **bad}
        with pytest.raises(MmbertError, match=msg):
            recipe_from_dict({**d, "phases": [ph]}, "r.yaml")
