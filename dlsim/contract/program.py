"""Per-rank programs: what each device must do, in order, on which stream.

A strategy turns a parallelism plan into one program per simulated rank; the engine runs
them. Like CUDA streams with events, ops on one stream run in program order, and an op also
waits for the ops named in ``deps`` (indices into the same program) to finish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["compute", "optimizer", "offload", "codec", "tensor", "context", "expert",
               "pipeline", "data", "zero-gather"]
"""What an op is for: a forward or backward kernel group (compute), the optimizer step, a
host <-> device copy of optimizer offload, a compression encode or decode (codec), or, for a
collective, the grid axis it runs over (tensor, context, expert, pipeline, data) or ZeRO-3's
per-layer parameter gathers (zero-gather, over the data axis). Metrics group by role; they
never parse op names."""

AXIS_OF_ROLE: dict[str, str] = {"tensor": "tensor", "context": "context", "expert": "expert",
                                "pipeline": "pipeline", "data": "data", "zero-gather": "data"}


# ops and spans are never changed once made, but not frozen: a step of a 3D job makes
# hundreds of thousands, and a frozen dataclass takes three times as long to build
@dataclass(slots=True, unsafe_hash=True)
class Compute:
    """A kernel (or fused group of kernels) taking ``duration_s`` on the compute stream."""

    name: str
    duration_s: float
    deps: tuple[int, ...] = ()
    stream: str = "compute"
    role: Role = "compute"


@dataclass(slots=True, unsafe_hash=True)
class Collective:
    """A collective over ``group`` (ranks, in ring order) on the communication stream.

    ``key`` identifies the collective across ranks: the ranks of ``group`` that issue the
    same key take part in the same operation. ``repeat`` runs it that many times back to
    back (each paying its latencies), as one op: a layer stack's blocking tensor-parallel
    all-reduces without an event per layer. With ``instances`` > 1, ``group`` is that many
    equal consecutive sub-groups, each running the collective at once: in a symmetric run,
    the identical collectives of the simulated rank's peers, whose flows share the network.
    ``contention`` is the share of the issuing rank's compute throughput the collective
    takes while it is in flight (its SMs and HBM traffic): compute overlapped with it runs
    at ``1 - contention`` of its speed (``dlsim.engine.core``); 0 leaves compute alone.
    """

    name: str
    key: str
    group: tuple[int, ...]
    op: str
    size_bytes: float
    algorithm: str
    servers: int = 1
    deps: tuple[int, ...] = ()
    stream: str = "comm"
    repeat: int = 1
    instances: int = 1
    role: Role = "data"
    contention: float = 0.0


Op = Compute | Collective
