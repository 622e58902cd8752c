"""The communication nodes of a PyTorch execution trace: which dlsim collective each one is,
its size by torch's semantics, its process group, and the peer of a send or receive.

Sizes follow dlsim's convention (``collective.size_bytes``, as nccl-tests sizes them): an
all-reduce, broadcast or reduce moves its buffer G; an all-gather is sized by the gathered
output G (each rank contributes G/N); a reduce-scatter by its full input G (each rank keeps
G/N); an all-to-all by the G each rank sends (G/N to every peer); a send or receive by its
tensor. torch's ``c10d::`` operators take their output buffers as their first arguments
(``_allgather_base_(output, input, pg)``, ``alltoall_base_(output, input, pg, ...)``), so the
recorded inputs of one call hold both buffers: each operator is sized by the argument that
holds G (``C10D``), never by every tensor it was given. The functional collectives
(``_c10d_functional::all_reduce(input, op, group_name)``, ...) return their result: an
all-gather is sized by its output, the others by their input.

Process groups: a functional collective names its group (its last string argument; the
older ``c10d_functional::`` ones list its ranks); a
``c10d::`` operator names it only through the ``record_param_comms`` node its backend
records below it (NCCL: ``pg_name``, ``pg_size``, ``global_rank_start``,
``global_rank_stride``). A collective whose group the trace does not name (gloo records no
``record_param_comms``) runs over the world group and is counted as assumed
(``Comm.group is None``), never silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from dlsim.workload.trace_nodes import ProcessGroup, Tensor, TraceNode

C10D: dict[str, tuple[str, int | None, int | None]] = {
    "allreduce_": ("allreduce", 0, 0), "allreduce_coalesced_": ("allreduce", 0, 0),
    "allgather_": ("allgather", 0, 0), "_allgather_base_": ("allgather", 0, 0),
    "allgather_coalesced_": ("allgather", 0, 0),
    "allgather_into_tensor_coalesced_": ("allgather", 0, 0),
    "reduce_scatter_": ("reducescatter", 1, 0), "_reduce_scatter_base_": ("reducescatter", 1, 0),
    "reduce_scatter_tensor_coalesced_": ("reducescatter", 1, 0),
    "alltoall_": ("alltoall", 1, 0), "alltoall_base_": ("alltoall", 1, 0),
    "broadcast_": ("broadcast", 0, 0), "reduce_": ("reduce", 0, 0),
    "send": ("send", 0, None), "recv_": ("recv", 0, 0), "barrier": ("barrier", None, None)}
"""``c10d::`` operator -> (dlsim op, the argument whose tensors are G, the argument it
writes); ``None``: no tensor (a barrier moves one byte, a send writes nothing)."""
FUNCTIONAL: dict[str, str] = {
    "all_reduce": "allreduce", "all_reduce_": "allreduce",
    "all_reduce_coalesced": "allreduce", "all_reduce_coalesced_": "allreduce",
    "all_gather_into_tensor": "allgather", "all_gather_into_tensor_out": "allgather",
    "all_gather_into_tensor_coalesced": "allgather",
    "reduce_scatter_tensor": "reducescatter", "reduce_scatter_tensor_coalesced": "reducescatter",
    "all_to_all_single": "alltoall", "broadcast": "broadcast", "broadcast_": "broadcast"}
"""``_c10d_functional::`` operator -> dlsim op."""
FUNCTIONAL_FREE = frozenset({"wait_tensor", "_wrap_tensor_autograd"})
"""Functional-collective bookkeeping that launches nothing: the wait is the data dependency
on the collective's output, which the replay keeps."""
BARRIER_BYTES = 1.0  # NCCL's barrier is an all-reduce of one byte


@dataclass(frozen=True)
class Comm:
    """What a communication node does: ``op`` over ``group`` (a process group's name;
    ``None`` where the trace does not say, the world group assumed), ``size_bytes`` by
    dlsim's convention, the ``peer`` (a group rank) of a send or receive, and the tensors it
    reads and writes (its data dependencies)."""

    op: str
    size_bytes: float
    group: str | None
    reads: tuple[Tensor, ...]
    writes: tuple[Tensor, ...]
    peer: int | None = None
    group_size: int | None = None  # as a record_param_comms or functional call gives it
    rank_start: int | None = None
    rank_stride: int | None = None
    ranks: tuple[int, ...] = ()  # as the older functional collectives list them


FUNCTIONAL_NAMESPACES = ("_c10d_functional::", "c10d_functional::")
"""The functional collectives' namespaces: ``_c10d_functional`` names its group by name,
the older ``c10d_functional`` (torch 2.1-2.2) by its ranks (``tag, ranks, group_size``)."""


def comm_kind(name: str) -> str | None:
    """'comm' for a collective or point-to-point node, 'free' for functional bookkeeping,
    ``None`` for anything else."""
    if name.startswith("c10d::"):
        return "comm" if name[6:] in C10D else None
    if name.startswith(FUNCTIONAL_NAMESPACES):
        short = name.split("::", 1)[1].split(".")[0]
        return "comm" if short in FUNCTIONAL else "free" if short in FUNCTIONAL_FREE else None
    return None


