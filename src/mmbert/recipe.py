"""Training recipes: the YAML a run is made from, parsed and validated into frozen dataclasses.

A recipe is a YAML file: the model (preset + overrides), the data (shards, tokenizer), the seed,
the optimizer, checkpoint cadence and a list of phases. Each phase has its own token budget,
language set, sampling temperature tau, mask ratio, sequence length, RoPE thetas, batch size
and its part of the learning-rate schedule (warmup, stable, decay). A phase inherits every
field it does not set from the phase before it, except the per-phase schedule parts
(``tokens``, ``warmup_tokens``, ``decay_tokens``, ``batch_warmup_*``, ``reset_optimizer``,
``variants``). Token counts accept suffixes (``2.3T``, ``600B``, ``4.7M``, ``500k``); warmup and
decay also accept a share of the phase (``"10%"``). See configs/*.yaml.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NoReturn

from mmbert.config import PRESETS, ModelConfig, preset
from mmbert.errors import MmbertError

DECAY_SHAPES = ("linear", "1-sqrt", "cosine", "inverse-sqrt")
PRECISIONS = ("auto", "bf16", "fp32")
NONFINITE = ("stop", "skip", "rollback")  # Recipe.on_nonfinite
OPTIMIZERS = ("adamw", "stableadamw")
STRATEGIES = ("ddp", "fsdp")
_SUFFIXES = {"k": 1e3, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")

LanguageSpec = Any  # "all" | int (top-k languages by corpus tokens) | tuple of language codes


def _fail(where: str, value: Any, expected: str) -> NoReturn:
    raise MmbertError(f"{where} = {value!r}: expected {expected}")


def parse_tokens(value: Any, where: str, *, total: int | None = None) -> int:
    """A token count: int, float, or a string with a k/M/B/T suffix; ``"N%"`` of ``total``."""
    v = value
    if isinstance(v, bool):
        _fail(where, value, "a token count such as 1000000, '4.7M' or '2.3T'")
    if isinstance(v, str):
        s = v.strip().replace("_", "")
        try:
            if s.endswith("%") and total is not None:
                v = float(s[:-1]) / 100.0 * total
            elif s and s[-1] in _SUFFIXES:
                v = float(s[:-1]) * _SUFFIXES[s[-1]]
            else:
                v = float(s)
        except ValueError:
            pct = " or a share of the phase like '10%'" if total is not None else ""
            _fail(where, value, f"a token count such as 1000000, '4.7M' or '2.3T'{pct}")
    try:
        ok = isinstance(v, (int, float)) and 0 <= float(v) < float("inf")  # NaN fails too
    except OverflowError:  # an int too large for a float
        ok = False
    if not ok:
        _fail(where, value, "a non-negative, finite token count")
    return int(round(v))


def _number(value: Any, where: str, lo: float | None = None, hi: float | None = None, *,
            lo_open: bool = False, hi_open: bool = False) -> float:
    """A float in a range; YAML 1.1 reads ``1e-3`` as a string, so numeric strings are accepted."""
    rng = (("(" if lo_open else "[") + (str(lo) if lo is not None else "-inf") + ", "
           + (str(hi) if hi is not None else "inf") + (")" if hi_open else "]"))
    try:
        if isinstance(value, bool):
            raise ValueError
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        _fail(where, value, f"a number in {rng}")
    if x != x or (lo is not None and (x < lo or (lo_open and x == lo))) or \
            (hi is not None and (x > hi or (hi_open and x == hi))):
        _fail(where, value, f"a number in {rng}")
    return x


def _integer(value: Any, where: str, lo: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        _fail(where, value, f"an integer >= {lo}")
    return int(value)


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        _fail(where, value, "true or false")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or not set(value) <= _NAME_CHARS:
        _fail(where, value, "a non-empty name of letters, digits, '_', '.', '-'")
    return value


def _languages(value: Any, where: str) -> LanguageSpec:
    if value == "all":
        return "all"
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            _fail(where, value, "'all', a positive top-k count, or a list of language codes")
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(x, str) and x for x in value):
        if len(set(value)) != len(value):
            dup = sorted({x for x in value if list(value).count(x) > 1})
            raise MmbertError(f"{where}: language codes listed twice: {dup}")
        return tuple(value)
    _fail(where, value, "'all', a positive top-k count, or a list of language codes")


def _check_keys(d: Any, allowed: tuple[str, ...], where: str) -> dict:
    if not isinstance(d, dict):
        raise MmbertError(f"{where}: expected a mapping, got {type(d).__name__}")
    unknown = [k for k in d if k not in allowed]
    if unknown:
        k = unknown[0]  # a key with a newline or other control character is shown quoted
        name = k if isinstance(k, str) and k.isprintable() else repr(k)
        raise MmbertError(f"{where}.{name}: unknown field; expected one of {list(allowed)}")
    return d


@dataclass(frozen=True)
class VariantConfig:
    """A decay variant: the same phase, branching from the same checkpoint, with its own mix."""

    name: str
    languages: LanguageSpec | None = None
    tau: float | None = None
    mask_ratio: float | None = None


@dataclass(frozen=True)
class PhaseConfig:
    """One training phase (see the section comment). Token counts are global (all ranks)."""

    name: str
    tokens: int
    languages: LanguageSpec
    tau: float
    mask_ratio: float
    seq_len: int
    global_rope_theta: float
    local_rope_theta: float
    batch_tokens: int
    micro_batch_tokens: int  # per rank and forward pass; accumulation makes up the rest
    lr: float
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    warmup_tokens: int = 0
    decay_tokens: int = 0  # the last decay_tokens of the phase decay the LR
    decay_shape: str = "linear"
    final_lr_ratio: float = 0.0  # LR at the end of the decay, as a share of ``lr``
    batch_warmup_tokens: int = 0  # batch size grows linearly over these tokens ...
    batch_warmup_min_tokens: int = 0  # ... from this size (0 = micro_batch_tokens)
    reset_optimizer: bool = False  # fresh AdamW moments at the start of this phase
    # replay: languages drawn with a fixed share of the phase's tokens (the rest goes to
    # ``languages``; tau applies within each group), e.g. the base model's languages while
    # adapting it to new ones
    replay_languages: LanguageSpec | None = None
    replay_share: float = 0.0
    variants: tuple[VariantConfig, ...] = ()

    def variant(self, name: str) -> "PhaseConfig":
        """This phase with a variant's overrides applied (and no variants of its own)."""
        for v in self.variants:
            if v.name == name:
                ch: dict[str, Any] = {"variants": ()}
                for f in ("languages", "tau", "mask_ratio"):
                    if getattr(v, f) is not None:
                        ch[f] = getattr(v, f)
                return dataclasses.replace(self, **ch)
        raise MmbertError(f"variant {name!r}: not in phase {self.name!r}; expected one of "
                          f"{[v.name for v in self.variants]}")


