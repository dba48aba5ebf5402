"""Model merging (TIES, linear) and the strided small-from-base initialisation.

Everything here works on transformers-layout directories (``config.json`` + ``model.safetensors``
or a sharded ``model.safetensors.index.json``) and never builds a model: tensors are read lazily
(:class:`mmbert.safetensors_dir.SafetensorsDir`), one tensor (or one block of rows) at a time,
and the output ``model.safetensors`` is streamed to disk tensor by tensor
(:class:`mmbert.safetensors_dir.SafetensorsStream`). Peak memory is a small multiple of
the largest single tensor (the 256k x 768 embedding), not of the model.

TIES-merging (Yadav et al. 2023, arXiv 2306.01708), per tensor, with task vectors
``tau_m = theta_m - theta_base`` computed in fp32:

1. Trim: keep the entries of ``tau_m`` whose magnitude is >= the k-th largest magnitude of that
   tensor, ``k = ceil(density * n)`` (at least 1). Entries tied with the k-th magnitude are all
   kept (so a few more than k can survive); the rule depends only on values, never on the order
   of the entries, and it matches the reference TIES code (kthvalue, then ``>=``). The rest -> 0.
2. Elect: ``sign_i = sign(sum_m w_m * trimmed_m,i)`` (sign of the total mass).
3. Disjoint mean: ``merged_i = sum_{m in A_i} w_m trimmed_m,i / sum_{m in A_i} w_m`` where
   ``A_i`` are the models whose trimmed entry is non-zero with the elected sign. Where ``A_i``
   is empty (everything trimmed, or the masses cancel to sign 0) ``merged_i = 0``.
4. ``theta = theta_base + lam * merged``.

Weights default to 1 (only their ratios matter). Defaults are TIES' own no-dev-set settings:
``density = 0.2`` and ``lam = 1``; mmBERT did not publish its values.

Linear: ``theta = sum_m wbar_m theta_m`` with ``wbar = w / sum(w)`` (equal weights by default).
With ``base`` and ``lam != 1`` it is task arithmetic:
``base + lam * sum_m wbar_m (theta_m - base)``.

Small from base (:func:`init_small`): mmBERT says only that mmBERT-small was initialised from
base by "strided sampling" of weights; no code is public. We implement weight selection (Xu et
al. 2024, arXiv 2311.18823) with one consistent set of indices per dimension:

* residual (hidden) dimension: ``r_j = residual_offset + j * (H_base // H_small)`` used in
  *every* tensor that reads or writes the residual stream (embeddings, every LayerNorm, Wqkv
  columns, attention Wo rows, Wi columns, MLP Wo rows, head.dense rows and columns, untied
  decoder columns). Using one set everywhere keeps the selected sub-network consistent.
* attention: whole heads (head_dim is kept; striding inside a head would break RoPE's pairs):
  heads ``head_offset + j * (n_base // n_small)`` by default, or an explicit list; their rows
  of Wq, Wk, Wv and the matching columns of Wo.
* MLP intermediate: kept whole when sizes match (mmBERT: 1152 both), else strided with
  ``intermediate_offset``; the same indices pick the input and the gate half of Wi.
* layers: the first ``L_small`` (Xu et al.'s first-N choice, which also keeps every layer's
  global/local type) or an explicit list starting at 0 (layer 0 has no attention LayerNorm).
* decoder bias and the vocabulary are kept whole; no rescaling (weight selection copies values).
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from mmbert.config import ModelConfig, preset
from mmbert.errors import MmbertError
from mmbert.outputs import OutputDir, read_json, write_json
from mmbert.safetensors_dir import (CONFIG, TOKENIZER_FILES_WITH_ADDED, WEIGHTS, SafetensorsDir,
                                    SafetensorsStream, copy_tokenizer)

DEFAULT_DENSITY = 0.2  # TIES' default: keep the top 20 % of each task vector
DEFAULT_LAMBDA = 1.0
METHODS = ("ties", "linear")
# Elements per block of rows when combining tensors (per model); bounds memory for big tensors.
CHUNK_ELEMS = 1 << 22
_TIED = "decoder.weight"
# Fields that do not change the weights' meaning; the others must agree between merged models.
_IGNORED_FIELDS = {"embedding_dropout", "attention_dropout", "mlp_dropout", "classifier_dropout",
                   "initializer_range", "initializer_cutoff_factor", "classifier_pooling",
                   "classifier_activation"}


# =============================================================================================
# Input and output directories (read with mmbert.safetensors_dir)
# =============================================================================================

class Checkpoint(SafetensorsDir):
    """A model directory to merge or shrink: its config.json and its weights, read lazily."""

    def __init__(self, path: str | Path, role: str = "model") -> None:
        p = Path(path)
        if not p.is_dir():
            raise MmbertError(f"{role} {p}: no such directory; expected a transformers ModernBERT "
                              "directory (config.json + model.safetensors)")
        self.config_dict = read_json(p / CONFIG, "a transformers config.json")
        self.config = ModelConfig.from_hf_dict(self.config_dict, source=str(p / CONFIG))
        super().__init__(p, role)


def _check_out(out: OutputDir, inputs: Sequence[Path]) -> None:
    """``out`` must not be one of the inputs, and it follows the output directory rule."""
    for p in inputs:
        if out.out.resolve() == p.resolve():
            raise MmbertError(f"--out {out.out}: is also an input; expected a new directory")
    out.check()


def _copy_tokenizer(sources: Sequence[Path], dst: Path) -> Path | None:
    """Copy the tokenizer files of the first source that has any; returns that source."""
    for src in sources:
        if copy_tokenizer(src, dst, TOKENIZER_FILES_WITH_ADDED):
            return src
    return None


def _progress(items: list, desc: str) -> Iterator:
    return iter(tqdm(items, desc=desc, unit="tensor", disable=None, leave=False))


# =============================================================================================
# TIES and linear merging of tensors
# =============================================================================================

def keep_count(n: int, density: float) -> int:
    """Entries a trimmed tensor of ``n`` entries keeps: ``ceil(density * n)``, at least 1.

    ``density * n`` is rounded to 6 decimals first, so float noise (0.7 * 10 gives
    7.000000000000001) does not add an entry.
    """
    return min(n, max(1, math.ceil(round(density * n, 6))))


def magnitude_threshold(magnitudes: np.ndarray, density: float) -> float:
    """The k-th largest value of a flat float array (``k = keep_count``); partitions it in place."""
    n = magnitudes.size
    k = keep_count(n, density)
    if k == n:
        return 0.0  # keep everything
    magnitudes.partition(n - k)
    return float(magnitudes[n - k])


def _ties_combine(base: torch.Tensor, models: Sequence[torch.Tensor], weights: Sequence[float],
                  thresholds: Sequence[float], lam: float) -> torch.Tensor:
    """TIES on fp32 blocks, given each model's magnitude threshold for the whole tensor."""
    total = torch.zeros_like(base)
    trimmed = []
    for m, w, thr in zip(models, weights, thresholds):
        tv = m - base
        if thr > 0:
            tv = torch.where(tv.abs() >= thr, tv, torch.zeros_like(tv))
        trimmed.append(tv)
        total += w * tv
    sign = torch.sign(total)
    num = torch.zeros_like(base)
    den = torch.zeros_like(base)
    for tv, w in zip(trimmed, weights):
        agree = ((torch.sign(tv) == sign) & (tv != 0)).to(base.dtype)
        num += w * tv * agree
        den += w * agree
    merged = torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))
    return base + lam * merged


