"""A PyTorch execution trace (the JSON ``torch.profiler.ExecutionTraceObserver`` writes) as
dlsim work: compute kernels, communication and the dependencies between them.

The JSON is read by ``dlsim.workload.trace_nodes``; communication nodes are mapped by
``dlsim.workload.trace_comms``; measured times come from ``dlsim.workload.kineto``. What
becomes of each node (``classify``):

- structure: annotations and wrappers, which cost nothing themselves because what they
  call is recorded too: the ``[pytorch|profiler|...]`` roots, ``## ... ##`` markers,
  autograd nodes (``AddmmBackward0``, ``autograd::engine::...``, ``AccumulateGrad``),
  ``DistributedDataParallel.forward``, ``Optimizer.step#...``;
- free: views and allocations (``aten::view``, ``aten::t``, ``aten::empty``, ...), which
  launch no kernel (one that calls others, ``aten::reshape`` copying, is opened), and the
  functional collectives' ``wait_tensor`` (the data dependency it stands for is kept);
- compute: the outermost ``aten::`` operator of each call, priced by the cost model from its
  shapes (``kernel_of``); what it calls is ``inside`` it (``aten::linear`` is its GEMM, not
  also its ``aten::addmm``): ``mm``/``addmm``/``bmm``/``baddbmm``/``matmul``/``linear``
  2·m·k·n FLOPs (a GEMM), ``convolution`` 2·N·C_out·H_out·W_out·(C_in/groups)·kh·kw and its
  backward that once per gradient asked (a conv), fused attention 4·b·h·s_q·s_k·d and its
  backward 2.5 times that (attention), as FlopCounterMode counts them; anything else an
  element-wise kernel of as many FLOPs as its output has elements. Bytes are every tensor
  read and written once. A measured duration from a Kineto trace replaces the cost model
  where present;
- collective: ``c10d::`` collectives, barrier, send and recv, and the functional
  collectives (``_c10d_functional::all_reduce``, ...), sized and grouped as torch defines
  them (``trace_comms``); the backend's own record of the same work (``gloo:all_reduce``,
  ``nccl:all_reduce``, ``record_param_comms``) is counted with it, not run twice;
- unmapped: a leaf outside ``aten::`` with tensors (a custom kernel) and no measured
  duration, and ``c10d::`` operators dlsim has no collective for (``gather_``,
  ``scatter_``, ``recv_any_source_``): listed by name in the run's summary, never silently
  dropped.

Dependencies: operators run in id order on their stream (compute, communication, and one
stream each for sends and receives, as NCCL runs point-to-point on its own streams), and an
operator also waits for the last earlier operator that wrote a storage it reads
(``storage_id``): a gradient all-reduce waits for the backward kernels that filled its
bucket, and copying the bucket back into ``.grad`` waits for the all-reduce. A collective
writes only the buffers torch says it writes (an all-to-all its output, not its input); a
barrier waits for everything before it and everything after it waits for the barrier.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

from dlsim.workload.model import Kernel
from dlsim.workload.trace_comms import Comm, comm_kind, comm_of
from dlsim.workload.trace_nodes import FIELD, ProcessGroup, TraceNode, fail, read_nodes

__all__ = ["FIELD", "TraceOp", "TraceWork", "classify", "kernel_of", "trace_rows"]

FREE = frozenset({
    "view", "_unsafe_view", "reshape", "as_strided", "t", "transpose", "permute", "expand",
    "expand_as", "squeeze", "unsqueeze", "select", "slice", "narrow", "split",
    "split_with_sizes", "chunk", "unbind", "detach", "alias", "resolve_conj", "resolve_neg",
    "empty", "empty_strided", "empty_like", "lift_fresh", "set_", "contiguous", "numpy_T",
    "_reshape_alias", "view_as", "flatten", "unflatten", "to", "type_as", "size", "stride",
    "is_nonzero", "item", "_local_scalar_dense"})
"""Leaf operators that launch no kernel: views, allocations and metadata."""
MATMULS = frozenset({"mm", "addmm", "bmm", "baddbmm", "matmul", "linear"})
CONVS = frozenset({"convolution", "_convolution", "conv2d", "conv1d", "mkldnn_convolution",
                   "cudnn_convolution", "_slow_conv2d_forward"})
ATTENTION = frozenset({"_scaled_dot_product_flash_attention", "_scaled_dot_product_attention",
                       "_scaled_dot_product_efficient_attention", "_flash_attention_forward",
                       "_scaled_dot_product_flash_attention_for_cpu",
                       "_scaled_dot_product_cudnn_attention", "scaled_dot_product_attention"})
BACKEND_RECORDS = ("gloo:", "nccl:", "record_param_comms")
STRUCTURE_PREFIXES = ("[pytorch|profiler", "## ", "autograd::", "DistributedDataParallel.",
                      "Optimizer.", "ProfilerStep#", "torch.distributed.", "torch::autograd::")
AUTOGRAD_NODE = re.compile(r"^\w+Backward\d*$")  # CloneBackward0: runs only what it calls
DTYPES = {"float": "fp32", "double": "fp64", "c10::Half": "fp16", "c10::BFloat16": "bf16",
          "c10::Float8_e4m3fn": "fp8", "c10::Float8_e5m2": "fp8"}


@dataclass(frozen=True)
class TraceOp:
    """A node to replay: a compute kernel or a collective, with the earlier ops (indices
    into ``TraceWork.ops``) whose outputs it reads."""

    node: TraceNode
    deps: tuple[int, ...]
    kernel: Kernel | None = None  # compute
    comm: Comm | None = None  # a collective, barrier, send or receive
    measured_s: float | None = None  # from Kineto

    @property
    def collective(self) -> str | None:
        """allreduce, allgather, ..., barrier, send, recv; ``None`` for compute."""
        return self.comm.op if self.comm is not None else None

    @property
    def size_bytes(self) -> float:
        return self.comm.size_bytes if self.comm is not None else 0.0

    @property
    def stream(self) -> str:
        """compute, comm, or send / recv: NCCL runs point-to-point on streams of its own."""
        op = self.collective
        return "compute" if op is None else op if op in ("send", "recv") else "comm"


@dataclass
class TraceWork:
    """A classified trace: the ops to replay in order, and what every node became."""

    path: str
    ops: list[TraceOp]
    groups: list[ProcessGroup]
    counts: Counter[str] = field(default_factory=Counter)  # structure/free/compute/...
    unmapped: Counter[str] = field(default_factory=Counter)  # by node name
    steps: int = 1

    @property
    def world(self) -> int:
        return max((g.size for g in self.groups), default=1)

    @property
    def groups_assumed(self) -> int:
        """Communication ops whose process group the trace does not name (world assumed)."""
        return sum(op.comm is not None and op.comm.group is None for op in self.ops)

    @property
    def p2p(self) -> int:
        return sum(op.collective in ("send", "recv") for op in self.ops)


def _dims(shape: Any) -> list[int]:
    return [int(d) for d in shape] if isinstance(shape, list) and all(
        isinstance(d, int) for d in shape) else []


def _matmul_flops(op: str, shapes: tuple[Any, ...]) -> float:
    dims = [_dims(s) for s in shapes]
    a, b = (dims[1], dims[2]) if op in ("addmm", "baddbmm") else (dims[0], dims[1])
    if op == "linear":  # input (..., k) by weight (n, k)
        return 2.0 * prod(a) * b[0]
    batch = prod(a[:-2]) if len(a) > 2 else 1
    return 2.0 * batch * prod(a[-2:-1] or [1]) * a[-1] * b[-1]


def _conv_flops(shapes: tuple[Any, ...], out_shapes: tuple[Any, ...]) -> float:
    weight, out = _dims(shapes[1]), _dims(out_shapes[0])
    return 2.0 * prod(out) * prod(weight[1:])  # C_in/groups is weight's second dimension


def _conv_backward_flops(node: TraceNode) -> float:
    """The forward's FLOPs once for each gradient ``output_mask`` asks of input and weight
    (the bias gradient is a sum): FlopCounterMode's count."""
    mask = node.args[-1] if node.args and isinstance(node.args[-1], list) else [True, True]
    forward = 2.0 * prod(_dims(node.shapes[0])) * prod(_dims(node.shapes[2])[1:])
    return forward * (bool(mask[0]) + bool(mask[1]))