@dataclass(frozen=True)
class ModelSpec:
    preset: str = "tiny"
    overrides: dict = dataclasses.field(default_factory=dict)  # ModelConfig fields
    # start from released weights: a transformers/mmbert MaskedLM directory, or a Composer/
    # FlexBERT checkpoint (.pt, read without running code) with its training YAML in
    # init_config. The optimizer always starts fresh (moments are not carried over).
    init_from: str | None = None
    init_config: str | None = None


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "stableadamw"
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 100
    keep_last: int = 2  # phase-end checkpoints are kept in addition, never rotated away


@dataclass(frozen=True)
class LogConfig:
    every_steps: int = 1  # progress-bar refresh; metrics.jsonl gets every step
    tensorboard: bool = False


@dataclass(frozen=True)
class Recipe:
    name: str
    shards: str
    phases: tuple[PhaseConfig, ...]
    tokenizer: str | None = None
    seed: int = 0
    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    precision: str = "auto"  # auto: bf16 on GPUs and on CPUs with AMX / AVX512-BF16, else fp32
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    distributed: str = "ddp"  # ddp | fsdp (FSDP2 fully_shard); used when launched with torchrun
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)
    # `mmbert data plan` flags a language whose text is repeated more often than this (epochs
    # summed over the phases a model sees); the paper keeps every language at 5 or fewer
    epoch_cap: float = 5.0
    # a step whose loss or gradient is NaN/inf: stop (one error line, last checkpoint intact),
    # skip (no update from that batch) or rollback (back to the branch's newest checkpoint, on
    # the next batches); see docs/reliability.md. stop by default: a non-finite step is a
    # finding about the recipe or the data, and the other two change what the run computes
    on_nonfinite: str = "stop"
    source: str = "recipe"  # where it was read from, for messages

    def model_config(self, vocab_size: int | None = None, **special_ids: int) -> ModelConfig:
        """The preset with the recipe's overrides; ``vocab_size``/special ids from the tokenizer
        unless the recipe overrides them."""
        base = preset(self.model.preset)
        kw: dict[str, Any] = {}
        if vocab_size is not None:
            kw["vocab_size"] = int(vocab_size)
        kw.update({k: int(v) for k, v in special_ids.items() if v is not None})
        kw.update(self.model.overrides)
        return base.replace(**kw)

    @property
    def trunk(self) -> tuple[PhaseConfig, ...]:
        """Phases run in sequence in RUN_DIR; a last phase with variants is run per variant."""
        return self.phases[:-1] if self.phases[-1].variants else self.phases

    @property
    def variant_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.phases[-1].variants)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON/YAML); ``recipe_from_dict(r.to_dict())`` gives back ``r``."""
        d = dataclasses.asdict(self)
        d.pop("source")
        d["phases"] = list(d["phases"])
        for p in d["phases"]:
            for key in ("languages", "replay_languages"):
                if isinstance(p[key], tuple):
                    p[key] = list(p[key])
            p["variants"] = list(p["variants"])
            for v in p["variants"]:
                if isinstance(v["languages"], tuple):
                    v["languages"] = list(v["languages"])
                for k in [k for k, x in v.items() if x is None]:
                    del v[k]
        d["optimizer"]["betas"] = list(d["optimizer"]["betas"])
        return d


_PHASE_FIELDS = tuple(f.name for f in fields(PhaseConfig))
_NOT_INHERITED = ("name", "tokens", "warmup_tokens", "decay_tokens", "batch_warmup_tokens",
                  "batch_warmup_min_tokens", "reset_optimizer", "replay_languages",
                  "replay_share", "variants")
_REQUIRED_FIRST = ("tokens", "languages", "tau", "mask_ratio", "seq_len", "batch_tokens", "lr")


def _variant_from_dict(d: Any, where: str) -> VariantConfig:
    _check_keys(d, tuple(f.name for f in fields(VariantConfig)), where)
    if "name" not in d:
        raise MmbertError(f"{where}.name: missing; every variant needs a name")
    return VariantConfig(
        name=_name(d["name"], f"{where}.name"),
        languages=_languages(d["languages"], f"{where}.languages") if "languages" in d else None,
        tau=_number(d["tau"], f"{where}.tau", 0, 1) if "tau" in d else None,
        mask_ratio=(_number(d["mask_ratio"], f"{where}.mask_ratio", 0, 1, lo_open=True,
                            hi_open=True) if "mask_ratio" in d else None),
    )


def _phase_schedule(raw: dict[str, Any], where: str, tokens: int, micro: int,
                    batch_tokens: int) -> dict[str, Any]:
    """A phase's LR schedule and batch warmup fields, validated against its token budget."""
    w = lambda k: f"{where}.{k}"  # noqa: E731
    warmup = parse_tokens(raw["warmup_tokens"], w("warmup_tokens"), total=tokens)
    decay = parse_tokens(raw["decay_tokens"], w("decay_tokens"), total=tokens)
    if warmup + decay > tokens:
        raise MmbertError(f"{where}: warmup_tokens ({warmup}) + decay_tokens ({decay}) exceed "
                          f"the phase's tokens ({tokens})")
    bw = parse_tokens(raw["batch_warmup_tokens"], w("batch_warmup_tokens"), total=tokens)
    if bw > tokens:
        _fail(w("batch_warmup_tokens"), bw, f"at most the phase's tokens ({tokens})")
    bmin = parse_tokens(raw["batch_warmup_min_tokens"] or micro,
                        w("batch_warmup_min_tokens"))
    if not micro <= bmin <= batch_tokens:
        _fail(w("batch_warmup_min_tokens"), bmin,
              f"between micro_batch_tokens ({micro}) and batch_tokens ({batch_tokens})")
    shape = raw["decay_shape"]
    if shape not in DECAY_SHAPES:
        _fail(w("decay_shape"), shape, f"one of {list(DECAY_SHAPES)}")
    final = _number(raw["final_lr_ratio"], w("final_lr_ratio"), 0, 1)
    if shape == "inverse-sqrt" and final <= 0 and decay > 0:
        _fail(w("final_lr_ratio"), final, "a positive ratio for decay_shape inverse-sqrt")
    return {"warmup_tokens": warmup, "decay_tokens": decay, "decay_shape": shape,
            "final_lr_ratio": final, "batch_warmup_tokens": bw, "batch_warmup_min_tokens": bmin}