def _linear_combine(base: torch.Tensor | None, models: Sequence[torch.Tensor],
                    weights: Sequence[float], lam: float) -> torch.Tensor:
    wsum = float(sum(weights))
    if base is None:
        out = torch.zeros_like(models[0])
        for m, w in zip(models, weights):
            out += (w / wsum) * m
        return out
    tv = torch.zeros_like(base)
    for m, w in zip(models, weights):
        tv += (w / wsum) * (m - base)
    return base + lam * tv


def ties_merge_tensors(base: torch.Tensor, models: Sequence[torch.Tensor], *,
                       weights: Sequence[float] | None = None, density: float = DEFAULT_DENSITY,
                       lam: float = DEFAULT_LAMBDA) -> torch.Tensor:
    """TIES-merge whole tensors (fp32 math, result in ``models[0].dtype``). See module docstring."""
    weights = [1.0] * len(models) if weights is None else list(weights)
    b = base.float()
    ms = [m.float() for m in models]
    thresholds = [magnitude_threshold((m - b).abs().reshape(-1).numpy(), density)
                  if m.numel() else 0.0 for m in ms]
    return _ties_combine(b, ms, weights, thresholds, lam).to(models[0].dtype)


def linear_merge_tensors(models: Sequence[torch.Tensor], *, weights: Sequence[float] | None = None,
                         base: torch.Tensor | None = None,
                         lam: float = DEFAULT_LAMBDA) -> torch.Tensor:
    """Weighted mean of whole tensors (weights normalised), or task arithmetic with ``base``."""
    weights = [1.0] * len(models) if weights is None else list(weights)
    b = None if base is None or lam == 1.0 else base.float()
    return _linear_combine(b, [m.float() for m in models], weights, lam).to(models[0].dtype)


