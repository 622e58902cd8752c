"""Pipeline parallelism combined with tensor and data parallelism: the programs of every rank.

The model's layers are cut into ``stages * chunks`` contiguous pieces (transformer blocks
in equal runs, other layers at equal compute time); device ``s`` holds pieces ``s, s + p,
s + 2p, ...`` (its model chunks, Narayanan et al. SC'21, §2.2; one chunk unless the
schedule is interleaved). Each micro-batch's activations go point to point to the next
piece and its gradients come back; the bubble is not a formula here, it is what the
stages' dependencies leave idle. Schedules: GPipe runs all forwards,
then all backwards (Huang et al. 2019); 1F1B runs ``stages - stage - 1`` warm-up forwards,
then alternates one forward with one backward (PipeDream-Flush, Narayanan et al. 2021);
interleaved 1F1B walks the chunks in groups of ``stages`` micro-batches with Megatron-LM's
warm-up of ``2(p - s - 1) + (v - 1)p`` forwards, which divides the bubble by ``v``.

With tensor parallelism every piece runs sharded (``dlsim.parallel.tensor``) and blocks on its
all-reduces (with sequence parallelism, all-gathers and reduce-scatters); a pass's
collectives of one kind run as one repeated collective after its compute, which takes the
same time as interleaving them because each blocks the next kernel. Between stages
each of the t tensor ranks sends its 1/t of the activations over its own NIC (Megatron-LM's
scatter/gather optimisation, SC'21 §4.1; the all-gather over NVLink that follows is left out).
Each piece's gradients are all-reduced over the data-parallel replicas as soon as the piece's
last backward pass is done, overlapping the rest of the schedule; with ZeRO-1 they are
reduce-scattered, each replica updates its 1/d share and the parameters are all-gathered.

Symmetry: simulated by one replica and one tensor rank per stage, a point-to-point send
carries the identical sends of every replica and tensor rank, a tensor all-reduce those of
every replica's tensor group and a gradient all-reduce those of every tensor rank's
data-parallel group, so all the traffic is on the network while the compute is simulated once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from dlsim.contract.program import Collective, Compute, Op
from dlsim.hardware.profiles import DeviceProfile
from dlsim.parallel.data_parallel import optimizer_steps, pass_times_s
from dlsim.parallel.grid import Grid
from dlsim.parallel.memory import gradient_bytes_per_param, pipeline_stages, weight_bytes_per_param
from dlsim.parallel.tensor import Collectives, tensor_collectives
from dlsim.workload.model import Model


def partition(times: list[float], stages: int) -> list[list[int]]:
    """Contiguous layer ranges with near-equal total time: each cut goes after the layer
    whose running total is nearest the time quantile (ties to the earlier layer, so that
    rounding cannot unbalance equal layers)."""
    cumulative = np.cumsum(times)
    target = cumulative[-1] * np.arange(1, stages) / stages
    after = np.clip(np.searchsorted(cumulative, target), 1, len(times) - 1)
    before = after - 1
    nearer = np.abs(cumulative[before] - target) <= np.abs(cumulative[after] - target)
    cuts = np.where(nearer, before, after) + 1
    cuts = np.clip(cuts, np.arange(1, stages), len(times) - np.arange(stages - 1, 0, -1))
    bounds = [0, *np.maximum.accumulate(cuts).tolist(), len(times)]
    return [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]


def warmup(kind: str, stage: int, stages: int, micro: int, chunks: int = 1) -> int:
    """Forward passes a stage runs before its first backward."""
    total = micro * chunks
    if kind == "gpipe":
        return total
    if kind == "interleaved":
        if micro == stages:  # Megatron-LM: with m = p every forward comes first
            return total
        return min(2 * (stages - stage - 1) + (chunks - 1) * stages, total)
    return min(stages - stage - 1, total)


def schedule(kind: str, stage: int, stages: int, micro: int,
             chunks: int = 1) -> list[tuple[str, int, int]]:
    """The order of forward ('F', micro-batch, chunk) and backward ('B', ...) passes on one
    stage. Interleaved, the k-th forward runs chunk (k // p) mod v on micro-batch
    (k // pv)·p + k mod p, and backwards walk the chunks in reverse (Megatron-LM's
    ``get_model_chunk_id``)."""
    group = stages * chunks if kind == "interleaved" else 1

    def unit(k: int, forward: bool) -> tuple[int, int]:
        if kind != "interleaved":
            return k, 0
        rounds, pos = divmod(k, group)
        chunk = pos // stages
        return rounds * stages + pos % stages, chunk if forward else chunks - 1 - chunk

    total = micro * (chunks if kind == "interleaved" else 1)
    first = warmup(kind, stage, stages, micro, chunks if kind == "interleaved" else 1)
    order = [("F", *unit(k, True)) for k in range(first)]
    for k in range(total - first):
        order += [("F", *unit(first + k, True)), ("B", *unit(k, False))]
    return order + [("B", *unit(k, False)) for k in range(total - first, total)]


def in_flight(kind: str, stage: int, stages: int, micro: int, chunks: int = 1) -> float:
    """Micro-batches of a whole stage whose activations it holds at once: GPipe all m, 1F1B
    p - stage; interleaved, its warm-up plus one chunk-passes of 1/v of a stage each."""
    if kind == "gpipe":
        return micro
    if kind == "interleaved":
        return min(warmup(kind, stage, stages, micro, chunks) + 1, micro * chunks) / chunks
    return min(stages - stage, micro)


@dataclass(frozen=True)
class Piece:
    """One model chunk of one stage: its layers, pass times and tensor-parallel collectives
    of b·s·h, as (op, count) per pass."""

    layers: list[int]
    forward_s: float
    backward_s: float  # including recomputation
    forward_collectives: Collectives
    backward_collectives: Collectives  # including the recomputed forward's
    params: float  # per tensor rank
    in_bytes: float
    out_bytes: float


def count_collectives(collectives: list[Collectives]) -> Collectives:
    """The collectives of several layers by op, in the order the ops first appear."""
    total: dict[str, int] = {}
    for layer in collectives:
        for op, count in layer:
            total[op] = total.get(op, 0) + count
    return tuple(total.items())


def pieces(model: Model, shard: Model, device: DeviceProfile, dtype: str, parts: int,
           recompute: str, sequence_parallel: bool = False) -> list[Piece]:
    """Cut ``shard`` (one tensor rank's layers) into ``parts`` pieces as Megatron-LM does:
    transformer blocks in runs of equal count, the embedding with the first and the head
    with the last (``dlsim.parallel.memory.pipeline_stages``); other models into pieces of equal
    time."""
    times = [pass_times_s(layer, device, dtype, recompute) for layer in shard.layers]
    counts = [tensor_collectives(layer, sequence_parallel) for layer in shard.layers]
    blocks = sum(layer.block is not None for layer in shard.layers)
    cut = (pipeline_stages(shard, parts) if blocks >= parts
           else partition([f + b for f, b in times], parts))
    out = []
    for layers in cut:
        forward = [counts[i][0] for i in layers]
        backward = [counts[i][1] for i in layers]
        first = layers[0]
        out.append(Piece(
            layers, sum(times[i][0] for i in layers), sum(times[i][1] for i in layers),
            count_collectives(forward),
            count_collectives(backward + (forward if recompute == "full" else [])),
            sum(shard.layers[i].params for i in layers),
            model.layers[first - 1].output_bytes if first else 0.0,
            model.layers[layers[-1]].output_bytes))
    return out


@dataclass(frozen=True)
class PipelineJob:
    """What every rank's program is built from."""

    grid: Grid
    chunks: int
    micro: int
    schedule: str
    hidden_bytes: float  # b·s·h·dtype bytes: one tensor-parallel collective
    optimizer: str
    algorithm: str
    servers: int
    steps: int
    zero_stage: int = 0
    offload: str = "none"
    sharing: int = 1  # devices of a node sharing its host (offload)


def pipeline_programs(job: PipelineJob, pieces_: list[Piece], device: DeviceProfile,
                      dtype: str, replicas: list[int],
                      tensor_ranks: list[int]) -> dict[int, list[Op]]:
    """Programs of the ranks of ``replicas`` x ``tensor_ranks`` of every stage."""
    return {job.grid.rank(s, r, k): _program(job, pieces_, device, dtype, s, r, k,
                                             symmetric=len(replicas) * len(tensor_ranks)
                                             < job.grid.data * job.grid.tensor)
            for r in replicas for s in range(job.grid.pipeline) for k in tensor_ranks}


def _program(job: PipelineJob, pieces_: list[Piece], device: DeviceProfile, dtype: str,
             s: int, replica: int, k: int, symmetric: bool) -> list[Op]:
    grid, p, t = job.grid, job.grid.pipeline, job.grid.tensor
    last_piece = p * job.chunks - 1
    grad_bytes = gradient_bytes_per_param(dtype)
    weight_bytes = weight_bytes_per_param(dtype)
    sharded = job.zero_stage > 0 and grid.data > 1
    program: list[Op] = []

    def add(op: Op) -> int:
        program.append(op)
        return len(program) - 1

    def p2p(what: str, src: int, dst: int, size: float, stream: str, tag: str,
            deps: tuple[int, ...] = ()) -> int:
        """Send from piece ``src`` to piece ``dst``, 1/t of it from each tensor rank."""
        key = f"{tag} {src}->{dst}" if symmetric else f"{tag} r{replica} k{k} {src}->{dst}"
        return add(Collective(f"{what} {tag}", key, pair_group(src % p, dst % p), "send",
                              size / t, "direct", deps=deps, stream=stream))

    @cache
    def pair_group(src: int, dst: int) -> tuple[int, ...]:
        """Senders then receivers: every replica's and tensor rank's by symmetry."""
        pairs = ([(r, j) for r in range(grid.data) for j in range(t)] if symmetric
                 else [(replica, k)])
        return (*(grid.rank(src, r, j) for r, j in pairs),
                *(grid.rank(dst, r, j) for r, j in pairs))

    # By symmetry one collective carries the identical ones of the unsimulated peers: every
    # replica's tensor group, every tensor rank's data-parallel group.
    peers = range(grid.data) if symmetric else [replica]
    tensor_groups = tuple(r for j in peers for r in grid.tensor_group(s, j))
    ks = range(t) if symmetric else [k]
    data_groups = tuple(r for j in ks for r in grid.data_group(s, j))

    def tensor_collectives(what: str, key: str, collectives: Collectives, after: int) -> int:
        """A pass's tensor collectives, one repeated op per kind, each after the last."""
        if t == 1:
            return after
        for op, count in collectives:
            after = add(Collective(f"tensor {op} x{count} {what}", f"{key} {op} r{replica}",
                                   tensor_groups, op, job.hidden_bytes, "ring",
                                   deps=(after,), stream="tensor", repeat=count,
                                   instances=len(peers)))
        return after

    for step in range(job.steps):
        done: dict[tuple[int, int], int] = {}
        blocked: tuple[int, ...] = ()  # the last tensor all-reduce: compute waits for it
        last_backward: dict[int, int] = {}
        order = schedule(job.schedule, s, p, job.micro, job.chunks)
        for pass_kind, i, c in order:
            piece = c * p + s
            cost = pieces_[piece]
            tag = f"s{step} mb{i}"
            name = f"stage{s}" + (f" chunk{c}" if job.chunks > 1 else "") + f" mb{i}"
            if pass_kind == "F":
                recv = (p2p("recv activations", piece - 1, piece, cost.in_bytes, "recv-fwd",
                            "act " + tag),) if piece else ()
                out = add(Compute(f"fwd {name} {tag}", cost.forward_s, deps=(*recv, *blocked)))
                out = tensor_collectives(f"fwd {name} {tag}", f"tp fwd {tag} p{piece}",
                                         cost.forward_collectives, out)
                blocked = (out,) if t > 1 else ()
                done[(i, c)] = out
                if piece < last_piece:
                    p2p("send activations", piece, piece + 1, cost.out_bytes, "send-fwd",
                        "act " + tag, (out,))
            else:
                recv = (p2p("recv gradients", piece + 1, piece, cost.out_bytes, "recv-bwd",
                            "grad " + tag),) if piece < last_piece else ()
                out = add(Compute(f"bwd {name} {tag}", cost.backward_s,
                                  deps=(*recv, done[(i, c)], *blocked)))
                out = tensor_collectives(f"bwd {name} {tag}", f"tp bwd {tag} p{piece}",
                                         cost.backward_collectives, out)
                blocked = (out,) if t > 1 else ()
                last_backward[c] = out
                if piece:
                    p2p("send gradients", piece, piece - 1, cost.in_bytes, "send-bwd",
                        "grad " + tag, (out,))
        syncs = []
        if grid.data > 1:
            op = "reducescatter" if sharded else "allreduce"
            for c in sorted(last_backward):
                syncs.append(add(Collective(
                    f"{op} gradients chunk{c} s{step}", f"dp s{step} p{c * p + s} k{k}",
                    data_groups, op, pieces_[c * p + s].params * grad_bytes,
                    job.algorithm if op == "allreduce" else "ring", job.servers,
                    deps=(last_backward[c],), instances=len(ks))))
        params = sum(pieces_[c * p + s].params for c in range(job.chunks))
        update: tuple[int, ...] = (*syncs, *blocked)
        for what, seconds in optimizer_steps(params / grid.data if sharded else params,
                                             job.optimizer, device, dtype, job.offload,
                                             job.sharing):
            update = (add(Compute(f"{what} stage{s} s{step}", seconds, deps=update)),)
        if sharded:
            add(Collective(f"allgather parameters s{step}", f"zero s{step} stage{s} k{k}",
                           data_groups, "allgather", params * weight_bytes, "ring",
                           deps=update, instances=len(ks)))
    return program
