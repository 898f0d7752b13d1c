"""Multi-process runs (`torchrun --nproc_per_node N -m edgekd.cli compress ...`): who writes, who waits.

Every process runs the same pipeline. The teacher and distill stages train in all of them (the Trainer's DDP:
NCCL on GPUs, gloo on CPU); everything that touches the run folder (stage folders, stage.json, the teacher-logit
cache, saved models) happens on rank 0 while the others wait at a barrier, and the single-process stages
(export, quantize, benchmark) run on rank 0 only. Without torchrun (`WORLD_SIZE` unset) every helper here is a
no-op, so single-process runs pay nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return world_size() > 1


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def init_distributed() -> None:
    """Join the process group torchrun set up, before the first barrier (the Trainer would do it later, in
    `TrainingArguments`; creating the same `PartialState` here means it finds the group ready)."""
    if not is_distributed():
        return
    import torch
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available())


def barrier() -> None:
    if not is_distributed():
        return
    import torch.distributed as dist

    init_distributed()
    dist.barrier()


@contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. computes and stores a cache); the others run it afterwards and find
    the result on disk."""
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()
