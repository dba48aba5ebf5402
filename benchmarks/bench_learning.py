"""Learning benchmark: our trainer against a plain transformers training loop (same model, data).

    .venv/bin/python benchmarks/bench_learning.py --out runs/bench_learning [--tokens 300k]
    .venv/bin/python benchmarks/bench_learning.py --out runs/bench_learning --profile 40

Same model, same data: it must learn the same. Both sides:

* the ``tiny`` preset with the tokenizer's vocabulary, fp32, the same initial weights (ours built
  with the recipe's seed, written by our HF writer, loaded by ``ModernBertForMaskedLM``);
* phase 1 of configs/demo.yaml (seq 128, 1024-token steps of two 512-token micro-batches, lr 1e-3
  warmup-stable-decay with 5% warmup, 30% mask, tau 0.7; no decay in phase 1), on the top
  ``--languages`` languages of the shards, ``--tokens`` tokens in all;
* the same sequences and masks in the same order: the transformers loop iterates ``MLMLoader``
  with the data slots, seed and rank layout the trainer uses, every packed segment (document
  piece) becomes one right-padded row with an attention mask, labels -100 elsewhere;
* the same optimizer: ours runs with ``optimizer.name=adamw`` (StableAdamW's per-tensor update
  clipping off; the recipe allows it), transformers with ``torch.optim.AdamW``, same betas/eps,
  same no-decay groups (biases, norms, embeddings). Ours decays weights by ``wd * s`` (s = the LR
  schedule factor, Composer's convention), torch by ``lr * wd'``: ``wd' = wd / peak lr`` is the
  same decay. The LR of every step is ``lr * schedule.lr_factor`` at the step's token midpoint.

Ours is the real training path (``mmbert.train.trainer.pretrain``: packed rows with cu_seqlens,
sparse MLM prediction, metrics, per-language loss); transformers is what a user writes: padded
batch, dense decoder, ``outputs.loss`` (mean over masked tokens, the same global-batch mean as
ours since one forward takes the whole 1024-token step), ``AdamW``.

Held-out loss/accuracy: ``mmbert.evaluate.mlm.HeldoutMlm`` on the training languages (the mask
token at every scored position, same positions for both), macro-mean over languages, at
``--evals`` points; ours from its checkpoints, transformers' weights loaded into our MaskedLM
through ``save_pretrained`` (its final weights are also scored by transformers itself on the
same positions, as a cross-check of the scorer and the conversion).

Work: matmul FLOPs per step (forward + backward), ours' useful work (encoder on real tokens,
windowed attention, head on masked tokens) against what transformers executes (padded rows, dense
scores in every layer, head on every position): their ratio is the speedup ours would have at
transformers' FLOP/s, so it separates "less work" from "work done faster".

Wall time counts training steps only (data, forward, backward, optimizer; evaluation and
checkpoint writes excluded): ours from its metrics.jsonl (the trainer's own step clock),
transformers with a clock around each of its steps. The two sides run interleaved step by step in
one process, one thread count, so contention on a shared machine hits both alike: the trainer
calls ``Trainer.save`` after every step when ``checkpoint.every_steps`` is 1 and restarts its
step clock after that call; ``pretrain`` runs here with a ``Trainer`` subclass whose ``save``
runs one transformers step (and its evaluation) and writes real checkpoints only at the
evaluation steps. The trainer's numerics are untouched. Both sides get 3 untimed warm-up steps.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import shutil
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from mmbert.demo.pipeline import DEMO_VOCAB  # the demo tokenizer's size

REPO = Path(__file__).resolve().parents[1]
DEMO_RECIPE = REPO / "configs" / "demo.yaml"

# tests/conftest.py's demo subset: many scripts, the largest languages of the demo corpus
DEMO_LANGUAGES = [
    "eng_Latn", "fra_Latn", "deu_Latn", "spa_Latn", "tur_Latn", "vie_Latn", "isl_Latn",
    "fao_Latn", "swh_Latn", "rus_Cyrl", "ukr_Cyrl", "cmn_Hans", "jpn_Jpan", "kor_Hang",
    "arb_Arab", "pes_Arab", "hin_Deva", "ben_Beng", "tam_Taml", "tha_Thai", "ell_Grek",
    "heb_Hebr", "kat_Geor", "amh_Ethi",
]
LOSS_TOLERANCE = 0.02  # relative held-out loss difference allowed at equal tokens
SPEEDUP_TARGET = 2.0  # ours must reach the same held-out loss in at most half the wall time


# ---------------------------------------------------------------------------------------------
# Machine, data, recipe, initial weights
# ---------------------------------------------------------------------------------------------

def cpu_info() -> dict[str, Any]:
    """mmbert.bench's machine info plus the bf16 flags and the load when measured."""
    from mmbert.bench import machine_info

    info = machine_info(torch.device("cpu"))
    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        pass
    info["amx"] = " amx_bf16" in flags or " amx_tile" in flags
    info["avx512_bf16"] = " avx512_bf16" in flags
    info["cores"] = os.cpu_count()
    info["loadavg"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return info


def cpu_line(info: dict[str, Any]) -> str:
    return (f"CPU: {info['cpu']} ({info['cores']} cores, amx={'yes' if info['amx'] else 'no'}, "
            f"avx512_bf16={'yes' if info['avx512_bf16'] else 'no'}), {info['threads']} torch "
            f"thread(s), load {_fmt(info['loadavg'], '.1f')} at start, torch {info['torch']}, "
            f"transformers {info.get('transformers', '?')}, fp32")


def build_data(out: Path, languages: list[str], vocab: int) -> tuple[Path, Path]:
    """Demo corpus of ``languages`` -> BPE tokenizer (``vocab``) -> shards, as tests/conftest.py
    builds them; reused when already there (per vocabulary size)."""
    from mmbert.data.demo import fetch_demo
    from mmbert.data.shards import prepare
    from mmbert.tokenizer import train_tokenizer

    corpus, tok, shards = out / "corpus", out / f"tokenizer-{vocab}", out / f"shards-{vocab}"
    if not (corpus / "corpus.json").is_file():
        fetch_demo(corpus, languages=languages, force=True)
    if not (tok / "tokenizer.json").is_file():
        train_tokenizer(corpus, vocab, tok, languages=languages)
    if not (shards / "manifest.json").is_file():
        prepare(corpus, tok, shards, languages=languages, workers=1, progress=False)
    return shards, tok


def phase_recipe(shards: Path, tokenizer: Path, *, tokens: int, languages: int,
                 init_dir: Path | None = None, every_steps: int = 10**9,
                 extra: list[str] = ()) -> Any:
    """Phase 1 of configs/demo.yaml alone, fp32, plain AdamW (see the module docstring)."""
    import yaml

    from mmbert.recipe import apply_overrides, recipe_from_dict

    d = yaml.safe_load(DEMO_RECIPE.read_text(encoding="utf-8"))
    d["phases"] = d["phases"][:1]
    sets = [f"shards={shards}", f"tokenizer={tokenizer}", "precision=fp32",
            "optimizer.name=adamw", f"phases.0.tokens={tokens}",
            f"phases.0.languages={languages}", f"checkpoint.every_steps={every_steps}",
            "checkpoint.keep_last=1000", "log.every_steps=1000000", *extra]
    if init_dir is not None:
        sets.append(f"model.init_from={init_dir}")
    d = apply_overrides(d, sets)
    return recipe_from_dict(d, source=f"{DEMO_RECIPE.name} phase 1 ({' '.join(sets[2:])})")


def save_init(recipe: Any, out: Path) -> tuple[Path, list[str]]:
    """Initial weights (the trainer's own init: ``MaskedLM`` after ``manual_seed(seed)``) with
    the phase's RoPE thetas in config.json, written by our HF writer; and the phase languages."""
    from mmbert.model import MaskedLM
    from mmbert.train.trainer import prepare

    prep = prepare(recipe)
    phase = recipe.phases[0]
    cfg = recipe.model_config(prep.vocab_size, **prep.special_ids).replace(
        global_rope_theta=phase.global_rope_theta, local_rope_theta=phase.local_rope_theta)
    torch.manual_seed(recipe.seed)
    MaskedLM(cfg).save_pretrained(out)
    return out, prep.languages[(0, None)]


# ---------------------------------------------------------------------------------------------
# Our side: the trainer
# ---------------------------------------------------------------------------------------------

def run_ours(recipe: Any, run_dir: Path, trainer_cls: type | None = None) -> dict[str, Any]:
    """``pretrain`` into ``run_dir`` (with ``trainer_cls`` in place of ``Trainer`` if given);
    per-step tokens, loss and step time from metrics.jsonl, checkpoints by step."""
    from mmbert.train import checkpoint as ckpt
    from mmbert.train import trainer as tr

    if run_dir.exists():
        shutil.rmtree(run_dir)
    base = tr.Trainer
    tr.Trainer = trainer_cls or base
    try:
        tr.pretrain(recipe, run_dir, log=lambda msg: None)
    finally:
        tr.Trainer = base
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = {}
    for p in ckpt.list_checkpoints(run_dir / "checkpoints"):
        t = json.loads((p / "trainer.json").read_text())
        steps[int(t["step"])] = p / "model"
    return {"tokens": [r["tokens"] for r in recs], "loss": [r["loss"] for r in recs],
            "masked": [r["masked_tokens"] for r in recs],
            "dt": [r["batch_tokens"] / r["tokens_per_s"] for r in recs], "checkpoints": steps}


# ---------------------------------------------------------------------------------------------
# The transformers side: a plain loop over ModernBertForMaskedLM
# ---------------------------------------------------------------------------------------------

def trainer_loaders(recipe: Any, languages: list[str]) -> list[Any]:
    """The data slots ``Trainer.make_loaders`` builds for one process (seed, slot layout)."""
    from mmbert.data.loader import MLMLoader
    from mmbert.train.schedule import phase_slots
    from mmbert.train.trainer import data_seed

    phase = recipe.phases[0]
    n = phase_slots(phase)
    return [MLMLoader(recipe.shards, languages=languages, tau=phase.tau, seq_len=phase.seq_len,
                      batch_tokens=phase.micro_batch_tokens, mask_ratio=phase.mask_ratio,
                      seed=data_seed(recipe.seed, phase.name, None), rank=a, world_size=n)
            for a in range(n)]


def padded_steps(recipe: Any, languages: list[str], pad_id: int) -> Iterator[dict[str, Any]]:
    """The trainer's steps as padded batches: each packed segment of the step's micro-batches
    is one right-padded row (transformers restarts positions per row, as ours per segment)."""
    from mmbert.bench import pad_docs
    from mmbert.train.schedule import step_slots

    phase = recipe.phases[0]
    loaders = trainer_loaders(recipe, languages)
    t = 0
    while True:
        docs, real = [], 0
        for b in [next(loaders[a]) for a in range(step_slots(phase, t))]:
            cu = b.cu_seqlens.tolist()
            docs += [(b.input_ids[x:y], b.labels[x:y]) for x, y in zip(cu[:-1], cu[1:])]
            real += b.num_tokens
        ids, mask, labels = pad_docs(docs, pad_id)
        yield {"input_ids": ids, "attention_mask": mask, "labels": labels, "tokens": real}
        t += real


def hf_model(init_dir: Path) -> Any:
    import transformers
    from transformers import ModernBertForMaskedLM

    transformers.logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ModernBertForMaskedLM.from_pretrained(init_dir, attn_implementation="sdpa",
                                                     dtype=torch.float32)


def hf_optimizer(model: torch.nn.Module, recipe: Any) -> torch.optim.AdamW:
    """torch AdamW with our no-decay rule and the equivalent decoupled decay (docstring)."""
    from mmbert.train.optim import no_decay

    phase, o = recipe.phases[0], recipe.optimizer
    decay = [p for n, p in model.named_parameters() if not no_decay(n, p)]
    keep = [p for n, p in model.named_parameters() if no_decay(n, p)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": phase.weight_decay / phase.lr},
                              {"params": keep, "weight_decay": 0.0}],
                             lr=phase.lr, betas=o.betas, eps=o.eps)


