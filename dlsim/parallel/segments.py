"""A layer's pass cut where context or expert parallelism interrupts its kernels.

Under context parallelism an attention block's core (QK^T, softmax, AV) runs as a ring of c
steps, each on the K/V block in hand while the next block travels, or (``context_comm:
a2a``) between two all-to-alls over the context group that trade the sequence split for a
head split and back (``dlsim.parallel.context``); under expert parallelism a MoE block's
routed experts run between an all-to-all dispatch and an all-to-all combine
(``dlsim.parallel.expert``), with expert tensor parallelism an all-gather after the
dispatch and a reduce-scatter before the combine. The builder turns each ``Segment`` into
ops; the compute between them stays one kernel group.

Backward runs the layer's kernels in reverse: its rings pass each block with its gradients
(twice the bytes), its all-to-alls the tokens' gradients (around the core: dO before it,
dQ, dK and dV after it). Recomputation re-runs what it
recomputes with its communication: full recomputation the whole forward (its rings and
all-to-alls) before the backward, selective the attention core, as its own forward ring,
just before the backward ring. So a pass's segment times add up to ``pass_times_s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dlsim.hardware.profiles import DeviceProfile
from dlsim.parallel.expert import (
    ExpertLayout,
    counts_bytes,
    counts_gather_bytes,
    dispatch_bytes,
    gather_bytes,
)
from dlsim.parallel.tensor import ATTENTION_CORE
from dlsim.workload.costmodel import kernel_time_s
from dlsim.workload.model import Kernel, Layer

SegmentKind = Literal["compute", "ring", "heads", "counts", "dispatch", "gather", "scatter",
                      "combine"]
# The expert-tensor segments' collectives over the ranks that split each expert.
EXPERT_TENSOR_OPS = {"gather": "allgather", "scatter": "reducescatter"}


@dataclass(frozen=True)
class Segment:
    """``compute``: ``seconds`` of kernels; ``ring``: the attention core's ``seconds`` over
    all the ring's steps, each passing a block of ``size_bytes`` on; ``heads``: an all-to-all
    of ``size_bytes`` per rank over the context group (nccl-tests' buffer); ``dispatch`` and
    ``combine``: an all-to-all of ``size_bytes`` per rank (nccl-tests' buffer); ``gather``
    and ``scatter``: the expert-tensor all-gather after the dispatch and reduce-scatter
    before the combine, of ``size_bytes`` (nccl-tests' buffer)."""

    kind: SegmentKind
    seconds: float = 0.0
    size_bytes: float = 0.0


LayerPass = tuple[Segment, ...]


def _walk(items: list[tuple[str, float]], ring_bytes: float, a2a_bytes: float,
          gather: float = 0.0, counts: tuple[float, float] = (0.0, 0.0),
          heads: tuple[float, float] = (0.0, 0.0)) -> list[Segment]:
    """Segments of a run of (class, seconds) kernels: consecutive kernels of one class are
    one segment; ``recomputed-ring`` is the forward ring that selective recomputation re-runs
    (blocks without their gradients); ``counts`` (forward only): the token-count exchange
    over the expert group and its expert-tensor all-gather before each dispatch; ``heads``:
    the context all-to-alls before and after the core (``recomputed-heads``: the forward's,
    re-run by full recomputation)."""
    out: list[Segment] = []
    i = 0
    while i < len(items):
        j = i
        while j < len(items) and items[j][0] == items[i][0]:
            j += 1
        what, seconds = items[i][0], sum(t for _, t in items[i:j])
        if what == "ring":
            out.append(Segment("ring", seconds, ring_bytes))
        elif what == "recomputed-ring":
            out.append(Segment("ring", seconds, ring_bytes / 2))
        elif what in ("heads", "recomputed-heads"):
            before, after = heads if what == "heads" else heads[::-1]
            out += [Segment("heads", 0.0, before), Segment("compute", seconds),
                    Segment("heads", 0.0, after)]
        elif what == "expert":
            out += [*((Segment("counts", 0.0, counts[0]),) if counts[0] else ()),
                    *((Segment("gather", 0.0, counts[1]),) if counts[1] else ()),
                    Segment("dispatch", 0.0, a2a_bytes),
                    *((Segment("gather", 0.0, gather),) if gather else ()),
                    Segment("compute", seconds),
                    *((Segment("scatter", 0.0, gather),) if gather else ()),
                    Segment("combine", 0.0, a2a_bytes)]
        else:
            out.append(Segment("compute", seconds))
        i = j
    return out


def _merged(segments: list[Segment]) -> LayerPass:
    """Adjacent compute segments as one."""
    out: list[Segment] = []
    for seg in segments:
        if out and seg.kind == out[-1].kind == "compute":
            out[-1] = Segment("compute", out[-1].seconds + seg.seconds)
        else:
            out.append(seg)
    return tuple(out)


def layer_segments(layer: Layer, device: DeviceProfile, dtype: str, recompute: str,
                   context: int, kv_block_bytes: float, experts: ExpertLayout,
                   head_split: tuple[float, float] | None = None
                   ) -> tuple[LayerPass, LayerPass]:
    """(forward, backward) segments of one (sharded) layer for one micro-batch;
    ``kv_block_bytes`` is one ring step's K/V block in forward; ``head_split`` (context_comm
    a2a, instead of the ring): the all-to-alls' bytes per rank of Q, K and V before the
    core and of its output after it (``dlsim.parallel.context.head_split_bytes``)."""
    moe = layer.moe
    exchange = "ring" if head_split is None else "heads"
    ring = context > 1 and layer.block is not None
    routed = moe.expert_kernels if moe is not None and experts.expert > 1 else frozenset()
    a2a = 0.0 if moe is None else dispatch_bytes(moe, experts)
    gather = 0.0 if moe is None else gather_bytes(moe, experts)
    counts = (0.0, 0.0) if moe is None else (counts_bytes(moe, experts),
                                             counts_gather_bytes(moe, experts))

    def items(kernels: list[Kernel]) -> list[tuple[str, float]]:
        return [(exchange if ring and k.name in ATTENTION_CORE
                 else "expert" if k.name in routed else "compute",
                 kernel_time_s(k, device, dtype)) for k in kernels]

    forward = items(list(layer.forward))
    bwd_kernels = list(reversed(layer.backward))
    backward = items(bwd_kernels)
    if recompute == "full":
        backward = [(f"recomputed-{what}" if what in ("ring", "heads") else what, seconds)
                    for what, seconds in forward] + backward
    elif recompute == "selective":
        core = [k for k in layer.forward if k.name in ATTENTION_CORE and k.fused is None]
        at = next((n for n, k in enumerate(bwd_kernels) if k.name in ATTENTION_CORE), None)
        if at is not None and core:  # fused attention stores no scores: nothing to redo
            # the head-split Q, K and V are saved: redoing the core needs no all-to-all
            backward.insert(at, ("recomputed-ring" if ring and head_split is None else "compute",
                                 sum(kernel_time_s(k, device, dtype) for k in core)))
    qkv, out = head_split or (0.0, 0.0)
    return (_merged(_walk(forward, kv_block_bytes, a2a, gather, counts, (qkv, out))),
            _merged(_walk(backward, 2 * kv_block_bytes, a2a, gather, heads=(out, qkv))))