# =============================================================================================
# Merging directories
# =============================================================================================

def _check_same_architecture(cks: Sequence[Checkpoint]) -> None:
    ref = cks[0]
    for ck in cks[1:]:
        for field in ref.config.__dataclass_fields__:
            if field in _IGNORED_FIELDS:
                continue
            a, b = getattr(ref.config, field), getattr(ck.config, field)
            if a != b:
                raise MmbertError(
                    f"{ck.path}/config.json: {field} = {b!r} but {ref.path}/config.json has {a!r}; "
                    "expected models of one architecture")


def _tensor_names(cks: Sequence[Checkpoint], tied: bool) -> list[str]:
    """Names to merge (the tied decoder weight is dropped); checks names and shapes agree."""
    ref = cks[0]
    names = [n for n in ref.names if not (tied and n == _TIED)]
    for ck in cks[1:]:
        other = {n for n in ck.names if not (tied and n == _TIED)}
        missing, extra = sorted(set(names) - other), sorted(other - set(names))
        if missing or extra:
            what = (f"lacks {missing[0]!r}" if missing else f"has extra tensor {extra[0]!r}")
            raise MmbertError(f"{ck.path}: {what} (compared with {ref.path}); expected the same "
                              "tensors in every model")
        for n in names:
            if ck.shape(n) != ref.shape(n):
                raise MmbertError(f"{ck.path}: tensor {n!r} has shape {list(ck.shape(n))} but "
                                  f"{ref.path} has {list(ref.shape(n))}; expected equal shapes")
    if not tied and _TIED not in names and "model.embeddings.tok_embeddings.weight" in names:
        raise MmbertError(f"{ref.path}: tie_word_embeddings is false but there is no "
                          f"{_TIED!r}; expected an untied decoder weight")
    return names


def merge(models: Sequence[str | Path], out: str | Path, *, method: str = "ties",
          base: str | Path | None = None, density: float | None = None,
          weights: Sequence[float] | None = None, lam: float | None = None,
          chunk_elems: int = CHUNK_ELEMS, overwrite: bool = False) -> Path:
    """Merge transformers-layout directories into ``out`` (see the module docstring).

    ``method``: ``"ties"`` (needs ``base``; ``density`` default 0.2, ``lam`` default 1) or
    ``"linear"`` (weighted mean; with ``base`` and ``lam`` it is task arithmetic). Output:
    config.json of the first model, model.safetensors in the first model's dtypes (math in fp32),
    the tokenizer files of the first model that has them (else the base's), and merge.json.
    ``out`` is an output directory (:class:`mmbert.outputs.OutputDir`).
    """
    if method not in METHODS:
        raise MmbertError(f"--method {method!r}: expected one of {list(METHODS)}")
    if not models:
        raise MmbertError("--models: no model given; expected at least one directory")
    if weights is not None:
        weights = [float(w) for w in weights]
        if len(weights) != len(models):
            raise MmbertError(f"--weights: {len(weights)} values for {len(models)} models; "
                              "expected one weight per model")
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise MmbertError(f"--weights {weights}: expected positive finite numbers")
    weights = weights or [1.0] * len(models)
    if method == "ties":
        if base is None:
            raise MmbertError("--base: missing; TIES needs the common base model the others "
                              "were trained from")
        density = DEFAULT_DENSITY if density is None else float(density)
        if not (0.0 < density <= 1.0):
            raise MmbertError(f"--density {density}: expected a fraction in (0, 1]")
    elif density is not None:
        raise MmbertError("--density: applies only to --method ties")
    lam = DEFAULT_LAMBDA if lam is None else float(lam)
    if not math.isfinite(lam):
        raise MmbertError(f"--lambda {lam}: expected a finite number")
    if method == "linear" and base is None and lam != 1.0:
        raise MmbertError("--lambda: a linear merge uses it only with --base (task arithmetic)")

    od = OutputDir(out, overwrite=overwrite)
    base_ck = Checkpoint(base, "--base") if base is not None else None
    cks = [Checkpoint(m, "--models") for m in models]
    _check_out(od, [c.path for c in cks] + ([base_ck.path] if base_ck else []))
    everyone = cks + ([base_ck] if base_ck else [])
    _check_same_architecture(everyone)
    tied = cks[0].config.tie_word_embeddings
    names = _tensor_names(everyone, tied)
    specs = [(n, cks[0].dtype(n), cks[0].shape(n)) for n in names]
    need_base = base_ck is not None and (method == "ties" or lam != 1.0)

    with od as tmp:
        with SafetensorsStream(tmp / WEIGHTS, specs) as writer:
            for name in _progress(names, f"merge ({method})"):
                _merge_one(name, cks, base_ck if need_base else None, method, weights,
                           density if method == "ties" else 1.0, lam, writer, chunk_elems)
        shutil.copyfile(cks[0].path / CONFIG, tmp / CONFIG)
        tok_src = _copy_tokenizer([c.path for c in everyone], tmp)
        info = {"method": method, "models": [str(c.path) for c in cks],
                "base": str(base_ck.path) if base_ck else None, "weights": weights,
                "density": density if method == "ties" else None, "lambda": lam,
                "tokenizer_from": str(tok_src) if tok_src else None}
        write_json(tmp / "merge.json", info)
    return Path(out)


