"""Throughput benchmarks: our encoder against transformers' ModernBERT and XLM-R (`mmbert bench`).

What is timed (one process per workload, same machine, same weights, same dtype):

* ``fixed``  -- 16 x 512 tokens, no padding: ours, transformers' ``ModernBertModel`` loaded from
  our weights, transformers' ``XLMRobertaModel`` (base config, random weights).
* ``mixed``  -- 32 sequences with lengths uniform in 32..512 as one right-padded batch with an
  attention mask, handed unchanged to all three models (ours unpads on its own).
* ``long``   -- one 8192-token sequence: ours and transformers' ModernBERT (XLM-R stops at 512),
  plus ours on 16 x 512 in the same process, for the per-token cost of long context.
* ``train``  -- one MLM training step (forward + backward; the optimizer update is the same for
  both and not timed) on documents with lengths uniform in 32..1024 packed into 8 rows of
  1024 tokens, 30% of the tokens masked: ours packed (``cu_seqlens``) with sparse prediction;
  transformers' ``ModernBertForMaskedLM`` (default config: dense decoder) on the same documents
  in padded micro-batches of ``hf_docs`` documents (its 256k-vocabulary logits for a whole
  8 x 1024 batch would need >20 GB); timed run ``r`` takes micro-batch ``r``, compared per
  real token.

Each case: one warm-up call on a smaller input, then ``runs`` timed calls, interleaved with the
other models' (round r times run r of every model), so all see the same moments of a shared
CPU; the median counts. tokens/s counts real (non-padding) tokens. "Useful" FLOPs count only
the matmul work real tokens need (linear layers on real tokens, attention only inside each sequence and window,
the MLM decoder only at masked positions, x3 for forward+backward). The fraction of peak divides
each run's useful FLOP/s by the local matmul peak: square 2048^3 matmuls (best of 3) timed in
the same process right before and after that run, averaged (the median over runs is reported).
On a shared CPU this cancels most of the changing contention; the best sample of the whole
workload is reported too.

Per real token the useful forward FLOPs are ``2 * N_lin + 4 * h * p`` per token, where
``N_lin = L * (4 h^2 + 3 h i)`` counts the weights of the encoder's linear layers (Wqkv, Wo, the
GeGLU Wi and Wo; embedding lookups are no matmuls) and ``p`` the (query, key) pairs per token,
summed over layers (all pairs of the sequence in global layers, ``|i - j| <= window`` in local
ones); the MLM head and decoder add ``2 * (h^2 + h * V)`` per masked token. A training step
(forward + backward) counts 3x the forward: the usual ``6 * N`` per token plus the attention
term. **MFU** (``peak_tflops`` given, e.g. 989 for an H100/H200 SXM's dense bf16) is useful
FLOP/s over that nominal peak; the fraction of the measured matmul peak is reported alongside.

bf16 runs only where a bf16 matmul is at least as fast as fp32 (AVX512-BF16/AMX CPUs, GPUs);
otherwise the case is recorded as skipped with both measured peaks (``force=True`` overrides).

Optional models (``models=``): ``hf-modernbert-fa2``, transformers' ModernBERT with
``attn_implementation="flash_attention_2"`` (CUDA, bf16, flash-attn installed), and
``mmbert-compiled``, our training step under ``torch.compile`` (``train`` workload only; warmed
up twice on the timed batch, so compilation is not timed). On CUDA the full sizes are larger
(``SIZES["gpu"]``): the CPU sizes leave a GPU idle between kernel launches.

Results accumulate in ``OUT/results.json`` (keyed by workload and dtype, so per-workload
invocations combine); every invocation re-renders ``OUT/results.md`` and ``OUT/bench.png``.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mmbert.config import IGNORE_INDEX, ModelConfig, preset
from mmbert.errors import MmbertError
from mmbert.outputs import atomic_file, read_json, write_json, write_text

WORKLOADS = ("fixed", "mixed", "long", "train")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODELS = ("mmbert", "mmbert-compiled", "hf-modernbert", "hf-modernbert-fa2", "hf-xlmr")
DEFAULT_MODELS = ("mmbert", "hf-modernbert", "hf-xlmr")
HF_ATTN = {"hf-modernbert": "sdpa", "hf-modernbert-fa2": "flash_attention_2"}

# Full sizes (the targets') and --quick sizes (a smoke test of the whole pipeline in ~1 minute).
SIZES = {
    "full": dict(fixed=(16, 512), mixed=(32, 32, 512), long=8192, train_rows=8, train_len=1024,
                 train_min_doc=32, hf_docs=2, peak_n=2048, runs=3),
    "quick": dict(fixed=(4, 128), mixed=(8, 16, 128), long=1024, train_rows=2, train_len=256,
                  train_min_doc=16, hf_docs=2, peak_n=1024, runs=2),
    # CUDA, full run: enough tokens per call to keep a GPU busy (sized for a few minutes in all
    # on one H200; not yet measured there)
    "gpu": dict(fixed=(64, 512), mixed=(128, 32, 512), long=8192, train_rows=16, train_len=1024,
                train_min_doc=32, hf_docs=8, peak_n=8192, runs=10),
}
MASK_RATIO = 0.30


# ---------------------------------------------------------------------------------------------
# Useful FLOPs
# ---------------------------------------------------------------------------------------------

def attention_pairs(length: int, window: int | None) -> int:
    """(query, key) pairs inside one sequence: all of them, or those with |i - j| <= window."""
    if window is None or window >= length - 1:
        return length * length
    i = np.arange(length)
    return int((np.minimum(length - 1, i + window) - np.maximum(0, i - window) + 1).sum())


def encoder_flops(cfg: ModelConfig, lengths: list[int]) -> float:
    """Forward matmul FLOPs of the encoder on real tokens (2 per multiply-add): per token
    ``2 * L * (4 h^2 + 3 h i)`` (= 2 x the linear layers' weights), plus ``4 h`` per (query,
    key) pair inside each sequence (and window) in every layer (QK^T and PV)."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    per_token = 2 * cfg.num_hidden_layers * (h * 3 * h + h * h + h * 2 * i + i * h)
    total = per_token * sum(lengths)
    for layer in range(cfg.num_hidden_layers):
        window = None if cfg.is_global_layer(layer) else cfg.local_attention // 2
        total += 4 * h * sum(attention_pairs(n, window) for n in lengths)  # QK^T and PV
    return float(total)