class HFLoop:
    """The plain transformers training loop, one optimizer step per ``step()`` call, timed per
    step and per part (data + padding, forward, backward, optimizer)."""

    PARTS = ("data", "forward", "backward", "optimizer")

    def __init__(self, recipe: Any, languages: list[str], init_dir: Path):
        from mmbert.config import ModelConfig

        self.phase = recipe.phases[0]
        self.cfg = ModelConfig.load_json(init_dir / "config.json")
        self.model = hf_model(init_dir).train()
        self.opt = hf_optimizer(self.model, recipe)
        self.batches = padded_steps(recipe, languages, self.model.config.pad_token_id)
        self.t, self.steps, self.padded = 0, 0, 0
        self.res: dict[str, list] = {k: [] for k in ("tokens", "loss", "masked", "dt")}
        self.parts = dict.fromkeys(self.PARTS, 0.0)
        self.flops = {"ours_useful": 0.0, "hf_executed": 0.0}

    @property
    def done(self) -> bool:
        return self.t >= self.phase.tokens

    def step(self) -> None:
        from mmbert.train.schedule import lr_factor

        c = [time.perf_counter()]
        b = next(self.batches)
        for g in self.opt.param_groups:
            g["lr"] = self.phase.lr * lr_factor(self.phase, self.t + b["tokens"] / 2)
        c.append(time.perf_counter())
        out = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                         labels=b["labels"])
        c.append(time.perf_counter())
        out.loss.backward()
        c.append(time.perf_counter())
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        loss = float(out.loss.detach())
        c.append(time.perf_counter())
        for k, x, y in zip(self.PARTS, c, c[1:]):
            self.parts[k] += y - x
        self.steps, self.t = self.steps + 1, self.t + b["tokens"]
        self.padded += b["input_ids"].numel()
        masked = int((b["labels"] != -100).sum())
        for k, v in (("tokens", self.t), ("loss", loss), ("dt", c[-1] - c[0]),
                     ("masked", masked)):
            self.res[k].append(v)
        self.count_flops(b["attention_mask"], masked)

    def count_flops(self, mask: torch.Tensor, masked: int) -> None:
        """Forward + backward matmul FLOPs (3x forward) of this step: ours' useful work
        (encoder on real tokens, windowed attention, head on masked tokens) and what
        transformers executes (padded rows, every layer's T x T scores, head everywhere)."""
        from mmbert.bench import mlm_flops

        B, T = mask.shape
        self.flops["ours_useful"] += 3 * mlm_flops(self.cfg, mask.sum(1).tolist(), masked)
        dense = self.cfg.replace(global_attn_every_n_layers=1)
        self.flops["hf_executed"] += 3 * mlm_flops(dense, [T] * B, B * T)

    def run(self) -> "HFLoop":
        while not self.done:
            self.step()
        return self


