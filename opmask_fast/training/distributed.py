"""Process-group set-up for torchrun (gloo on the CPU, NCCL on GPUs) and small collective helpers."""

from __future__ import annotations

import datetime
import os
import sys
import traceback
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
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is not None:
            # Triton launches on the current device, and a bare synchronize() waits on it: cuda:N must be current.
            torch.cuda.set_device(dev)
        return DistInfo(device=dev)
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        _import_group_defaults()
        # Evaluation keeps the other processes waiting while rank 0 runs COCOeval (minutes on COCO val); NCCL's
        # default 10-minute timeout would abort them.
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=60))
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def _import_group_defaults() -> None:
    """Imports, before the default group exists, the torch modules whose functions take ``group=group.WORLD`` as a
    default argument.

    Such a default is evaluated at import: a module first imported after `init_process_group` keeps the default group
    referenced for good, so `destroy_process_group` cannot free it and its gloo worker threads live on into the
    interpreter's finalisation. A worker that then drops the last C++ reference of a tensor Python made (a finished
    collective's input) needs the GIL and is forced to exit inside a noexcept destructor: the rank aborts with
    "terminate called without an active exception" (native stack: ProcessGroupGloo::runLoop -> ~AsyncWork ->
    TensorImpl::decref_pyobject -> take_gil -> pthread_exit -> std::terminate), rarely, after all its work is written.
    torch._dynamo is imported by the first call of any custom op (ours included) and pulls in
    torch.distributed.nn.functional and FSDP's grad scaler; torch.distributed.optim holds another. `cleanup` checks
    that the default group is freed, so a new such module fails every run at once instead of one run in a hundred.
    """
    import torch._dynamo  # noqa: F401
    import torch.distributed.nn  # noqa: F401
    import torch.distributed.optim  # noqa: F401


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


def cleanup(*, check: bool = True) -> None:
    """Destroys every process group, and (``check``) that nothing else still holds the default one (its worker threads
    are joined only when it is freed; `_import_group_defaults` says why a survivor would abort the process at exit)."""
    if dist.is_available() and dist.is_initialized():
        default = dist.group.WORLD
        dist.destroy_process_group()
        holders = sys.getrefcount(default) - 2  # the local name and getrefcount's argument
        del default
        if holders > 0 and check:
            raise RuntimeError(f"the default process group is still referenced {holders} time(s) after "
                               "destroy_process_group: its worker threads would outlive the interpreter (a module "
                               "imported after init_process_group holding group.WORLD as a default argument?)")


def _clear_chain(error: BaseException) -> None:
    """Clears the locals of every frame in ``error``'s traceback and in those of its causes and contexts."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


def run_in_process_group(body, args, plan):
    """The commands' shared frame: `--num-threads`, a process group for `--device` (when launched by torchrun), then
    `body(args, info, plan)`, and the group torn down whatever happens."""
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if str(args.device).startswith("cpu"):
        keep_freed_memory()  # 8-12% of a CPU training's wall time went to page faults (training/host_memory.py)
    info = init_distributed(args.device)
    try:
        result = body(args, info, plan)
    except BaseException as e:
        # The failed frames' locals (a DDP model) hold the group: cleared, along the whole chain of causes, so the
        # group is freed, and the error in flight stays the one reported (cleanup's reference check would replace it
        # with a misleading one).
        _clear_chain(e)
        cleanup(check=False)
        raise
    cleanup()
    return result
