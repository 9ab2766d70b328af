"""Distributed data parallel: N processes train one model, each on its share of every epoch.

``cnnbench train MODEL --nproc N`` runs the same command in N processes through torch's elastic
launcher (what ``torchrun`` runs); ``torchrun --nnodes M --nproc-per-node N -m cnnbench train ...``
starts them on several machines. A process started either way finds RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT in its environment, and :func:`setup` joins the process
group: gloo on the CPU, NCCL on CUDA (each process on ``cuda:LOCAL_RANK``).

What a distributed run means here:

* ``batch_size`` is per process, as in torchrun and timm: the global batch is N x batch_size,
  and ``lr`` is not scaled. One process with batch N x B takes the same steps per epoch.
* Every process loads the whole in-memory data set and draws the same permutation from the
  shared ``shuffle`` generator each epoch; process r takes every N-th image of it from r on, after
  leaving out the last ``len % N`` images so that every process takes the same number of steps.
* Validation and test: each process evaluates a contiguous part of the split; the metric sums
  (and the per-image entries of ranking metrics such as mAP) are added up over the processes in
  rank order, so the metrics are exact totals, those of one process on the same weights.
* :class:`~torch.nn.parallel.DistributedDataParallel` averages the gradients, so the weights stay
  equal on every process. Batch-norm running statistics are per process between evaluations;
  rank 0's are broadcast before each evaluation, so the checkpoint holds the evaluated ones.
  Before the test pass every process takes rank 0's weights (those of ``best.pt``).
  ``sync_batchnorm: true`` (CUDA only) uses batch statistics of the global batch instead.
* Only rank 0 writes (run folder, metrics.jsonl, TensorBoard, checkpoints, results) and prints;
  it claims (or, resuming, locks) the run folder and sends its path, or its one-line error, to
  the others. The checkpoint holds the un-wrapped model, so a run resumes with any number of
  processes.
* Ctrl-C/SIGTERM (torchrun passes it to every process): the processes agree every few steps
  on whether any got one and stop after the same step; the mid-epoch checkpoint holds every
  process's random states and metric sums, so a resume with as many processes goes on bitwise.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import math
import os
import sys
import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils._pytree import tree_map_only

from cnnbench.data.splits import Split
from cnnbench.errors import CnnbenchError
from cnnbench.files import LAUNCHER_ERRORS, reported
from cnnbench.keys import Key, declare
from cnnbench.tasks.metrics import Meter
from cnnbench.training.compiling import build_forward
from cnnbench.training.callbacks import EMA, EarlyStopping, NaNGuard
from cnnbench.training.interrupt import Interrupt
from cnnbench.training.loop import Callback, EpochStats, Trainer, batch_starts
from cnnbench.training.rng import rng_states, set_rng_states
from cnnbench.training.schedules import jump_to

# No buffer broadcast inside forward: a forward then needs no other process, so rank 0 alone can
# draw predictions for TensorBoard; evaluate() aligns the buffers instead (the keyword is
# forward_sync_buffers since torch 2.12, broadcast_buffers before).
NO_FORWARD_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False})

# Callbacks that every process runs: they write nothing, and stop all processes alike.
ALL_RANKS = (NaNGuard, Interrupt, EarlyStopping, EMA)  # collectives or agreed stops

KEYS = declare(
    Key("sync_batchnorm", False, bool, help="SyncBatchNorm over the processes (CUDA only)"),
)


# -- where this process stands --

def launched() -> bool:
    """Started by torchrun (or ``--nproc``) as one of several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


# -- process group --

def setup(device: torch.device) -> torch.device:
    """Join the process group if this process was launched as one of several; its device."""
    if not launched():
        return device
    if device.type not in ("cpu", "cuda"):
        raise CnnbenchError(f"distributed training runs on cpu (gloo) or cuda (NCCL), "
                            f"not {device.type}: give --device cpu or cuda")
    if device.type == "cuda":
        if local_rank() >= torch.cuda.device_count():
            raise CnnbenchError(f"local rank {local_rank()} has no GPU: this machine has "
                                f"{torch.cuda.device_count()}; start fewer processes per node")
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
        atexit.register(teardown)
    return device


