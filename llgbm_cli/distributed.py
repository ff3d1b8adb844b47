"""The process group of ``accelerate launch`` for commands that split whole work items.

Outside ``accelerate launch`` (``WORLD_SIZE`` unset or 1) it is a single process and every call
is a no-op, so services use it unconditionally. With several processes each one gets a rank and
a device (``cuda:<local rank>`` on a GPU node, the CPU with gloo otherwise), ``gather`` collects
plain Python objects on every rank, and ``barrier`` waits for all of them.
"""

from __future__ import annotations

import os


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
            self.state = PartialState(cpu=cpu)
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
