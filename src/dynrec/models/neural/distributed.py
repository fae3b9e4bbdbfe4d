"""Data-parallel training across processes (PyTorch DDP) launched by ``torchrun``.

A process takes part in distributed training when ``torchrun`` (``python -m torch.distributed.run``)
started it: ``WORLD_SIZE`` > 1 and ``RANK`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT`` in
its environment. `init_from_env` joins the process group (gloo on CPU, NCCL on CUDA) and the
Trainer then splits every global batch into `world` interleaved parts, one per rank
(`split_batch`), so the effective batch is the configured ``batch_size`` whatever the number of
processes, and the averaged gradients equal single-process gradients up to float reduction order
(under bf16 autocast, ``amp``, up to bf16 rounding: each rank rounds its part's products).
Rank 0 alone validates, selects and writes checkpoints; every rank resumes from them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from dynrec.errors import DynrecError

log = logging.getLogger(__name__)

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""The variables torchrun sets for each process it starts."""


@dataclass(frozen=True)
class Dist:
    """This process's place in a run: rank, world size, rank within its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DynrecError(
            f"environment variable {name}={raw!r} must be an integer (set by torchrun)"
        ) from None


def env_dist() -> Dist:
    """The rank / world size / local rank torchrun gave this process (a single process without it)."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return SINGLE
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise DynrecError(f"RANK={rank} is outside WORLD_SIZE={world}")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise DynrecError(
            f"WORLD_SIZE={world} but {', '.join(missing)} unset: start distributed training with torchrun "
            "(or dynrec train --nproc N)"
        )
    return Dist(rank, world, local)


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo for the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def device_for(d: Dist, device: torch.device) -> torch.device:
    """The device of rank `d` on its node: a CUDA run puts local rank r on GPU r."""
    if not d.active or device.type != "cuda":
        return device
    n = torch.cuda.device_count()
    if d.local_rank >= n:
        raise DynrecError(f"local rank {d.local_rank} has no GPU ({n} visible): use --nproc <= {n}")
    torch.cuda.set_device(d.local_rank)
    return torch.device("cuda", d.local_rank)


def init_from_env(device: torch.device) -> Dist:
    """Join the process group torchrun describes (idempotent); `SINGLE` outside torchrun."""
    d = env_dist()
    if not d.active:
        return d
    if not dist.is_available():
        raise DynrecError("this torch build has no torch.distributed: train with one process")
    if not dist.is_initialized():
        backend = backend_for(device)
        if backend == "nccl" and not dist.is_nccl_available():
            raise DynrecError("CUDA training across processes needs NCCL, which this torch build lacks")
        dist.init_process_group(backend=backend, init_method="env://", rank=d.rank, world_size=d.world)
        log.info("rank %d/%d joined the %s process group", d.rank, d.world, backend)
    elif dist.get_world_size() != d.world or dist.get_rank() != d.rank:
        raise DynrecError(
            f"a process group of rank {dist.get_rank()}/{dist.get_world_size()} is already initialised, "
            f"but the environment says rank {d.rank}/{d.world}"
        )
    return d


def current() -> Dist:
    """The joined process group's rank and size (`SINGLE` when none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return Dist(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))


def shutdown() -> None:
    """Leave the process group (end of a torchrun process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---- batches ----------------------------------------------------------------------------------


def batch_rows(batch: dict[str, torch.Tensor]) -> int:
    """Rows of a batch: the largest leading dimension among its tensors."""
    return max((int(v.shape[0]) for v in batch.values() if v.ndim >= 1), default=0)


def split_batch(
    batch: dict[str, torch.Tensor], rank: int, world: int
) -> tuple[dict[str, torch.Tensor], bool]:
    """Rank `rank`'s share of a global batch: rows ``rank, rank + world, ...`` of every tensor whose
    leading dimension is the batch's row count (other tensors, e.g. per-batch counts, are passed as
    they are). Interleaving balances work when a batch is sorted by length.

    Returns (part, empty). A rank whose share is empty (a batch with fewer rows than ranks) gets
    row 0 so it can still join the gradient reduction, and ``empty=True``: its loss weight is 0."""
    n = batch_rows(batch)
    empty = rank >= n
    rows = slice(0, 1) if empty else slice(rank, None, world)
    part = {k: v[rows] if v.ndim >= 1 and int(v.shape[0]) == n else v for k, v in batch.items()}
    return part, empty


# ---- collectives ------------------------------------------------------------------------------


def all_reduce_mean(values: list[float], device: torch.device) -> list[float]:
    """Element-wise mean over ranks of a few scalars (identity in a single process)."""
    if not current().active:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / dist.get_world_size()).tolist()  # type: ignore[no-any-return]


def broadcast_object(value: Any, src: int = 0) -> Any:
    """`value` of rank `src` on every rank (picklable Python objects: decisions, small records)."""
    if not current().active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not current().active:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers into every rank's `module`."""
    if not current().active:
        return
    with torch.no_grad():
        for t in module.state_dict().values():
            dist.broadcast(t, src=src)


def barrier() -> None:
    if current().active:
        dist.barrier()
