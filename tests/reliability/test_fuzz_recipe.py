"""Fuzzing recipe parsing: ``parse_tokens``, ``apply_overrides`` (``--set``),
``recipe_from_dict`` and ``load_recipe`` on random values, types, override strings and files.

A call either gives a valid result or raises one MmbertError line naming the field (or the
file / the ``--set`` item). The inputs that fuzzing once broke it with are pinned at the end.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmbert.errors import MmbertError
from mmbert.recipe import apply_overrides, load_recipe, parse_tokens, recipe_from_dict

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))


def fuzz(n: int) -> settings:
    return settings(derandomize=True, deadline=None, database=None, max_examples=n,
                    suppress_health_check=list(HealthCheck))


def call(fuzz, fn: Callable[..., Any], *args: Any, names: tuple[str, ...] = (),
         **kwargs: Any) -> tuple[Any, str | None]:
    return fuzz.call(fn, *args, names=names, **kwargs)


# ---------------------------------------------------------------------------------------------
# parse_tokens
# ---------------------------------------------------------------------------------------------

_number_text = st.builds(
    lambda sign, digits, frac, exp, suffix, sp: f"{sp}{sign}{digits}{frac}{exp}{suffix}{sp}",
    st.sampled_from(["", "-", "+"]),
    st.sampled_from(["", "0", "1", "12", "1_000", "999999999999", "inf", "nan", "Infinity"]),
    st.sampled_from(["", ".", ".5", ".25"]),
    st.sampled_from(["", "e3", "e-2", "e400", "E+1"]),
    st.sampled_from(["", "k", "K", "M", "B", "G", "T", "%", "x", "kk", "%%"]),
    st.sampled_from(["", " ", "\t"]))
_token_values = st.one_of(
    _number_text, st.text(max_size=8), st.integers(), st.integers(10**300, 10**400),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.lists(st.integers(), max_size=2))


@fuzz(600)
@given(value=_token_values, total=st.one_of(st.none(), st.integers(0, 10**12)))
def test_parse_tokens(fuzz, value, total):
    fuzz.count("recipe.parse_tokens")
    n, err = call(fuzz, parse_tokens, value, "phases[0].tokens", total=total,
                  names=("phases[0].tokens",))
    if err is None:
        assert isinstance(n, int) and not isinstance(n, bool) and n >= 0


# ---------------------------------------------------------------------------------------------
# apply_overrides
# ---------------------------------------------------------------------------------------------

_keys = st.sampled_from(["phases", "0", "1", "2", "-1", "-9", "9", "decay", "pretrain",
                         "variants", "high", "tau", "model", "overrides", "hidden_size", "name",
                         "shards", "seed", "optimizer", "betas", "", " ", "a\nb", "x"])
_values = st.one_of(
    st.sampled_from(["0.5", "1", "-1", "[a, b]", "{x: 1}", "null", "", "  ", "[", "{", "'",
                     "!!python/name:os.system", "*x", "&a [*a]", "1e400", "2.3T", "a: b: c",
                     "\t", "- 1", "%", "@", "`", "[" * 50, "~"]),
    st.text(max_size=12))


@st.composite
def override_items(draw) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=20))
    path = ".".join(draw(st.lists(_keys, min_size=1, max_size=5)))
    return f"{path}={draw(_values)}"


@fuzz(500)
@given(items=st.lists(override_items(), max_size=3))
def test_apply_overrides(fuzz, items):
    fuzz.count("recipe.apply_overrides (--set)")
    before = copy.deepcopy(BASE)
    out, err = call(fuzz, apply_overrides, BASE, items, names=("--set",))
    assert BASE == before, "apply_overrides changed its input"
    if err is None:
        assert isinstance(out, dict)
        # the result validates or fails in one line
        call(fuzz, recipe_from_dict, out, "fuzz.yaml", names=("fuzz.yaml",))


# ---------------------------------------------------------------------------------------------
# recipe_from_dict
# ---------------------------------------------------------------------------------------------

_scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**7), st.integers(),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
                    st.sampled_from(["all", "1.5M", "10%", "-5%", "tiny", "mmbert-base", "fp32",
                                     "ddp", "linear", "inverse-sqrt", "stableadamw", "1e-3",
                                     "infk", "120%", "fra_Latn", "a\nb"]))
_any = st.recursive(_scalar, lambda c: st.one_of(
    st.lists(c, max_size=3), st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), c,
                                              max_size=3)), max_leaves=6)


def _paths(d: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _paths(v, prefix + (i,))
    return out


_BASE_PATHS = _paths(BASE)[1:]


@st.composite
def mutated_recipes(draw) -> dict:
    d = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_BASE_PATHS))
        node = d
        try:
            for k in path[:-1]:
                node = node[k]
            how = draw(st.sampled_from(["set", "set", "drop", "add"]))
            if how == "drop" and isinstance(node, dict):
                node.pop(path[-1], None)
            elif how == "add" and isinstance(node, dict):
                node[draw(st.text(max_size=6))] = draw(_any)
            else:
                node[path[-1]] = draw(_any)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed or replaced the path
    return d


def _roundtrip(r) -> None:
    again = recipe_from_dict(r.to_dict(), source=r.source)
    assert again == r


@fuzz(700)
@given(d=mutated_recipes())
def test_recipe_from_dict_mutated(fuzz, d):
    fuzz.count("recipe.recipe_from_dict (mutated demo recipe)")
    r, err = call(fuzz, recipe_from_dict, d, "fuzz.yaml", names=("fuzz.yaml",))
    if err is None:
        assert all(p.tokens >= 1 for p in r.phases)
        assert all(0 < p.mask_ratio < 1 and 0 <= p.tau <= 1 for p in r.phases)
        assert all(p.micro_batch_tokens >= p.seq_len for p in r.phases)
        _roundtrip(r)


@fuzz(300)
@given(d=_any)
def test_recipe_from_dict_random(fuzz, d):
    fuzz.count("recipe.recipe_from_dict (random data)")
    call(fuzz, recipe_from_dict, d, "fuzz.yaml", names=("fuzz.yaml",))


# ---------------------------------------------------------------------------------------------
# load_recipe (files + --set)
# ---------------------------------------------------------------------------------------------

_BASE_TEXT = (ROOT / "configs" / "demo.yaml").read_bytes()


@st.composite
def recipe_files(draw) -> bytes:
    how = draw(st.sampled_from(["bytes", "cut", "flip", "yaml", "special"]))
    if how == "bytes":
        return draw(st.binary(max_size=120))
    if how == "cut":
        return _BASE_TEXT[:draw(st.integers(0, len(_BASE_TEXT)))]
    if how == "flip":
        i = draw(st.integers(0, len(_BASE_TEXT) - 1))
        return _BASE_TEXT[:i] + bytes([draw(st.integers(0, 255))]) + _BASE_TEXT[i + 1:]
    if how == "yaml":
        return yaml.safe_dump(draw(mutated_recipes()), allow_unicode=True).encode("utf-8")
    return draw(st.sampled_from([b"", b"\x00" * 40, b"- a\n- b\n", b"null", b"[" * 600,
                                 b"a: &x [*x]", b"\xff\xfeshards: x", b"!!python/object:os {}",
                                 b"shards: x\nphases: [" + b"{" * 300]))


@fuzz(300)
@given(raw=recipe_files(), items=st.lists(override_items(), max_size=2))
def test_load_recipe(fuzz, raw, items, tmp_path_factory):
    fuzz.count("recipe.load_recipe (files + --set)")
    p = tmp_path_factory.mktemp("recipe") / "r.yaml"
    p.write_bytes(raw)
    call(fuzz, load_recipe, p, items, names=(str(p), "--set"))


# ---------------------------------------------------------------------------------------------
# Inputs fuzzing found (each was a traceback or a multi-line message; now one line)
# ---------------------------------------------------------------------------------------------

def _one_line_error(fn: Callable[[], Any]) -> None:
    with pytest.raises(MmbertError) as ei:
        fn()
    assert "\n" not in str(ei.value)


def _with(path: tuple[Any, ...], value: Any) -> dict:
    d = copy.deepcopy(BASE)
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return d


@pytest.mark.parametrize("make", [
    lambda: parse_tokens("infk", "phases[0].tokens"),  # was OverflowError
    lambda: parse_tokens("-5M", "phases[0].tokens"),  # was -5000000
    lambda: parse_tokens("-10%", "phases[0].warmup_tokens", total=1000),  # was -100
    lambda: recipe_from_dict(_with(("phases", 0, "tau"), 10**400), "r.yaml"),  # OverflowError
    lambda: recipe_from_dict(_with(("model", "preset"), ["tiny"]), "r.yaml"),  # TypeError
    lambda: recipe_from_dict({**BASE, "a\nb": 1}, "r.yaml"),  # the raw key spanned lines
    lambda: apply_overrides(BASE, ["seed=["]),  # YAML's message spanned lines
    lambda: apply_overrides(BASE, ["seed=" + "[" * 600]),  # was RecursionError
])
def test_found_inputs_are_one_line_errors(make):
    _one_line_error(make)
