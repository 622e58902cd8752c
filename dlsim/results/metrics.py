"""Metrics: where a device's time went, from the spans the engine recorded, and the summary
of a training step that every training path reports (with what gradient compression did).

The breakdown partitions [0, T] of one device's timeline, so its parts sum to T exactly:
compute (any compute span), exposed communication (a collective moving data while no compute
runs), straggler wait (waiting at a collective for peers, with nothing else running), pipeline
bubble (zero for data parallelism, which has none), and idle (the rest).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dlsim.contract.scenario import CommunicationSpec, TrainingScenario
from dlsim.hardware.profiles import DeviceProfile
from dlsim.hardware.topology import Topology
from dlsim.network.compression import Compression
from dlsim.parallel.memory import MemoryPlan
from dlsim.results.result import Span
from dlsim.workload.model import Model


def union(intervals: Iterable[tuple[float, float]]) -> np.ndarray:
    """Disjoint, sorted intervals covering the same time as ``intervals`` (shape (k, 2))."""
    arr = np.array(sorted(intervals), dtype=float).reshape(-1, 2)
    if len(arr) == 0:
        return arr
    merged = [arr[0].copy()]
    for start, end in arr[1:]:
        if start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append(np.array([start, end]))
    return np.array(merged)


def length(intervals: np.ndarray) -> float:
    return float((intervals[:, 1] - intervals[:, 0]).sum()) if len(intervals) else 0.0


def minus(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The parts of disjoint intervals ``a`` not covered by disjoint intervals ``b``."""
    out = []
    for start, end in a:
        cursor = start
        for bs, be in b:
            if be <= cursor or bs >= end:
                continue
            if bs > cursor:
                out.append((cursor, bs))
            cursor = max(cursor, be)
        if cursor < end:
            out.append((cursor, end))
    return np.array(out, dtype=float).reshape(-1, 2)


def breakdown(spans: list[Span], device: int, total_s: float,
              pipeline: bool = False) -> dict[str, float]:
    """Seconds of [0, total_s] on ``device`` by category; the values sum to ``total_s``.

    In a pipeline a stage with nothing to do is waiting for its neighbours' activations or
    gradients: that time, idle or blocked on a receive, is the pipeline bubble.
    """
    mine = [s for s in spans if s.device == device]
    compute = union((s.start_s, s.end_s) for s in mine if s.category == "compute")
    comm = union((s.start_s, s.end_s) for s in mine if s.category == "comm")
    wait = union((s.start_s, s.end_s) for s in mine if s.category == "wait")
    exposed = minus(comm, compute)
    stalled = minus(minus(wait, compute), comm)
    parts = {"compute": length(compute), "exposed_comm": length(exposed), "bubble": 0.0,
             "straggler_wait": length(stalled)}
    parts["idle"] = max(total_s - sum(parts.values()), 0.0)
    if pipeline:
        parts["bubble"] = parts.pop("straggler_wait") + parts.pop("idle")
        parts.update(straggler_wait=0.0, idle=0.0)
    return parts


def link_table(topology: Topology, link_bytes: np.ndarray, link_busy_s: np.ndarray,
               total_s: float) -> pd.DataFrame:
    """One row per directed link that carried traffic, busiest first."""
    used = np.flatnonzero(link_bytes > 0)
    cap = topology.capacity_Bps[used]
    rows = pd.DataFrame({
        "link": [topology.link_label(i) for i in used],
        "src": [str(topology.edges[i][0]) for i in used],
        "dst": [str(topology.edges[i][1]) for i in used],
        "kind": [topology.graph.edges[topology.edges[i]]["link"] for i in used],
        "bandwidth_GBps": cap / 1e9,
        "bytes": link_bytes[used],
        "busy_s": link_busy_s[used],
        "utilisation": link_bytes[used] / (cap * total_s) if total_s > 0 else 0.0,
    })
    return rows.sort_values(["utilisation", "link"], ascending=[False, True],
                            ignore_index=True)


@dataclass(frozen=True)
class TrainingWork:
    """What a training job computed on ``devices`` devices in ``seconds`` of simulated time:
    ``replica_steps`` steps of one model replica (a data-parallel replica, or a parameter
    server's worker), each of ``microbatches`` micro-batches of ``microbatch`` samples."""

    devices: int
    seconds: float
    replica_steps: int
    microbatches: int
    microbatch: int

    @property
    def samples(self) -> int:
        return self.replica_steps * self.microbatches * self.microbatch


def training_summary(scenario: TrainingScenario, topology: Topology, device: DeviceProfile,
                     model: Model, executed: Model, work: TrainingWork, memory: MemoryPlan,
                     end_s: float, bytes_injected: float, parts_s: dict[str, float], *,
                     communication: dict[str, Any], parallelism: dict[str, Any],
                     lora_and_offload: bool = False) -> dict[str, Any]:
    """The summary.json fields of a training job (DESIGN.md's contract), per step of the
    ``training.steps`` that took ``end_s``, ``parts_s`` being the critical device's
    breakdown over them. FLOP/s and MFU count the matrix products of ``executed`` (the
    model as trained, say with LoRA's adapters), not its elementwise kernels.
    ``communication`` holds the fields that say how gradients were exchanged, and
    ``lora_and_offload`` adds the trainable parameters, host memory and PCIe traffic of a
    path that models LoRA and offloading."""
    steps = scenario.training.steps
    dtype = scenario.precision
    matmul_flops = sum(k.flops for layer in executed.layers
                       for k in (*layer.forward, *layer.backward) if k.kind != "elementwise")
    tflops = (matmul_flops * work.microbatches * work.replica_steps / work.devices
              / work.seconds / 1e12)
    summary: dict[str, Any] = {
        "name": scenario.name, "kind": "training", "model": model.name,
        "device": device.name, "devices": work.devices, "precision": dtype,
        "topology": topology.description,
        "step_time_s": end_s / steps,
        "throughput_samples_per_s": work.samples / work.seconds,
        "tflops_per_device": tflops,
        "mfu": tflops * 1e12 / device.peak_flops(dtype),
        "parameters": model.parameters,
        "memory_per_device_bytes": memory.total,
        "memory_breakdown_bytes": memory.as_dict(),
        "memory_capacity_bytes": device.memory_bytes,
        "fits_in_memory": memory.total <= device.memory_bytes,
    }
    if lora_and_offload:
        summary.update(trainable_parameters=executed.parameters,
                       memory_host_bytes=memory.host,
                       offload_pcie_bytes_per_step=memory.offload_bytes_per_step)
    return summary | {
        "comm_bytes_total": bytes_injected / steps,
        "breakdown_s": {k: v / steps for k, v in parts_s.items()},
        **communication,
        "global_batch": scenario.training.global_batch, "microbatch": work.microbatch,
        "parallelism": parallelism,
    }


def compression_summary(comm: CommunicationSpec, grad_bytes: int, spans: list[Span],
                        steps: int) -> dict[str, object]:
    """What compression did per step: the bytes ratio and the encode + decode time one
    rank spent (the price paid for the bytes saved)."""
    scheme = comm.compression
    c = Compression(scheme, comm.topk_ratio)
    first = spans[0].device if spans else 0
    codec = sum(s.end_s - s.start_s for s in spans if s.device == first
                and s.name.startswith(("encode ", "decode ")))
    return {"scheme": scheme, "bytes_ratio": c.ratio(grad_bytes), "codec_s": codec / steps}
