"""Data-parallel training under ``torchrun``: DDP or FSDP2, gloo on CPU, nccl on GPU.

Launch: ``torchrun --nproc_per_node N -m mmbert.cli pretrain ...`` (or the ``mmbert`` script).
torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them we run as a single process.

- DDP (``distributed: ddp``): full replicas, gradients all-reduced (averaged) in backward.
- FSDP2 (``distributed: fsdp``): ``torch.distributed.fsdp.fully_shard`` on every encoder layer
  and the root; parameters, gradients and optimizer moments are sharded DTensors. Checkpoints
  gather full tensors, so a checkpoint does not depend on the strategy or the world size.

Both average gradients over ranks; the trainer scales its loss by the world size so that the
gradient is that of (sum of token losses over the global batch) / (masked tokens in the global
batch), the same number a single process computes for the same batch.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistEnv:
    """Join the torchrun process group if there is one (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend,
                                device_id=device if device.type == "cuda" else None)
    return DistEnv(rank, world, local, device)


def shutdown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, env: DistEnv, strategy: str) -> nn.Module:
    """DDP or FSDP2 around ``model`` when running on several ranks; the model itself otherwise."""
    if not env.distributed:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        encoder = getattr(model, "model", model)
        for layer in encoder.layers:
            fully_shard(layer)
        fully_shard(model)  # the root: embeddings (tied to the decoder), head, norms
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [env.device.index] if env.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module under DDP (FSDP2 modifies the module in place)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


@contextmanager
def grad_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
    if hasattr(model, "no_sync") and not enabled:  # DDP
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: reduce-scatter on the last only
        model.set_requires_gradient_sync(enabled)
    yield


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum ``t`` over ranks in place (via the device for nccl, which only reduces GPU tensors)."""
    if env.distributed:
        if env.device.type == "cuda" and t.device.type != "cuda":
            on_dev = t.to(env.device)
            dist.all_reduce(on_dev, op=dist.ReduceOp.SUM)
            t.copy_(on_dev.cpu())
        else:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for sharded DTensors: call on every rank in order)."""
    return t.full_tensor() if is_dtensor(t) else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` laid out like ``like``: this rank's shard of a DTensor, or a plain copy."""
    if is_dtensor(like):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh,
                                 like.placements, src_data_rank=None)
    return full.to(like.device, like.dtype, copy=True)  # never alias the caller's tensor
