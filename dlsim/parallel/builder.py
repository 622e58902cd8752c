"""One training program builder over the parallel grid: what every rank does in a step.

A rank of the data x tensor x pipeline grid (``dlsim.parallel.grid``; data parallelism alone
is the grid with the other degrees 1) walks its stage's schedule of forward and backward
passes over its model chunks (``dlsim.parallel.pipeline.schedule``), blocks on each pass's
tensor-parallel collectives (``dlsim.parallel.tensor``), sends activations and gradients to
the neighbouring stages, exchanges gradients over its data-parallel group, steps the
optimizer and, with ZeRO, all-gathers the parameters it updated. Plans differ in data, not in
code: the degrees, the schedule, and how gradients are synchronised:

- ``buckets`` (PyTorch DDP, Li et al. VLDB 2020, §3.2.3): gradients are all-reduced in
  buckets of ``bucket_cap_bytes`` filled in reverse layer order, each launched as soon as the
  backward pass has produced it, so the pass runs layer by layer (ZeRO-3's per-layer
  parameter gathers hook on the same layer boundaries);
- ``chunks`` (Megatron-LM without gradient-reduce overlap): each model chunk's gradients are
  all-reduced once its last backward pass is done, overlapping the rest of the schedule, so a
  pass runs as one kernel group per chunk.

ZeRO (Rajbhandari et al., SC'20) stages 1 and 2 replace the gradient all-reduce by a
reduce-scatter, step the optimizer on 1/d of the parameters and all-gather them after the
step; stage 3 instead all-gathers each layer's parameters before its forward and backward,
on a prefetch stream one layer ahead, and never after the step (1.5x the volume, §7.2.2).
Under tensor parallelism each tensor rank gathers its own 1/t shard over its data-parallel
group (FSDP2 over TP, torchtitan; Megatron-Core FSDP), and ZeRO-3 always runs its passes
layer by layer, reduce-scattering each layer's gradients as the step's last backward pass
produces them. Gradients accumulate unsharded over a step's micro-batches and the layers
are re-gathered for every micro-batch's forward and backward pass: what
``torch.distributed.pipelining`` runs for FSDP modules (``backward_maybe_with_nosync``:
no gradient sync until the stage's last backward) with ``reshard_after_forward=True``
(torchtitan's ``reshard_after_forward_policy: always``; its pipeline default ``never``
keeps a whole stage gathered instead, which costs its memory). Hybrid sharding and the
shard groups are ``dlsim.parallel.sharding``'s. With ``overlap_param_gather`` (Megatron-Core's
``--overlap-param-gather``) the all-gather after the update runs layer by layer on the
prefetch stream and each layer's first forward of the next step waits for its own gather
only.

With ``tp_comm_overlap`` (Transformer Engine's userbuffers, Megatron-LM's
``--tp-comm-overlap``) a pass's sequence-parallel all-gathers and reduce-scatters start with
the pass on the tensor stream instead of after it, and the pass ends when both are done: TE
splits each collective into chunks pipelined with the GEMM it feeds or drains, so the
communication hides behind the compute as far as the compute lasts. The collectives take
the device's ``comm_contention`` share of its compute while they run (the engine slows the
overlapped compute by it), so the overlap is never free. Not modelled: the first and last
chunk that cannot overlap (1/t of a collective) and that only the GEMMs, not the attention
core, hide the communication.

Every op carries its role (``dlsim.contract.program.Role``): the grid axis a collective runs
over, or compute, optimizer, offload, codec, so that metrics never parse op names.

Context parallelism (``dlsim.parallel.context``) and expert parallelism
(``dlsim.parallel.expert``) cut a pass where their communication interrupts it
(``dlsim.parallel.segments``): an attention core runs as c ring steps, each overlapping the
point-to-point send of the K/V block in hand to the next context rank (stream ``context``),
or, with context_comm a2a, between two all-to-alls over the context group (same stream),
and a MoE layer's routed experts run between two all-to-alls over the expert group (stream
``expert``). Dense gradients sync over data x context, routed-expert gradients over the
expert-data group.

Symmetry: simulated by one replica, one context rank and one tensor rank per stage, a
point-to-point send carries the identical sends of every replica, context and tensor rank, a
tensor collective those of every replica's and context rank's tensor group, a ring step
those of every context group, an all-to-all those of every expert group and a gradient
collective those of every tensor rank's data-parallel group, so all the traffic is on the
network while the compute is simulated once (DESIGN.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

from dlsim.contract.program import Collective, Compute, Op
from dlsim.hardware.profiles import DeviceProfile
from dlsim.network.compression import Compression
from dlsim.parallel.data_parallel import gradient_buckets, optimizer_steps, sync_bucket
from dlsim.parallel.expert import expert_coordinates
from dlsim.parallel.grid import Grid
from dlsim.parallel.memory import gradient_bytes_per_param, weight_bytes_per_param
from dlsim.parallel.pipeline import Piece, pieces, schedule
from dlsim.parallel.segments import EXPERT_TENSOR_OPS, Segment
from dlsim.parallel.sharding import sharding_groups
from dlsim.parallel.tensor import Collectives
from dlsim.workload.model import Model

GradientSync = Literal["buckets", "chunks"]


@dataclass(frozen=True)
class TrainingJob:
    """What every rank's program is built from."""

    grid: Grid
    chunks: int  # model chunks per stage (virtual pipeline stages)
    micro: int  # micro-batches per replica and step
    schedule: str  # gpipe, 1f1b or interleaved
    optimizer: str
    algorithm: str  # the data-parallel all-reduce algorithm
    servers: int
    steps: int
    hidden_bytes: float = 0.0  # b·s·h·dtype bytes: one tensor-parallel collective
    gradient_sync: GradientSync = "chunks"
    bucket_cap_bytes: float = 0.0  # buckets: 0 = one bucket after the backward pass
    zero_stage: int = 0
    offload: str = "none"
    sharing: int = 1  # devices of a node sharing its host (offload)
    compression: Compression | None = None
    sync_every: int = 1  # local SGD: average every H-th step only (Stich, ICLR 2019)
    shard_group: int | None = None  # hybrid sharding: ZeRO shards within runs of k replicas
    overlap_param_gather: bool = False  # ZeRO-1/2: the gather overlaps the next forward
    tp_comm_overlap: bool = False  # sequence-parallel TP collectives beside the pass's GEMMs
    comm_contention: float = 0.0  # compute share an overlapped TP collective takes (device)
    grad_dtype: str | None = None  # what gradients are reduced in (None: the training dtype)


