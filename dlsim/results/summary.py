"""Summary building: the summary.json fields of a training step that every training path
reports (with what gradient compression did), and the table of links that carried traffic.

Where a device's time went is ``dlsim.results.intervals.breakdown``; this module turns that
and the engine's counters into the contract's fields (DESIGN.md, "Scenario contract").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dlsim.contract.scenario import CommunicationSpec, TrainingScenario
from dlsim.contract.span import Span
from dlsim.hardware.profiles import DeviceProfile
from dlsim.hardware.topology import Topology
from dlsim.network.compression import Compression
from dlsim.parallel.memory import MemoryPlan
from dlsim.results.intervals import spans_by_device
from dlsim.results.power import PowerModel, device_energy_J
from dlsim.workload.model import Model
from dlsim.workload.precision import fp8_recipe_of


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
        # the FP8 scaling recipe that priced the casts (dlsim.workload.precision)
        **({"fp8_recipe": fp8_recipe_of(device)} if dtype == "fp8" else {}),
        "topology": topology.description,
        "step_time_s": end_s / steps,
        "throughput_samples_per_s": work.samples / work.seconds,
        "tflops_per_device": tflops,
        "mfu": tflops * 1e12 / device.peak_flops(dtype),
        "parameters": model.parameters,
        # MoE models: the parameters a token passes through (top_k of each block's experts)
        **({"active_parameters": model.active_parameters}
           if any(layer.moe is not None for layer in model.layers) else {}),
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
                and s.role == "codec")
    return {"scheme": scheme, "bytes_ratio": c.ratio(grad_bytes), "codec_s": codec / steps}


def energy_summary(power: PowerModel, spans: list[Span], devices: int, end_s: float,
                   steps: int, samples_per_step: float, seq_len: int | None,
                   price_usd_per_hour: float | None) -> dict[str, float | None]:
    """Energy and cost per step of ``devices`` devices (``dlsim.results.power``'s closed
    form on each simulated device's timeline over [0, ``end_s``], averaged, so that a
    symmetric run's representatives stand for their peers), and per token (``seq_len``
    tokens a sample) or, for models without a sequence, per sample. Cost is the rented time:
    price per device-hour × devices × step time; None where the profile has no price."""
    by_device = spans_by_device(spans)
    device_J = [device_energy_J(power, by_device[d], d, end_s)
                for d in sorted(by_device) or [0]]
    mean_J = sum(device_J) / len(device_J)
    step_s = end_s / steps
    per_step_J = mean_J * devices / steps
    unit = "token" if seq_len is not None else "sample"
    units = samples_per_step * (seq_len or 1)
    cost = (price_usd_per_hour * devices * step_s / 3600
            if price_usd_per_hour is not None else None)
    return {"energy_per_step_J": per_step_J,
            f"energy_per_{unit}_J": per_step_J / units if units else None,
            "average_power_W": mean_J / end_s if end_s > 0 else power.idle_W,
            "cost_per_step_usd": cost,
            f"cost_per_{unit}_usd": cost / units if cost is not None and units else None}