def interleaved_trainer(hf: HFLoop, eval_steps: set[int],
                        on_eval: Callable[[int, Any], None]) -> type:
    """A ``Trainer`` whose ``save`` (called after every step with checkpoint.every_steps=1,
    outside the trainer's step clock) runs the next transformers step and its evaluation, and
    writes a real checkpoint only at evaluation steps and the phase end."""
    from mmbert.train.trainer import Trainer

    class Interleaved(Trainer):
        def save(self, root: Path, state: Any, loaders: dict[int, Any], *, phase_end: bool,
                 phase: Any, variant: str | None) -> Path:
            if not hf.done:
                hf.step()
                if hf.steps in eval_steps:
                    hf.model.eval()
                    on_eval(hf.steps, hf.model)
                    hf.model.train()
            if phase_end or state.step in eval_steps:
                return super().save(root, state, loaders, phase_end=phase_end, phase=phase,
                                    variant=variant)
            return root

    return Interleaved


# ---------------------------------------------------------------------------------------------
# Held-out scores
# ---------------------------------------------------------------------------------------------

def mean_score(held: Any, model: Any) -> dict[str, float]:
    """Macro-mean held-out loss / accuracy over languages (our MaskedLM or a directory)."""
    from mmbert.model import MaskedLM

    if not isinstance(model, MaskedLM):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = MaskedLM.from_pretrained(model)
    s = held.score(model)
    return {"loss": float(np.mean([x.loss for x in s.values()])),
            "accuracy": float(np.mean([x.accuracy for x in s.values()]))}