def _attention_flops(shapes: tuple[Any, ...]) -> float:
    q, k = _dims(shapes[0]), _dims(shapes[1])
    return 4.0 * prod(q[:-1]) * k[-2] * q[-1]  # QK^T and AV: 2·b·h·s_q·s_k·d each


def _attention_backward_flops(shapes: tuple[Any, ...]) -> float:
    """FlashAttention's backward: S = QK^T again, then dV, dP, dQ and dK, five products of
    2·b·h·s_q·s_k·d (FlopCounterMode's count); the inputs are grad_out, q, k, v, ..."""
    return 2.5 * _attention_flops(shapes[1:])


def kernel_of(node: TraceNode, dtype_bytes: int) -> Kernel:
    """The cost model's kernel for a leaf ``aten::`` operator; floating tensors are priced
    at ``dtype_bytes`` per element (the scenario's precision), integer tensors at their
    own size."""
    op = node.name.split("::", 1)[1].split(".")[0]
    moved = float(sum(t.numel * (dtype_bytes if t.floating else t.itemsize)
                      for t in (*node.inputs, *node.outputs)))
    try:
        if op in MATMULS:
            return Kernel("gemm", _matmul_flops(op, node.shapes), moved, op)
        if op in CONVS:
            return Kernel("conv", _conv_flops(node.shapes, node.out_shapes), moved, op)
        if op == "convolution_backward":
            return Kernel("conv", _conv_backward_flops(node), moved, op)
        if op in ATTENTION:
            return Kernel("attention", _attention_flops(node.shapes), moved, op)
        if op.endswith("_backward") and op[:-len("_backward")] in ATTENTION:
            return Kernel("attention", _attention_backward_flops(node.shapes), moved, op)
    except (IndexError, TypeError, ValueError):
        pass  # shapes not as the schema says: priced by its bytes below
    elements = max((t.numel for t in node.outputs), default=0)
    return Kernel("elementwise", float(elements), moved, op)