def mlm_flops(cfg: ModelConfig, lengths: list[int], masked: int) -> float:
    """Forward FLOPs of the masked LM with the head and decoder on masked tokens only."""
    h = cfg.hidden_size
    return encoder_flops(cfg, lengths) + 2.0 * masked * (h * h + h * cfg.vocab_size)


def xlmr_flops(xcfg: Any, lengths: list[int]) -> float:
    """Forward matmul FLOPs of a BERT-style encoder (XLM-R) on real tokens."""
    h, i, L = xcfg.hidden_size, xcfg.intermediate_size, xcfg.num_hidden_layers
    per_token = 2 * L * (4 * h * h + 2 * h * i)
    return float(per_token * sum(lengths) + L * 4 * h * sum(n * n for n in lengths))


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], runs: int, device: torch.device,
               warmup: Callable[[], Any] | None = None) -> list[float]:
    """Seconds of ``runs`` calls of ``fn`` after one warm-up call (``warmup`` or ``fn``)."""
    (warmup or fn)()
    _sync(device)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


_PEAK_OPERANDS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 4096, runs: int = 3) -> float:
    """Best FLOP/s of an ``n x n @ n x n`` matmul (the machine's practical ceiling). The
    operands are made once per size, dtype and device (the peak is sampled after every timed
    run; drawing 2 x 8192^2 random numbers each time would cost more than the matmuls)."""
    key = (n, dtype, str(device))
    if key not in _PEAK_OPERANDS:
        g = torch.Generator(device="cpu").manual_seed(0)
        _PEAK_OPERANDS.clear()  # one size at a time is ever in use
        _PEAK_OPERANDS[key] = tuple(torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
                                    for _ in range(2))
    a, b = _PEAK_OPERANDS[key]
    times = time_calls(lambda: a @ b, runs, device)
    return 2.0 * n ** 3 / min(times)


def bf16_fast(device: torch.device) -> tuple[bool, float, float]:
    """Whether bf16 matmuls beat fp32 here; a short probe (bf16 may be ~100x slower on CPUs
    without AVX512-BF16/AMX, so the probe is small)."""
    if device.type == "cuda":
        return True, 0.0, 0.0
    f32 = matmul_peak(torch.float32, device, 512, 2)
    b16 = matmul_peak(torch.bfloat16, device, 512, 2)
    return b16 >= f32, f32, b16


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

def hf_modernbert_config(cfg: ModelConfig, attn: str = "sdpa"):
    """transformers' ModernBertConfig for our config; SDPA attention (its fastest CPU path)
    unless ``attn`` says otherwise (``flash_attention_2`` on GPUs with flash-attn)."""
    from transformers import ModernBertConfig

    d = {k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type")}
    c = ModernBertConfig(**d)
    c._attn_implementation = attn
    return c


def xlmr_config(cfg: ModelConfig):
    """XLM-R base (12 x 768, 3072, vocab 250002) for the base preset; for other presets a
    BERT-style model of the same width, 4x MLP and 12/22 of the depth (tests, quick runs)."""
    from transformers import XLMRobertaConfig

    if cfg.hidden_size == 768 and cfg.vocab_size >= 250002:
        kw = dict(vocab_size=250002, hidden_size=768, num_hidden_layers=12,
                  num_attention_heads=12, intermediate_size=3072)
    else:
        kw = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                  num_hidden_layers=max(1, round(cfg.num_hidden_layers * 12 / 22)),
                  num_attention_heads=cfg.num_attention_heads,
                  intermediate_size=4 * cfg.hidden_size)
    c = XLMRobertaConfig(max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                         pad_token_id=1, bos_token_id=0, eos_token_id=2, **kw)
    c._attn_implementation = "sdpa"
    return c


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", module="transformers")


