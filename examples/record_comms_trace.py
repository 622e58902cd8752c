"""Record the execution traces of a small job on four CPU ranks that uses every kind of
communication a trace replay maps: collectives over the world group and over sub-groups,
functional collectives, a barrier, and point-to-point sends and receives.

    python examples/record_comms_trace.py OUT      # writes OUT/comms_et_{0..3}.json

Four local processes (gloo, one thread each) run, between ExecutionTraceObserver's start()
and stop(): a GEMM ``x @ w`` (``M`` x ``K`` by ``K`` x ``N``, fp32); a ``c10d`` all-reduce of
its result over the world (gloo records no process group for it: the replay assumes the
world and counts it); the functional all-reduce of the same tensor over the rank's
``new_group`` pair ([0, 1] or [2, 3]: named by the call); the functional all-gather of it
over the pair; an all-to-all over the world; a barrier; then each even rank sends the
result to the next odd rank and receives it back. ``SIZES`` gives each communication's
bytes, which a test holds the replay's sizes against.
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.multiprocessing as mp

WORLD, PAIR = 4, 2
M, K, N = 64, 128, 256
ELEMENTS = M * N  # of the GEMM's result, fp32
SIZES = {"allreduce": 4 * ELEMENTS, "pair_allreduce": 4 * ELEMENTS,
         "pair_allgather": 4 * ELEMENTS * PAIR, "alltoall": 4 * ELEMENTS, "p2p": 4 * ELEMENTS}
"""Bytes of each communication by dlsim's convention: an all-gather by its gathered
output, an all-to-all by what each rank sends."""


def _rank(rank: int, port: int, out: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # every rank creates both
    pair = pairs[rank // PAIR]
    torch.manual_seed(rank)
    x, w = torch.randn(M, K), torch.randn(K, N)
    observer = torch.profiler.ExecutionTraceObserver()
    observer.register_callback(f"{out}/comms_et_{rank}.json")
    observer.start()
    y = x @ w
    dist.all_reduce(y)
    z = funcol.all_reduce(y, "sum", pair)
    gathered = funcol.all_gather_tensor(z, 0, pair)
    swapped = torch.empty_like(y)
    dist.all_to_all_single(swapped, y)
    dist.barrier()
    buf = gathered[:M] + swapped
    if rank % 2 == 0:
        dist.send(buf, rank + 1)
        dist.recv(buf, rank + 1)
    else:
        dist.recv(buf, rank - 1)
        dist.send(buf, rank - 1)
    buf.mul_(0.5)
    observer.stop()
    observer.unregister_callback()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def record(out: str | Path, start_method: str = "spawn") -> Path:
    """Record the job's four ranks into ``out``; returns the folder. A caller that has
    imported torch already may pass ``start_method="fork"``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_rank, args=(free_port(), str(out)), nprocs=WORLD,
                       start_method=start_method)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    record(parser.parse_args().out)
