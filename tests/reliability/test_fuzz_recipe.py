"""Fuzzing recipe parsing: ``parse_tokens``, ``apply_overrides`` (``--set``),
``recipe_from_dict`` and ``load_recipe`` on random values, types, override strings and files.

A call either gives a valid result or raises one MmbertError line naming the field (or the
file / the ``--set`` item). Known defects of :mod:`mmbert.recipe` are listed in ``KNOWN``: the
fuzz tests count them instead of failing, and one strict-xfail test per defect pins its input
(when the defect is fixed, that test passes unexpectedly: remove its ``KNOWN`` entry).
"""

from __future__ import annotations

import copy
from collections import Counter
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


# ---------------------------------------------------------------------------------------------
# Known defects in mmbert.recipe (owned elsewhere): (name, predicate on the failure)
# ---------------------------------------------------------------------------------------------

def _overflow(e: BaseException) -> bool:
    return isinstance(e, OverflowError)


def _unhashable_preset(e: BaseException) -> bool:
    return isinstance(e, TypeError) and "unhashable" in str(e)


def _multiline(e: BaseException) -> bool:
    return isinstance(e, MmbertError) and ("\n" in str(e) or "\r" in str(e))


def _recursion(e: BaseException) -> bool:
    return isinstance(e, RecursionError)


KNOWN: dict[str, Callable[[BaseException], bool]] = {
    "overflow: infinite or huge token count / number": _overflow,
    "unhashable model.preset": _unhashable_preset,
    "multi-line MmbertError (YAML message or raw key text)": _multiline,
    "deeply nested --set value": _recursion,
}
KNOWN_HITS: Counter[str] = Counter()


def _known(e: BaseException) -> str | None:
    for name, pred in KNOWN.items():
        if pred(e):
            KNOWN_HITS[name] += 1
            return name
    return None


_KNOWN = object()


def call(fuzz, fn: Callable[..., Any], *args: Any, names: tuple[str, ...] = (),
         **kwargs: Any) -> tuple[Any, str | None]:
    """``fuzz.call`` that lets the known defects above through (counted, not failed)."""
    def guarded(*a: Any, **k: Any) -> Any:
        try:
            return fn(*a, **k)
        except (MmbertError, OverflowError, TypeError, RecursionError) as e:
            if _known(e) is None:
                raise
            return _KNOWN

    out, err = fuzz.call(guarded, *args, names=names, **kwargs)
    return (None, "known defect") if out is _KNOWN else (out, err)


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
        assert isinstance(n, int) and not isinstance(n, bool)
        if n < 0:  # a negative count from '-5M' or '-10%' (see the xfail test below)
            KNOWN_HITS["negative token count from a '-' string"] += 1


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
# The known defects, one pinned input each (strict xfail: they fail today)
# ---------------------------------------------------------------------------------------------

def _one_line_error(fn: Callable[[], Any]) -> None:
    with pytest.raises(MmbertError) as ei:
        fn()
    assert "\n" not in str(ei.value)


@pytest.mark.xfail(strict=True, raises=OverflowError,
                   reason="recipe.parse_tokens('infk'): OverflowError (int(round(inf)))")
def test_known_parse_tokens_infinite_suffix():
    _one_line_error(lambda: parse_tokens("infk", "phases[0].tokens"))


@pytest.mark.xfail(strict=True, raises=OverflowError,
                   reason="recipe._number(10**400): OverflowError from float() of a huge int")
def test_known_number_huge_int():
    d = copy.deepcopy(BASE)
    d["phases"][0]["tau"] = 10**400
    _one_line_error(lambda: recipe_from_dict(d, "r.yaml"))


@pytest.mark.xfail(strict=True, raises=TypeError,
                   reason="recipe._model_spec: model.preset a list -> TypeError unhashable")
def test_known_unhashable_preset():
    d = copy.deepcopy(BASE)
    d["model"]["preset"] = ["tiny"]
    _one_line_error(lambda: recipe_from_dict(d, "r.yaml"))


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="recipe.apply_overrides: a YAML error message spans several lines")
def test_known_override_yaml_error_multiline():
    _one_line_error(lambda: apply_overrides(BASE, ["seed=["]))


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="recipe._check_keys: an unknown key with a newline is printed raw")
def test_known_unknown_key_multiline():
    _one_line_error(lambda: recipe_from_dict({**BASE, "a\nb": 1}, "r.yaml"))


@pytest.mark.xfail(strict=True, raises=RecursionError,
                   reason="recipe.apply_overrides: a deeply nested --set value -> RecursionError")
def test_known_override_deep_nesting():
    _one_line_error(lambda: apply_overrides(BASE, ["seed=" + "[" * 600]))


@pytest.mark.xfail(strict=True, raises=pytest.fail.Exception,
                   reason="recipe.parse_tokens('-5M') returns -5000000 (no sign check on "
                          "suffixed or '%' counts)")
def test_known_negative_suffixed_tokens():
    _one_line_error(lambda: parse_tokens("-5M", "phases[0].tokens"))


def test_known_defects_summary(fuzz):
    """Counts of fuzz cases that hit a known defect (printed with -s)."""
    if KNOWN_HITS:
        print("\nrecipe fuzzing: cases hitting known defects:")
        for name, n in sorted(KNOWN_HITS.items()):
            print(f"  {name}: {n}")
