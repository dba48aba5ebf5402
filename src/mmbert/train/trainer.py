"""The pre-training loop: phases, decay variants, exact resume.

``pretrain(recipe, out_dir)`` runs the recipe's phases in sequence in RUN_DIR (the "trunk"); if
the last phase declares ``variants``, each variant runs that phase from the trunk's last
phase-end checkpoint into RUN_DIR/variants/<name>/. Between phases the data mixture, mask ratio,
sequence length and RoPE thetas change; the optimizer keeps its moments unless the phase says
``reset_optimizer``.

One optimizer step = a global batch of ``S(t)`` micro-batches of ``micro_batch_tokens``, each
from its own *data slot* (:mod:`mmbert.train.slots`): slot ``s`` is an ``MLMLoader(rank=s,
world_size=S)``, and rank ``r`` of ``W`` runs slots ``r, r + W, ...`` one after the other
(gradient accumulation). The data of a step depends on the recipe alone, not on how the slots
are split between ranks and accumulation: 2 ranks x 1 micro-batch see exactly the batch 1 rank x
2 micro-batches sees, and a run resumes on another number of ranks (or under the other
``distributed`` strategy) with the same data order.

The loss of a step is (sum of token losses over the global batch) / (masked tokens in the global
batch): token counts are all-reduced before the forward passes, so every micro-batch's loss is
scaled to its share of that mean, whatever the split.

RUN_DIR layout::

    recipe.json            the resolved recipe (a resume must match it)
    tokenizer/             copy of the recipe's tokenizer (exports take it from here)
    metrics.jsonl          one line per step: loss, lr, tokens, tokens/s, per-language loss
                           (records.StepRecord)
    checkpoints/step-*/    see checkpoint.py; phase ends are kept forever
    export/<phase>/        HF directory (model + tokenizer) at the end of every trunk phase
    variants/<name>/       the same (metrics.jsonl, checkpoints/, export/) per decay variant
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mmbert.config import IGNORE_INDEX
from mmbert.recipe import PhaseConfig, Recipe, recipe_from_dict
from mmbert.errors import MmbertError
from mmbert.faults import kill_point
from mmbert.outputs import OutputDir, read_json, write_json
import mmbert.train.checkpoint as ckpt
from mmbert.train.distributed import (DistEnv, all_gather_objects, all_reduce_sum, barrier,
                                      broadcast_object, full_tensor, grad_sync, init_distributed,
                                      is_dtensor, shard_like, shutdown, wrap_model)
from mmbert.train.optim import build_optimizer, set_hparams
from mmbert.train.records import (METRICS, StepLog, StepRecord, TrainerRecord, TrainState,
                                  branch_label, read_trainer_record)
from mmbert.train.runlock import RunLock
from mmbert.train.schedule import lr_factor, phase_slots
from mmbert.train.slots import check_states, check_world_size, rank_slots, step_assignment


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------

@dataclass
class PhaseResult:
    """Where a finished phase (or decay variant) left its model."""

    name: str
    checkpoint: Path  # phase-end training checkpoint (model/ inside is an HF directory)
    export: Path | None  # HF directory with tokenizer, or None without a tokenizer
    step: int
    tokens: int  # total tokens seen by the model at the end of this phase
    loss: float | None  # mean loss over the phase's last 10 steps (None if not run now)


@dataclass
class RunResult:
    run_dir: Path
    phases: list[PhaseResult] = field(default_factory=list)  # trunk phases, in order
    variants: dict[str, PhaseResult] = field(default_factory=dict)
    wall_s: float = 0.0
    tokens_per_s: float = 0.0  # mean over the steps run by this call


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. ``auto`` picks bf16 only where it is fast: CUDA
    GPUs with bf16, CPUs with AMX or AVX512-BF16 (elsewhere CPU bf16 matmuls are emulated and
    far slower than fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def data_seed(seed: int, phase: str, variant: str | None) -> int:
    """A loader seed per (recipe seed, phase, variant), stable across Python versions."""
    h = hashlib.sha256(f"{seed}/{phase}/{variant or ''}".encode()).hexdigest()
    return int(h[:8], 16)


def _recipe_key(d: dict[str, Any]) -> dict[str, Any]:
    """What must not change on resume (locations, cadence, logging, the non-finite policy and
    the data-parallel strategy may: a run stopped by a NaN is resumed with ``on_nonfinite:
    skip`` or ``rollback``; checkpoints hold full tensors, so DDP and FSDP2 read each other's)."""
    return {k: v for k, v in d.items()
            if k not in ("shards", "tokenizer", "checkpoint", "log", "on_nonfinite",
                         "distributed")}


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path}: {a!r} in the run, {b!r} now"


# Test hook: make the loss (``STEP``) or one gradient (``STEP:grad``) NaN/inf the first time this
# process computes step STEP; a comma-separated list for several steps.
FAULT_NONFINITE_ENV = "MMBERT_FAULT_NONFINITE"
# stop anyway after this many non-finite steps with no checkpoint written in between (a run that
# keeps skipping, or keeps rolling back to the same checkpoint, is not getting anywhere)
MAX_NONFINITE = 5


