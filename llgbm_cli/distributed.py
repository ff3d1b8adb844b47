"""The process group of ``accelerate launch`` for commands that split whole work items.

Outside ``accelerate launch`` (``WORLD_SIZE`` unset or 1) it is a single process and every call
is a no-op, so services use it unconditionally. With several processes each one gets a rank and
a device (``cuda:<local rank>`` on a GPU node, the CPU with gloo otherwise), ``gather`` collects
plain Python objects on every rank, and ``barrier`` waits for all of them.
:class:`IndependentProcesses` is for commands whose work items run other commands that would join
the group themselves (``ablate``: a trainer, an eval): the processes meet only at the end.
"""

from __future__ import annotations

import atexit
import functools
import os
from datetime import timedelta

# How long the processes of a launch wait for each other at a gather (work items such as zoo
# trajectories or ablation cells take hours and are uneven; torch's default gives up after 10
# minutes with NCCL, 30 with gloo).
MEET_TIMEOUT_S = 7 * 24 * 3600


@functools.cache  # one exit handler per process, however many groups it joins
def leave_group_at_exit() -> None:
    """Destroy the default process group when the interpreter exits, once per process.

    A gloo group left to the interpreter's teardown can abort its process ("terminate called
    without an active exception", SIGABRT) when its worker threads are destroyed unjoined; the
    launcher then reports the whole launch as failed after the work was done and written. Every
    place that joins a group (:class:`ProcessGroup`, a trainer's Accelerator) calls this."""
    atexit.register(_leave_group)


def _leave_group() -> None:
    try:
        import torch.distributed as tdist

        if tdist.is_available() and tdist.is_initialized():
            tdist.destroy_process_group()
    except Exception:  # noqa: BLE001 - at exit there is nobody left to tell
        pass


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
            leave_group_at_exit()
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
        """The concatenation of every process's list, in rank order, on every process.

        Each call is a meeting of its own: a gloo group formed for it and destroyed after, on a
        fresh key prefix of one rendezvous store kept for the life of the process (the launcher's
        store keeps the addresses of an earlier meeting, which a second group must not read), so
        the processes may meet any number of times as long as all of them call it equally often."""
        if self.world == 1:
            return obj
        import torch.distributed as tdist

        tdist.init_process_group("gloo", store=_meeting_store(self.rank, self.world), rank=self.rank,
                                 world_size=self.world, timeout=timedelta(seconds=MEET_TIMEOUT_S))
        try:
            parts: list = [None] * self.world
            tdist.all_gather_object(parts, obj)
        finally:
            tdist.destroy_process_group()
        return [x for part in parts for x in part]

    def on_main(self, fn):
        """``fn()`` on the main process while the others wait; its value on every process. If it
        fails, every process stops with the same error (exit code and hint kept), so none is left
        waiting for a partner that has stopped."""
        value, err = None, None
        if self.is_main:
            try:
                value = fn()
            except Exception as e:  # noqa: BLE001 - handed to every process, raised below
                err = e
        packed = self.gather([(_pack(err), value) if self.is_main else None])[0]
        if err is not None:
            raise err
        if packed[0] is not None:
            raise _unpack(packed[0])
        return packed[1]

    def each(self, items: list, work) -> list:
        """``work(item)`` for this process's share of ``items`` (round robin, each one :meth:`alone`),
        then every process's results, in item order, on every process. A failure on any process
        stops its share and then every process with that error (the first one in rank order), after
        the others have finished theirs."""
        done: list = []
        err = None
        for i, item in list(enumerate(items))[self.rank :: self.world]:
            try:
                with self.alone():
                    done.append((i, work(item)))
            except Exception as e:  # noqa: BLE001 - handed to every process, raised below
                err = e
                break
        got = self.gather([(self.rank, _pack(err), done)])
        if err is not None:
            raise err
        for _, e, _ in got:
            if e is not None:
                raise _unpack(e)
        return [v for _, v in sorted((x for _, _, part in got for x in part), key=lambda t: t[0])]


_STORE = None  # the rendezvous store of this process's launch, made at its first meeting
_MEETINGS = 0


def _meeting_store(rank: int, world: int):
    """A store for the next meeting: the launch's rendezvous store under a prefix of its own."""
    global _STORE, _MEETINGS
    import torch.distributed as tdist

    if _STORE is None:
        _STORE, _, _ = next(tdist.rendezvous("env://", rank=rank, world_size=world,
                                             timeout=timedelta(seconds=MEET_TIMEOUT_S)))
    _MEETINGS += 1
    return tdist.PrefixStore(f"llgbm-meeting-{_MEETINGS}", _STORE)


def _pack(err):
    """An exception as plain data another process can raise again (None for none)."""
    if err is None:
        return None
    from .errors import LlgbmError

    if isinstance(err, LlgbmError):
        return (err.message, err.hint, err.exit_code)
    return (f"another process of the launch failed: {type(err).__name__}: {err}", None, 1)


def _unpack(packed):
    from .errors import LlgbmError

    message, hint, code = packed
    return LlgbmError(message, hint=hint, exit_code=code)
