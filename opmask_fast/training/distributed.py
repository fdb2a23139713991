"""Process-group set-up for torchrun (gloo on the CPU, NCCL on GPUs) and small collective helpers."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .host_memory import keep_freed_memory


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "cpu") -> DistInfo:
    """Joins the torchrun process group when ``WORLD_SIZE`` > 1, else returns a single-process ``DistInfo``.

    Args:
        device: ``"cpu"``, ``"cuda"`` (each process takes GPU ``LOCAL_RANK``) or ``"cuda:N"`` (single process).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if world == 1:
        return DistInfo(device=torch.device(device))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        # Evaluation keeps the other processes waiting while rank 0 runs COCOeval (minutes on COCO val); NCCL's
        # default 10-minute timeout would abort them.
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=60))
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def ddp_process_group():
    """A process group of its own for DistributedDataParallel (a collective: every process calls it).

    DDP keeps its process group referenced until the interpreter exits, so the group's worker threads outlive
    `destroy_process_group`. A gloo worker that then drops the last reference of a tensor Python created (the
    buffers `broadcast_buffers` sends, held by a finished barrier) needs the GIL while the interpreter finalises: the
    thread is forced to exit inside a noexcept destructor and the process aborts with "terminate called without an
    active exception" (the native stack of such a rank: ProcessGroupGloo::runLoop -> ~AsyncBarrierWork ->
    ~AsyncBroadcastWork -> TensorImpl::decref_pyobject -> take_gil -> pthread_exit -> std::terminate). DDP's own
    group only ever carries tensors DDP makes in C++ (gradient buckets, flattened states), and the default group,
    which carries ours, is destroyed with its threads joined in `run_in_process_group`.
    """
    return dist.new_group(backend=dist.get_backend())


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world_size() -> tuple[int, int]:
    """This process' rank and the number of processes ((0, 1) without a process group)."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over processes (identity in a single process)."""
    if is_distributed():
        values = values.clone()
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


def all_gather_objects(obj) -> list:
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_objects(obj, dst: int = 0) -> list | None:
    """Every process' ``obj`` (picklable) in rank order on rank ``dst``; None on the other ranks."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copies rank ``src``'s buffers (BatchNorm running statistics, ...) to every process.

    DDP syncs buffers at the start of each forward, so after the last training step every process still holds the
    statistics of its own last batch; evaluation and the checkpoint must see rank 0's.
    """
    if is_distributed():
        for buf in module.buffers():
            dist.broadcast(buf, src)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_in_process_group(body, args, plan):
    """The commands' shared frame: `--num-threads`, a process group for `--device` (when launched by torchrun), then
    `body(args, info, plan)`, and the group torn down whatever happens."""
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if str(args.device).startswith("cpu"):
        keep_freed_memory()  # 8-12% of a CPU training's wall time went to page faults (training/host_memory.py)
    info = init_distributed(args.device)
    try:
        return body(args, info, plan)
    finally:
        cleanup()