def build_programs(job: TrainingJob, pieces: list[Piece], device: DeviceProfile, dtype: str,
                   replicas: list[int], tensor_ranks: list[int],
                   context_ranks: tuple[int, ...] | list[int] = (0,)) -> dict[int, list[Op]]:
    """Programs of the ranks of ``replicas`` x ``context_ranks`` x ``tensor_ranks`` of every
    stage. Without tensor, pipeline, context or expert parallelism nothing in a program
    names its replica, so the replicas share one program."""
    grid = job.grid
    symmetric = (len(replicas) * len(context_ranks) * len(tensor_ranks)
                 < grid.data * grid.context * grid.tensor)
    dense = grid.data * grid.context
    hybrid = job.zero_stage > 0 and (job.shard_group or dense) < dense
    if grid.tensor == grid.pipeline == grid.context == grid.expert == 1 and not (
            hybrid and not symmetric):
        shared = _RankProgram(job, pieces, device, dtype, 0, replicas[0], 0, symmetric).build()
        return {grid.rank(0, r, 0): shared for r in replicas}
    return {grid.rank(s, r, k, c): _RankProgram(job, pieces, device, dtype, s, r, k,
                                                symmetric, c).build()
            for r in replicas for s in range(grid.pipeline) for c in context_ranks
            for k in tensor_ranks}


def worker_program(model: Model, device: DeviceProfile, dtype: str, micro: int,
                   optimizer: str) -> list[Op]:
    """One step of one worker on its own: what a parameter-server worker computes."""
    job = TrainingJob(Grid(1, 1, 1), 1, micro, "1f1b", optimizer, "ring", 1, 1,
                      gradient_sync="buckets")
    return build_programs(job, pieces(model, model, device, dtype, 1, "none"), device, dtype,
                          [0], [0])[0]