def hf_score(held: Any, model: Any, batch_rows: int = 32) -> dict[str, float]:
    """transformers' own forward on the same windows and positions (mask token at every
    selected one): the cross-check of ``mean_score`` on the converted weights."""
    from mmbert.bench import pad_docs

    losses, accs = [], []
    model.eval()
    for lang, m in held.sets.items():
        xs = held._inputs(lang, False)
        ys = [np.where(s, w, -100) for w, s in zip(m.ids, m.selected)]
        tot, hit, n = 0.0, 0, 0
        for i in range(0, len(xs), batch_rows):
            docs = [(torch.from_numpy(x), torch.from_numpy(y))
                    for x, y in zip(xs[i:i + batch_rows], ys[i:i + batch_rows])]
            ids, mask, labels = pad_docs(docs, held.config.pad_token_id)
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask).logits
            sel = labels != -100
            lg, y = logits[sel].float(), labels[sel]
            tot += float(torch.nn.functional.cross_entropy(lg, y, reduction="sum"))
            hit += int((lg.argmax(-1) == y).sum())
            n += int(sel.sum())
        losses.append(tot / n)
        accs.append(hit / n)
    return {"loss": float(np.mean(losses)), "accuracy": float(np.mean(accs))}


def score_via_ours(held: Any, model: Any, tmp: Path) -> dict[str, float]:
    """transformers weights -> ``save_pretrained`` -> our MaskedLM -> the scorer ours gets."""
    d = tmp / "hf-eval"
    model.save_pretrained(d)
    try:
        return mean_score(held, d)
    finally:
        shutil.rmtree(d)