def _hf_modernbert(ours: torch.nn.Module, cfg: ModelConfig, *, mlm: bool, attn: str):
    """transformers' ModernBERT (masked LM or bare) holding exactly ``ours``'s weights (CPU)."""
    _quiet_transformers()
    from transformers import ModernBertForMaskedLM, ModernBertModel

    hf_cls = ModernBertForMaskedLM if mlm else ModernBertModel
    with torch.device("meta"):  # no random init of a 256k x 768 matrix we overwrite anyway
        ref = hf_cls(hf_modernbert_config(cfg, attn))
    ref.load_state_dict(ours.state_dict(), strict=False, assign=True)
    ref.tie_weights()
    missing = [n for n, p in list(ref.named_parameters()) + list(ref.named_buffers())
               if p.is_meta]
    for n in missing:  # non-persistent buffers (RoPE inv_freq): rebuild on the CPU
        if "inv_freq" not in n:
            raise RuntimeError(f"transformers ModernBERT parameter {n} not in our state dict")
    if missing:
        rot = (ref.model if mlm else ref).rotary_emb
        (ref.model if mlm else ref).rotary_emb = type(rot)(rot.config)
    return ref


def build_models(cfg: ModelConfig, which: tuple[str, ...], *, mlm: bool, dtype: torch.dtype,
                 device: torch.device, seed: int = 0) -> dict[str, torch.nn.Module]:
    """Ours with random weights, transformers' ModernBERT holding exactly those weights (SDPA,
    and flash-attention-2 for ``hf-modernbert-fa2``), XLM-R with its own random weights, and
    ours under ``torch.compile`` (``mmbert-compiled``, masked LM only, same parameters as
    ``mmbert``). ``mlm``: the masked-LM classes (training)."""
    from mmbert.model import Encoder, MaskedLM

    torch.manual_seed(seed)
    ours = (MaskedLM if mlm else Encoder)(cfg)
    out: dict[str, torch.nn.Module] = {}
    for label, attn in HF_ATTN.items():
        if label in which:
            out[label] = _hf_modernbert(ours, cfg, mlm=mlm, attn=attn).to(
                device=device, dtype=dtype).eval()
    compiled = mlm and "mmbert-compiled" in which
    if "mmbert" in which or compiled:
        ours = ours.to(device=device, dtype=dtype).eval()
        if "mmbert" in which:
            out["mmbert"] = ours
        if compiled:
            out["mmbert-compiled"] = torch.compile(ours)
    if "hf-xlmr" in which and not mlm:
        _quiet_transformers()
        from transformers import XLMRobertaModel

        out["hf-xlmr"] = XLMRobertaModel(xlmr_config(cfg), add_pooling_layer=False).to(
            device=device, dtype=dtype).eval()
    return out


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def padded_batch(lengths: list[int], vocab: int, pad_id: int, seed: int,
                 low: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random ids ``[B, max(lengths)]`` and the attention mask."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(low, vocab, (len(lengths), T), generator=g)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, pad_id), mask


def mixed_lengths(n: int, lo: int, hi: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.integers(lo, hi + 1, size=n)]


def packed_documents(rows: int, row_len: int, min_doc: int, seed: int) -> list[list[int]]:
    """Document lengths uniform in ``min_doc..row_len``, packed greedily into ``rows`` rows of
    exactly ``row_len`` tokens; a document that does not fit is cut at the row's end (as
    packers do), its remainder starting the next row. Returns per-row segment lengths."""
    rng = np.random.default_rng(seed)
    out: list[list[int]] = []
    carry = 0
    for _ in range(rows):
        segs, free = [], row_len
        while free > 0:
            n = carry or int(rng.integers(min_doc, row_len + 1))
            take = min(n, free)
            segs.append(take)
            free -= take
            carry = n - take
        out.append(segs)
    return out


@dataclass
class TrainBatch:
    """One packed MLM batch and the same documents as padded rows for transformers."""

    ids: torch.Tensor  # [N] masked input
    labels: torch.Tensor  # [N], -100 where not masked
    cu_seqlens: torch.Tensor
    max_seqlen: int
    docs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (ids, labels)

    @property
    def num_masked(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    def lengths(self) -> list[int]:
        return self.cu_seqlens.diff().tolist()


def make_train_batch(cfg: ModelConfig, rows: int, row_len: int, min_doc: int,
                     seed: int) -> TrainBatch:
    segs = [n for row in packed_documents(rows, row_len, min_doc, seed) for n in row]
    g = torch.Generator().manual_seed(seed)
    N = sum(segs)
    orig = torch.randint(5, cfg.vocab_size, (N,), generator=g)
    masked = torch.rand(N, generator=g) < MASK_RATIO
    ids = orig.masked_fill(masked, cfg.mask_token_id)
    labels = orig.masked_fill(~masked, IGNORE_INDEX)
    cu = torch.tensor([0, *np.cumsum(segs)], dtype=torch.int32)
    docs = [(ids[a:b], labels[a:b]) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
    return TrainBatch(ids, labels, cu, max(segs), docs)


def pad_docs(docs: list[tuple[torch.Tensor, torch.Tensor]],
             pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Documents -> right-padded ids, attention mask, labels (-100 at padding)."""
    T = max(d[0].numel() for d in docs)
    ids = torch.full((len(docs), T), pad_id, dtype=torch.long)
    labels = torch.full((len(docs), T), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(len(docs), T, dtype=torch.long)
    for r, (x, y) in enumerate(docs):
        ids[r, :x.numel()], labels[r, :y.numel()], mask[r, :x.numel()] = x, y, 1
    return ids, mask, labels


# ---------------------------------------------------------------------------------------------
# Workloads: cases timed in interleaved rounds
# ---------------------------------------------------------------------------------------------

@dataclass
class Ctx:
    cfg: ModelConfig
    dtype: torch.dtype
    device: torch.device
    sizes: dict
    runs: int
    seed: int
    models: tuple[str, ...]
    peaks: list[float] = field(default_factory=list)
    spec_peak: float | None = None  # nominal FLOP/s of the device (MFU), when given

    def measure_peak(self) -> float:
        """One square-matmul peak sample (best of 3)."""
        self.peaks.append(matmul_peak(self.dtype, self.device, self.sizes["peak_n"], 3))
        return self.peaks[-1]


@dataclass
class Case:
    """One model on one workload. ``calls[r]`` is timed run ``r`` (real ``tokens[r]``, useful
    ``flops[r]``); ``warm`` is the untimed warm-up call."""

    name: str
    model: str
    calls: list[Callable[[], Any]]
    tokens: list[int]
    flops: list[float]
    warm: Callable[[], Any]
    extra: dict = field(default_factory=dict)


def _loadavg() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def run_cases(ctx: Ctx, cases: list[Case]) -> list[dict]:
    """Warm every case up, then time them in rounds (run r of every case, then run r + 1 ...),
    so that models compared with each other see the same moments of a shared machine. A matmul
    peak sample is taken before the first run and after every run; each run's fraction of peak
    uses the mean of the samples on either side of it (the local peak)."""
    for c in cases:
        c.warm()
    _sync(ctx.device)
    times: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    fractions: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    loads: dict[int, list[float | None]] = {i: [] for i in range(len(cases))}
    before = ctx.measure_peak()
    for r in range(max(len(c.calls) for c in cases)):
        for i, c in enumerate(cases):
            if r >= len(c.calls):
                continue
            loads[i].append(_loadavg())
            t = time.perf_counter()
            c.calls[r]()
            _sync(ctx.device)
            times[i].append(time.perf_counter() - t)
            after = ctx.measure_peak()
            fractions[i].append(c.flops[r] / times[i][-1] / (0.5 * (before + after)))
            before = after
    out = []
    for i, c in enumerate(cases):
        # the run with the median tokens/s (the upper one for an even count) is reported
        rates = [n / t for n, t in zip(c.tokens, times[i])]
        sel = sorted(range(len(rates)), key=rates.__getitem__)[len(rates) // 2]
        t = times[i][sel]
        out.append(dict(case=c.name, model=c.model, tokens=c.tokens[sel], seconds=t,
                        times=times[i], tokens_per_s=c.tokens[sel] / t,
                        useful_flops=c.flops[sel], useful_flops_per_s=c.flops[sel] / t,
                        peak_fraction=statistics.median(fractions[i]),
                        peak_fractions=fractions[i], loadavg=loads[i], **c.extra))
        if ctx.spec_peak:
            out[-1]["mfu"] = c.flops[sel] / t / ctx.spec_peak
    return out


def _inference_cases(ctx: Ctx, name: str, lengths: list[int], warm_lengths: list[int],
                     models: tuple[str, ...], built: dict[str, torch.nn.Module]) -> list[Case]:
    cfg, dev = ctx.cfg, ctx.device
    cases = []
    for label in models:
        if label not in built:
            continue
        model = built[label]
        if label == "hf-xlmr":
            xcfg = model.config
            vocab, pad, flops = xcfg.vocab_size, xcfg.pad_token_id, xlmr_flops(xcfg, lengths)
        else:
            vocab, pad, flops = cfg.vocab_size, cfg.pad_token_id, encoder_flops(cfg, lengths)
        ids, mask = (t.to(dev) for t in padded_batch(lengths, vocab, pad, ctx.seed))
        wids, wmask = (t.to(dev) for t in padded_batch(warm_lengths, vocab, pad, ctx.seed + 1))

        def call(m=model, i=ids, a=mask, ours=label == "mmbert"):
            with torch.inference_mode():  # ours: the ordinary padded call, unpadding inside
                return m(i, attention_mask=a) if ours else m(input_ids=i, attention_mask=a)

        cases.append(Case(name, label, [call] * ctx.runs, [sum(lengths)] * ctx.runs,
                          [flops] * ctx.runs, lambda c=call, i=wids, a=wmask: c(i=i, a=a),
                          dict(batch=list(ids.shape))))
    return cases


def _inference_models(ctx: Ctx, models: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    return build_models(ctx.cfg, models, mlm=False, dtype=ctx.dtype, device=ctx.device,
                        seed=ctx.seed)


def wl_fixed(ctx: Ctx) -> list[dict]:
    B, T = ctx.sizes["fixed"]
    built = _inference_models(ctx, ctx.models)
    return run_cases(ctx, _inference_cases(ctx, f"fixed {B}x{T}", [T] * B,
                                           [T] * max(1, B // 4), ctx.models, built))


def wl_mixed(ctx: Ctx) -> list[dict]:
    n, lo, hi = ctx.sizes["mixed"]
    lengths = mixed_lengths(n, lo, hi, ctx.seed)
    warm = mixed_lengths(max(1, n // 4), lo, hi, ctx.seed + 1)
    built = _inference_models(ctx, ctx.models)
    return run_cases(ctx, _inference_cases(ctx, f"mixed {n}x[{lo},{hi}]", lengths, warm,
                                           ctx.models, built))


def wl_long(ctx: Ctx) -> list[dict]:
    T = ctx.sizes["long"]
    B, T0 = ctx.sizes["fixed"]
    models = tuple(m for m in ctx.models if m != "hf-xlmr")  # XLM-R has 514 positions
    built = _inference_models(ctx, models)
    cases = _inference_cases(ctx, f"long 1x{T}", [T], [max(T // 4, 1)], models, built)
    if "mmbert" in models:  # per-token reference at the fixed length, same rounds
        cases += _inference_cases(ctx, f"long-ref {B}x{T0}", [T0] * B, [T0] * max(1, B // 4),
                                  ("mmbert",), built)
    return run_cases(ctx, cases)


def wl_train(ctx: Ctx) -> list[dict]:
    cfg, dev, s = ctx.cfg, ctx.device, ctx.sizes
    batch = make_train_batch(cfg, s["train_rows"], s["train_len"], s["train_min_doc"], ctx.seed)
    warm_batch = make_train_batch(cfg, 1, s["train_len"], s["train_min_doc"], ctx.seed + 1)
    models = tuple(m for m in ctx.models if m != "hf-xlmr")
    built = build_models(cfg, models, mlm=True, dtype=torch.float32, device=dev, seed=ctx.seed)
    amp = ctx.dtype != torch.float32  # bf16 training: fp32 master weights + autocast
    name = f"train {s['train_rows']}x{s['train_len']}"

    def autocast():
        return torch.autocast(dev.type, dtype=ctx.dtype, enabled=amp)

    def ours_step(m, b: TrainBatch):
        m.zero_grad(set_to_none=True)
        with autocast():
            loss = m(b.ids.to(dev), cu_seqlens=b.cu_seqlens.to(dev), max_seqlen=b.max_seqlen,
                     labels=b.labels.to(dev)).loss
        loss.backward()
        m.zero_grad(set_to_none=True)  # free the gradients before the next case runs

    def hf_step(m, t):
        m.zero_grad(set_to_none=True)
        with autocast():
            loss = m(input_ids=t[0], attention_mask=t[1], labels=t[2]).loss
        loss.backward()
        m.zero_grad(set_to_none=True)

    cases = []
    for label in models:
        model = built[label].train()
        if label in HF_ATTN:
            cases.append(_hf_train_case(ctx, name, label, model, batch, warm_batch, hf_step))
            continue
        flops = 3 * mlm_flops(cfg, batch.lengths(), batch.num_masked)
        layout = "packed (cu_seqlens), sparse prediction"
        warm = lambda m=model: ours_step(m, warm_batch)  # noqa: E731
        if label == "mmbert-compiled":
            # warmed up on the timed batch itself, twice: the compilation, then the recompile
            # the first call's guards (masks cached in the batch plan) ask for; neither is timed
            warm = lambda m=model: [ours_step(m, batch) for _ in range(2)]  # noqa: E731
            layout += ", torch.compile (default mode)"
        cases.append(Case(name, label, [lambda m=model: ours_step(m, batch)] * ctx.runs,
                          [batch.labels.numel()] * ctx.runs, [flops] * ctx.runs, warm,
                          dict(masked=batch.num_masked, layout=layout)))
    return run_cases(ctx, cases)


def _hf_train_case(ctx: Ctx, name: str, label: str, model: torch.nn.Module, batch: TrainBatch,
                   warm_batch: TrainBatch, step: Callable) -> Case:
    """transformers' masked LM on padded micro-batches of ``hf_docs`` consecutive documents;
    run r takes micro-batch r, so the padding measured is a sample of the batch's, not one
    draw."""
    cfg, dev, k = ctx.cfg, ctx.device, ctx.sizes["hf_docs"]
    groups = [batch.docs[i:i + k] for i in range(0, len(batch.docs), k)]
    groups = (groups * ctx.runs)[:ctx.runs]
    mbs = [[t.to(dev) for t in pad_docs(g, cfg.pad_token_id)] for g in groups]
    warm = [t.to(dev) for t in pad_docs(warm_batch.docs[:k], cfg.pad_token_id)]
    real = [sum(d[0].numel() for d in g) for g in groups]
    flops = [3 * mlm_flops(cfg, [d[0].numel() for d in g],
                           sum(int((d[1] != IGNORE_INDEX).sum()) for d in g)) for g in groups]
    padded = sum(t[0].numel() for t in mbs)
    return Case(name, label, [lambda m=model, t=t: step(m, t) for t in mbs], real, flops,
                lambda m=model: step(m, warm),
                dict(batch=[list(t[0].shape) for t in mbs],
                     layout=f"padded micro-batches of {k} documents ({padded} padded tokens "
                            f"for {sum(real)} real over {len(mbs)} runs), dense decoder, "
                            f"attention {HF_ATTN[label]}"))


RUNNERS: dict[str, Callable[[Ctx], list[dict]]] = {
    "fixed": wl_fixed, "mixed": wl_mixed, "long": wl_long, "train": wl_train,
}


# ---------------------------------------------------------------------------------------------
# Driver, report, chart
# ---------------------------------------------------------------------------------------------

def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = dict(cpu=cpu, threads=torch.get_num_threads(), torch=torch.__version__,
                cpu_capability=torch.backends.cpu.get_cpu_capability(),
                mkldnn_bf16=bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                device=str(device))
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        from mmbert import attention

        info["flash_attn"] = attention.flash_attn_varlen_func is not None
        info["cuda"] = torch.version.cuda
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MmbertError(f"--device {device}: CUDA is not available on this machine; "
                          "expected cpu or auto")
    return torch.device(device)


def check_arguments(workloads: list[str], dtypes: list[str], models: tuple[str, ...],
                    runs: int | None, peak_tflops: float | None) -> None:
    """One-line errors for names and numbers that cannot run anywhere."""
    for w in workloads:
        if w not in RUNNERS:
            raise MmbertError(f"--workload {w!r}: expected one of {list(WORKLOADS)}")
    for d in dtypes:
        if d not in DTYPES:
            raise MmbertError(f"--dtype {d!r}: expected one of {list(DTYPES)}")
    for m in models:
        if m not in MODELS:
            raise MmbertError(f"--models {m!r}: expected some of {list(MODELS)}")
    if runs is not None and runs < 1:
        raise MmbertError(f"--runs {runs}: expected a positive integer")
    if peak_tflops is not None and not peak_tflops > 0:
        raise MmbertError(f"--peak-tflops {peak_tflops}: expected a positive number (the "
                          "device's nominal dense TFLOP/s in the benchmarked dtype)")


def check_flash_models(models: tuple[str, ...], dtypes: list[str], dev: torch.device) -> None:
    """``hf-modernbert-fa2`` needs CUDA, flash-attn and bf16: say which one is missing."""
    if "hf-modernbert-fa2" not in models:
        return
    from mmbert import attention

    if dev.type != "cuda":
        raise MmbertError(f"--models hf-modernbert-fa2: flash-attention-2 runs on CUDA only, "
                          f"this run is on {dev}; expected --device cuda")
    if attention.flash_attn_varlen_func is None:
        raise MmbertError("--models hf-modernbert-fa2: the flash_attn package does not import "
                          "here; expected it installed, or leave hf-modernbert-fa2 out")
    if "fp32" in dtypes:
        raise MmbertError("--models hf-modernbert-fa2: flash-attention-2 has no fp32 kernels; "
                          "expected --dtype bf16")


def run_bench(out: str | Path, *, workloads: list[str] | None = None,
              dtypes: list[str] | None = None, quick: bool = False, runs: int | None = None,
              device: str = "auto", preset_name: str = "mmbert-base",
              models: list[str] | None = None, seed: int = 0, threads: int | None = None,
              force: bool = False, progress: bool = True,
              peak_tflops: float | None = None) -> dict:
    """Run the chosen workloads and dtypes, merge into ``out/results.json``, re-render the
    table and chart. Returns the merged results. ``peak_tflops``: the device's nominal dense
    TFLOP/s, for MFU (e.g. 989 for bf16 on an H100/H200 SXM)."""
    workloads = list(workloads or WORKLOADS)
    dtypes = list(dtypes or ["fp32", "bf16"])
    models_t = tuple(models or DEFAULT_MODELS)
    check_arguments(workloads, dtypes, models_t, runs, peak_tflops)
    cfg = preset(preset_name)
    dev = resolve_device(device)
    check_flash_models(models_t, dtypes, dev)
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    sizes = dict(SIZES["quick" if quick else ("gpu" if dev.type == "cuda" else "full")])
    runs = runs or sizes["runs"]
    spec = peak_tflops * 1e12 if peak_tflops else None

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = read_json(path, "a bench results.json") if path.is_file() else {"entries": {}}
    results["machine"] = machine_info(dev)

    from tqdm import tqdm

    fast, p32, p16 = bf16_fast(dev) if "bf16" in dtypes else (True, 0.0, 0.0)
    jobs = [(w, d) for d in dtypes for w in workloads]
    for w, d in tqdm(jobs, desc="bench", disable=not progress):
        key = f"{w}/{d}"
        entry: dict[str, Any] = dict(workload=w, dtype=d, quick=quick, runs=runs,
                                     preset=preset_name, time=time.strftime("%Y-%m-%d %H:%M:%S"))
        if d == "bf16" and not fast and not force:
            entry["skipped"] = (f"bf16 matmul {p16 / 1e9:.2f} GFLOP/s vs fp32 {p32 / 1e9:.1f} "
                                f"GFLOP/s on this CPU (no AVX512-BF16/AMX): not accelerated")
            results["entries"][key] = entry
            continue
        ctx = Ctx(cfg, DTYPES[d], dev, sizes, runs, seed, models_t, spec_peak=spec)
        cases = RUNNERS[w](ctx)
        entry.update(peak_flops_per_s=max(ctx.peaks), peak_samples=ctx.peaks, cases=cases)
        if spec:
            entry["spec_peak_flops_per_s"] = spec
        results["entries"][key] = entry
        write_json(path, results)  # keep finished workloads even if a later one fails
    write_json(path, results)
    write_text(out / "results.md", render_table(results))
    plot(results, out / "bench.png")
    return results


def _find(entry: dict, model: str, prefix: str | None = None) -> dict | None:
    for c in entry.get("cases", []):
        if c["model"] == model and (prefix is None or c["case"].startswith(prefix)):
            return c
    return None


def targets(results: dict) -> list[tuple[str, float | None, float, bool | None]]:
    """(description, measured value, target, met) for each of the benchmark's targets."""
    E = results.get("entries", {})
    rows: list[tuple[str, float | None, float, bool | None]] = []

    def ratio(w: str, d: str, a: str, b: str) -> float | None:
        e = E.get(f"{w}/{d}", {})
        ca, cb = _find(e, a), _find(e, b)
        return ca["tokens_per_s"] / cb["tokens_per_s"] if ca and cb else None

    def add(desc: str, value: float | None, target: float, higher: bool = True) -> None:
        met = None if value is None else (value >= target if higher else value <= target)
        rows.append((desc, value, target, met))

    for d in DTYPES:
        add(f"mixed {d}: ours / transformers ModernBERT", ratio("mixed", d, "mmbert",
                                                               "hf-modernbert"), 2.0)
        add(f"mixed {d}: ours / XLM-R base", ratio("mixed", d, "mmbert", "hf-xlmr"), 1.2)
    for w in ("fixed", "mixed"):
        a, b = _find(E.get(f"{w}/bf16", {}), "mmbert"), _find(E.get(f"{w}/fp32", {}), "mmbert")
        add(f"{w}: ours bf16 / ours fp32", a["tokens_per_s"] / b["tokens_per_s"]
            if a and b else None, 1.8)
    for d in DTYPES:
        e = E.get(f"long/{d}", {})
        lo, ref = _find(e, "mmbert", "long "), _find(e, "mmbert", "long-ref")
        add(f"long {d}: ours per-token cost 8192 / 512", ref["tokens_per_s"] / lo["tokens_per_s"]
            if lo and ref else None, 1.5, higher=False)
        add(f"train {d}: ours / transformers ModernBertForMaskedLM",
            ratio("train", d, "mmbert", "hf-modernbert"), 2.0)
        c = _find(E.get(f"fixed/{d}", {}), "mmbert")
        add(f"fixed {d}: ours, fraction of matmul peak", c["peak_fraction"] if c else None, 0.70)
    for w in WORKLOADS:  # listed where measured (CUDA with flash-attn): the GPU baseline to beat
        v = ratio(w, "bf16", "mmbert", "hf-modernbert-fa2")
        if v is not None:
            add(f"{w} bf16: ours / transformers ModernBERT flash-attention-2", v, 1.0)
    for d in DTYPES:
        v = ratio("train", d, "mmbert-compiled", "mmbert")
        if v is not None:
            add(f"train {d}: ours torch.compile / ours eager (speed-up)", v, 1.0)
    return rows


def render_table(results: dict) -> str:
    m = results.get("machine", {})
    gpu = (f"GPU {m['gpu']} (CUDA {m.get('cuda')}, flash-attn: {m.get('flash_attn')}), "
           if m.get("gpu") else "")
    entries = results.get("entries", {}).values()
    spec = next((e["spec_peak_flops_per_s"] for e in entries if "spec_peak_flops_per_s" in e),
                None)
    mfu_head, mfu_rule = (f" MFU (of {spec / 1e12:g} TFLOP/s) |", "---:|") if spec else ("", "")
    lines = ["# mmbert bench", "",
             f"Machine: {gpu}{m.get('cpu')} ({m.get('threads')} threads, "
             f"{m.get('cpu_capability')}, oneDNN bf16: {m.get('mkldnn_bf16')}), device "
             f"{m.get('device')}, torch {m.get('torch')}, transformers {m.get('transformers')}.",
             "",
             "| workload | dtype | model | real tokens | seconds | tokens/s | ours / this | "
             "useful TFLOP/s | % of peak | load avg |" + mfu_head,
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|" + mfu_rule]
    for key, e in sorted(results.get("entries", {}).items(),
                         key=lambda kv: (WORKLOADS.index(kv[1]["workload"]), kv[1]["dtype"])):
        if "skipped" in e:
            lines.append(f"| {e['workload']} | {e['dtype']} | (skipped: {e['skipped']}) |"
                         " | | | | | | |" + (" |" if spec else ""))
            continue
        for c in e["cases"]:
            ours = _find(e, "mmbert", c["case"])
            rel = (ours["tokens_per_s"] / c["tokens_per_s"]) if ours else float("nan")
            load = "/".join(f"{x:.1f}" for x in c["loadavg"] if x is not None)
            lines.append(
                f"| {c['case']}{' (quick)' if e.get('quick') else ''} | {e['dtype']} | "
                f"{c['model']} | {c['tokens']} | {c['seconds']:.3f} | {c['tokens_per_s']:.0f} | "
                f"{rel:.2f}x | {c['useful_flops_per_s'] / 1e12:.3f} | "
                f"{100 * c['peak_fraction']:.0f}% | {load} |"
                + (f" {100 * c['mfu']:.1f}% |" if "mfu" in c else (" – |" if spec else "")))
    lines += ["", "% of peak: useful FLOP/s over the matmul peak measured right before and after "
              "each run (median over runs). Best matmul sample per workload: " + ", ".join(
        f"{k} {e['peak_flops_per_s'] / 1e9:.0f} GFLOP/s"
        for k, e in sorted(results.get("entries", {}).items()) if "peak_flops_per_s" in e)]
    if spec:
        lines += ["", f"MFU: useful FLOP/s over the nominal {spec / 1e12:g} TFLOP/s (per real "
                  "token 2 x the linear layers' weights + attention pairs forward, 3x that for "
                  "a training step: 6N + attention; the decoder at masked tokens only)."]
    lines += ["", "| target | measured | goal | met |", "|---|---:|---:|---|"]
    for desc, value, goal, met in targets(results):
        v = "n/a" if value is None else f"{value:.2f}"
        lines.append(f"| {desc} | {v} | {'>=' if 'cost' not in desc else '<='} {goal} | "
                     f"{'-' if met is None else ('yes' if met else 'no')} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str | Path) -> None:
    """Grouped bars: tokens/s per workload and dtype, one bar per model (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups, series = [], {}
    for key, e in sorted(results.get("entries", {}).items(),
                         key=lambda kv: (WORKLOADS.index(kv[1]["workload"]), kv[1]["dtype"])):
        for c in e.get("cases", []):
            g = f"{c['case']}\n{e['dtype']}"
            if g not in groups:
                groups.append(g)
            series.setdefault(c["model"], {})[g] = c["tokens_per_s"]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4.5))
    width = 0.8 / max(1, len(series))
    for k, (model, vals) in enumerate(sorted(series.items())):
        xs = [i + k * width for i, g in enumerate(groups) if g in vals]
        ys = [vals[g] for g in groups if g in vals]
        bars = ax.bar(xs, ys, width, label=model)
        ax.bar_label(bars, fmt="%.0f", fontsize=7, rotation=90, padding=2)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel("real tokens / s")
    if series:
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    m = results.get("machine", {})
    where = m.get("gpu") or f"{m.get('cpu', '')}, {m.get('threads')} threads"
    ax.set_title(f"mmbert vs transformers — {where}", fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
