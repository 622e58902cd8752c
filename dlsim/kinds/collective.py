"""``kind: collective``: one collective on a cluster, reported as nccl-tests reports it."""

from __future__ import annotations

from dlsim.cluster.build import placement
from dlsim.contract.program import Collective
from dlsim.contract.scenario import CollectiveScenario
from dlsim.contract.span import Span
from dlsim.engine.core import Engine
from dlsim.hardware.topology import Topology
from dlsim.kinds.run import engine_result, run_engine, symmetric
from dlsim.network.algorithms import busbw_factor, check_algorithm, dedicated_hosts
from dlsim.network.backend import NETWORKS
from dlsim.network.protocol import resolve_mode
from dlsim.network.tuner import plan_collective
from dlsim.results.power import PowerModel, device_energy_J, idle_power_W
from dlsim.results.result import Result


def simulate_collective(scenario: CollectiveScenario, topology: Topology) -> Result:
    spec = scenario.collective
    check_algorithm(spec.op, spec.algorithm, field="collective.algorithm")
    dedicated = spec.algorithm == "ps" and spec.server_placement == "dedicated"
    n = spec.devices or topology.n_devices - (spec.servers if dedicated else 0)
    ranks = placement(n, topology, scenario.placement)
    hosts = dedicated_hosts(topology.n_devices, ranks, spec.servers) if dedicated else None
    mode = resolve_mode(spec.protocol, topology, scenario.cluster.topology is not None)
    group = tuple(range(n))
    op = Collective(spec.op, "collective", group, spec.op, spec.size_bytes, spec.algorithm,
                    spec.servers)
    simulated = [0] if symmetric(scenario.simulation) else list(group)
    chosen = plan_collective(spec.op, spec.algorithm, ranks, spec.size_bytes, topology, mode,
                             spec.servers, ranks // topology.devices_per_node, hosts,
                             timed=False)
    run = run_engine(Engine(topology, {r: [op] for r in simulated}, ranks, mode, hosts,
                            network=NETWORKS[scenario.simulation.network]),
                     "collective.algorithm")
    time_s = run.end_s
    algbw = spec.size_bytes / time_s if time_s > 0 else 0.0  # one rank moves nothing
    summary = {
        "name": scenario.name, "kind": "collective", "op": spec.op,
        "algorithm": spec.algorithm, "algorithm_chosen": chosen.algorithm,
        "protocol": chosen.protocol, "devices": n, "size_bytes": spec.size_bytes,
        "time_s": time_s, "algbw_GBps": algbw / 1e9,
        "busbw_GBps": algbw * busbw_factor(spec.op, n) / 1e9,
        "comm_bytes_total": run.network.bytes_injected,
        "topology": topology.description,
        **collective_energy(topology, run.spans, n, time_s),
    }
    return engine_result(scenario, topology, run, summary,
                   "symmetric" if len(simulated) < n else "full")


def collective_energy(topology: Topology, spans: list[Span], devices: int,
                      time_s: float) -> dict[str, float | None]:
    """Energy of the ``devices`` taking part (``dlsim.results.power``: a collective alone
    draws idle power plus A_COMM of the dynamic range, waiting only idle power), their mean
    power, and the rented time at the profile's hourly price (None without one)."""
    device = topology.device
    if device is None:  # a textbook topology without a device profile
        return {}
    power = PowerModel(idle_power_W(device), device.power_W, 0.0)
    simulated = sorted({s.device for s in spans}) or [0]
    mean_J = sum(device_energy_J(power, spans, d, time_s) for d in simulated) / len(simulated)
    price = device.price_usd_per_hour
    return {"energy_J": mean_J * devices,
            "average_power_W": mean_J / time_s if time_s > 0 else power.idle_W,
            "cost_usd": price * devices * time_s / 3600 if price is not None else None}