def _bucket(node: TraceNode) -> str:
    name = node.name
    kind = comm_kind(name)
    if kind is not None:
        return "collective" if kind == "comm" else "free"
    if name.startswith(("c10d::", "_c10d_functional::", "c10d_functional::")):
        return "unmapped"
    if name.startswith(BACKEND_RECORDS):
        return "backend"
    if name.startswith(STRUCTURE_PREFIXES) or AUTOGRAD_NODE.match(name):
        return "structure"
    if name.startswith("aten::"):
        return "free" if name[6:].split(".")[0] in FREE else "compute"
    if name in FREE:  # the autograd-level detach
        return "free"
    if not node.inputs and not node.outputs:
        return "structure"  # an annotation that ran nothing, or a wrapper of its children
    return "custom"


def _own_comm(node: TraceNode, enclosing: str | None) -> bool:
    """A collective recorded below a kernel or a collective of a different kind is its own:
    the observer parents a node on whatever its thread had open (an asynchronous functional
    collective's wrapper can still be open when the next collective starts), while a
    functional collective's own ``c10d::`` call is the same kind of collective."""
    if comm_kind(node.name) != "comm" or enclosing is None:
        return False
    return comm_of(node, []).op != enclosing


FUNCTIONAL = ("_c10d_functional::", "c10d_functional::")


def _same_call(node: TraceNode, comm: Comm, previous: TraceOp | None) -> bool:
    """Whether ``node`` is the previous collective recorded again: a functional collective
    writes a buffer of its own each call, so a functional record of the same op and group
    writing the same buffers as the one before it (or the c10d:: call it runs) is that
    call, seen at another dispatcher level that the observer parented elsewhere (it parents
    on whatever its thread had open)."""
    if previous is None or previous.comm is None:
        return False
    if (previous.comm.op, previous.comm.group) != (comm.op, comm.group) and not (
            previous.comm.op == comm.op and None in (previous.comm.group, comm.group)):
        return False
    if not (node.name.startswith(FUNCTIONAL) or previous.node.name.startswith(FUNCTIONAL)):
        return False
    mine = {t.storage for t in comm.writes}
    return bool(mine) and mine == {t.storage for t in previous.comm.writes}


def _below(node: TraceNode, children: dict[int, list[TraceNode]]) -> list[TraceNode]:
    """Every node ``node`` called, at any depth."""
    out, stack = [], list(children.get(node.id, ()))
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(children.get(n.id, ()))
    return out