def _bytes(tensors: tuple[Tensor, ...]) -> float:
    return float(sum(t.numel * t.itemsize for t in tensors))


def _arg(node: TraceNode, i: int | None) -> tuple[Tensor, ...]:
    return node.in_args[i] if i is not None and i < len(node.in_args) else ()


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _param_comms(records: list[TraceNode]) -> dict[str, Any]:
    """The group a backend's ``record_param_comms`` names: from its attributes, else from its
    inputs (``[tensors, seq, (pg_name, pg_desc), rank, collective, in_split, out_split,
    global_rank_start, global_rank_stride, world_size]``)."""
    for r in records:
        if r.attr("pg_name") is not None:
            return {"group": str(r.attr("pg_name")), "group_size": _int(r.attr("pg_size")),
                    "rank_start": _int(r.attr("global_rank_start")),
                    "rank_stride": _int(r.attr("global_rank_stride"))}
        args = r.args
        if len(args) >= 10 and isinstance(args[2], list) and args[2]:
            return {"group": str(args[2][0]), "group_size": _int(args[-1]),
                    "rank_start": _int(args[-3]), "rank_stride": _int(args[-2])}
    return {}


def comm_of(node: TraceNode, below: list[TraceNode]) -> Comm:
    """The communication of ``node`` (``comm_kind`` 'comm'); ``below`` are the nodes it
    called (where a ``record_param_comms`` may name its group)."""
    short = node.name.split("::", 1)[1].split(".")[0]
    if node.name.startswith(FUNCTIONAL_NAMESPACES):
        op = FUNCTIONAL[short]
        sized = node.outputs if op == "allgather" else node.inputs
        sizes = [a for a in node.args[1:] if isinstance(a, int) and not isinstance(a, bool)]
        if node.name.startswith("c10d_functional::"):  # (..., tag, ranks, group_size)
            lists = [a for a in node.args[1:] if isinstance(a, list)
                     and all(isinstance(r, int) for r in a)]
            ranks = tuple(lists[-1]) if lists else ()
            return Comm(op, _bytes(sized), f"ranks {list(ranks)}" if ranks else None,
                        node.inputs, node.outputs, group_size=len(ranks) or None,
                        ranks=ranks)
        names = [a for a in node.args if isinstance(a, str)]
        return Comm(op, _bytes(sized), names[-1] if names else None, node.inputs,
                    node.outputs, group_size=sizes[0] if op in ("allgather", "reducescatter")
                    and sizes else None)
    op, sized_by, written = C10D[short]
    named = _param_comms([n for n in below if n.name == "record_param_comms"])
    size = BARRIER_BYTES if op == "barrier" else _bytes(_arg(node, sized_by))
    peer = _int(node.args[2]) if op in ("send", "recv") and len(node.args) > 2 else None
    return Comm(op, size, named.get("group"), node.inputs, _arg(node, written), peer,
                named.get("group_size"), named.get("rank_start"), named.get("rank_stride"))


def resolve_group(comm: Comm, groups: dict[str, ProcessGroup], world: int) -> ProcessGroup:
    """The process group ``comm`` runs over: the one the trace lists by that name, else the
    one its backend's record spells out (start, stride, size), else the world group (a
    ``Comm.group`` of ``None``: assumed)."""
    if comm.group is not None and comm.group in groups:
        return groups[comm.group]
    if comm.ranks:
        ranks = tuple(sorted(comm.ranks))
        return ProcessGroup(comm.group or "", () if len(ranks) == world else ranks, len(ranks))
    if comm.group is not None and comm.group_size and comm.rank_start is not None:
        stride = comm.rank_stride or 1
        ranks = tuple(comm.rank_start + stride * i for i in range(comm.group_size))
        return ProcessGroup(comm.group, () if comm.group_size == world else ranks,
                            comm.group_size)
    return ProcessGroup(comm.group or "world", (), world)


class IrregularGroup(ValueError):
    """A process group that is not one block of a regular partition of the world."""


@lru_cache(maxsize=1024)  # a replay asks it for every collective of every rank
def partition(group: ProcessGroup, world: int) -> tuple[tuple[int, ...], ...]:
    """The regular partition of ``world`` ranks that ``group`` is one block of, as tensor-
    and data-parallel groups are: ``k`` ranks ``s`` apart, in blocks of ``k·s`` consecutive
    ranks (s = 1: contiguous groups [0,1], [2,3]; s > 1: strided ones [0,2], [1,3]). One
    rank's trace stands for every rank only on such a partition: every other rank ran the
    same operators over its own block."""
    ranks = group.members(world)
    k = len(ranks)
    if k == world:
        return (tuple(range(world)),)
    stride = ranks[1] - ranks[0] if k > 1 else 1
    block = stride * k
    if (k < 1 or stride < 1 or any(b - a != stride for a, b in zip(ranks, ranks[1:]))
            or world % block or ranks[0] % block >= stride or ranks[-1] >= world):
        raise IrregularGroup(f"process group '{group.name}' (ranks {list(ranks)}) is not one "
                             f"block of a regular partition of the {world} ranks")
    return tuple(tuple(base + offset + stride * i for i in range(k))
                 for base in range(0, world, block) for offset in range(stride))
