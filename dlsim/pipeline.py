"""Pipeline parallelism: stages, schedules (GPipe, 1F1B), and the programs of each stage.

The model's layers are cut into ``stages`` contiguous stages of near-equal compute time. Each
micro-batch's activations go point to point to the next stage and its gradients come back;
the bubble is not a formula here, it is what the stages' dependencies leave idle.
Schedules: GPipe runs all forwards, then all backwards (Huang et al. 2019); 1F1B runs
``stages - stage - 1`` warm-up forwards, then alternates one forward with one backward
(PipeDream-Flush, Narayanan et al. 2021), which bounds the micro-batches in flight.
Rank of (stage, replica) is ``stage * data + replica``: pipeline stages across nodes, the
data-parallel replicas of one stage next to each other.
"""

from __future__ import annotations

import numpy as np

from dlsim.costmodel import layer_times_s, optimizer_time_s
from dlsim.hardware import DeviceProfile
from dlsim.program import Collective, Compute, Op
from dlsim.strategy import MemoryPlan, data_parallel_memory, gradient_bytes_per_param
from dlsim.workload import Model


def partition(times: list[float], stages: int) -> list[list[int]]:
    """Contiguous layer ranges with near-equal total time (cut at the time quantiles)."""
    cumulative = np.cumsum(times)
    cuts = np.searchsorted(cumulative, cumulative[-1] * np.arange(1, stages) / stages,
                           side="left") + 1
    cuts = np.clip(cuts, np.arange(1, stages), len(times) - np.arange(stages - 1, 0, -1))
    bounds = [0, *np.maximum.accumulate(cuts).tolist(), len(times)]
    return [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]


def schedule(kind: str, stage: int, stages: int, micro: int) -> list[tuple[str, int]]:
    """The order of forward ('F', i) and backward ('B', i) passes on one stage."""
    if kind == "gpipe":
        return [("F", i) for i in range(micro)] + [("B", i) for i in range(micro)]
    warmup = min(stages - stage - 1, micro)
    order = [("F", i) for i in range(warmup)]
    for i in range(micro - warmup):
        order += [("F", warmup + i), ("B", i)]
    return order + [("B", i) for i in range(micro - warmup, micro)]


def in_flight(kind: str, stage: int, stages: int, micro: int) -> int:
    """Micro-batches whose activations a stage holds at once: GPipe all m, 1F1B p - stage."""
    return micro if kind == "gpipe" else min(stages - stage, micro)


def pipeline_programs(model: Model, device: DeviceProfile, dtype: str, data: int, stages: int,
                      micro: int, kind: str, optimizer: str, algorithm: str, servers: int,
                      steps: int, replicas: list[int]) -> tuple[dict[int, list[Op]],
                                                                 list[list[int]]]:
    """Programs of every rank of the given data-parallel ``replicas``, and the stages."""
    times = [layer_times_s(layer, device, dtype) for layer in model.layers]
    parts = partition([f + b for f, b in times], stages)
    grad_bytes = gradient_bytes_per_param(dtype)
    programs: dict[int, list[Op]] = {}
    symmetric = len(replicas) < data
    for replica in replicas:
        for s, layers in enumerate(parts):
            rank = s * data + replica
            forward = sum(times[i][0] for i in layers)
            backward = sum(times[i][1] for i in layers)
            out_bytes = model.layers[layers[-1]].output_bytes
            in_bytes = model.layers[layers[0] - 1].output_bytes if s else 0.0
            params = sum(model.layers[i].params for i in layers)
            program: list[Op] = []

            def add(op: Op, program: list[Op] = program) -> int:
                program.append(op)
                return len(program) - 1

            def p2p(what: str, src: int, dst: int, size: float, stream: str, tag: str,
                    deps: tuple[int, ...] = (), replica: int = replica) -> int:
                """Send between stages ``src`` and ``dst``; simulated by symmetry, one send
                carries the identical sends of every replica, so their traffic is on the
                network too."""
                pairs = range(data) if symmetric else [replica]
                group = (*(src * data + j for j in pairs), *(dst * data + j for j in pairs))
                return add(Collective(f"{what} {tag}", f"{tag} {src}->{dst}", group, "send",
                                      size, "direct", deps=deps, stream=stream))

            for step in range(steps):
                forwards: dict[int, int] = {}
                last = 0
                for pass_kind, i in schedule(kind, s, stages, micro):
                    tag = f"s{step} r{replica} mb{i}"
                    if pass_kind == "F":
                        deps = (p2p("recv activations", s - 1, s, in_bytes,
                                    "recv-fwd", "act " + tag),) if s else ()
                        forwards[i] = last = add(Compute(f"fwd stage{s} mb{i}", forward,
                                                         deps=deps))
                        if s < stages - 1:
                            p2p("send activations", s, s + 1, out_bytes,
                                "send-fwd", "act " + tag, (last,))
                    else:
                        deps = (p2p("recv gradients", s + 1, s, out_bytes,
                                    "recv-bwd", "grad " + tag),) if s < stages - 1 else ()
                        last = add(Compute(f"bwd stage{s} mb{i}", backward,
                                           deps=(*deps, forwards[i])))
                        if s:
                            p2p("send gradients", s, s - 1, in_bytes, "send-bwd",
                                "grad " + tag, (last,))
                sync = ()
                if data > 1:
                    group = tuple(s * data + j for j in range(data))
                    sync = (add(Collective(f"allreduce stage{s} s{step}",
                                           f"dp s{step} stage{s}", group, "allreduce",
                                           params * grad_bytes, algorithm, servers,
                                           deps=(last,))),)
                add(Compute(f"optimizer stage{s} s{step}",
                            optimizer_time_s(params, optimizer, device), deps=(last, *sync)))
            programs[rank] = program
    return programs, parts


def stage_memory(model: Model, parts: list[list[int]], dtype: str, optimizer: str,
                 kind: str, micro: int) -> MemoryPlan:
    """The fullest stage: its layers' model state plus the activations of every micro-batch
    it holds at once (``in_flight``)."""
    plans = []
    for s, layers in enumerate(parts):
        stage = Model(f"stage{s}", tuple(model.layers[i] for i in layers))
        plan = data_parallel_memory(stage, dtype, optimizer)
        held = in_flight(kind, s, len(parts), micro)
        plans.append(MemoryPlan(plan.params, plan.grads, plan.optimizer,
                                plan.activations * held))
    return max(plans, key=lambda p: p.total)