EXIT_WAIT_S = 60
_finished = False  # this process's run ended well: at exit it waits for the others


def finished() -> None:
    """Say that this process's work is done: at exit it meets the others before it leaves."""
    global _finished
    _finished = True


def teardown() -> None:
    """At exit: after a run that ended well, meet every process (gloo: at most
    ``EXIT_WAIT_S``) before the group is destroyed. Leaving while another process still works
    (rank 0 writes the results last) had gloo's threads torn down under an open connection:
    "terminate called without an active exception", exit 1, about one run in twelve."""
    if not dist.is_initialized():
        return
    if _finished:
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=timedelta(seconds=EXIT_WAIT_S))
            else:
                dist.barrier()
        except Exception:  # noqa: BLE001 - another process failed: leave all the same
            pass
    dist.destroy_process_group()


def on_main(fn, *args):
    """``fn(*args)`` on rank 0 and its result on every process; a ``CnnbenchError`` there is
    raised on every process (the others would otherwise wait for rank 0 forever)."""
    if world_size() == 1:
        return fn(*args)
    box = [None]
    if is_main():
        try:
            box = [(True, fn(*args))]
        except CnnbenchError as exc:
            box = [(False, str(exc))]
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise CnnbenchError(value)
    return value


# -- data and metrics --

def share(n: int) -> int:
    """Training images each process takes per epoch out of ``n``."""
    if 0 < n < world_size():
        raise CnnbenchError(f"{world_size()} processes need at least as many training images, "
                            f"not {n} (check --limit)")
    return n // world_size()


