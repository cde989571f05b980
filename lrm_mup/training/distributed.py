"""Data parallelism over the processes that `torchrun` starts: every rank trains on its rows of one global batch.

    torchrun --nproc_per_node 8 -m lrm_mup train --width 2048 ...       # one machine, 8 GPUs
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m lrm_mup transfer ...

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; `setup()` reads them and opens the process group once, with NCCL for
CUDA tensors and gloo for CPU tensors, so one group serves both. A config means the same thing at every world size:
`batch` is the global batch, every rank draws that global batch from the same seeded generator and keeps its own
rows, and the average of equal shards' gradients (DDP replicas, or FSDP2 shards with `parallel="fsdp"`) is the full
batch's gradient. A run under torchrun therefore equals the single-process run up to the order of float reductions,
and its checkpoint (written by rank 0 in the single-process format) resumes at any world size and under either
parallelism. Several machines need the run folder on a shared filesystem.

Work that one process does first or alone (fetching the corpus, creating the run folder) goes through `main_first` /
`on_main`, which raise its error on every rank: a bad config fails the same way everywhere instead of leaving ranks
waiting in a collective.
"""
from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from .._names import PARALLEL  # noqa: F401 - the modes of `wrap`, named torch-free for the CLI

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This rank's rows of a batch of n: contiguous, sizes differing by at most one (a last, smaller
        evaluation batch may leave a rank with none)."""
        per, extra = divmod(n, self.size)
        start = self.rank * per + min(self.rank, extra)
        return slice(start, start + per + (self.rank < extra))

    def device(self, name: str) -> torch.device:
        """"auto" / "cpu" / "cuda" -> this rank's device (its own GPU under torchrun)."""
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.device("cuda", self.local_rank) if name == "cuda" and self.size > 1 else torch.device(name)


SINGLE = World()


def launched() -> bool:
    """True in a process started by torchrun (or another launcher) with more than one process in all."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup() -> World:
    """This process's place in the job. Opens the process group from torchrun's environment the first time (and closes
    it at exit); uses a group the caller opened; a plain process is `SINGLE`."""
    if not (dist.is_available() and (dist.is_initialized() or launched())):
        return SINGLE
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank() if dist.is_initialized() else 0))
    if not dist.is_initialized():
        if torch.cuda.is_available():  # each rank its own GPU, bound before NCCL starts
            torch.cuda.set_device(local_rank)
            dist.init_process_group("cpu:gloo,cuda:nccl", device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group("gloo")
        atexit.register(_close)
    return World(dist.get_rank(), local_rank, dist.get_world_size())


def _close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def on_main(fn: Callable[[], T], world: World) -> T:
    """fn() on rank 0 only; its result (small and picklable) or its exception reaches every rank."""
    box = [_on_rank0(fn, world)]
    if world.size > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0]


def main_first(fn: Callable[[], T], world: World) -> T:
    """fn() on each machine's first process (LOCAL_RANK 0), then, if it worked everywhere, on the other processes:
    the first fills the machine's cache (the corpus), the others read it."""
    result, error = _attempt(fn, world.local_rank == 0)
    if world.size > 1:
        errors = [None] * world.size
        dist.all_gather_object(errors, error)
        error = next((e for e in errors if e is not None), None)
    if error is not None:
        raise error
    return result if world.local_rank == 0 else fn()


def _on_rank0(fn: Callable[[], T], world: World) -> T | None:
    """fn() on rank 0; an exception there is raised on every rank; the other ranks get None."""
    result, error = _attempt(fn, world.main)
    box = [error]
    if world.size > 1:
        dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise box[0]
    return result


def _attempt(fn: Callable[[], T], here: bool) -> tuple[T | None, Exception | None]:
    """(fn(), None), or (None, the exception), where `here`; (None, None) elsewhere."""
    if not here:
        return None, None
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - any error goes to every rank, which raise it
        return None, e


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def sum_floats(values: Iterable[float], world: World, device: torch.device) -> list[float]:
    """Element-wise sum over the ranks (float64, on the run's device so that NCCL-only groups work too)."""
    values = list(values)
    if world.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def wrap(model: torch.nn.Module, world: World, parallel: str, device: torch.device, ddp: bool = True
         ) -> torch.nn.Module:
    """What the training forward runs through. One process: the model. "ddp": DDP(model), a replica per rank
    (`ddp=False`: rank 0's parameters only, for a path that averages its own gradients). "fsdp": the model sharded in
    place by FSDP2's `fully_shard`, each element of every ModuleList (the blocks) a unit, then the rest; parameters,
    gradients and optimizer state are split over the ranks (build the optimizer after this)."""
    if world.size == 1:
        return model
    broadcast_parameters(model, world)
    if parallel == "fsdp":
        mesh = init_device_mesh(device.type, (world.size,))
        # innermost lists first: FSDP2 wants a module's sub-units sharded before the module itself
        for blocks in reversed([m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]):
            for block in blocks:
                fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    if not ddp:
        return model
    # buffers (rotary tables) are computed alike on every rank: no broadcast before each forward
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False,
               gradient_as_bucket_view=True)


def broadcast_parameters(module: torch.nn.Module, world: World) -> None:
    """Every rank starts from rank 0's parameters (what DDP does at wrap time, for the paths that do without DDP)."""
    if world.size > 1:
        with torch.no_grad():
            for p in module.parameters():
                dist.broadcast(p, src=0)


def average_gradients(module: torch.nn.Module, world: World) -> None:
    """Average every parameter's gradient over the ranks in one flat all-reduce (the effective path's DDP: its
    gradients appear in `EffectivePath.map_grads()`, after backward, where DDP cannot see them)."""
    if world.size == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))
