"""Data-parallel training under ``torchrun``: one process per device, NCCL on GPUs, Gloo on CPU.

Without torchrun (no WORLD_SIZE in the environment) everything here degrades to a
single process, so the one training code path serves both.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pipeline.device import select_device

# how Gloo and NCCL say a collective failed because another rank's process is gone
PEER_FAILURES = ("closed by peer", "reset by peer", "remote process exited", "communicator was aborted")


class PeerLostError(RuntimeError):
    """Another rank of this torchrun run stopped (with its own message) while this one waited in a collective."""


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_writer(self) -> bool:
        """Only rank 0 logs and writes checkpoints and outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str = "auto") -> DistContext:
    """Join the process group torchrun set up (if any) and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = select_device(device_name)
    if world_size == 1:
        return DistContext(0, 1, device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world_size, device)


def wrap(module: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``module`` under DistributedDataParallel when running distributed (gradients synchronized), else itself."""
    if not ctx.distributed:
        return module
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over ranks (returned unchanged in a single process); e.g. per-rank sums and counts."""
    if not ctx.distributed:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` (picklable, e.g. CPU tensors), in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def peer_loss_explained(what: str, ctx: DistContext) -> Iterator[None]:
    """Under torchrun, a collective in the block that fails because another rank stopped becomes a
    :class:`PeerLostError` (one line pointing at that rank's own message, with the transport's first line) instead
    of a transport traceback. Usually: torchrun may stop the waiting ranks before they get there, and NCCL may
    report a lost peer as a watchdog timeout instead."""
    try:
        yield
    except RuntimeError as err:
        if not (ctx.distributed and any(sign in str(err) for sign in PEER_FAILURES)):
            raise
        transport = str(err).splitlines()[0][:200]
        raise PeerLostError(
            f"{what}: another process of this torchrun run stopped (its own message says why), so rank {ctx.rank} "
            f"stops too; fix that and rerun ({transport})"
        ) from None