class _RankProgram:
    """The program of the rank (stage ``s``, replica, tensor rank ``k``, context rank
    ``c``), built op by op."""

    def __init__(self, job: TrainingJob, pieces: list[Piece], device: DeviceProfile,
                 dtype: str, s: int, replica: int, k: int, symmetric: bool, c: int = 0):
        self.job, self.pieces, self.device, self.dtype = job, pieces, device, dtype
        self.s, self.replica, self.k, self.symmetric = s, replica, k, symmetric
        self.c = c
        grid = job.grid
        self.p, self.t = grid.pipeline, grid.tensor
        self.last_piece = self.p * job.chunks - 1
        self.grad_bytes = gradient_bytes_per_param(dtype, job.grad_dtype)
        self.weight_bytes = weight_bytes_per_param(dtype)
        # ZeRO partitions over the ranks the dense gradients sync over: data x context
        dense = grid.data * grid.context
        self.shard = min(job.shard_group or dense, dense)  # ranks model state is sharded over
        self.sharded = job.zero_stage > 0 and self.shard > 1
        self.hybrid = self.sharded and self.shard < dense  # replicated across shard groups
        self.zero3 = job.zero_stage == 3 and self.sharded
        self.by_layer = job.gradient_sync == "buckets" or self.zero3
        # overlap_param_gather's gathers each layer's first forward waits for, by piece
        self.param_gates: dict[int, dict[int, tuple[int, ...]]] = {}
        self.gathered: tuple[int, ...] = ()  # the ZeRO-1/2 gather the next step waits for
        self.program: list[Op] = []
        # By symmetry one collective carries the identical ones of the unsimulated peers:
        # every replica's and context rank's tensor group, every tensor rank's data-parallel
        # (data x context) group, every context group's ring, every expert group.
        self.peers = ([(j, ci) for j in range(grid.data) for ci in range(grid.context)]
                      if symmetric else [(replica, c)])
        self.tensor_groups = tuple(r for j, ci in self.peers
                                   for r in grid.tensor_group(s, j, ci))
        self.ks = range(self.t) if symmetric else [k]
        self.data_groups = tuple(r for j in self.ks for r in grid.data_group(s, j, c=None))
        self.shards = sharding_groups(grid, s, self.ks, self.shard, replica, symmetric, c=c)
        self.replicas = sharding_groups(grid, s, self.ks, self.shard, replica, symmetric,
                                        across=True, c=c)
        self.pair_group = cache(self._pair_group)
        self.ring_groups = self._ring_groups()
        self.context_groups = self._context_groups()
        self.expert_at = expert_coordinates(grid, grid.rank(s, replica, k, c))
        self.expert_groups, self.expert_data_groups = self._expert_groups()

    def add(self, op: Op) -> int:
        self.program.append(op)
        return len(self.program) - 1

    def build(self) -> list[Op]:
        for step in range(self.job.steps):
            self._step(step)
        return self.program

    # -- one step -------------------------------------------------------------------------

    def _step(self, step: int) -> None:
        job, s, p = self.job, self.s, self.p
        # compute waits for the last tensor collective and, at a step's start, for the
        # parameters ZeRO-1/2 gathered after the previous update
        self.blocked: tuple[int, ...] = self.gathered
        self.syncs: list[int] = []  # the gradient exchanges the optimizer waits for
        done: dict[tuple[int, int], int] = {}
        last_backward: dict[int, int] = {}
        syncing = (step + 1) % job.sync_every == 0
        for kind, i, c in schedule(job.schedule, s, p, job.micro, job.chunks):
            piece = c * p + s
            tag = f"s{step} mb{i}"
            name = f"stage{s}" + (f" chunk{c}" if job.chunks > 1 else "") + f" mb{i}"
            if kind == "F":
                done[(i, c)] = self._forward(piece, name, tag)
            else:
                last = syncing and i == job.micro - 1
                last_backward[c] = self._backward(piece, name, tag, done[(i, c)],
                                                  step if last else None)
        if (job.gradient_sync == "chunks" and job.grid.data * job.grid.context > 1
                and not self.zero3):
            for c in sorted(last_backward):
                piece = c * p + s
                cost = self.pieces[piece]
                what, key = f"gradients chunk{c} s{step}", f"dp s{step} p{piece} k{self.k}"
                size = (cost.params - cost.expert_params) * self.grad_bytes
                self.syncs.append(
                    self._reduce_scatter(what, key, size, last_backward[c]) if self.sharded
                    else self.add(Collective(
                        f"allreduce {what}", key, self.data_groups, "allreduce", size,
                        job.algorithm, job.servers, deps=(last_backward[c],),
                        instances=len(self.ks), role="data")))
        if job.gradient_sync == "chunks" and not self.zero3:
            for c in sorted(last_backward):
                self._expert_sync(step, c * p + s, last_backward[c])
        self._optimizer(step)

    def _optimizer(self, step: int) -> None:
        job = self.job
        mine = [self.pieces[c * self.p + self.s] for c in range(job.chunks)]
        params = sum(piece.params for piece in mine)
        experts = sum(piece.expert_params for piece in mine)
        stage = f" stage{self.s}" if self.p > 1 else ""
        update: tuple[int, ...] = (*self.syncs, *self.blocked)
        # ZeRO partitions dense state over the shard group, routed experts' over the
        # expert-data group (Megatron-Core's expert distributed optimizer)
        owned = ((params - experts) / self.shard + experts / self.job.grid.expert_data
                 if self.sharded else params)
        for what, seconds, role in optimizer_steps(
                owned, job.optimizer, self.device, self.dtype, job.offload, job.sharing,
                job.grad_dtype):
            update = (self.add(Compute(f"{what}{stage} s{step}", seconds, deps=update,
                                       role=role)),)
        if not self.sharded or job.zero_stage == 3:
            return
        if job.overlap_param_gather:
            self._gather_for_next_step(step, update)
            return
        self.gathered = (self.add(Collective(f"allgather parameters s{step}",
                            f"zero s{step} stage{self.s} k{self.k}" + self.shards.tag,
                            self.shards.ranks, "allgather",
                            (params - experts) * self.weight_bytes, "ring",
                            deps=update, instances=self.shards.instances, role="data")),
                         *self._expert_collective("allgather", f"expert parameters s{step}",
                                                  f"zero s{step} stage{self.s}",
                                                  experts * self.weight_bytes, update))

    def _gather_for_next_step(self, step: int, update: tuple[int, ...]) -> None:
        """Megatron-Core's overlapped parameter gather: the updated parameters are gathered
        layer by layer (a bucket per layer), in forward order, on the prefetch stream; the
        next step's first forward pass of each layer waits for that layer's gather only
        (``param_gates``), so the gather hides behind the forward passes before it."""
        for c in range(self.job.chunks):
            piece = c * self.p + self.s
            cost = self.pieces[piece]
            gates = self.param_gates.setdefault(piece, {})
            for j, layer_params in enumerate(cost.layer_params):
                if layer_params:
                    dense = self.add(Collective(
                        f"allgather {cost.names[j]} s{step}",
                        f"zero s{step} p{piece} {cost.layers[j]} k{self.k}" + self.shards.tag,
                        self.shards.ranks, "allgather",
                        (layer_params - _experts_of(cost, j)) * self.weight_bytes,
                        "ring", deps=update, stream="prefetch",
                        instances=self.shards.instances, role="data"))
                    gates[j] = (dense, *self._expert_collective(
                        "allgather", f"expert {cost.names[j]} s{step}",
                        f"zero s{step} p{piece} {cost.layers[j]}",
                        _experts_of(cost, j) * self.weight_bytes, update, "prefetch"))

    def _reduce_scatter(self, what: str, key: str, size: float, after: int) -> int:
        """ZeRO's gradient exchange: a reduce-scatter within the shard group and, with
        hybrid sharding, an all-reduce of its 1/k shard across the shard groups."""
        out = self.add(Collective(f"reducescatter {what}", key + self.shards.tag,
                                  self.shards.ranks, "reducescatter", size, "ring",
                                  self.job.servers, deps=(after,),
                                  instances=self.shards.instances, role="data"))
        if self.hybrid:
            out = self.add(Collective(f"allreduce shard {what}", key + " x" + self.replicas.tag,
                                      self.replicas.ranks, "allreduce", size / self.shard,
                                      "ring", deps=(out,), instances=self.replicas.instances,
                                      role="data"))
        return out

    # -- passes ---------------------------------------------------------------------------

    def _forward(self, piece: int, name: str, tag: str) -> int:
        cost = self.pieces[piece]
        recv = (self._p2p("recv activations", piece - 1, piece, cost.in_bytes, "recv-fwd",
                          "act " + tag),) if piece else ()
        start = (*recv, *self.blocked)
        gates = self.param_gates.pop(piece, {})
        if self.by_layer or gates:
            ran: list[int] = []
            for j in range(len(cost.layers)):
                deps = self._gather(j, cost, "fwd", tag, ran) + (
                    () if ran else (*recv, *self.blocked)) + (
                    gates.get(j, ()))
                ran.append(self._layer(piece, j, 0, tag, deps))
            out = ran[-1]
        elif cost.passes:
            out = self._segmented(piece, 0, tag, (*recv, *self.blocked))
        else:
            out = self.add(Compute(f"fwd {name} {tag}", cost.forward_s,
                                   deps=(*recv, *self.blocked)))
        out = self._tensor(f"fwd {name} {tag}", f"tp fwd {tag} p{piece}",
                           cost.forward_collectives, out, start)
        if piece < self.last_piece:
            self._p2p("send activations", piece, piece + 1, cost.out_bytes, "send-fwd",
                      "act " + tag, (out,))
        return out

    def _backward(self, piece: int, name: str, tag: str, forward: int,
                  sync_step: int | None) -> int:
        """One backward pass; ``sync_step`` set: the step's last, which launches the
        gradient buckets."""
        cost = self.pieces[piece]
        recv = (self._p2p("recv gradients", piece + 1, piece, cost.out_bytes, "recv-bwd",
                          "grad " + tag),) if piece < self.last_piece else ()
        start = (*recv, forward, *self.blocked)
        if self.by_layer:
            out = self._backward_by_layer(piece, tag, sync_step, (*recv, *self.blocked))
        elif cost.passes:
            out = self._segmented(piece, 1, tag, (*recv, forward, *self.blocked))
        else:
            out = self.add(Compute(f"bwd {name} {tag}", cost.backward_s,
                                   deps=(*recv, forward, *self.blocked)))
        out = self._tensor(f"bwd {name} {tag}", f"tp bwd {tag} p{piece}",
                           cost.backward_collectives, out, start)
        if piece:
            self._p2p("send gradients", piece, piece - 1, cost.in_bytes, "send-bwd",
                      "grad " + tag, (out,))
        return out

    def _backward_by_layer(self, piece: int, tag: str, sync_step: int | None,
                           first_deps: tuple[int, ...]) -> int:
        """Layer by layer in reverse, each finished bucket's exchange launched at once."""
        job, cost = self.job, self.pieces[piece]
        buckets = (gradient_buckets(cost.layer_params, self.grad_bytes, job.bucket_cap_bytes)
                   if job.gradient_sync == "buckets"  # else ZeRO-3: one reduce-scatter a layer
                   else [[j] for j in reversed(range(len(cost.layers))) if cost.layer_params[j]])
        closes = {b[-1]: n for n, b in enumerate(buckets)}
        ran: list[int] = []
        for j in reversed(range(len(cost.layers))):
            deps = self._gather(j, cost, "bwd", tag, ran) + (() if ran else first_deps)
            backward = self._layer(piece, j, 1, tag, deps)
            ran.append(backward)
            if sync_step is not None and job.grid.data * job.grid.context > 1 and j in closes:
                n = closes[j]
                # ZeRO-3 reduce-scatters the routed experts over their expert-data group
                size = sum(cost.layer_params[i] - (_experts_of(cost, i) if self.zero3 else 0)
                           for i in buckets[n]) * self.grad_bytes
                self.syncs.append(self._bucket(sync_step, piece, n, size, backward))
            if sync_step is not None and self.zero3:
                self.syncs += self._expert_collective(
                    "reducescatter", f"expert gradients {cost.names[j]} s{sync_step}",
                    f"ep-dp s{sync_step} p{piece} {cost.layers[j]}",
                    _experts_of(cost, j) * self.grad_bytes, (backward,))
        return ran[-1]

    def _layer(self, piece: int, j: int, phase: int, tag: str, deps: tuple[int, ...]) -> int:
        """One layer's pass (``phase`` 0 forward, 1 backward) on its own: one kernel group,
        or under context or expert parallelism its segments."""
        cost = self.pieces[piece]
        what = ("fwd", "bwd")[phase]
        if not cost.passes:
            return self.add(Compute(f"{what} {cost.names[j]} {tag}",
                                    cost.layer_times_s[j][phase], deps))
        last, pending = self._layer_segments(piece, j, phase, tag, deps, 0.0)
        if pending or len(last) != 1:
            last = (self.add(Compute(f"{what} {cost.names[j]} {tag}", pending, last)),)
        return last[0]

    def _bucket(self, step: int, piece: int, n: int, size: float, after: int) -> int:
        job = self.job
        key = f"dp s{step} p{piece} b{n} k{self.k}"
        what = f"bucket {n} s{step}"
        if self.sharded:
            return self._reduce_scatter(what, key, size, after)
        if job.compression is not None:
            return sync_bucket(self.add, job.compression, what, key, self.data_groups,
                               size / self.grad_bytes, self.grad_bytes, job.algorithm,
                               job.servers, after, self.device, self.dtype)
        return self.add(Collective(f"allreduce {what}", key, self.data_groups, "allreduce",
                                   size, job.algorithm, job.servers, deps=(after,),
                                   role="data"))

    def _gather(self, j: int, cost: Piece, phase: str, tag: str,
                ran: list[int]) -> tuple[int, ...]:
        """ZeRO-3: all-gather the piece's ``j``-th layer's parameters before it runs
        (prefetch stream), once the layer two places earlier in this pass (``ran``: its
        compute ops so far) is done, so that at most two gathered layers are resident."""
        params = cost.layer_params[j]
        if not self.zero3 or params == 0:
            return ()
        rank = f" k{self.k}" if self.t > 1 else ""
        experts = _experts_of(cost, j)
        return (self.add(Collective(
            f"allgather {cost.names[j]} ({phase}) {tag}",
            f"zero3 {tag} {phase} {cost.layers[j]}{rank}" + self.shards.tag, self.shards.ranks,
            "allgather", (params - experts) * self.weight_bytes, "ring",
            deps=tuple(ran[-2:-1]), stream="prefetch", instances=self.shards.instances,
            role="zero-gather")), *self._expert_collective(
                "allgather", f"expert {cost.names[j]} ({phase}) {tag}",
                f"zero3 {tag} {phase} {cost.layers[j]}", experts * self.weight_bytes,
                tuple(ran[-2:-1]), "prefetch"))

    def _tensor(self, what: str, key: str, collectives: Collectives, after: int,
                start: tuple[int, ...]) -> int:
        """A pass's tensor collectives, one repeated op per kind, each after the last; the
        next compute waits for the last one. Overlapped (``tp_comm_overlap``), the first
        starts with the pass (``start``: the pass's own dependencies) and the pass ends at
        a join of its compute (``after``) and its last collective."""
        if self.t == 1:
            return after
        job = self.job
        overlap = job.tp_comm_overlap and bool(collectives)
        last = start if overlap else (after,)
        for op, count in collectives:
            last = (self.add(Collective(
                f"tensor {op} x{count} {what}", f"{key} {op} r{self.replica} c{self.c}",
                self.tensor_groups, op, job.hidden_bytes, "ring", deps=last,
                stream="tensor", repeat=count, instances=len(self.peers), role="tensor",
                contention=job.comm_contention if overlap else 0.0)),)
        if overlap:
            last = (self.add(Compute(f"tensor overlap join {what}", 0.0,
                                     deps=(after, *last))),)
        self.blocked = last
        return last[0]

    def _p2p(self, what: str, src: int, dst: int, size: float, stream: str, tag: str,
             deps: tuple[int, ...] = ()) -> int:
        """Send from piece ``src`` to piece ``dst``, 1/t of it from each tensor rank over its
        own NIC (Megatron-LM's scatter/gather optimisation, SC'21 §4.1)."""
        key = (f"{tag} {src}->{dst}" if self.symmetric
               else f"{tag} r{self.replica} c{self.c} k{self.k} {src}->{dst}")
        return self.add(Collective(f"{what} {tag}", key,
                                   self.pair_group(src % self.p, dst % self.p), "send",
                                   size / self.t, "direct", deps=deps, stream=stream,
                                   role="pipeline"))

    def _pair_group(self, src: int, dst: int) -> tuple[int, ...]:
        """Senders then receivers: every replica's, context and tensor rank's by symmetry."""
        grid = self.job.grid
        pairs = ([(r, ci, j) for r in range(grid.data) for ci in range(grid.context)
                  for j in range(self.t)] if self.symmetric
                 else [(self.replica, self.c, self.k)])
        return (*(grid.rank(src, r, j, ci) for r, ci, j in pairs),
                *(grid.rank(dst, r, j, ci) for r, ci, j in pairs))


    # -- context and expert parallelism ---------------------------------------------------

    def _context_pairs(self) -> list[tuple[int, int]]:
        """(replica, tensor rank) of this rank's context group, or of every one of the
        stage by symmetry."""
        return ([(j, k) for j in range(self.job.grid.data) for k in range(self.t)]
                if self.symmetric else [(self.replica, self.k)])

    def _ring_groups(self) -> tuple[int, ...]:
        """Each context ring as senders then receivers (rank i sends to rank i+1, the last
        to the first): this rank's ring, or every ring of the stage by symmetry."""
        grid = self.job.grid
        if grid.context == 1:
            return ()
        out: list[int] = []
        for j, k in self._context_pairs():
            ring = grid.context_group(self.s, j, k)
            out += [*ring, *ring[1:], ring[0]]
        return tuple(out)

    def _context_groups(self) -> tuple[int, ...]:
        """The context groups the a2a exchange runs over, one after another."""
        grid = self.job.grid
        if grid.context == 1:
            return ()
        return tuple(r for j, k in self._context_pairs()
                     for r in grid.context_group(self.s, j, k))

    def _expert_groups(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(all-to-all groups, expert-data groups) of this rank, or of every rank of the
        stage by symmetry: its stage-local index (replica, c, k) re-read as (expert-data
        replica, expert rank, expert-tensor rank), expert tensor innermost (``Grid``)."""
        grid = self.job.grid
        if not any(piece.expert_params for piece in self.pieces):
            return (), ()
        j, e, k = self.expert_at
        et = grid.expert_tensor
        if self.symmetric:
            a2a = [(jj, kk) for jj in range(grid.expert_data) for kk in range(et)]
            syncs = [(ee, kk) for ee in range(grid.expert) for kk in range(et)]
        else:
            a2a, syncs = [(j, k)], [(e, k)]
        return (tuple(r for jj, kk in a2a for r in grid.expert_group(self.s, jj, kk)),
                tuple(r for ee, kk in syncs for r in grid.expert_data_group(self.s, ee, kk)))

    def _segmented(self, piece: int, phase: int, tag: str, deps: tuple[int, ...]) -> int:
        """A pass (``phase`` 0 forward, 1 backward) run segment by segment, the compute
        between two communication segments as one kernel group."""
        cost = self.pieces[piece]
        what = ("fwd", "bwd")[phase]
        order = range(len(cost.layers)) if phase == 0 else reversed(range(len(cost.layers)))
        last, pending = deps, 0.0
        for j in order:
            last, pending = self._layer_segments(piece, j, phase, tag, last, pending)
        if pending or len(last) != 1:
            last = (self.add(Compute(f"{what} {cost.names[-1]} {tag}", pending, last)),)
        return last[0]

    def _layer_segments(self, piece: int, j: int, phase: int, tag: str,
                        last: tuple[int, ...], pending: float
                        ) -> tuple[tuple[int, ...], float]:
        """Layer ``j``'s segments after ``last``, ``pending`` seconds of compute not yet
        issued before them; returns the new (last, pending), compute that runs on into the
        next layer left pending so that it joins that layer's first kernels."""
        cost = self.pieces[piece]
        what = ("fwd", "bwd")[phase]
        for n, segment in enumerate(cost.passes[j][phase]):
            if segment.kind == "compute":
                pending += segment.seconds
                continue
            if pending:
                last = (self.add(Compute(f"{what} {cost.names[j]} {tag}", pending, last)),)
                pending = 0.0
            key = f"{tag} {what} L{cost.layers[j]} n{n}"
            if segment.kind == "ring":
                last = self._ring(f"{what} {cost.names[j]} {tag}", key, segment, last)
            elif segment.kind == "heads":
                last = (self._head_swap(f"{what} {cost.names[j]} {tag}", key, segment, last),)
            elif segment.kind in EXPERT_TENSOR_OPS:
                last = (self._expert_tensor(f"{what} {cost.names[j]} {tag}", key, segment,
                                            last),)
            else:
                last = (self._alltoall(f"{segment.kind} {what} {cost.names[j]} {tag}",
                                       key, segment, last),)
        return last, pending

    def _ring(self, what: str, key: str, segment: Segment,
              deps: tuple[int, ...]) -> tuple[int, ...]:
        """Ring attention: c steps of the attention core on the block in hand, each step
        but the last sending that block on at once; a step waits for the previous step's
        block to arrive and its compute to free the buffer (Transformer Engine's double
        buffering)."""
        c = self.job.grid.context
        rank = "" if self.symmetric else f" r{self.replica} k{self.k}"
        instances = len(self.ring_groups) // (2 * c)
        last = deps
        sent: tuple[int, ...] = ()
        for i in range(c):
            ready = (*last, *sent)
            if i < c - 1:
                sent = (self.add(Collective(
                    f"ring send K/V {i} {what}", f"cp {key} i{i}{rank}", self.ring_groups,
                    "send", segment.size_bytes, "direct", deps=ready, stream="context",
                    instances=instances, role="context")),)
            last = (self.add(Compute(f"attention step {i} {what}", segment.seconds / c,
                                     ready)),)
        return last

    def _head_swap(self, what: str, key: str, segment: Segment, deps: tuple[int, ...]) -> int:
        """context_comm a2a: the all-to-all over the context group that trades the sequence
        split for the head split around the attention core (or back), which the next kernels
        wait for."""
        rank = "" if self.symmetric else f" r{self.replica} k{self.k}"
        return self.add(Collective(
            f"alltoall heads {what}", f"cp {key}{rank}", self.context_groups, "alltoall",
            segment.size_bytes, "direct", deps=deps, stream="context",
            instances=len(self.context_groups) // self.job.grid.context, role="context"))

    def _alltoall(self, what: str, key: str, segment: Segment, deps: tuple[int, ...]) -> int:
        """An all-to-all over the expert group, which the next kernels wait for."""
        grid = self.job.grid
        j, _, k = self.expert_at
        group = "" if self.symmetric else f" j{j} k{k}"
        return self.add(Collective(
            f"alltoall {what}", f"ep {key}{group}", self.expert_groups, "alltoall",
            segment.size_bytes, "direct", deps=deps, stream="expert",
            instances=len(self.expert_groups) // grid.expert, role="expert"))

    def _expert_tensor(self, what: str, key: str, segment: Segment,
                       deps: tuple[int, ...]) -> int:
        """The expert-tensor all-gather (or reduce-scatter) of the dispatched copies over
        the ranks that split each expert (``dlsim.parallel.expert.gather_bytes``), which the
        next kernels wait for; of every such group of the stage by symmetry."""
        grid = self.job.grid
        j, e, _ = self.expert_at
        pairs = ([(jj, ee) for jj in range(grid.expert_data) for ee in range(grid.expert)]
                 if self.symmetric else [(j, e)])
        groups = tuple(r for jj, ee in pairs for r in grid.expert_tensor_group(self.s, jj, ee))
        op = EXPERT_TENSOR_OPS[segment.kind]
        return self.add(Collective(
            f"{op} {what}", f"etp {key}{'' if self.symmetric else f' j{j} e{e}'}", groups, op,
            segment.size_bytes, "ring", deps=deps, stream="expert", instances=len(pairs),
            role="expert"))

    def _expert_sync(self, step: int, piece: int, after: int) -> None:
        """The routed experts' gradient all-reduce over the expert-data group (in rings, as
        Megatron-Core's NCCL does; the scenario's algorithm is for the dense gradients)."""
        grid, cost = self.job.grid, self.pieces[piece]
        if grid.expert_data == 1 or cost.expert_params == 0:
            return
        self.syncs += self._expert_collective(
            "reducescatter" if self.sharded else "allreduce",
            f"expert gradients p{piece} s{step}", f"ep-dp s{step} p{piece}",
            cost.expert_params * self.grad_bytes, (after,))

    def _expert_collective(self, op: str, what: str, key: str, size: float,
                           deps: tuple[int, ...], stream: str = "comm") -> tuple[int, ...]:
        """A collective of the routed experts' state over the expert-data group (in rings, as
        Megatron-Core's NCCL does), or nothing when no other rank holds the same experts."""
        grid = self.job.grid
        if grid.expert_data == 1 or size == 0:
            return ()
        _, e, k = self.expert_at
        rank = "" if self.symmetric else f" e{e} k{k}"
        return (self.add(Collective(
            f"{op} {what}", f"experts {key}{rank}", self.expert_data_groups, op, size, "ring",
            deps=deps, stream=stream,
            instances=len(self.expert_data_groups) // grid.expert_data, role="expert")),)


def _experts_of(cost: Piece, j: int) -> float:
    """The routed-expert part of the piece's layer ``j``'s parameters on this rank."""
    return cost.layer_expert_params[j] if cost.layer_expert_params else 0.0