def shard(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Process ``rank``'s share of an epoch's order: every ``world``-th index from ``rank``."""
    return order[rank:len(order) // world * world:world]


def part(n: int, rank: int, world: int) -> slice:
    """Process ``rank``'s contiguous part of ``n`` evaluation images (sizes differ by <= 1)."""
    return slice(n * rank // world, n * (rank + 1) // world)


def _sums(metric) -> dict:
    """What a metric has added up: its total, its count and any per-image lists."""
    state = {k: v for k, v in vars(metric).items() if isinstance(v, list)}
    total = metric.total
    return {**state, "total": total.cpu() if isinstance(total, torch.Tensor) else total,
            "count": metric.count}


def all_reduce_meter(meter: Meter) -> None:
    """Every process's sums added up in rank order (one collective per pass), so that each
    metric is computed from exact totals, not averaged from per-process means."""
    metrics = [meter.loss, *meter.metrics.values()]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, [_sums(m) for m in metrics])
    for i, metric in enumerate(metrics):
        parts = [sums[i] for sums in gathered]
        totals = [p["total"] for p in parts if p["total"] is not None]
        metric.total = sum(totals[1:], totals[0]) if totals else None
        metric.count = sum(p["count"] for p in parts)
        for key, value in parts[0].items():
            if isinstance(value, list):
                setattr(metric, key, [item for p in parts for item in p[key]])


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every process."""
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


# -- the model and the trainer --

def prepare_model(model: nn.Module, config: dict, device: torch.device) -> nn.Module:
    """``model`` with SyncBatchNorm layers if ``sync_batchnorm`` asks for them."""
    if not (config["sync_batchnorm"] and launched()):
        return model
    if device.type != "cuda":
        raise CnnbenchError(SYNC_BN_CPU)
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


SYNC_BN_CPU = ("sync_batchnorm needs CUDA: torch's SyncBatchNorm does not run on the CPU "
               "(gloo); leave it out or train on --device cuda")


def rank_callbacks(callbacks: list[Callback]) -> list[Callback]:
    """Rank 0 keeps every callback; the others only those that write nothing."""
    if is_main() or not launched():
        return callbacks
    return [cb for cb in callbacks if isinstance(cb, ALL_RANKS)]


def realign_schedule(trainer: Trainer, checkpoint: dict) -> None:
    """A checkpoint from another number of processes took another number of steps per epoch:
    the schedule goes on from where this run's steps put the epoch boundary. A mid-epoch
    checkpoint (an interrupted run) holds a step index that only means the same with as many."""
    processes = int(checkpoint.get("processes", 1))
    if processes == world_size():
        return
    if checkpoint.get("position"):
        raise CnnbenchError(f"this checkpoint was written mid-epoch by {processes} process(es): "
                            f"resume it with as many (--nproc {processes})")
    jump_to(trainer.schedule, trainer.epoch * trainer.steps_per_epoch())


class DistributedTrainer(Trainer):
    """A :class:`Trainer` that is one of ``world_size()`` processes (see the module's notes)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rank, self.world = rank(), world_size()
        ddp = DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            **NO_FORWARD_BUFFER_SYNC)
        self.net = ddp
        self.forward = build_forward(self._forward_loss, self.config)
        self.trained = False  # since the buffers were last aligned
        # Flags go through gloo on the host even with NCCL: agreeing needs no device sync.
        self.flags = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
        self.resume_rng: dict | None = None  # this process's, from a mid-epoch checkpoint

    def batch_starts(self) -> range:
        return batch_starts(share(len(self.train_split)), self.batch_size, self.drop_last)

    def epoch_order(self) -> torch.Tensor:
        if self.rank:  # augmentation and dropout draw differently on each process
            torch.manual_seed(self.config["seed"] + 1_000_003 * self.rank + self.epoch)
        order = shard(super().epoch_order(), self.rank, self.world)
        if self.resume_rng is not None:  # where this process's augmentation stopped
            set_rng_states(self.resume_rng, self.device, self.shuffle)
            self.resume_rng = None
        return order

    def agree(self, flag: int) -> int:
        flags = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.flags)
        return int(flags)

    def finish_pass(self, meter: Meter) -> dict:
        all_reduce_meter(meter)
        return meter.compute()

    def train_epoch(self, epoch: int | None = None) -> EpochStats:
        stats = super().train_epoch(epoch)
        self.trained = True
        return stats._replace(images=stats.images * self.world)  # every process took as many

    def evaluate(self, split: Split, collect: bool = False) -> tuple[dict, list]:
        if self.trained:
            broadcast_buffers(self.model)
            self.trained = False
        mine = Split(*split.take(part(len(split), self.rank, self.world)))
        metrics, collected = super().evaluate(mine, collect)
        if collect:  # the task's report (rank 0) sees every output, in the split's order
            parts = [None] * self.world if self.rank == 0 else None
            dist.gather_object(collected, parts, dst=0)
            collected = [item for p in parts for item in p] if self.rank == 0 else []
        return metrics, collected

    def test(self) -> dict:
        # Rank 0's weights: its Checkpoint callback may have put best.pt's in place.
        for tensor in self.model.state_dict().values():
            dist.broadcast(tensor, src=0)
        self.trained = False
        results = super().test()
        results["processes"] = self.world
        return results

    def describe(self) -> dict:
        backend = dist.get_backend()
        return {**super().describe(), "device": f"{self.world} x {self.device} ({backend})"}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "processes": self.world}

    def position(self) -> dict:
        """Also every process's random states and metric sums (a collective)."""
        mine = {"rng": rng_states(self.device, self.shuffle),
                "meter": tree_map_only(torch.Tensor, lambda t: t.detach().cpu(),
                                       self.meter.state_dict())}
        ranks = [None] * self.world
        dist.all_gather_object(ranks, mine)
        return {**super().position(), "ranks": ranks}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        position = self.resume_position
        if not position:
            return
        ranks = position.get("ranks")
        if ranks and len(ranks) == self.world:
            self.resume_position = {**position, "meter": ranks[self.rank]["meter"]}
            self.resume_rng = ranks[self.rank]["rng"]
        elif self.rank:  # an older checkpoint: its metric sums are rank 0's
            empty = {"total": None, "count": 0}
            self.resume_position = {**position, "meter": {k: empty for k in position["meter"]}}


