"""simulate_federated(): a ``kind: federated`` scenario -> population -> rounds -> Result."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dlsim.contract.federated import CompressionSpec
from dlsim.contract.scenario import FederatedScenario
from dlsim.hardware.profiles import DTYPE_BYTES
from dlsim.kinds.federated.availability import Availability
from dlsim.kinds.federated.convergence import convergence_summary
from dlsim.kinds.federated.fedbuff import run_fedbuff, staleness_weight
from dlsim.kinds.federated.population import Population, Workload, build_population, workload
from dlsim.kinds.federated.rounds import run_rounds
from dlsim.kinds.federated.tally import Tally
from dlsim.results.result import Result, simulation_result


def update_bytes(work: Workload, compression: CompressionSpec) -> float:
    """Bytes of one full-width update on the uplink.

    int8: one byte per parameter (per-tensor scales, a few bytes a layer, are left out);
    top-k: ceil(fraction · P) values plus an index of ``index_bytes`` each.
    """
    if compression.kind == "int8":
        return float(work.parameters)
    if compression.kind == "topk":
        kept = math.ceil(compression.topk_fraction * work.parameters)
        return kept * (DTYPE_BYTES[work.dtype] + compression.index_bytes)
    return work.model_bytes


def _stats(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "max": 0.0}
    return {"mean": float(values.mean()), "p50": float(np.percentile(values, 50)),
            "p90": float(np.percentile(values, 90)), "max": float(values.max())}


def _participation(pop: Population, tally: Tally) -> dict[str, dict[str, Any]]:
    clients = np.bincount(pop.class_of, minlength=len(pop.classes))
    energy = tally.compute_s * pop.power_W
    return {name: {"clients": int(clients[i]), "selected": int(tally.selected[i]),
                   "aggregated": int(tally.aggregated[i]),
                   "aggregated_per_client": float(tally.aggregated[i] / clients[i])
                   if clients[i] else 0.0,
                   "train_device_s": float(tally.compute_s[i]),
                   "energy_J": float(energy[i])}
            for i, name in enumerate(pop.classes)}


def simulate_federated(scenario: FederatedScenario) -> Result:
    fed = scenario.federated
    rng = np.random.default_rng(scenario.seed)
    work = workload(scenario)
    pop = build_population(scenario, work, rng)
    avail = Availability(fed, rng)
    up_bytes = update_bytes(work, fed.compression)
    server = fed.server.bandwidth_Gbps * 1e9 / 8 if fed.server.bandwidth_Gbps else None
    if fed.algorithm == "fedbuff":
        tally, events = run_fedbuff(fed, pop, avail, work.model_bytes, up_bytes, server, rng)
    else:
        tally = run_rounds(fed, pop, avail, work.model_bytes, up_bytes, server, rng)
        events = tally.events

    ends = np.array(tally.round_end_s)
    durations = ends - np.array(tally.round_start_s)
    summary: dict[str, Any] = {
        "name": scenario.name, "kind": "federated", "algorithm": fed.algorithm,
        "model": scenario.model.preset or scenario.model.kind if scenario.model else "given",
        "parameters": work.parameters, "flops_per_sample": work.flops_per_sample,
        "clients": fed.clients, "clients_per_round": fed.clients_per_round,
        "rounds": len(ends), "rounds_failed": tally.failed_rounds,
        "time_to_rounds_s": float(ends[-1]) if len(ends) else 0.0,
        "round_time_s": _stats(durations),
        "model_bytes": work.model_bytes, "update_bytes": up_bytes,
        "bytes_down": tally.bytes_down, "bytes_up": tally.bytes_up,
        "bytes_resent": tally.bytes_resent,
        "comm_bytes_total": tally.bytes_down + tally.bytes_up,
        "samples_aggregated": tally.samples_aggregated,
        "wasted": {"flops": tally.wasted_flops, "device_s": tally.wasted_device_s,
                   "clients": int(sum(tally.dropped.values()))},
        "dropped": dict(sorted(tally.dropped.items())),
        "energy_J": float((tally.compute_s * pop.power_W).sum()),
        "participation": _participation(pop, tally),
    }
    if fed.algorithm == "fedbuff":
        s = np.array(tally.staleness)
        summary["fedbuff"] = {"buffer": fed.fedbuff.buffer,
                              "concurrency": fed.fedbuff.concurrency}
        summary["staleness"] = {
            "mean": float(s.mean()) if len(s) else 0.0, "max": int(s.max(initial=0)),
            "mean_weight": float(np.mean([staleness_weight(int(v)) for v in s]))
            if len(s) else 0.0,
            "discarded": int(tally.dropped.get("stale", 0))}
    if scenario.convergence is not None and any(tally.round_aggregated):
        summary["convergence"] = convergence_summary(
            scenario.convergence, np.array(tally.staleness, dtype=float),
            int(sum(tally.round_aggregated)), len(ends), summary["time_to_rounds_s"],
            summary["energy_J"])
        summary["time_to_accuracy_s"] = summary["convergence"]["time_to_target_s"]
    summary["round_table"] = [
        {"round": i, "start_s": start, "end_s": end, "aggregated": n}
        for i, (start, end, n) in enumerate(zip(tally.round_start_s, tally.round_end_s,
                                                tally.round_aggregated, strict=True))]
    return simulation_result(scenario, summary, fidelity="full", events=events,
                             spans=tally.spans)
