"""Recipes: YAML loading, phase inheritance, dotted overrides, validation messages; schedules."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from mmbert.recipe import apply_overrides, load_recipe, parse_tokens, recipe_from_dict
from mmbert.errors import MmbertError
from mmbert.train.schedule import decay_curve, lr_factor, step_slots, target_batch_tokens
from mmbert.train.slots import step_assignment

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def base_dict() -> dict:
    return {
        "name": "t", "shards": "shards", "seed": 1, "model": {"preset": "tiny"},
        "phases": [
            {"name": "p1", "tokens": "100k", "languages": 3, "tau": 0.7, "mask_ratio": 0.3,
             "seq_len": 128, "batch_tokens": 2048, "micro_batch_tokens": 1024, "lr": "1e-3",
             "warmup_tokens": "10%", "weight_decay": 1e-5},
            {"name": "p2", "tokens": 50000, "languages": ["deu_Latn", "fra_Latn"], "tau": 0.5,
             "mask_ratio": 0.15, "seq_len": 256, "global_rope_theta": 160000,
             "local_rope_theta": 160000},
            {"name": "p3", "tokens": "20k", "languages": "all", "tau": 0.3, "mask_ratio": 0.05,
             "decay_tokens": "100%", "decay_shape": "1-sqrt", "final_lr_ratio": 0.02,
             "variants": [{"name": "eng", "languages": 1, "tau": 1.0}, {"name": "all"}]},
        ],
    }


def test_shipped_recipes_load_with_paper_values():
    base = load_recipe(CONFIGS / "mmbert-base.yaml")
    p1, p2, p3 = base.phases
    assert (p1.tokens, p1.languages, p1.mask_ratio, p1.tau, p1.seq_len) == (2.3e12, 60, 0.3, 0.7, 1024)
    assert (p2.tokens, p2.languages, p2.mask_ratio, p2.tau, p2.seq_len) == (600e9, 110, 0.15, 0.5, 8192)
    assert (p3.tokens, p3.languages, p3.mask_ratio, p3.tau, p3.seq_len) == (100e9, "all", 0.05, 0.3, 8192)
    assert (p1.global_rope_theta, p2.global_rope_theta, p2.local_rope_theta) == (1e4, 1.6e5, 1.6e5)
    assert p3.decay_tokens == p3.tokens and p3.decay_shape == "1-sqrt"
    assert base.variant_names == ("eng", "cont", "all") and len(base.trunk) == 2
    assert base.model_config().hidden_size == 768
    small = load_recipe(CONFIGS / "mmbert-small.yaml")
    assert small.model_config().hidden_size == 384 and small.phases[1].lr == 4e-4
    demo = load_recipe(CONFIGS / "demo.yaml")
    assert len(demo.phases) == 3 and len(demo.variant_names) == 3
    assert demo.model.preset == "tiny"


def test_inheritance_tokens_and_roundtrip():
    r = recipe_from_dict(base_dict(), "t.yaml")
    p1, p2, p3 = r.phases
    assert p1.tokens == 100_000 and p1.warmup_tokens == 10_000 and p1.lr == 1e-3
    assert p2.lr == 1e-3 and p2.weight_decay == 1e-5 and p2.batch_tokens == 2048  # inherited
    assert p2.warmup_tokens == 0  # schedule parts are per phase
    assert p1.global_rope_theta == 160000.0  # tiny preset's default ...
    assert p3.global_rope_theta == 160000 and p3.seq_len == 256  # ... and inherited from p2
    assert p2.languages == ("deu_Latn", "fra_Latn")
    v = p3.variant("eng")
    assert v.languages == 1 and v.tau == 1.0 and v.mask_ratio == 0.05 and not v.variants
    assert p3.variant("all").languages == "all"
    assert recipe_from_dict(r.to_dict(), "t.yaml") == r


def test_parse_tokens():
    assert parse_tokens("2.3T", "x") == 2_300_000_000_000
    assert parse_tokens("4.7M", "x") == 4_700_000
    assert parse_tokens("1e6", "x") == 1_000_000
    assert parse_tokens("25%", "x", total=400) == 100
    for bad in ("lots", "-5", True, "5%"):
        with pytest.raises(MmbertError, match="x = "):
            parse_tokens(bad, "x")


def test_overrides():
    d = base_dict()
    out = apply_overrides(d, ["phases.1.tau=0.4", "phases.p3.variants.eng.tau=0.9",
                              "model.overrides.hidden_size=64", "seed=7",
                              "phases.0.languages=[deu_Latn]"])
    r = recipe_from_dict(out, "t.yaml")
    assert r.phases[1].tau == 0.4 and r.phases[2].variant("eng").tau == 0.9
    assert r.model_config().hidden_size == 64 and r.seed == 7
    assert r.phases[0].languages == ("deu_Latn",)
    assert d["phases"][1]["tau"] == 0.5  # the input is not modified
    with pytest.raises(MmbertError, match="index 5 out of range"):
        apply_overrides(d, ["phases.5.tau=0.1"])
    with pytest.raises(MmbertError, match="no list item named 'nope'"):
        apply_overrides(d, ["phases.nope.tau=0.1"])
    with pytest.raises(MmbertError, match="expected key.path=value"):
        apply_overrides(d, ["phases.0.tau"])


@pytest.mark.parametrize("path,value,match", [
    ("phases.1.tau", 1.5, r"phases\[1\]\.tau = 1\.5: expected a number in \[0, 1\]"),
    ("phases.0.mask_ratio", 0, r"phases\[0\]\.mask_ratio = 0"),
    ("phases.0.seq_len", 4096, r"phases\[0\]\.seq_len = 4096: expected at most the model's"),
    ("phases.0.micro_batch_tokens", 64, r"micro_batch_tokens = 64: expected at least seq_len"),
    ("phases.0.lr", "fast", r"phases\[0\]\.lr = 'fast'"),
    ("phases.2.decay_shape", "exp", r"decay_shape = 'exp': expected one of"),
    ("phases.0.languages", 0, r"phases\[0\]\.languages = 0"),
    ("phases.0.languages", ["deu_Latn", "deu_Latn"], "listed twice"),
    ("phases.0.colour", "red", r"phases\[0\]\.colour: unknown field"),
    ("precision", "fp8", r"precision = 'fp8'"),
    ("optimizer.name", "sgd", r"optimizer\.name = 'sgd'"),
    ("checkpoint.keep_last", 0, r"checkpoint\.keep_last = 0"),
    ("model.preset", "huge", r"model\.preset = 'huge'"),
    ("model.overrides.hidden_size", 130, r"model\.overrides: .*hidden_size"),
    ("phases.0.variants", [{"name": "x"}], "only the last phase"),
    ("phases.2.variants", [{"name": "a"}, {"name": "a"}], "unique"),
    ("phases.0.warmup_tokens", "200k", r"warmup_tokens \(200000\) \+ decay_tokens"),
    ("phases.1.tokens", None, r"phases\[1\]\.tokens"),
])
def test_invalid_values_name_the_field(path, value, match):
    d = apply_overrides(base_dict(), [f"{path}={yaml.safe_dump(value, default_flow_style=True).strip()}"])
    with pytest.raises(MmbertError, match=match) as e:
        recipe_from_dict(d, "t.yaml")
    assert str(e.value).startswith("t.yaml: ") and "\n" not in str(e.value)


def test_load_recipe_file_errors(tmp_path):
    with pytest.raises(MmbertError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("phases: [\n")
    with pytest.raises(MmbertError, match="not valid YAML"):
        load_recipe(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump(base_dict()))
    r = load_recipe(ok, ["phases.0.tau=0.6"])
    assert r.phases[0].tau == 0.6 and r.source == str(ok)


def test_lr_schedule_shapes():
    r = recipe_from_dict(base_dict(), "t.yaml")
    p1, p3 = r.phases[0], r.phases[2]
    assert lr_factor(p1, 0) == 0 and lr_factor(p1, 5_000) == pytest.approx(0.5)
    assert lr_factor(p1, 10_000) == 1 and lr_factor(p1, 99_999) == 1  # stable, no decay
    assert lr_factor(p3, 0) == 1 and lr_factor(p3, 20_000) == pytest.approx(0.02)
    assert lr_factor(p3, 5_000) == pytest.approx(1 - 0.98 * math.sqrt(0.25))
    for shape in ("linear", "1-sqrt", "cosine", "inverse-sqrt"):
        xs = [decay_curve(shape, x / 10, 0.1) for x in range(11)]
        assert xs[0] == pytest.approx(1) and xs[-1] == pytest.approx(0.1)
        assert all(a >= b for a, b in zip(xs, xs[1:])), shape
    assert decay_curve("cosine", 0.5, 0.0) == pytest.approx(0.5)


def test_batch_warmup_and_accumulation():
    d = apply_overrides(base_dict(), ["phases.0.batch_warmup_tokens=40k",
                                      "phases.0.batch_warmup_min_tokens=1024"])
    p = recipe_from_dict(d, "t.yaml").phases[0]
    assert target_batch_tokens(p, 0) == 1024 and target_batch_tokens(p, 40_000) == 2048
    assert target_batch_tokens(p, 20_000) == pytest.approx(1536)
    assert step_slots(p, 0) == 1 and step_slots(p, 50_000) == 2
    # two ranks x 1 micro-batch = the same global batch
    assert step_assignment(p, 50_000, 2, 0).passes == 1