def _fault_steps() -> dict[int, str]:
    """{step: "loss" | "grad"} from ``MMBERT_FAULT_NONFINITE`` (empty when unset)."""
    spec = os.environ.get(FAULT_NONFINITE_ENV, "").strip()
    out: dict[int, str] = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        step, _, kind = item.partition(":")
        if not step.isdigit() or kind not in ("", "loss", "grad"):
            raise MmbertError(f"{FAULT_NONFINITE_ENV} = {spec!r}: expected STEP[:loss|:grad], "
                              f"comma-separated")
        out[int(step)] = kind or "loss"
    return out


def _poison_grad(params: Any) -> None:
    """Fault injection: +inf into the first element of the first gradient."""
    for p in params:
        if p.grad is not None:
            g = p.grad.to_local() if is_dtensor(p.grad) else p.grad
            if g.numel():
                g.view(-1)[0] = math.inf
                return


# ---------------------------------------------------------------------------------------------
# Pre-flight: everything that can be wrong with the input is checked before any training
# ---------------------------------------------------------------------------------------------

@dataclass
class Prepared:
    languages: dict[tuple[int, str | None], list[str]]  # (phase index, variant) -> codes
    tokenizer: Any | None
    vocab_size: int | None
    special_ids: dict[str, int]
    shard_vocab_size: int = 0
    replay: dict[tuple[int, str | None], list[str]] = field(default_factory=dict)


def _resolve_languages(shardset: Any, spec: Any, where: str, manifest: Path) -> list[str]:
    from mmbert.data.sampler import select_languages

    have = list(shardset.languages)
    if isinstance(spec, tuple):
        missing = [c for c in spec if c not in have]
        if missing:
            raise MmbertError(f"{where}: language {missing[0]!r} is not in {manifest} "
                              f"({len(have)} languages there"
                              + (f", {len(missing)} missing)" if len(missing) > 1 else ")"))
        spec = list(spec)
    elif isinstance(spec, int) and spec > len(have):
        raise MmbertError(f"{where} = {spec}: top-k larger than the {len(have)} languages in "
                          f"{manifest}")
    try:
        langs = list(select_languages(shardset, spec))
    except MmbertError as e:
        raise MmbertError(f"{where}: {e}") from None
    if not langs:
        raise MmbertError(f"{where}: selects no language from {manifest}")
    return langs


def _phase_languages(shardset: Any, phase: PhaseConfig, where: str,
                     manifest: Path) -> tuple[list[str], list[str]]:
    """(every language the phase draws from, the replay ones among them): the phase's
    languages, then its replay languages not among those."""
    langs = _resolve_languages(shardset, phase.languages, f"{where}.languages", manifest)
    if phase.replay_languages is None:
        return langs, []
    replay = [lang for lang in _resolve_languages(shardset, phase.replay_languages,
                                                  f"{where}.replay_languages", manifest)
              if lang not in set(langs)]
    return langs + replay, replay


def prepare(recipe: Recipe, variant: str | None = None) -> Prepared:
    """Check shards, languages, tokenizer and variant names; raise MmbertError on bad input."""
    from mmbert.data.shards import MANIFEST, ShardSet

    shards = Path(recipe.shards)
    manifest = shards / MANIFEST
    if not manifest.is_file():
        raise MmbertError(f"{recipe.source}: shards = {recipe.shards!r}: no {manifest}; expected a "
                          f"directory written by `mmbert data prepare`")
    if variant is not None and variant not in recipe.variant_names:
        raise MmbertError(f"--variant {variant!r}: not a variant of {recipe.source}; expected one "
                          f"of {list(recipe.variant_names)}")
    shardset = ShardSet(shards, split="train")
    langs: dict[tuple[int, str | None], list[str]] = {}
    replay: dict[tuple[int, str | None], list[str]] = {}
    for i, ph in enumerate(recipe.phases):
        where = f"{recipe.source}: phases[{i}]"
        for j, v in enumerate(ph.variants or [None]):
            key, phase = (i, v.name if v else None), ph.variant(v.name) if v else ph
            langs[key], replay[key] = _phase_languages(
                shardset, phase, f"{where}.variants[{j}]" if v else where, manifest)
    # the quick corruption check of every shard the run reads, before anything is written
    shardset.check(sorted({x for d in (langs, replay) for ls in d.values() for x in ls}))
    tok = None
    vocab = None
    special: dict[str, int] = {}
    if recipe.tokenizer:
        from mmbert.tokenizer import load_tokenizer

        tok = load_tokenizer(recipe.tokenizer)
        vocab = tok.vocab_size
        special = dict(pad_token_id=tok.pad_id, bos_token_id=tok.bos_id, cls_token_id=tok.bos_id,
                       eos_token_id=tok.eos_id, sep_token_id=tok.eos_id, mask_token_id=tok.mask_id)
    try:
        mcfg = recipe.model_config(vocab, **special)
    except MmbertError as e:
        raise MmbertError(f"{recipe.source}: model: {e}") from None
    if shardset.vocab_size > mcfg.vocab_size:
        raise MmbertError(f"{manifest}: vocab_size {shardset.vocab_size} is larger than the "
                          f"model's {mcfg.vocab_size}; expected shards made with the recipe's "
                          f"tokenizer")
    shard_fp = shardset.record.tokenizer.fingerprint
    if tok is not None and shard_fp and shard_fp != tok.fingerprint():
        raise MmbertError(f"{manifest}: shards were made with another tokenizer ({shard_fp}) "
                          f"than {recipe.tokenizer} ({tok.fingerprint()}); expected the same")
    return Prepared(langs, tok, vocab, special, shardset.vocab_size, replay)


