"""Data-parallel training under ``torchrun``: what each rank does, and what they share.

    torchrun --nproc-per-node 8 -m distil_core train run.yaml

Every rank holds the whole policy. A step's problems are split into contiguous shards, one
per rank; each rank generates, verifies, gathers feedback, asks the expert and computes the
loss for its shard alone. Before each optimizer step the gradients are summed over ranks
(after the last micro-batch, as DDP does under ``no_sync``; in buckets of about 32 MB, one
all-reduce each), so every rank takes the same optimizer step. The loss of each micro-batch is weighted by its share of the *global* batch
(tokens or rows, whatever the method averages over), so the sum is the 1-process gradient.

Sampling is keyed (see :mod:`distil_core.rollouts.sampling`): a problem's rollouts depend on the
step's key, the problem and the sample index, not on which rank generates them. So 1 and N
processes see the same rollouts and, up to floating-point summation order, take the same steps.

Rank 0 writes metrics, logs, evaluations and checkpoints; checkpoints hold no per-rank state,
so ``--resume`` works with any number of processes. The backend is ``gloo`` on CPU and
``nccl`` on CUDA, where each rank takes the GPU ``LOCAL_RANK``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from distil_core.errors import ConfigError


@dataclass
class World:
    """This process's place among the ranks (one process: rank 0 of 1, and every call is local)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, count: int) -> tuple[int, int]:
        """[start, stop) of this rank's contiguous share of ``count`` items (sizes differ by ≤ 1)."""
        per, extra = divmod(count, self.size)
        start = self.rank * per + min(self.rank, extra)
        return start, start + per + (1 if self.rank < extra else 0)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(out, obj)
        return out

    def concat(self, items: Sequence[Any]) -> list[Any]:
        """The ranks' lists joined in rank order (shards are contiguous: the global order)."""
        return [x for part in self.gather(list(items)) for x in part]

    def sum_grads(self, params: Iterable[torch.nn.Parameter], bucket_mb: float = 32.0) -> None:
        """Sum ``.grad`` over ranks in place, in flat buckets of about ``bucket_mb`` (a rank whose
        shard had nothing to learn from contributes zeros)."""
        if not self.distributed:
            return
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        limit = int(bucket_mb * 2**20)
        bucket: list[torch.Tensor] = []
        size = 0
        for p in params:
            bucket.append(p.grad)
            size += p.grad.numel() * p.grad.element_size()
            if size >= limit:
                _reduce_bucket(bucket)
                bucket, size = [], 0
        if bucket:
            _reduce_bucket(bucket)

    def broadcast_params(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Rank 0's values everywhere (the ranks start from one set of weights, as DDP does)."""
        if not self.distributed:
            return
        with torch.no_grad():
            for p in params:
                torch.distributed.broadcast(p.data, src=0)


def _reduce_bucket(grads: list[torch.Tensor]) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def launched_rank() -> int:
    """The rank ``torchrun`` gave this process, read from the environment as :func:`init_world`
    reads it (0 for a process started alone, whatever ``RANK`` a shell left behind): for what
    must be decided before the process group starts, such as which process looks at a run
    directory's lock."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    return int(os.environ.get("RANK", "0"))


def current_world() -> World:
    """The :class:`World` of the process group already started (one process when there is none)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init_world(device: str = "auto") -> World:
    """The :class:`World` ``torchrun`` describes in the environment; the process group is started
    here. Without ``WORLD_SIZE`` > 1 this is a single process and nothing is started."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local = launched_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if torch.cuda.device_count() <= local:
            raise ConfigError(
                f"rank {rank} (LOCAL_RANK {local}) has no GPU: this machine has {torch.cuda.device_count()}. "
                "Start at most that many processes per node, or set model.device=cpu.")
        torch.cuda.set_device(local)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    return World(rank=rank, size=size, local_rank=local)


def rank_device(device: str, world: World) -> str:
    """The device this rank trains on: its own GPU under CUDA, else ``device`` as given."""
    if not world.distributed:
        return device
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return f"cuda:{world.local_rank}"
    return device


def close_world(world: World, finished: bool = False) -> None:
    """Tear the process group down. After a run that ``finished`` on every rank, the ranks meet
    at a barrier first, and then once more outside the process group (:func:`meet_outside`),
    so that no rank closes its connections while a peer is still finishing the barrier itself:
    gloo aborts a peer whose connection closes under it ("terminate called without an active
    exception"). After a failure there is no meeting, since a peer may never arrive."""
    if world.distributed and torch.distributed.is_initialized():
        if finished:
            torch.distributed.barrier()
            meet_outside(world, "closed")
        torch.distributed.destroy_process_group()


def meet_outside(world: World, name: str, timeout_s: float = 60.0) -> bool:
    """Wait until every rank has called this with ``name``, through the rendezvous store that
    ``torchrun`` (or the rank-0 launcher) keeps at ``MASTER_ADDR:MASTER_PORT`` rather than
    through the process group; False where there is no such store or it does not answer (the
    caller goes on without the meeting)."""
    from datetime import timedelta

    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        return False
    run = f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}.{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    keys = [f"distil/{run}/{name}/{rank}" for rank in range(world.size)]
    try:
        store = torch.distributed.TCPStore(addr, int(port), None, False, timedelta(seconds=timeout_s))
        store.set(keys[world.rank], "1")
        store.wait(keys, timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError, OSError):  # the store is gone or slow: nothing to wait on
        return False
    return True
