"""AdamW with decoupled weight decay, and StableAdamW (AdamW + per-parameter update clipping).

ModernBERT and mmBERT train with Composer's ``decoupled_stableadamw``; we follow its conventions:

- Decoupled weight decay (Loshchilov & Hutter): ``p -= wd * s * p`` where ``s`` is the LR
  schedule multiplier (lr / peak lr), not the LR itself. That is why mmBERT's recipe says
  ``weight_decay: 8e-5`` (torch's AdamW would need 8e-5 / 8e-4 = 0.1 for the same decay).
- StableAdamW (Wortsman et al. 2023, "Stable and low-precision training for large-scale
  vision-language models"): Adafactor-style update clipping per parameter tensor. With
  ``rms = sqrt(mean(g^2 / max(v_hat, eps^2)))`` the step size is ``lr / max(1, rms)``; it
  replaces global gradient clipping when a few gradients spike (a recipe may still clip).
- No weight decay on LayerNorm weights, biases and embeddings (ModernBERT's
  ``filter_bias_norm_wd``; the tied decoder shares the embedding matrix).

Plain loops over tensors: the optimizer is a small share of a step, and this keeps the state
layout (``exp_avg``, ``exp_avg_sq``, ``step`` per parameter) simple to checkpoint. It works on
FSDP2's sharded DTensor parameters too (the RMS is a global mean over the sharded tensor).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def no_decay(name: str, param: torch.Tensor) -> bool:
    """ModernBERT's rule: biases, norms (1-D) and embeddings are not decayed."""
    return param.ndim < 2 or "norm" in name or "embeddings" in name or name.endswith(".bias")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups, named so checkpoints and logs can tell them apart."""
    decay, keep = [], []
    for name, p in model.named_parameters():  # tied parameters are listed once
        if p.requires_grad:
            (keep if no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "group": "decay"},
            {"params": keep, "weight_decay": 0.0, "group": "no_decay"}]


class AdamW(torch.optim.Optimizer):
    """AdamW with decoupled weight decay; ``update_clip=True`` makes it StableAdamW.

    Each step reads ``group["lr"]`` and ``group["wd_scale"]`` (the schedule multiplier for the
    decoupled decay), which the trainer sets before every step.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.98),
                 eps: float = 1e-6, weight_decay: float = 0.0, update_clip: bool = True):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        wd_scale=1.0, update_clip=update_clip)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        assert closure is None, "closures are not supported"
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            b1, b2 = group["betas"]
            wd = group["weight_decay"] * group["wd_scale"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(g, 1.0 - b1)
                v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
                bc1 = 1.0 - b1 ** t
                bc2 = 1.0 - b2 ** t
                scale = 1.0
                if group["update_clip"]:
                    v_hat = v / bc2
                    rms = (g * g / v_hat.clamp_min(eps * eps)).mean().sqrt()
                    scale = 1.0 / rms.clamp_min(1.0)  # a tensor: no host sync
                if wd:
                    p.mul_(1.0 - wd * scale)
                denom = (v / bc2).sqrt_().add_(eps)
                if isinstance(scale, float):
                    p.addcdiv_(m, denom, value=-lr / bc1)
                else:
                    p.sub_(m / denom * (scale * (lr / bc1)))
        return None


def build_optimizer(model: nn.Module, name: str, lr: float, betas: tuple[float, float],
                    eps: float, weight_decay: float) -> AdamW:
    """``name``: "adamw" or "stableadamw" (see the module docstring)."""
    return AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps,
                 weight_decay=weight_decay, update_clip=(name == "stableadamw"))


def set_hparams(opt: torch.optim.Optimizer, lr: float, wd_scale: float,
                weight_decay: float) -> None:
    """Per-step LR and decay multiplier; the decay group also takes the phase's weight decay."""
    for g in opt.param_groups:
        g["lr"] = lr
        g["wd_scale"] = wd_scale
        if g.get("group") == "decay":
            g["weight_decay"] = weight_decay