# ---------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------

def eval_steps_for(total_steps: int, evals: int) -> list[int]:
    every = max(1, total_steps // evals)
    steps = [s for s in range(every, total_steps, every)][:evals - 1]
    return steps + [total_steps]


def curve(run: dict[str, Any], scores: dict[int, dict[str, float]],
          init: dict[str, float]) -> list[dict[str, float]]:
    """Evaluation points: step, tokens, cumulative training seconds, held-out loss/acc."""
    wall = np.cumsum(run["dt"])
    pts = [{"step": 0, "tokens": 0, "wall_s": 0.0, **init}]
    for s in sorted(scores):
        pts.append({"step": s, "tokens": run["tokens"][s - 1], "wall_s": float(wall[s - 1]),
                    **scores[s]})
    return pts


def time_to_loss(points: list[dict[str, float]], target: float) -> float | None:
    """Training seconds at which the held-out loss curve first reaches ``target`` (linear
    between evaluation points); None if it never does."""
    for a, b in zip(points, points[1:]):
        if b["loss"] <= target:
            if a["loss"] == b["loss"]:
                return b["wall_s"]
            f = (a["loss"] - target) / (a["loss"] - b["loss"])
            return a["wall_s"] + min(max(f, 0.0), 1.0) * (b["wall_s"] - a["wall_s"])
    return None


def loss_at_time(points: list[dict[str, float]], t: float) -> float | None:
    ts = [p["wall_s"] for p in points]
    if t > ts[-1]:
        return None
    i = bisect.bisect_left(ts, t)
    if i == 0:
        return points[0]["loss"]
    a, b = points[i - 1], points[i]
    return a["loss"] + (t - a["wall_s"]) / (b["wall_s"] - a["wall_s"]) * (b["loss"] - a["loss"])


def compare(ours: list[dict], hf: list[dict]) -> dict[str, Any]:
    """Loss agreement at equal tokens; the time each side needs to reach the held-out losses
    transformers reached at its evaluation points (the last one: the loss both reach); the
    other side's loss at ours' evaluation times."""
    rel = [abs(o["loss"] - h["loss"]) / h["loss"] for o, h in zip(ours[1:], hf[1:])]
    equal_loss = []
    for h in hf[1:]:
        target = max(h["loss"], ours[-1]["loss"]) if h is hf[-1] else h["loss"]
        t_o, t_h = time_to_loss(ours, target), time_to_loss(hf, target)
        equal_loss.append({"loss": target, "ours_s": t_o, "hf_s": t_h,
                           "speedup": t_h / t_o if t_o and t_h else None})
    equal_time = [{"wall_s": o["wall_s"], "ours_loss": o["loss"],
                   "hf_loss": loss_at_time(hf, o["wall_s"])} for o in ours[1:]]
    final = equal_loss[-1]
    return {
        "max_rel_loss_diff": max(rel), "final_rel_loss_diff": rel[-1],
        "equal_loss": equal_loss, "equal_time": equal_time,
        "target_loss": final["loss"], "ours_s_to_target": final["ours_s"],
        "hf_s_to_target": final["hf_s"], "speedup_to_target": final["speedup"],
        "wall_ratio_equal_tokens": hf[-1]["wall_s"] / ours[-1]["wall_s"],
        "loss_ok": max(rel) <= LOSS_TOLERANCE,
        "speed_ok": final["speedup"] is not None and final["speedup"] >= SPEEDUP_TARGET,
    }


def _fmt(x: float | None, f: str) -> str:
    return "n/a" if x is None else format(x, f)


def render_tokens(res: dict[str, Any]) -> list[str]:
    """The table at equal tokens."""
    lines = ["held-out masked-token loss (nats) / accuracy at equal tokens; wall = training "
             "seconds so far (evaluation excluded)",
             "| step | tokens | ours loss | hf loss | diff % | ours acc % | hf acc % "
             "| ours wall s | hf wall s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for a, b in zip(res["ours"]["curve"], res["hf"]["curve"]):
        d = 100 * (a["loss"] - b["loss"]) / b["loss"]
        lines.append(f"| {a['step']} | {a['tokens']:,} | {a['loss']:.4f} | {b['loss']:.4f} | "
                     f"{d:+.2f} | {100 * a['accuracy']:.2f} | {100 * b['accuracy']:.2f} | "
                     f"{a['wall_s']:.1f} | {b['wall_s']:.1f} |")
    return lines


def render_ratios(res: dict[str, Any]) -> list[str]:
    """Equal held-out loss (who gets there first, how much faster) and equal wall time."""
    c = res["compare"]
    lines = ["", "equal held-out loss: training seconds to reach it",
             "| loss | ours s | hf s | ours faster by |", "|---:|---:|---:|---:|"]
    for e in c["equal_loss"]:
        lines.append(f"| {e['loss']:.4f} | {_fmt(e['ours_s'], '.1f')} | {_fmt(e['hf_s'], '.1f')}"
                     f" | {_fmt(e['speedup'], '.2f')}x |")
    lines += ["", "equal wall time: held-out loss at ours' evaluation times",
              "| wall s | ours loss | hf loss |", "|---:|---:|---:|"]
    for e in c["equal_time"]:
        lines.append(f"| {e['wall_s']:.1f} | {e['ours_loss']:.4f} | "
                     f"{_fmt(e['hf_loss'], '.4f')} |")
    return lines


def flops_line(res: dict[str, Any]) -> str:
    """The work each side does and how fast: the FLOP ratio is ours' speedup at equal FLOP/s."""
    f = res["flops"]
    wo, wh = res["ours"]["curve"][-1]["wall_s"], res["hf"]["curve"][-1]["wall_s"]
    return (f"matmul work: ours {f['ours_useful'] / 1e9:,.0f} GFLOP useful, transformers "
            f"{f['hf_executed'] / 1e9:,.0f} GFLOP executed (padding, dense scores, dense head) "
            f"= {f['hf_executed'] / f['ours_useful']:.2f}x; achieved "
            f"{f['ours_useful'] / wo / 1e9:.0f} vs {f['hf_executed'] / wh / 1e9:.0f} GFLOP/s")


def render(res: dict[str, Any]) -> str:
    o, h, c = res["ours"], res["hf"], res["compare"]
    lines = [res["cpu_line"], res["setup"], "", *render_tokens(res), *render_ratios(res), "",
             f"training loss per step: step 1 ours {o['train_loss'][0]:.5f} vs transformers "
             f"{h['train_loss'][0]:.5f}; mean |diff| over all steps "
             f"{res['train_loss_mean_abs_diff']:.2e}; masked tokens identical every step: "
             f"{res['same_masked']}",
             f"transformers' final weights scored by transformers itself: loss "
             f"{res['hf_native_final']['loss']:.4f} (through our MaskedLM: "
             f"{h['curve'][-1]['loss']:.4f})",
             f"wall (interleaved step by step): ours {o['curve'][-1]['wall_s']:.1f} s, "
             f"transformers {h['curve'][-1]['wall_s']:.1f} s ("
             + ", ".join(f"{k} {v:.1f}" for k, v in h["parts_s"].items())
             + f"); transformers pads {h['pad_factor']:.2f} tokens per real token",
             f"equal tokens: transformers / ours wall time = {c['wall_ratio_equal_tokens']:.2f}x",
             flops_line(res),
             f"requirement 1, held-out loss within {100 * LOSS_TOLERANCE:.0f}% at equal tokens: "
             f"max diff {100 * c['max_rel_loss_diff']:.2f}% -> "
             f"{'MET' if c['loss_ok'] else 'NOT MET'}",
             f"requirement 2, held-out loss {c['target_loss']:.4f} in at most "
             f"1/{SPEEDUP_TARGET:.0f} of transformers' wall time: ours "
             f"{_fmt(c['ours_s_to_target'], '.1f')} s vs {_fmt(c['hf_s_to_target'], '.1f')} s "
             f"= {_fmt(c['speedup_to_target'], '.2f')}x -> {'MET' if c['speed_ok'] else 'NOT MET'}"]
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for side, label, style in (("ours", "mmbert trainer", "o-"), ("hf", "transformers loop",
                                                                   "s--")):
        pts = res[side]["curve"]
        axes[0].plot([p["tokens"] for p in pts], [p["loss"] for p in pts], style, label=label)
        axes[1].plot([p["wall_s"] for p in pts], [p["loss"] for p in pts], style, label=label)
    axes[0].set_xlabel("training tokens")
    axes[1].set_xlabel("training wall time (s, evaluation excluded)")
    for ax in axes:
        ax.set_ylabel("held-out masked-token loss (nats)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(textwrap.fill(res["cpu_line"], 150), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

def setup(shards: Path, tokenizer: Path, work: Path, *, tokens: int, languages: int,
          evals: int, eval_tokens: int) -> dict[str, Any]:
    """Initial weights, the recipe (save after every step), the warm-up recipe, the held-out
    set and the evaluation steps."""
    from mmbert.evaluate.mlm import HeldoutMlm
    from mmbert.model import MaskedLM

    work.mkdir(parents=True, exist_ok=True)
    probe = phase_recipe(shards, tokenizer, tokens=tokens, languages=languages)
    init_dir, langs = save_init(probe, work / "init")
    phase = probe.phases[0]
    steps = eval_steps_for(math.ceil(tokens / phase.batch_tokens), evals)
    recipe = phase_recipe(shards, tokenizer, tokens=tokens, languages=languages,
                          init_dir=init_dir, every_steps=1)
    warm = phase_recipe(shards, tokenizer, tokens=3 * phase.batch_tokens, languages=languages,
                        init_dir=init_dir, every_steps=1)
    cfg = MaskedLM.from_pretrained(init_dir).config
    held = HeldoutMlm(shards, cfg, languages=langs, max_tokens=eval_tokens, seed=0,
                      seq_len=phase.seq_len)
    return dict(recipe=recipe, warm=warm, init_dir=init_dir, langs=langs, steps=steps,
                held=held)


def run_comparison(shards: Path, tokenizer: Path, work: Path, *, tokens: int, languages: int,
                   evals: int, eval_tokens: int,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole comparison (files only under ``work``): 3 untimed warm-up steps of each side,
    then both sides interleaved step by step; then ours' checkpoints are scored."""
    s = setup(shards, tokenizer, work, tokens=tokens, languages=languages, evals=evals,
              eval_tokens=eval_tokens)
    recipe, held, steps, langs = s["recipe"], s["held"], s["steps"], s["langs"]
    init_score = mean_score(held, s["init_dir"])
    log(f"{len(langs)} languages, {steps[-1]} steps, evaluations after steps {steps}; "
        f"random init: held-out loss {init_score['loss']:.4f}")
    warm = HFLoop(s["warm"], langs, s["init_dir"])
    run_ours(s["warm"], work / "warm", interleaved_trainer(warm, set(), lambda k, m: None))
    hf = HFLoop(recipe, langs, s["init_dir"])
    hf_scores: dict[int, dict[str, float]] = {}
    hf_final: dict[str, Any] = {}

    def on_eval(step: int, model: Any) -> None:
        hf_scores[step] = score_via_ours(held, model, work)
        if step == steps[-1]:
            hf_final.update(hf_score(held, model))
        log(f"step {step}: transformers held-out loss {hf_scores[step]['loss']:.4f}")

    ours = run_ours(recipe, work / "ours", interleaved_trainer(hf, set(steps), on_eval))
    if not hf.done or len(ours["loss"]) != hf.steps:
        raise RuntimeError(f"interleaving failed: ours ran {len(ours['loss'])} steps, "
                           f"transformers {hf.steps}: the trainer no longer calls "
                           f"Trainer.save after every step?")
    ours_scores = {st: mean_score(held, ours["checkpoints"][st]) for st in steps}
    return assemble(ours, hf, ours_scores, hf_scores, init_score, hf_final, langs, recipe,
                    held)


def assemble(ours: dict, hf: HFLoop, ours_scores: dict, hf_scores: dict, init_score: dict,
             hf_final: dict, langs: list[str], recipe: Any, held: Any) -> dict[str, Any]:
    phase, h = recipe.phases[0], hf.res
    res: dict[str, Any] = {
        "ours": {"curve": curve(ours, ours_scores, init_score), "train_loss": ours["loss"],
                 "step_s": [round(x, 5) for x in ours["dt"]]},
        "hf": {"curve": curve(h, hf_scores, init_score), "train_loss": h["loss"],
               "step_s": [round(x, 5) for x in h["dt"]], "pad_factor": hf.padded / hf.t,
               "parts_s": {k: round(v, 3) for k, v in hf.parts.items()}},
        "flops": hf.flops,
        "hf_native_final": hf_final, "languages": langs,
        "same_masked": ours["masked"] == h["masked"],
        "train_loss_mean_abs_diff": float(np.mean(np.abs(np.subtract(ours["loss"],
                                                                     h["loss"])))),
        "heldout_positions": int(sum(len(m.labels) for m in held.sets.values())),
        "recipe": recipe.to_dict(),
    }
    res["compare"] = compare(res["ours"]["curve"], res["hf"]["curve"])
    res["setup"] = (f"tiny model, {len(langs)} languages, {phase.tokens:,} tokens, seq "
                    f"{phase.seq_len}, {phase.batch_tokens}-token steps, lr {phase.lr:g} "
                    f"(warmup {phase.warmup_tokens:,} tokens), mask {phase.mask_ratio:.0%}, plain "
                    f"AdamW both sides; held-out: {res['heldout_positions']:,} masked positions")
    return res


def profile_sides(recipe: Any, langs: list[str], init_dir: Path, work: Path,
                  top: int = 20) -> str:
    """torch.profiler op tables (self CPU time) of each side alone over the recipe's steps,
    and transformers' per-part step times."""
    from torch.profiler import ProfilerActivity, profile

    out = []
    with profile(activities=[ProfilerActivity.CPU]) as p:
        ours = run_ours(recipe, work / "ours-profile")
    out.append(f"== ours (pretrain), {sum(ours['dt']):.2f} s in steps ==\n"
               + p.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))
    hf = HFLoop(recipe, langs, init_dir)
    with profile(activities=[ProfilerActivity.CPU]) as p:
        hf.run()
    parts = ", ".join(f"{k} {v:.2f} s" for k, v in hf.parts.items())
    out.append(f"== transformers loop, {sum(hf.res['dt']):.2f} s in steps ({parts}) ==\n"
               + p.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from mmbert.recipe import parse_tokens

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_learning")
    ap.add_argument("--tokens", default="300k", help="training tokens (k/M suffixes)")
    ap.add_argument("--languages", type=int, default=8, help="top-k languages of the shards")
    ap.add_argument("--vocab", type=int, default=DEMO_VOCAB, help="tokenizer size when the "
                    "data is built here (default: the demo's; smaller vocabularies shrink the "
                    "sparse-prediction gain)")
    ap.add_argument("--evals", type=int, default=9, help="evaluation points after init")
    ap.add_argument("--eval-tokens", type=int, default=4096, help="held-out tokens per language")
    ap.add_argument("--shards", type=Path, help="existing shards (default: built under --out)")
    ap.add_argument("--tokenizer", type=Path, help="the tokenizer of --shards")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (both sides)")
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="instead of the comparison: profile STEPS steps of each side alone")
    args = ap.parse_args(argv)
    args.tokens = parse_tokens(args.tokens, "--tokens")
    if (args.shards is None) != (args.tokenizer is None):
        ap.error("--shards and --tokenizer go together")
    return args


def profile_main(args: argparse.Namespace, shards: Path, tok: Path, work: Path,
                 line: str) -> None:
    tokens = args.profile * 1024
    r = phase_recipe(shards, tok, tokens=tokens, languages=args.languages)
    init_dir, langs = save_init(r, work / "init")
    r = phase_recipe(shards, tok, tokens=tokens, languages=args.languages, init_dir=init_dir)
    text = profile_sides(r, langs, init_dir, work)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile.txt").write_text(line + "\n" + text + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    info = cpu_info()
    print(cpu_line(info), flush=True)
    shards, tok = (args.shards, args.tokenizer) if args.shards else \
        build_data(args.out / "data", DEMO_LANGUAGES, args.vocab)
    with tempfile.TemporaryDirectory(prefix="bench-learning-") as tmp:
        if args.profile:
            profile_main(args, shards, tok, Path(tmp), cpu_line(info))
            return 0
        res = run_comparison(shards, tok, Path(tmp), tokens=args.tokens,
                             languages=args.languages, evals=args.evals,
                             eval_tokens=args.eval_tokens)
    res["cpu"], res["cpu_line"] = info, cpu_line(info)
    text = render(res)
    print("\n" + text, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (args.out / "results.md").write_text(text + "\n")
    plot(res, args.out / "curves.png")
    print(f"\nwrote {args.out / 'results.json'}, {args.out / 'results.md'}, "
          f"{args.out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