def classify(path: str | Path, dtype_bytes: int,
             measured: dict[int, float] | None = None) -> TraceWork:
    """The ops to replay from one rank's trace; ``measured`` maps ``rf_id`` to a measured
    duration in seconds (``dlsim.workload.kineto``).

    The outermost ``aten::`` operator of a call is the kernel (``aten::linear`` is priced
    as its GEMM; the views and copies it calls are part of it), and so is a collective: the
    nodes below either are counted as ``inside``. A free operator (a view) that calls others
    is opened: ``aten::reshape`` that copies is its ``aten::clone``."""
    nodes, groups = read_nodes(path)
    children: dict[int, list[TraceNode]] = {}
    for n in nodes:
        if n.parent != n.id:
            children.setdefault(n.parent, []).append(n)
    has_c10d = any(comm_kind(n.name) == "comm" for n in nodes)
    work = TraceWork(str(path), [], groups)
    writer: dict[int, int] = {}  # storage id -> index of the last op writing it
    claimed: set[int] = set()  # ids of replayed ops and of every node below them
    comm_op: dict[int, str | None] = {}  # claimed node id -> its op's collective, or compute
    fence: int | None = None  # the last barrier: the first op after it waits for it
    fenced: set[str] = set()  # streams whose first op after the fence waits for it
    last: dict[str, int] = {}  # stream -> its last op
    last_comm: TraceOp | None = None
    for node in nodes:
        if comm_kind(node.name) == "free":  # a wait's result is the collective's output
            for src, dst in zip(node.inputs, node.outputs):
                if src.storage in writer:
                    writer[dst.storage] = writer[src.storage]
        if node.parent in claimed and node.parent != node.id and not _own_comm(
                node, comm_op.get(node.parent)):
            claimed.add(node.id)
            comm_op.setdefault(node.id, comm_op.get(node.parent))
            work.counts["inside"] += 1
            continue
        bucket = _bucket(node)
        if bucket == "backend" and not has_c10d and node.name.startswith(("nccl:", "gloo:")):
            bucket = "collective"  # a trace without c10d:: records: the backend's is the op
        measured_s = (measured or {}).get(node.rf_id) if node.rf_id is not None else None
        if bucket == "free" and node.id in children:
            bucket = "structure"
        if bucket == "custom":  # a wrapper of its children, else a kernel of its own
            bucket = ("structure" if node.id in children else
                      "compute" if measured_s is not None else "unmapped")
        work.counts[bucket] += 1
        if bucket == "unmapped":
            work.unmapped[node.name] += 1
        if bucket not in ("compute", "collective"):
            continue
        claimed.add(node.id)
        index = len(work.ops)
        if bucket == "compute":
            reads, writes = node.inputs, node.outputs
            kernel = (kernel_of(node, dtype_bytes) if node.name.startswith("aten::")
                      else Kernel("elementwise", 0.0, 0.0, node.name))
            op = TraceOp(node, (), kernel=kernel, measured_s=measured_s)
            comm_op[node.id] = "compute"
        else:
            comm = (comm_of(node, _below(node, children)) if comm_kind(node.name) == "comm"
                    else Comm(_backend_op(node.name), float(sum(
                        t.numel * t.itemsize for t in node.inputs)), None, node.inputs,
                        node.inputs))
            if _same_call(node, comm, last_comm):
                claimed.add(node.id)
                comm_op[node.id] = comm.op
                work.counts["inside"] += 1
                continue
            reads, writes = comm.reads, comm.writes
            op = TraceOp(node, (), comm=comm, measured_s=measured_s)
            comm_op[node.id] = comm.op
            last_comm = op
        deps = {writer[t.storage] for t in reads if t.storage in writer}
        if op.collective == "barrier":
            deps |= set(last.values())  # every stream's work so far
            fence, fenced = index, {op.stream}
        elif fence is not None and op.stream not in fenced:
            deps.add(fence)
            fenced.add(op.stream)
        work.ops.append(TraceOp(op.node, tuple(sorted(deps)), op.kernel, op.comm,
                                op.measured_s))
        last[op.stream] = index
        for t in writes:
            writer[t.storage] = index
    work.steps = max(1, sum(n.name.startswith("ProfilerStep#") for n in nodes))
    if not work.ops:
        raise fail(path, f"has {len(nodes)} nodes but no operator to replay (no aten:: "
                   "kernel, no c10d:: collective); record the training step between "
                   "ExecutionTraceObserver's start() and stop().")
    return work


def _backend_op(name: str) -> str:
    """``nccl:all_reduce`` -> allreduce (a backend record standing for its collective)."""
    short = name.split(":", 1)[-1].replace("_", "")
    return {"allreduce": "allreduce", "allgather": "allgather", "reducescatter":
            "reducescatter", "broadcast": "broadcast", "reduce": "reduce",
            "alltoall": "alltoall", "alltoallbase": "alltoall",
            "allgatherbase": "allgather", "reducescatterbase": "reducescatter"}.get(
        short, "allreduce")


def _group_label(op: TraceOp) -> str:
    if op.comm is None:
        return ""
    return op.comm.group if op.comm.group is not None else "world (assumed)"


def trace_rows(work: TraceWork) -> list[dict[str, Any]]:
    """The table ``dlsim import-model`` prints for a trace: the replayed operators by name
    (and, for communication, process group: a name the trace gives, else "world
    (assumed)"), in order of first appearance, with their count, GFLOP, MB moved (compute)
    or MB sent through a collective, then every unmapped node by name."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for op in work.ops:
        group = _group_label(op)
        row = rows.setdefault((op.node.name, group), {
            "op": op.node.name, "kind": op.kernel.kind if op.kernel else op.collective,
            "group": group, "count": 0, "GFLOP": 0.0, "moved_MB": 0.0, "collective_MB": 0.0})
        row["count"] += 1
        if op.kernel is not None:
            row["GFLOP"] += op.kernel.flops / 1e9
            row["moved_MB"] += op.kernel.bytes / 1e6
        else:
            row["collective_MB"] += op.size_bytes / 1e6
    unmapped = [{"op": name, "kind": "unmapped", "group": "", "count": count, "GFLOP": 0.0,
                 "moved_MB": 0.0, "collective_MB": 0.0}
                for name, count in sorted(work.unmapped.items())]
    return [*rows.values(), *unmapped]