# ---------------------------------------------------------------------------------------------
# Model / optimizer state in and out (works for plain, DDP and FSDP2 models)
# ---------------------------------------------------------------------------------------------

def load_model_weights(raw: torch.nn.Module, model_dir: Path) -> None:
    """Copy weights from an HF directory written by us into ``raw`` (sharded or not)."""
    from safetensors.torch import load_file

    f = model_dir / "model.safetensors"
    tensors = load_file(str(f))
    with torch.no_grad():
        for name, p in raw.named_parameters():
            if name not in tensors:
                raise MmbertError(f"{f}: tensor {name} missing")
            src = tensors[name]
            if is_dtensor(p):
                p.to_local().copy_(shard_like(src, p).to_local())
            else:
                p.copy_(src)


def optimizer_state(raw: torch.nn.Module, opt: torch.optim.Optimizer, keep: bool = True
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Full (gathered) optimizer moments keyed by parameter name, and JSON metadata.
    Sharded moments are gathered one at a time (a collective: every rank calls this); with
    ``keep=False`` (the ranks that do not write) each is dropped as soon as it is gathered,
    so no rank holds all full moments in device memory."""
    tensors: dict[str, torch.Tensor] = {}
    steps: dict[str, int] = {}
    for name, p in raw.named_parameters():
        st = opt.state.get(p)
        if not st:
            continue
        steps[name] = int(st["step"])
        for k in ("exp_avg", "exp_avg_sq"):
            full = full_tensor(st[k])
            if keep:
                tensors[f"{name}.{k}"] = full.cpu() if is_dtensor(st[k]) else full
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return tensors, {"steps": steps, "groups": groups}


def load_optimizer_state(raw: torch.nn.Module, opt: torch.optim.Optimizer,
                         tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    opt.state.clear()
    for name, p in raw.named_parameters():
        if name not in meta["steps"]:
            continue
        opt.state[p] = {"step": int(meta["steps"][name]),
                        "exp_avg": shard_like(tensors[f"{name}.exp_avg"], p),
                        "exp_avg_sq": shard_like(tensors[f"{name}.exp_avg_sq"], p)}


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------

def _initial_model(recipe: Recipe, prep: Any) -> Any:
    """A fresh MaskedLM from the recipe's preset, or the weights ``model.init_from`` names: a
    MaskedLM directory or a Composer/FlexBERT checkpoint (with ``model.init_config``)."""
    from mmbert.model import MaskedLM

    spec = recipe.model
    if not spec.init_from:
        return MaskedLM(recipe.model_config(prep.vocab_size, **prep.special_ids))
    init = Path(spec.init_from)
    if spec.init_config:
        from mmbert.composer import composer_model

        return composer_model(init, spec.init_config, tokenizer=recipe.tokenizer)
    if not (init / "config.json").is_file():
        raise MmbertError(f"{recipe.source}: model.init_from = {str(init)!r}: no config.json "
                          "there; expected a MaskedLM directory or a Composer checkpoint (.pt)")
    return MaskedLM.from_pretrained(init)


class Trainer:
    """Holds the model, optimizer and run directory; runs phases and writes checkpoints."""

    def __init__(self, recipe: Recipe, prep: Prepared, run_dir: Path, env: DistEnv,
                 log: Callable[[str], None]):
        self.recipe, self.prep, self.run_dir, self.env, self.log = recipe, prep, run_dir, env, log
        self.autocast_dtype = resolve_precision(recipe.precision, env.device)
        torch.manual_seed(recipe.seed)
        random.seed(recipe.seed)
        np.random.seed(recipe.seed % 2**32)
        self.raw = _initial_model(recipe, prep)
        self.raw.to(env.device)
        if prep.shard_vocab_size > self.raw.config.vocab_size:
            raise MmbertError(f"{recipe.source}: the model's vocab_size "
                              f"{self.raw.config.vocab_size} is smaller than the shards' "
                              f"{prep.shard_vocab_size}; expected the model of the tokenizer "
                              f"that made the shards")
        self.model = wrap_model(self.raw, env, recipe.distributed)
        first = recipe.phases[0]
        self.opt = build_optimizer(self.raw, recipe.optimizer.name, first.lr,
                                   recipe.optimizer.betas, recipe.optimizer.eps,
                                   first.weight_decay)
        self.tb = None
        self._full_model_state: dict[str, torch.Tensor] | None = None  # FSDP2 saves only
        self.steps_run = 0
        self.tokens_run = 0
        self.time_run = 0.0
        self.faults = _fault_steps()
        self.nonfinite_strikes = 0  # non-finite steps since the last checkpoint was written

    # -- checkpoints --------------------------------------------------------------------------
    def _write_model(self, path: Path) -> None:
        if not any(is_dtensor(p) for p in self.raw.parameters()):
            self.raw.save_pretrained(path)
            return
        from mmbert.model import MaskedLM

        with torch.device("meta"):
            shadow = MaskedLM(self.raw.config, init=False)
        shadow.to_empty(device="cpu")
        shadow.tie_weights()
        shadow.load_state_dict(self._full_model_state, strict=False)
        shadow.save_pretrained(path)

    def save(self, root: Path, state: TrainState, loaders: dict[int, Any], *, phase_end: bool,
             phase: PhaseConfig, variant: str | None) -> Path:
        """Collective: every rank calls it; rank 0 writes."""
        if any(is_dtensor(p) for p in self.raw.parameters()):
            # every rank gathers every tensor (collectives, in order); rank 0 alone keeps them
            full = ((k, full_tensor(v)) for k, v in self.raw.state_dict().items())
            self._full_model_state = {k: v.cpu() for k, v in full if self.env.is_main}
        tensors, meta = optimizer_state(self.raw, self.opt, keep=self.env.is_main)
        mine = {"rng": ckpt.rng_state(),
                "data": {str(s): ld.state_dict() for s, ld in loaders.items()}}
        gathered = all_gather_objects(mine, self.env)
        path = root / ckpt.step_dir_name(state.step)
        if self.env.is_main:
            data: dict[str, Any] = {}
            for g in gathered:
                data.update(g["data"])
            record = TrainerRecord(
                state, phase.name, variant, phase_end, self.env.world_size, data,
                str(self.run_dir / "tokenizer") if self.prep.tokenizer else None)
            path = ckpt.write_checkpoint(root, state.step, write_model=self._write_model,
                                         optim_tensors=tensors, optim_meta=meta,
                                         trainer_state=record.to_json(),
                                         rank_states=[{"rng": g["rng"]} for g in gathered],
                                         keep_last=self.recipe.checkpoint.keep_last)
        self._full_model_state = None
        self.nonfinite_strikes = 0
        barrier(self.env)
        return path

    def restore(self, c: ckpt.Checkpoint, *, rng: bool) -> TrainState:
        """Weights and optimizer from ``c`` (and this rank's RNG when ``rng``)."""
        load_model_weights(self.raw, c.model_dir)
        load_optimizer_state(self.raw, self.opt, c.optim_tensors, c.optim_meta)
        rec = c.record
        if rng:
            same_world = rec.world_size == self.env.world_size
            if same_world and self.env.rank < len(c.rank_states):
                ckpt.set_rng_state(c.rank_states[self.env.rank]["rng"])
            else:
                self.log(f"note: {c.path} was written by {rec.world_size} rank(s), "
                         f"resuming on {self.env.world_size}: data order is kept, RNG streams "
                         f"(dropout) are re-seeded")
                torch.manual_seed(self.recipe.seed + 7919 * (rec.state.step + self.env.rank))
        return rec.state

    def export(self, checkpoint_dir: Path, out: Path) -> Path | None:
        if not self.env.is_main:
            return None
        tok = self.run_dir / "tokenizer" if self.prep.tokenizer else None
        return export(checkpoint_dir, out, tokenizer=tok, verify=False, overwrite=True)

    # -- one phase ----------------------------------------------------------------------------
    def make_loaders(self, phase: PhaseConfig, langs: list[str], seed: int,
                     states: dict[str, Any] | None, replay: list[str] = ()) -> dict[int, Any]:
        """This rank's data slots of ``phase`` (:mod:`mmbert.train.slots`), each continuing
        from its state in ``states`` (a checkpoint's ``data``, written on any number of
        ranks) when given."""
        from mmbert.data.loader import MLMLoader

        if states is not None:
            check_states(states, phase, f"resume: phase {phase.name!r}")
        loaders = {}
        for slot in rank_slots(phase, self.env.world_size, self.env.rank):
            ld = MLMLoader(self.recipe.shards, languages=langs, tau=phase.tau,
                           seq_len=phase.seq_len, batch_tokens=phase.micro_batch_tokens,
                           mask_ratio=phase.mask_ratio, seed=seed, rank=slot,
                           world_size=phase_slots(phase), replay=replay,
                           replay_share=phase.replay_share)
            if states is not None:
                ld.load_state_dict(states[str(slot)])
            loaders[slot] = ld
        return loaders

    def next_batches(self, phase: PhaseConfig, t: int, loaders: dict[int, Any]
                     ) -> tuple[list[Any], int, int]:
        """The step at phase position ``t`` on this rank: its batches in pass order (padding
        batches after the real ones), the number of real ones, and the step's slots."""
        plan = step_assignment(phase, t, self.env.world_size, self.env.rank)
        batches = [next(loaders[s]) for s in plan.mine]
        pad = [next(iter(loaders.values())).padding_batch()] * plan.padding
        return batches + pad, len(plan.mine), plan.total

    def run_phase(self, pi: int, phase: PhaseConfig, variant: str | None, state: TrainState,
                  data_states: dict[str, Any] | None, root: Path, metrics: StepLog | None,
                  bar: Any) -> tuple[TrainState, Path, list[float]]:
        env = self.env
        langs = self.prep.languages[(pi, variant)]
        self.raw.set_rope_theta(phase.global_rope_theta, phase.local_rope_theta)
        if phase.reset_optimizer and state.phase_tokens == 0:
            self.opt.state.clear()
        loaders = self.make_loaders(phase, langs, data_seed(self.recipe.seed, phase.name, variant),
                                    data_states, self.prep.replay.get((pi, variant), []))
        recent: list[float] = []
        self.model.train()
        amp = (torch.autocast(env.device.type, dtype=self.autocast_dtype)
               if self.autocast_dtype is not None else nullcontext())
        every = self.recipe.checkpoint.every_steps
        t_last = time.perf_counter()
        rolled_back_from: int | None = None
        while state.phase_tokens < phase.tokens:
            batches, real, n = self.next_batches(phase, state.phase_tokens, loaders)
            counts = torch.tensor([sum(int((b.labels != IGNORE_INDEX).sum()) for b in batches),
                                   sum(int(b.input_ids.numel()) for b in batches[:real])],
                                  dtype=torch.float64)
            all_reduce_sum(counts, env)
            masked, step_tokens = int(counts[0]), int(counts[1])
            factor = lr_factor(phase, state.phase_tokens + step_tokens / 2)
            set_hparams(self.opt, phase.lr * factor, factor, phase.weight_decay)
            lang_stats, gnorm, bad = self._step(batches, masked, len(langs), phase.grad_clip,
                                                amp, self.faults.pop(state.step + 1, None))
            step_loss = float(lang_stats[0].sum() / max(masked, 1))
            if bad is not None:
                action = self._nonfinite(state.step + 1, bad, step_loss, gnorm, phase, variant,
                                         root)
                if action == "rollback":
                    bad_step, state = state.step + 1, self._rollback(pi, phase, root)
                    if metrics is not None:
                        metrics.rewind(state.step)
                    rolled_back_from, t_last = bad_step, time.perf_counter()
                    continue
            state.step += 1
            kill_point(f"step:{state.step}")
            state.phase_steps += 1
            state.phase_tokens += step_tokens
            state.tokens += step_tokens
            now = time.perf_counter()
            dt, t_last = now - t_last, now
            self.steps_run += 1
            self.tokens_run += step_tokens
            self.time_run += dt
            if bad is None:
                recent = (recent + [step_loss])[-10:]
            if env.is_main:
                per_lang = {langs[i]: float(lang_stats[0, i] / lang_stats[1, i])
                            for i in range(len(langs)) if lang_stats[1, i] > 0}
                self._log_step(metrics, bar, StepRecord(
                    state.step, phase.name, variant, state.tokens, state.phase_tokens,
                    step_loss, phase.lr * factor, gnorm, step_tokens, masked, n,
                    step_tokens / max(dt, 1e-9), per_lang,
                    "skip" if bad else "rollback" if rolled_back_from else None,
                    rolled_back_from))
            rolled_back_from = None
            done = state.phase_tokens >= phase.tokens
            if state.step % every == 0 and not done:
                self.save(root, state, loaders, phase_end=False, phase=phase, variant=variant)
                t_last = time.perf_counter()  # checkpoint time is not training throughput
        end_state = TrainState(state.step, state.tokens, pi + 1, 0, 0)
        path = self.save(root, end_state, {}, phase_end=True, phase=phase, variant=variant)
        return end_state, path, recent

    # -- non-finite steps ---------------------------------------------------------------------
    def _nonfinite(self, step: int, what: str, loss: float, gnorm: float, phase: PhaseConfig,
                   variant: str | None, root: Path) -> str:
        """The recipe's answer to a non-finite ``step`` ("skip" or "rollback"); MmbertError for
        ``stop`` and after MAX_NONFINITE non-finite steps without a checkpoint in between."""
        policy = self.recipe.on_nonfinite
        self.nonfinite_strikes += 1
        detail = (f"step {step} ({branch_label(phase.name, variant)}): non-finite {what} "
                  f"(loss {loss}, gradient norm {gnorm})")
        if policy == "stop" or self.nonfinite_strikes > MAX_NONFINITE:
            why = ("on_nonfinite: stop" if policy == "stop" else
                   f"{MAX_NONFINITE} non-finite steps since the last checkpoint "
                   f"(on_nonfinite: {policy})")
            newest = ckpt.list_checkpoints(root)
            raise MmbertError(f"{detail}; stopped ({why}) before the update, newest checkpoint "
                              f"{newest[-1] if newest else 'none yet'} left intact; resume with "
                              f"--resume, on_nonfinite: skip | rollback to go past it")
        self.log(f"warning: {detail}; " + ("update skipped" if policy == "skip" else
                                           "rolling back to the newest checkpoint"))
        return policy

    def _rollback(self, pi: int, phase: PhaseConfig, root: Path) -> TrainState:
        """Weights, optimizer, RNG and schedule position from the newest intact checkpoint of
        this phase under ``root``; the data loaders are left where they are."""
        c = _latest(root, self.env, self.log)
        if c is None or c.record.state.phase_index != pi:
            raise MmbertError(f"on_nonfinite: rollback: no checkpoint of phase {phase.name!r} "
                              f"under {root} to go back to; expected one written by "
                              f"checkpoint.every_steps (or the previous phase's end)")
        state = self.restore(c, rng=True)
        if phase.reset_optimizer and state.phase_tokens == 0:
            self.opt.state.clear()
        self.log(f"rolled back to {c.path} (step {state.step}); training continues on the "
                 f"next batches")
        return state

    def _step(self, batches: list[Any], masked: int, n_lang: int, grad_clip: float,
              amp: Any, fault: str | None = None) -> tuple[torch.Tensor, float, str | None]:
        """One optimizer step over the micro-batches (gradients synchronised on the last):
        per-language (loss sums, token counts) over all ranks, the gradient norm, and what was
        non-finite ("loss" or "gradient", the same on every rank; None: the step was taken).
        ``fault``: the test hook's "loss" or "grad" to poison."""
        env, W, n = self.env, self.env.world_size, len(batches)
        lang_stats = torch.zeros(2, n_lang, dtype=torch.float64)  # loss sums, token counts
        for a, b in enumerate(batches):
            dev = env.device
            with grad_sync(self.model, a == n - 1), amp:
                out = self.model(b.input_ids.to(dev), cu_seqlens=b.cu_seqlens.to(dev),
                                 max_seqlen=b.max_seqlen, position_ids=b.position_ids.to(dev),
                                 labels=b.labels.to(dev))
                loss = out.token_loss.sum() * (W / max(masked, 1))
                if fault == "loss":
                    loss = loss * math.nan
            loss.backward()
            tl = out.token_loss.detach().to("cpu", torch.float64)
            li = b.lang_ids.reshape(-1)[out.predict_positions.to("cpu")]
            lang_stats[0].index_add_(0, li, tl * math.nan if fault == "loss" else tl)
            lang_stats[1].index_add_(0, li, torch.ones_like(tl))
        if fault == "grad":
            _poison_grad(self.raw.parameters())
        max_norm = grad_clip if grad_clip > 0 else math.inf
        gnorm = torch.nn.utils.clip_grad_norm_(self.raw.parameters(), max_norm)
        gnorm = float(full_tensor(gnorm)) if is_dtensor(gnorm) else float(gnorm)
        # one all-reduce for the statistics and the ranks' verdicts on their gradient norms
        flat = torch.cat([lang_stats.reshape(-1),
                          torch.tensor([0.0 if math.isfinite(gnorm) else 1.0],
                                       dtype=torch.float64)])
        all_reduce_sum(flat, env)
        lang_stats = flat[:-1].reshape(2, n_lang)
        bad = ("loss" if not math.isfinite(float(lang_stats[0].sum())) else
               "gradient" if flat[-1] > 0 else None)
        if bad is None:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return lang_stats, gnorm, bad

    def _log_step(self, metrics: StepLog, bar: Any, rec: StepRecord) -> None:
        """Main rank: one metrics.jsonl record, TensorBoard scalars and the progress bar."""
        written = metrics.write(rec)
        if self.tb is not None and rec.nonfinite != "skip":
            self.tb.add_scalar("loss", rec.loss, rec.tokens)
            self.tb.add_scalar("lr", rec.lr, rec.tokens)
            self.tb.add_scalars(f"lang_loss/{rec.label}", written["lang_loss"], rec.tokens)
        bar.set_description(rec.label, refresh=False)
        bar.update(rec.batch_tokens)
        if rec.step % self.recipe.log.every_steps == 0:
            bar.set_postfix(step=rec.step, loss=f"{rec.loss:.3f}",
                            tok_s=f"{rec.tokens_per_s:.0f}", refresh=False)


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------

def export(checkpoint_dir: str | Path, out: str | Path, tokenizer: str | Path | None = None, *,
           verify: bool = True, overwrite: bool = False) -> Path:
    """Write an HF directory (config.json, model.safetensors, tokenizer files) from a training
    checkpoint (or a run directory: its newest intact checkpoint). ``out`` is an output
    directory (:class:`mmbert.outputs.OutputDir`)."""
    od = OutputDir(out, overwrite=overwrite)
    od.check()
    src = ckpt.resolve(checkpoint_dir)
    if verify:
        ckpt.verify(src)
    if tokenizer is None:
        try:
            tokenizer = read_trainer_record(src).tokenizer
        except MmbertError:
            tokenizer = None
    if tokenizer is not None and not Path(tokenizer).exists():
        raise MmbertError(f"{src}: its tokenizer {tokenizer} no longer exists; pass --tokenizer")
    with od as tmp:
        for f in ("config.json", "model.safetensors"):
            shutil.copyfile(src / "model" / f, tmp / f)
        if tokenizer is not None:
            from mmbert.tokenizer import load_tokenizer

            load_tokenizer(tokenizer).save(tmp)
    return Path(out)


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------

def _log_main(env: DistEnv) -> Callable[[str], None]:
    def log(msg: str) -> None:
        if env.is_main:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)
    return log


def _phase_result(path: Path, export_dir: Path | None, loss: list[float] | None) -> PhaseResult:
    t = read_trainer_record(path)
    return PhaseResult(t.label, path, export_dir if export_dir and export_dir.exists() else None,
                       t.state.step, t.state.tokens, float(np.mean(loss)) if loss else None)


def _phase_end_checkpoints(root: Path) -> dict[int, Path]:
    """phase index -> phase-end checkpoint (intact ones only) under ``root``."""
    out = {}
    for p in ckpt.list_checkpoints(root):
        try:
            t = read_trainer_record(p)
        except MmbertError:
            continue
        if t.phase_end:
            try:
                ckpt.verify(p)
            except MmbertError:
                continue
            out[t.state.phase_index - 1] = p
    return out


def pretrain(recipe: Recipe, out_dir: str | Path, resume: bool = False,
             variant: str | None = None, *, log: Callable[[str], None] | None = None) -> RunResult:
    """Run (or resume) the recipe into ``out_dir``; see the module docstring.

    ``variant``: run only this decay variant (after the trunk). Under torchrun every rank calls
    this; the result is complete on rank 0.
    """
    t_start = time.perf_counter()
    env = init_distributed()
    log = log or _log_main(env)
    try:
        result = _pretrain(recipe, Path(out_dir), resume, variant, env, log, t_start)
        barrier(env)  # every rank past its last collective before the group is destroyed
        return result
    finally:
        shutdown(env)


def _open_run_dir(recipe: Recipe, prep: Any, run_dir: Path, resume: bool) -> None:
    """Main rank: a fresh run directory, or a resumed one whose recipe.json matches; the
    tokenizer copied in; leftovers of interrupted checkpoint writes removed."""
    rj = run_dir / "recipe.json"
    if rj.exists() and not resume:
        raise MmbertError(f"{run_dir}: already holds a run; pass --resume to continue it or "
                          f"choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    if rj.exists():
        old = read_json(rj, "the run's recipe.json")
        a, b = _recipe_key(old), _recipe_key(recipe.to_dict())
        if a != b:
            raise MmbertError(f"--resume {run_dir}: the recipe differs from the run's "
                              f"recipe.json at {_first_difference(a, b)}; expected the same "
                              f"recipe (only shards/tokenizer paths, checkpoint, log, "
                              f"on_nonfinite and distributed may change)")
    else:
        write_json(rj, recipe.to_dict())
    if prep.tokenizer is not None:
        tok_dir = run_dir / "tokenizer"
        with OutputDir(tok_dir, overwrite=True) as tmp:
            prep.tokenizer.save(tmp)
    for root in [run_dir / "checkpoints"] + [run_dir / "variants" / v / "checkpoints"
                                             for v in recipe.variant_names]:
        ckpt.clean_temp(root)


def _tensorboard_writer(recipe: Recipe, env: DistEnv) -> Any:
    """TensorBoard's SummaryWriter class when the recipe asks for it (main rank), else None;
    checked before any work."""
    if not (recipe.log.tensorboard and env.is_main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MmbertError(f"{recipe.source}: log.tensorboard = true needs the tensorboard "
                          f"package; pip install 'mmbert[tensorboard]'") from None
    return SummaryWriter


def _log_start(trainer: "Trainer", recipe: Recipe, env: DistEnv,
               log: Callable[[str], None]) -> None:
    dt = trainer.autocast_dtype
    n = trainer.raw.num_parameters()
    log(f"pretrain {recipe.name}: {n / 1e6:.2f}M parameters, "
        f"{'bf16 autocast' if dt is not None else 'fp32'} on {env.device}, "
        f"{env.world_size} rank(s), {recipe.distributed if env.distributed else 'single'}")
    if dt is not None and env.device.type == "cpu" and not cpu_has_fast_bf16():
        log("warning: precision bf16 on a CPU without AMX/AVX512-BF16: bf16 matmuls are "
            "emulated there and much slower than fp32 (precision: auto picks fp32)")


@dataclass
class _Branch:
    """A line of training with its own checkpoints, metrics.jsonl and exports: the trunk (its
    phases in order) or one decay variant (the last phase, branching from the trunk's end)."""

    variant: str | None
    root: Path  # checkpoints
    metrics: Path
    phases: list[tuple[int, PhaseConfig, Path]]  # (phase index, phase, export directory)


def _latest(root: Path, env: DistEnv, log: Callable[[str], None]) -> ckpt.Checkpoint | None:
    """The newest intact checkpoint under ``root`` (found on the main rank, read on all)."""
    found = ckpt.find_latest_valid(root, log=log) if env.is_main else None
    found = broadcast_object(str(found) if found else None, env)
    return ckpt.read_checkpoint(Path(found), check=False) if found else None


def _run_branch(trainer: "Trainer", br: _Branch, state: TrainState, data_states: Any,
                resume_step: int | None, bar: Any) -> dict[int, tuple[Path, list[float]]]:
    """Train ``br``'s phases from ``state``, exporting each phase end: {phase index: (phase-end
    checkpoint, losses)}. ``resume_step``: metrics.jsonl lines after it are dropped."""
    env = trainer.env
    metrics = StepLog(br.metrics, resume_step) if env.is_main else None
    out = {}
    try:
        for pi, phase, export_dir in br.phases:
            state, path, loss = trainer.run_phase(pi, phase, br.variant, state, data_states,
                                                  br.root, metrics, bar)
            kill_point(f"phase-end:{branch_label(phase.name, br.variant)}")
            data_states = None
            trainer.export(path, export_dir)
            barrier(env)
            out[pi] = (path, loss)
    finally:
        if metrics is not None:
            metrics.close()
    return out


def _export_missing(trainer: "Trainer", root: Path, exports: dict[int, Path]) -> None:
    """Main rank, on resume: export the finished phases (phase index -> export directory)
    whose export is missing: a run killed after a phase-end checkpoint and before (or during)
    its export resumes after that phase, so the export is written here from its checkpoint."""
    if all(out.exists() for out in exports.values()):
        return
    ends = _phase_end_checkpoints(root)
    for pi, out in exports.items():
        if not out.exists() and pi in ends:
            trainer.export(ends[pi], out)


def _run_trunk(trainer: "Trainer", recipe: Recipe, run_dir: Path, resume: bool, bar: Any,
               log: Callable[[str], None]) -> list[PhaseResult]:
    """The trunk's phases (resumed from its newest checkpoint), one result per phase."""
    env, trunk, root = trainer.env, recipe.trunk, run_dir / "checkpoints"
    state, data_states, resume_step = TrainState(), None, None
    c = _latest(root, env, log) if resume else None
    if c is not None:  # the RNG matters only when training continues from it
        state = trainer.restore(c, rng=c.record.state.phase_index < len(trunk))
        data_states = c.record.data or None
        resume_step = state.step
        log(f"resumed from {c.path} (step {state.step}, {state.tokens:,} tokens)")
    if env.is_main:
        bar.update(sum(p.tokens for p in trunk[:state.phase_index]) + state.phase_tokens)
        _export_missing(trainer, root, {pi: run_dir / "export" / trunk[pi].name
                                        for pi in range(state.phase_index)})
    br = _Branch(None, root, run_dir / METRICS,
                 [(pi, trunk[pi], run_dir / "export" / trunk[pi].name)
                  for pi in range(state.phase_index, len(trunk))])
    losses = {pi: loss for pi, (_, loss) in
              _run_branch(trainer, br, state, data_states, resume_step, bar).items()}
    ends = broadcast_object(_phase_end_checkpoints(root) if env.is_main else None, env)
    return [_phase_result(ends[pi], run_dir / "export" / phase.name, losses.get(pi))
            for pi, phase in enumerate(trunk)]


def _run_variant(trainer: "Trainer", recipe: Recipe, run_dir: Path, name: str,
                 branch: ckpt.Checkpoint, resume: bool, bar: Any,
                 log: Callable[[str], None]) -> PhaseResult:
    """One decay variant: the last phase with the variant's mix, from the trunk's end
    (``branch``), or resumed from its own newest checkpoint; skipped when already finished."""
    env, pi = trainer.env, len(recipe.phases) - 1
    vdir = run_dir / "variants" / name
    if env.is_main:
        vdir.mkdir(parents=True, exist_ok=True)
    barrier(env)
    done = broadcast_object(_phase_end_checkpoints(vdir / "checkpoints") if env.is_main
                            else None, env)
    if pi in done:  # finished earlier
        if env.is_main:
            bar.update(recipe.phases[-1].tokens)
            _export_missing(trainer, vdir / "checkpoints", {pi: vdir / "export"})
        return _phase_result(done[pi], vdir / "export", None)
    c = _latest(vdir / "checkpoints", env, log) if resume else None
    if c is not None:
        state = trainer.restore(c, rng=True)
        data_states = c.record.data or None
        log(f"resumed variant {name} from {c.path} (step {state.step})")
    else:
        state, data_states = trainer.restore(branch, rng=False), None
        torch.manual_seed(data_seed(recipe.seed, "variant", name) + env.rank)
    if env.is_main:
        bar.update(state.phase_tokens)
    br = _Branch(name, vdir / "checkpoints", vdir / METRICS,
                 [(pi, recipe.phases[-1].variant(name), vdir / "export")])
    path, loss = _run_branch(trainer, br, state, data_states,
                             state.step if c is not None else None, bar)[pi]
    return _phase_result(path, vdir / "export", loss)


def _pretrain(recipe: Recipe, run_dir: Path, resume: bool, variant: str | None, env: DistEnv,
              log: Callable[[str], None], t_start: float) -> RunResult:
    prep = prepare(recipe, variant)
    check_world_size([(f"{recipe.source}: phases[{i}] ({ph.name})", ph)
                      for i, ph in enumerate(recipe.phases)], env.world_size)
    writer_cls = _tensorboard_writer(recipe, env)
    with RunLock(run_dir, log) if env.is_main else nullcontext():  # rank 0 alone writes there
        return _pretrain_locked(recipe, prep, writer_cls, run_dir, resume, variant, env, log,
                                t_start)


def _pretrain_locked(recipe: Recipe, prep: Prepared, writer_cls: Any, run_dir: Path,
                     resume: bool, variant: str | None, env: DistEnv,
                     log: Callable[[str], None], t_start: float) -> RunResult:
    from tqdm import tqdm

    if env.is_main:
        _open_run_dir(recipe, prep, run_dir, resume)
    barrier(env)
    trainer = Trainer(recipe, prep, run_dir, env, log)
    if env.is_main:
        _log_start(trainer, recipe, env, log)
    if writer_cls is not None:
        trainer.tb = writer_cls(str(run_dir / "tensorboard"))

    result = RunResult(run_dir)
    variants = [v for v in recipe.variant_names if variant is None or v == variant]
    total = sum(p.tokens for p in recipe.trunk) + len(variants) * recipe.phases[-1].tokens
    bar = tqdm(total=total, unit="tok", unit_scale=True, disable=not env.is_main,
               dynamic_ncols=True, file=sys.stderr, mininterval=1.0)
    try:  # closed on errors too, so that an error line starts on a line of its own
        result.phases = _run_trunk(trainer, recipe, run_dir, resume, bar, log)
        if variants:  # each from the trunk's last phase end
            branch = ckpt.read_checkpoint(result.phases[-1].checkpoint, check=False)
            for name in variants:
                result.variants[name] = _run_variant(trainer, recipe, run_dir, name, branch,
                                                     resume, bar, log)
    finally:
        bar.close()
    if trainer.tb is not None:
        trainer.tb.close()
    result.wall_s = time.perf_counter() - t_start
    result.tokens_per_s = trainer.tokens_run / trainer.time_run if trainer.time_run else 0.0
    if env.is_main:
        log(f"done: {trainer.steps_run} steps, {trainer.tokens_run:,} tokens in "
            f"{result.wall_s:.0f}s ({result.tokens_per_s:,.0f} tokens/s while training)")
    return result


def load_run_recipe(run_dir: str | Path) -> Recipe:
    """The recipe a run was started with (RUN_DIR/recipe.json)."""
    p = Path(run_dir) / "recipe.json"
    if not p.is_file():
        raise MmbertError(f"{run_dir}: no recipe.json; expected a run directory of "
                          f"`mmbert pretrain`")
    return recipe_from_dict(read_json(p, "the run's recipe.json"), source=str(p))