# -- launching --

def check_launch(nproc: int, config: dict, here: bool = True) -> None:
    """One-line errors for ``--nproc`` before anything starts (``config``: the resolved one;
    ``here``: the processes start on this machine, whose GPUs count)."""
    if launched():
        raise CnnbenchError("--nproc starts the processes itself: under torchrun leave it out")
    if nproc < 1:
        raise CnnbenchError(f"--nproc must be >= 1, not {nproc}")
    device = str(config["device"]).split(":")[0]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() or not here else "cpu"
    if here and device == "cuda" and torch.cuda.device_count() < nproc:
        raise CnnbenchError(f"--nproc {nproc} on cuda needs a GPU per process; this machine "
                            f"has {torch.cuda.device_count()}: give fewer or --device cpu")
    if device not in ("cpu", "cuda"):
        raise CnnbenchError(f"distributed training runs on cpu (gloo) or cuda (NCCL), "
                            f"not {device}: give --device cpu or cuda")
    if config["sync_batchnorm"] and device != "cuda" and nproc > 1:
        raise CnnbenchError(SYNC_BN_CPU)


LAUNCH_OPTIONS = ("--nproc", "--nnodes", "--node-rank", "--rdzv", "--rdzv-timeout")


def without_nproc(argv: list[str], options: tuple[str, ...] = LAUNCH_OPTIONS) -> list[str]:
    """The command line less the launcher's own options (``--nproc N`` / ``--nproc=N``,
    ``--nnodes``, ``--node-rank``, ``--rdzv``, ``--rdzv-timeout``)."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in options)):
            rest.append(arg)
    return rest


class Nodes:
    """``--nnodes N --node-rank R --rdzv HOST:PORT``: this machine is node R of N, which meet
    at the c10d rendezvous HOST:PORT (torch elastic's TCP store, hosted by node 0) within
    ``timeout`` seconds; a rendezvous that does not answer is a one-line error, not a hang."""

    def __init__(self, nnodes: int, node_rank: int | None, rdzv: str | None,
                 timeout: float = 120):
        if nnodes < 1:
            raise CnnbenchError(f"--nnodes must be >= 1, not {nnodes}")
        node_rank = 0 if node_rank is None else node_rank
        if not 0 <= node_rank < nnodes:
            raise CnnbenchError(f"--node-rank {node_rank} is not a node of --nnodes {nnodes}: "
                                f"give 0 to {nnodes - 1}")
        if rdzv is None:
            raise CnnbenchError("--nnodes needs --rdzv HOST:PORT, where node 0 listens "
                                "(e.g. --rdzv node0.cluster:29400)")
        host, _, port = rdzv.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise CnnbenchError(f"bad --rdzv {rdzv!r}: use HOST:PORT, e.g. localhost:29400")
        if timeout <= 0:
            raise CnnbenchError(f"--rdzv-timeout must be > 0, not {timeout:g}")
        self.nnodes, self.node_rank, self.rdzv, self.timeout = nnodes, node_rank, rdzv, timeout

    def wait_for_host(self) -> None:
        """A node other than 0 waits (up to ``timeout``) until node 0's rendezvous accepts a
        connection: an unreachable one is one line here, before torch's store retries it
        (with a page of C++ log) and before any process starts."""
        import socket
        import time

        if self.node_rank == 0:
            return
        host, _, port = self.rdzv.rpartition(":")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=2).close()
                return
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise CnnbenchError(f"the rendezvous at {self.rdzv} did not answer within "
                                        f"{self.timeout:g} s ({exc.strerror or exc}): is node "
                                        f"0 started, and the address right?") from None
                time.sleep(0.5)

    def failed(self, exc: Exception) -> str:
        """The one line for a rendezvous that did not complete."""
        if self.node_rank == 0:
            return (f"the other nodes did not all join the rendezvous at {self.rdzv} within "
                    f"{self.timeout:g} s ({type(exc).__name__}): start the same command on "
                    f"each with --node-rank 1..{self.nnodes - 1}")
        return (f"the rendezvous at {self.rdzv} failed within {self.timeout:g} s "
                f"({type(exc).__name__}): is node 0 started, and the address right?")

    def torchrun_args(self) -> list[str]:
        seconds = max(1, math.ceil(self.timeout))
        return ["--nnodes", str(self.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", self.rdzv,
                "--rdzv-id", f"cnnbench-{self.rdzv}",
                "--rdzv-conf", f"is_host={str(self.node_rank == 0).lower()},"
                               f"join_timeout={seconds},read_timeout={seconds}",
                "--max-restarts", "0"]


def launch(nproc: int, argv: list[str], target: tuple[str, ...] = ("-m", "cnnbench"),
           nodes: Nodes | None = None) -> int:
    """``python -m cnnbench *argv`` (``target``: what to run) in ``nproc`` local processes
    through torch's elastic launcher (``torchrun --standalone --nproc-per-node nproc``, or
    with ``nodes`` its c10d rendezvous with the other nodes); the exit code (a process's own
    code when one fails, e.g. 2 for a one-line error, 130 after Ctrl-C: the launcher passes
    the signal to every process, which checkpoint and stop)."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError

    # torchrun's default (with a warning) is one thread each; share the cores out instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    if "LOGLEVEL" not in os.environ:  # its log (closing signals, failed ranks) would repeat
        for name in ("torch.distributed.elastic", "torch.distributed.launcher"):  # rank 0's
            logger = logging.getLogger(name)  # one line; LOGLEVEL=INFO shows it
            logger.addHandler(logging.NullHandler())
            logger.propagate = False
    where = nodes.torchrun_args() if nodes else ["--standalone"]
    args = torchrun.parse_args([*where, "--nproc-per-node", str(nproc), *target, *argv])
    with tempfile.TemporaryDirectory(prefix="cnnbench-errors-") as errors:
        os.environ[LAUNCHER_ERRORS] = errors  # the processes leave their one line there
        try:
            torchrun.run(args)
        except SignalException as exc:  # the processes have stopped (or were killed after 30 s)
            return 128 + int(exc.sigval)
        except ChildFailedError as exc:
            return _failed({r: f.exitcode for r, f in exc.failures.items()}, reported(errors),
                           nproc)
        except RendezvousError as exc:  # unreachable, or the other nodes never came
            if nodes is None:
                raise
            raise CnnbenchError(nodes.failed(exc)) from None
        finally:
            os.environ.pop(LAUNCHER_ERRORS, None)
    return 0


def _failed(codes: dict[int, int], said: dict[int, str], nproc: int) -> int:
    """One line for the failed processes (rank 0's error if it gave one, else the first
    process's that did, naming it) and the exit code to leave with."""
    if said:
        r = 0 if 0 in said else min(said)
        where = "" if r == 0 else f" (process {r} of {nproc})"
        sys.stderr.write(f"error: {said[r]}{where}\n")
        return codes[r] if codes.get(r, 0) > 0 else 2
    if codes.get(0, 0) > 0:  # rank 0 has said why itself (a signal's message, a traceback)
        return codes[0]
    r, code = min(((r, c) for r, c in codes.items() if c > 0), default=(0, 1))
    if code in (130, 143):  # stopped on a signal: rank 0 said so before it was reaped
        return code
    sys.stderr.write(f"error: process {r} of {nproc} exited with code {code}\n")
    return code