def _replay(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """``replay_languages`` and ``replay_share``: both set (share in (0, 1)) or neither."""
    spec, share = raw["replay_languages"], raw["replay_share"]
    if spec is None:
        if share:
            _fail(f"{where}.replay_share", share, "0 without replay_languages")
        return {"replay_languages": None, "replay_share": 0.0}
    return {"replay_languages": _languages(spec, f"{where}.replay_languages"),
            "replay_share": _number(share, f"{where}.replay_share", 0, 1, lo_open=True,
                                    hi_open=True)}


def _phase_from_dict(d: Any, where: str, index: int, prev: PhaseConfig | None,
                     model: ModelConfig) -> PhaseConfig:
    _check_keys(d, _PHASE_FIELDS, where)
    raw: dict[str, Any] = {}
    if prev is not None:
        raw.update({k: getattr(prev, k) for k in _PHASE_FIELDS if k not in _NOT_INHERITED})
    else:
        raw.update(global_rope_theta=model.global_rope_theta,
                   local_rope_theta=model.local_rope_theta)
        missing = [k for k in _REQUIRED_FIRST if k not in d]
        if missing:
            raise MmbertError(f"{where}.{missing[0]}: missing; the first phase must set "
                              f"{list(_REQUIRED_FIRST)}")
    if "tokens" not in d:
        raise MmbertError(f"{where}.tokens: missing; every phase needs a token budget")
    raw.update(d)
    w = lambda k: f"{where}.{k}"  # noqa: E731
    tokens = parse_tokens(raw["tokens"], w("tokens"))
    if tokens < 1:
        _fail(w("tokens"), raw["tokens"], "a positive token count")
    seq_len = _integer(raw["seq_len"], w("seq_len"), 2)
    if seq_len > model.max_position_embeddings:
        _fail(w("seq_len"), seq_len, f"at most the model's max_position_embeddings "
                                     f"({model.max_position_embeddings})")
    batch_tokens = parse_tokens(raw["batch_tokens"], w("batch_tokens"))
    micro = parse_tokens(raw.get("micro_batch_tokens") or batch_tokens, w("micro_batch_tokens"))
    if micro < seq_len:
        _fail(w("micro_batch_tokens"), micro, f"at least seq_len ({seq_len})")
    if batch_tokens < micro:
        _fail(w("batch_tokens"), batch_tokens, f"at least micro_batch_tokens ({micro})")
    if batch_tokens > tokens:
        _fail(w("batch_tokens"), batch_tokens, f"at most the phase's tokens ({tokens})")
    raw = {**_defaults(PhaseConfig), **raw}
    sched = _phase_schedule(raw, where, tokens, micro, batch_tokens)
    variants = raw["variants"] or ()
    if not isinstance(variants, (list, tuple)):
        _fail(w("variants"), variants, "a list of {name, languages, tau, mask_ratio}")
    vs = tuple(_variant_from_dict(v, f"{where}.variants[{i}]") for i, v in enumerate(variants))
    if len({v.name for v in vs}) != len(vs):
        raise MmbertError(f"{w('variants')}: variant names must be unique")
    return PhaseConfig(
        name=_name(raw.get("name", f"phase{index}"), w("name")),
        tokens=tokens,
        languages=_languages(raw["languages"], w("languages")),
        tau=_number(raw["tau"], w("tau"), 0, 1),
        mask_ratio=_number(raw["mask_ratio"], w("mask_ratio"), 0, 1, lo_open=True, hi_open=True),
        seq_len=seq_len,
        global_rope_theta=_number(raw["global_rope_theta"], w("global_rope_theta"), 0,
                                  lo_open=True),
        local_rope_theta=_number(raw["local_rope_theta"], w("local_rope_theta"), 0, lo_open=True),
        batch_tokens=batch_tokens,
        micro_batch_tokens=micro,
        lr=_number(raw["lr"], w("lr"), 0, 1, lo_open=True),
        weight_decay=_number(raw["weight_decay"], w("weight_decay"), 0),
        grad_clip=_number(raw["grad_clip"], w("grad_clip"), 0),
        **sched,
        reset_optimizer=_boolean(raw["reset_optimizer"], w("reset_optimizer")),
        **_replay(raw, where),
        variants=vs,
    )


def _defaults(cls) -> dict[str, Any]:
    """The defaults a dataclass declares (``field = value`` or a default factory): the one
    place each recipe default is stated."""
    out = {}
    for f in fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _model_spec(m: Any, source: str) -> tuple[ModelSpec, ModelConfig]:
    """``model:`` -> (ModelSpec, the preset's ModelConfig with the overrides applied)."""
    w = lambda k: f"{source}: model.{k}"  # noqa: E731
    m = {**_defaults(ModelSpec),
         **_check_keys(m, ("preset", "overrides", "init_from", "init_config"),
                       f"{source}: model")}
    if not isinstance(m["preset"], str) or m["preset"] not in PRESETS:
        _fail(w("preset"), m["preset"], f"one of {sorted(PRESETS)}")
    overrides = _check_keys(m["overrides"] or {}, tuple(f.name for f in fields(ModelConfig)),
                            w("overrides"))
    try:
        model_cfg = preset(m["preset"]).replace(**overrides)
    except MmbertError as e:
        raise MmbertError(f"{source}: model.overrides: {e}") from None
    for key in ("init_from", "init_config"):
        if m[key] is not None and (not isinstance(m[key], str) or not m[key]):
            _fail(w(key), m[key], "a path" if key == "init_config" else
                  "a model directory or a Composer checkpoint (.pt)")
    if (m["init_config"] is not None) != str(m["init_from"] or "").endswith(".pt"):
        _fail(w("init_config"), m["init_config"], "a FlexBERT training YAML exactly when "
              "init_from is a Composer checkpoint (.pt)")
    return ModelSpec(preset=m["preset"], overrides=dict(overrides), init_from=m["init_from"],
                     init_config=m["init_config"]), model_cfg


def _optimizer(o: Any, source: str) -> OptimizerConfig:
    w = lambda k: f"{source}: optimizer.{k}"  # noqa: E731
    o = {**_defaults(OptimizerConfig),
         **_check_keys(o, ("name", "betas", "eps"), f"{source}: optimizer")}
    if o["name"] not in OPTIMIZERS:
        _fail(w("name"), o["name"], f"one of {list(OPTIMIZERS)}")
    betas = o["betas"]
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        _fail(w("betas"), betas, "two numbers in [0, 1)")
    betas = tuple(_number(b, w(f"betas[{i}]"), 0, 1, hi_open=True) for i, b in enumerate(betas))
    return OptimizerConfig(name=o["name"], betas=betas,
                           eps=_number(o["eps"], w("eps"), 0, lo_open=True))


_RECIPE_KEYS = ("name", "shards", "tokenizer", "seed", "model", "precision", "optimizer",
                "distributed", "checkpoint", "log", "phases", "epoch_cap", "on_nonfinite")


def recipe_from_dict(d: Any, source: str = "recipe") -> Recipe:
    """Validate plain data into a :class:`Recipe`; errors name ``source`` and the field."""
    _check_keys(d, _RECIPE_KEYS, source)
    w = lambda k: f"{source}: {k}"  # noqa: E731
    if not d.get("shards") or not isinstance(d["shards"], str):
        _fail(w("shards"), d.get("shards"), "a directory path with manifest.json (mmbert shard)")
    tok = d.get("tokenizer")
    if tok is not None and (not isinstance(tok, str) or not tok):
        _fail(w("tokenizer"), tok, "a tokenizer directory or tokenizer.json path")
    model, model_cfg = _model_spec(d.get("model") or {}, source)
    optimizer = _optimizer(d.get("optimizer") or {}, source)
    c = {**_defaults(CheckpointConfig),
         **_check_keys(d.get("checkpoint") or {}, ("every_steps", "keep_last"), w("checkpoint"))}
    lg = {**_defaults(LogConfig),
          **_check_keys(d.get("log") or {}, ("every_steps", "tensorboard"), w("log"))}
    top = _defaults(Recipe)
    precision = d.get("precision", top["precision"])
    if precision not in PRECISIONS:
        _fail(w("precision"), precision, f"one of {list(PRECISIONS)}")
    strategy = d.get("distributed", top["distributed"])
    if strategy not in STRATEGIES:
        _fail(w("distributed"), strategy, f"one of {list(STRATEGIES)}")
    on_nonfinite = d.get("on_nonfinite", top["on_nonfinite"])
    if on_nonfinite not in NONFINITE:
        _fail(w("on_nonfinite"), on_nonfinite, f"one of {list(NONFINITE)}")
    raw_phases = d.get("phases")
    if not isinstance(raw_phases, (list, tuple)) or not raw_phases:
        _fail(w("phases"), raw_phases, "a non-empty list of phases")
    phases: list[PhaseConfig] = []
    for i, p in enumerate(raw_phases):
        phases.append(_phase_from_dict(p, f"{source}: phases[{i}]", i,
                                       phases[-1] if phases else None, model_cfg))
    names = [p.name for p in phases]
    if len(set(names)) != len(names):
        _fail(w("phases[].name"), names, "unique phase names")
    for i, p in enumerate(phases):
        if p.variants and (i == 0 or i != len(phases) - 1):
            raise MmbertError(f"{source}: phases[{i}].variants: only the last phase, and not the "
                              f"first, may have variants (they branch from the previous phase's "
                              f"end)")
    return Recipe(
        name=_name(d.get("name", "recipe"), w("name")),
        shards=d["shards"],
        phases=tuple(phases),
        tokenizer=tok,
        seed=_integer(d.get("seed", top["seed"]), w("seed")),
        model=model,
        precision=precision,
        optimizer=optimizer,
        distributed=strategy,
        checkpoint=CheckpointConfig(
            every_steps=_integer(c["every_steps"], w("checkpoint.every_steps"), 1),
            keep_last=_integer(c["keep_last"], w("checkpoint.keep_last"), 1)),
        log=LogConfig(every_steps=_integer(lg["every_steps"], w("log.every_steps"), 1),
                      tensorboard=_boolean(lg["tensorboard"], w("log.tensorboard"))),
        epoch_cap=_number(d.get("epoch_cap", top["epoch_cap"]), w("epoch_cap"), 0, lo_open=True),
        on_nonfinite=on_nonfinite,
        source=source,
    )


def apply_overrides(d: dict, overrides: list[str] | tuple[str, ...], source: str = "--set") -> dict:
    """Apply ``key.path=value`` overrides (value parsed as YAML) to a copy of ``d``.

    List items are addressed by 0-based index or by their ``name``: ``phases.1.tau=0.4``,
    ``phases.decay.variants.eng.tau=1.0``, ``model.overrides.hidden_size=256``.
    """
    import copy

    import yaml

    d = copy.deepcopy(d)
    for item in overrides:
        if "=" not in item:
            raise MmbertError(f"{source} {item!r}: expected key.path=value")
        path, text = item.split("=", 1)
        keys = path.strip().split(".")
        if not all(keys):
            raise MmbertError(f"{source} {item!r}: empty key in {path!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except (yaml.YAMLError, RecursionError) as e:
            msg = " ".join(str(e).split()) or type(e).__name__  # YAML's messages span lines
            raise MmbertError(f"{source} {item!r}: value is not valid YAML ({msg})") from None
        node: Any = d
        for depth, k in enumerate(keys):
            last = depth == len(keys) - 1
            where = ".".join(keys[:depth + 1])
            if isinstance(node, list):
                idx = None
                if k.lstrip("-").isdigit():
                    idx = int(k)
                    if not -len(node) <= idx < len(node):
                        raise MmbertError(f"{source} {item!r}: {where}: index {idx} out of range "
                                          f"(the list has {len(node)} items)")
                else:
                    named = [i for i, x in enumerate(node)
                             if isinstance(x, dict) and x.get("name") == k]
                    if not named:
                        raise MmbertError(f"{source} {item!r}: no list item named {k!r}")
                    idx = named[0]
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                if last:
                    node[k] = value
                else:
                    if node.get(k) is None:
                        node[k] = {}
                    node = node[k]
            else:
                raise MmbertError(f"{source} {item!r}: {'.'.join(keys[:depth])} is not a mapping "
                                  f"or list")
    return d


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe, apply ``--set`` overrides, validate; errors name the file and field."""
    import yaml

    from mmbert.outputs import read_mapping

    d = read_mapping(path, "a YAML recipe with 'shards' and 'phases' (see configs/)", fmt="YAML",
                     loads=yaml.safe_load, errors=(yaml.YAMLError,),
                     missing="no such recipe file")
    d = apply_overrides(d, list(overrides))
    return recipe_from_dict(d, source=str(path))