def _merge_one(name: str, cks: Sequence[Checkpoint], base_ck: Checkpoint | None, method: str,
               weights: Sequence[float], density: float, lam: float,
               writer: SafetensorsStream, chunk_elems: int) -> None:
    shape, dtype = cks[0].shape(name), cks[0].dtype(name)
    n = math.prod(shape)
    if n == 0:
        return
    if not dtype.is_floating_point:  # integer buffers: must agree, copied as they are
        ref = cks[0].read(name)
        for ck in cks[1:]:
            if not torch.equal(ck.read(name), ref):
                raise MmbertError(f"{ck.path}: non-float tensor {name!r} differs from "
                                  f"{cks[0].path}; expected equal values")
        writer.write(name, ref)
        return
    rows = shape[0] if shape else 1
    step = max(1, chunk_elems // max(1, n // rows))
    blocks = [(a, min(rows, a + step)) for a in range(0, rows, step)]

    thresholds = [0.0] * len(cks)
    if method == "ties" and keep_count(n, density) < n:
        mags = np.empty(n, dtype=np.float32)  # one tensor's magnitudes, reused for each model
        per_row = n // rows
        for i, ck in enumerate(cks):
            for a, b in blocks:
                tv = ck.rows(name, a, b).float() - base_ck.rows(name, a, b).float()
                mags[a * per_row:b * per_row] = tv.abs().reshape(-1).numpy()
            if not np.isfinite(mags).all():
                raise MmbertError(f"{ck.path}: tensor {name!r} has NaN or inf values; "
                                  "expected finite weights")
            thresholds[i] = magnitude_threshold(mags, density)
        del mags

    for a, b in blocks:
        ms = [ck.rows(name, a, b).float() for ck in cks]
        bs = base_ck.rows(name, a, b).float() if base_ck is not None else None
        if method == "ties":
            merged = _ties_combine(bs, ms, weights, thresholds, lam)
        else:
            merged = _linear_combine(bs, ms, weights, lam)
        writer.write(name, merged.to(dtype))


# =============================================================================================
# mmBERT-small from mmBERT-base: strided weight selection
# =============================================================================================

@dataclass(frozen=True)
class SmallInitPlan:
    """Which base indices the small model keeps (every list is in the small model's order)."""

    residual: list[int]       # hidden (residual stream) coordinates
    heads: list[int]          # attention heads
    head_dims: list[int]      # rows of Wq/Wk/Wv (and columns of attention Wo) of those heads
    intermediate: list[int]   # MLP intermediate units (input and gate half alike)
    layers: list[int]         # base layer feeding each small layer
    base: ModelConfig
    target: ModelConfig


def _strided(n_from: int, n_to: int, offset: int, what: str) -> list[int]:
    if n_to > n_from or n_from % n_to:
        raise MmbertError(f"{what}: base size {n_from} is not a multiple of the target size "
                          f"{n_to}; expected a divisor of {n_from} (strided selection)")
    stride = n_from // n_to
    if not (0 <= offset < stride):
        raise MmbertError(f"{what} offset {offset}: expected 0 <= offset < stride ({stride})")
    return [offset + j * stride for j in range(n_to)]


def plan_small_init(base: ModelConfig, target: ModelConfig, *, residual_offset: int = 0,
                    head_offset: int = 0, heads: Sequence[int] | None = None,
                    intermediate_offset: int = 0,
                    layers: Sequence[int] | None = None) -> SmallInitPlan:
    """Choose the indices; ``target`` supplies only the four sizes (the rest comes from base)."""
    target = base.replace(hidden_size=target.hidden_size,
                          intermediate_size=target.intermediate_size,
                          num_attention_heads=target.num_attention_heads,
                          num_hidden_layers=target.num_hidden_layers)
    residual = _strided(base.hidden_size, target.hidden_size, residual_offset, "hidden_size")
    if target.head_dim != base.head_dim:
        raise MmbertError(
            f"num_attention_heads: target head dimension {target.head_dim} "
            f"({target.hidden_size}/{target.num_attention_heads}) differs from the base's "
            f"{base.head_dim}; expected whole heads to be kept (RoPE rotates pairs inside a head)")
    if heads is None:
        heads = _strided(base.num_attention_heads, target.num_attention_heads, head_offset,
                         "num_attention_heads")
    else:
        heads = [int(h) for h in heads]
        if (len(heads) != target.num_attention_heads or len(set(heads)) != len(heads)
                or not all(0 <= h < base.num_attention_heads for h in heads)):
            raise MmbertError(f"--heads {heads}: expected {target.num_attention_heads} distinct "
                              f"heads in [0, {base.num_attention_heads})")
    d = base.head_dim
    head_dims = [h * d + i for h in heads for i in range(d)]
    intermediate = _strided(base.intermediate_size, target.intermediate_size, intermediate_offset,
                            "intermediate_size")
    if layers is None:
        if target.num_hidden_layers > base.num_hidden_layers:
            raise MmbertError(f"num_hidden_layers: target {target.num_hidden_layers} > base "
                              f"{base.num_hidden_layers}; expected at most the base's layers")
        layers = list(range(target.num_hidden_layers))
    else:
        layers = [int(x) for x in layers]
        ok = (len(layers) == target.num_hidden_layers and layers[:1] == [0]
              and all(a < b for a, b in zip(layers, layers[1:]))
              and layers[-1] < base.num_hidden_layers)
        if not ok:
            raise MmbertError(f"--layers {layers}: expected {target.num_hidden_layers} increasing "
                              f"base layers in [0, {base.num_hidden_layers}) starting at 0 "
                              "(layer 0 has no attention LayerNorm)")
    return SmallInitPlan(residual, list(heads), head_dims, intermediate, list(layers), base, target)


_LAYER = re.compile(r"^(.*?layers\.)(\d+)\.(.*)$")
_NORM = re.compile(r"(^|\.)(norm|attn_norm|mlp_norm|final_norm)\.(weight|bias)$")


def _selection(name: str, plan: SmallInitPlan) -> tuple[list[int] | None, ...] | None:
    """Index lists per dimension for a (layer-renamed) tensor; None keeps a dimension whole."""
    R, D, M = plan.residual, plan.head_dims, plan.intermediate
    Hb, Ib = plan.base.hidden_size, plan.base.intermediate_size
    qkv = [p * Hb + i for p in range(3) for i in D]
    wi = M + [Ib + i for i in M]
    rules = {
        "embeddings.tok_embeddings.weight": (None, R), "decoder.weight": (None, R),
        "decoder.bias": (None,), "attn.Wqkv.weight": (qkv, R), "attn.Wqkv.bias": (qkv,),
        "attn.Wo.weight": (R, D), "attn.Wo.bias": (R,), "mlp.Wi.weight": (wi, R),
        "mlp.Wi.bias": (wi,), "mlp.Wo.weight": (R, M), "mlp.Wo.bias": (R,),
        "head.dense.weight": (R, R), "head.dense.bias": (R,),
    }
    for suffix, sel in rules.items():
        if name == suffix or name.endswith("." + suffix):
            return sel
    if _NORM.search(name):
        return (R,)
    return None


def _small_specs(ck: Checkpoint, plan: SmallInitPlan, tied: bool) -> list[tuple[str, str, tuple]]:
    """(output name, base name, selection) for every output tensor."""
    out = []
    for name in ck.names:
        if tied and name == _TIED:
            continue
        src_name, new_name = name, name
        m = _LAYER.match(name)
        if m:
            layer = int(m.group(2))
            if layer not in plan.layers:
                continue
            new_name = f"{m.group(1)}{plan.layers.index(layer)}.{m.group(3)}"
        sel = _selection(name, plan)
        if sel is None:
            raise MmbertError(f"{ck.path}: unknown tensor {name!r}; expected a ModernBERT "
                              "masked-LM (or encoder) checkpoint")
        if len(sel) != len(ck.shape(name)):
            raise MmbertError(f"{ck.path}: tensor {name!r} has shape {list(ck.shape(name))}; "
                              f"expected {len(sel)} dimensions")
        out.append((new_name, src_name, sel))
    return sorted(out)


def init_small(base_dir: str | Path, out_dir: str | Path,
               target: ModelConfig | str = "mmbert-small", *, residual_offset: int = 0,
               head_offset: int = 0, heads: Sequence[int] | None = None,
               intermediate_offset: int = 0, layers: Sequence[int] | None = None,
               overwrite: bool = False) -> Path:
    """Write a smaller model initialised from ``base_dir`` by strided weight selection.

    ``target``: a preset name or a ModelConfig; only its hidden_size, num_attention_heads,
    intermediate_size and num_hidden_layers are used, the rest (vocabulary, RoPE, window, special
    ids) is the base's. Values are copied exactly, in the base's dtype. Tokenizer files are copied.
    ``out_dir`` is an output directory (:class:`mmbert.outputs.OutputDir`).
    """
    ck = Checkpoint(base_dir, "--from")
    od = OutputDir(out_dir, overwrite=overwrite)
    _check_out(od, [ck.path])
    target_cfg = preset(target) if isinstance(target, str) else target
    plan = plan_small_init(ck.config, target_cfg, residual_offset=residual_offset,
                           head_offset=head_offset, heads=heads,
                           intermediate_offset=intermediate_offset, layers=layers)
    tied = ck.config.tie_word_embeddings
    specs = _small_specs(ck, plan, tied)

    cfg = {k: v for k, v in ck.config_dict.items() if k != "_name_or_path"}
    t = plan.target
    cfg.update(hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
               num_attention_heads=t.num_attention_heads, num_hidden_layers=t.num_hidden_layers)
    if "layer_types" in cfg:  # transformers 5.x: follow the small model's global/local cadence
        cfg["layer_types"] = ["full_attention" if t.is_global_layer(i) else "sliding_attention"
                              for i in range(t.num_hidden_layers)]
    ModelConfig.from_hf_dict(cfg, source="target config")  # validates

    shapes = []
    for new, src, sel in specs:
        shape = ck.shape(src)
        shapes.append((new, ck.dtype(src),
                       tuple(shape[i] if s is None else len(s) for i, s in enumerate(sel))))
    with od as tmp:
        with SafetensorsStream(tmp / WEIGHTS, shapes) as writer:
            for new, src, sel in _progress(specs, "init-small"):
                x = ck.read(src)
                for dim, idx in enumerate(sel):
                    if idx is not None:
                        x = x.index_select(dim, torch.tensor(idx, dtype=torch.long))
                writer.write(new, x)
        write_json(tmp / CONFIG, dict(sorted(cfg.items())))
        _copy_tokenizer([ck.path], tmp)
        info = {"method": "strided weight selection (Xu et al. 2024)", "base": str(ck.path),
                "layers": plan.layers, "heads": plan.heads,
                "residual_offset": residual_offset, "residual_stride":
                plan.base.hidden_size // t.hidden_size, "intermediate_offset": intermediate_offset,
                "intermediate_stride": plan.base.intermediate_size // t.intermediate_size}
        write_json(tmp / "init_small.json", info)
    return Path(out_dir)
