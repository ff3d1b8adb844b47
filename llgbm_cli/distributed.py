"""The process group of ``accelerate launch`` for commands that split whole work items.

Outside ``accelerate launch`` (``WORLD_SIZE`` unset or 1) it is a single process and every call
is a no-op, so services use it unconditionally. With several processes each one gets a rank and
a device (``cuda:<local rank>`` on a GPU node, the CPU with gloo otherwise), ``gather`` collects
plain Python objects on every rank, and ``barrier`` waits for all of them.
:class:`IndependentProcesses` is for commands whose work items run other commands that would join
the group themselves (``ablate``: a trainer, an eval): the processes meet only at the end.
"""

from __future__ import annotations

import os
from datetime import timedelta

# How long the processes of a launch wait for each other at a gather (work items such as zoo
# trajectories or ablation cells take hours and are uneven; torch's default gives up after 10
# minutes with NCCL, 30 with gloo).
MEET_TIMEOUT_S = 7 * 24 * 3600


class ProcessGroup:
    """The processes of one ``accelerate launch`` (a single process otherwise)."""

    def __init__(self, device: str = "auto"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.state = None
        self.rank = 0
        if self.world > 1:
            import torch
            from accelerate import PartialState

            # `accelerate launch --cpu` alone starts one process (it needs mpirun for more), so a
            # CPU group is launched with --multi_gpu and told here to use CPU (gloo).
            cpu = device == "cpu" or not torch.cuda.is_available()
            # Processes wait for each other at a gather for as long as the slowest one's share
            # takes (eval: while the main process builds the adapters), not torch's default.
            self.state = PartialState(cpu=cpu, timeout=timedelta(seconds=MEET_TIMEOUT_S))
            self.rank = self.state.process_index
            self.world = self.state.num_processes

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, wanted: str) -> str:
        return str(self.state.device) if self.state is not None else wanted

    def shard(self, items: list) -> list:
        """This process's share of ``items``: every world-th item from its rank (round robin)."""
        return items[self.rank :: self.world]

    def gather(self, obj: list) -> list:
        """The concatenation of every process's list, in rank order, on every process."""
        if self.state is None:
            return obj
        from accelerate.utils import gather_object

        return gather_object(obj)

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


# The launcher's variables that make accelerate, torch and ProcessGroup join a group.
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


class IndependentProcesses:
    """The processes of ``accelerate launch`` (a single process otherwise) when each one does whole
    work items by itself, with commands that would otherwise join the group (a trainer's DDP, a
    sharded eval), and meets the others only once, at the end.

    No process group exists while they work: :meth:`alone` runs a work item as a single process
    would (the launcher's variables hidden; on a GPU node the process keeps the GPU of its local
    rank), and :meth:`gather` then forms a gloo group, with a timeout of :data:`MEET_TIMEOUT_S`, to
    collect every process's results.
    """

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0")) if self.world > 1 else 0
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0")) if self.world > 1 else 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This process's share of ``items``: every world-th item from its rank (round robin)."""
        return items[self.rank :: self.world]

    def alone(self):
        """A context in which this process is a single process."""
        import contextlib

        @contextlib.contextmanager
        def ctx():
            if self.world == 1:
                yield
                return
            import torch

            if torch.cuda.is_available():
                torch.cuda.set_device(self.local_rank)  # "cuda" and "auto" mean this process's GPU
            saved = {k: os.environ.pop(k) for k in _LAUNCH_VARS if k in os.environ}
            try:
                yield
            finally:
                os.environ.update(saved)

        return ctx()

    def gather(self, obj: list) -> list:
        """The concatenation of every process's list, in rank order, on every process."""
        if self.world == 1:
            return obj
        import torch.distributed as tdist

        tdist.init_process_group("gloo", rank=self.rank, world_size=self.world,
                                 timeout=timedelta(seconds=MEET_TIMEOUT_S))
        try:
            parts: list = [None] * self.world
            tdist.all_gather_object(parts, obj)
        finally:
            tdist.destroy_process_group()
        return [x for part in parts for x in part]
