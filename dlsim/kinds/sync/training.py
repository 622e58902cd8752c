"""Parameter-server training scenarios: scenario -> PSJob -> ParameterServer -> Result.

Used for ``sync: ssp`` and ``sync: asp``, and for BSP parameter-server jobs that lose
workers (a parameter-server job goes on with the survivors; Li et al., "Scaling Distributed
Machine Learning with the Parameter Server", OSDI 2014, §4.3, replicate server state so
that only the failed worker's work is lost). A worker's step is its forward and backward
pass from the cost model; a shard's update is the optimizer step on its P/K parameters, and
under BSP summing one more worker's gradients reads the sum and the gradient and writes the
sum: 3 G/K bytes at the device's memory-bound rate (the roofline of an elementwise add).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dlsim.cluster.build import placement
from dlsim.contract.errors import ScenarioError
from dlsim.contract.program import Compute
from dlsim.contract.scenario import TrainingScenario
from dlsim.hardware.profiles import DTYPE_BYTES
from dlsim.hardware.topology import Topology
from dlsim.kinds.sync.bsp import wait_per_device
from dlsim.kinds.sync.convergence import Job, convergence_summary, job_of
from dlsim.kinds.sync.faults import failure_times
from dlsim.kinds.sync.parameter_server import ParameterServer, PSJob, PSRun
from dlsim.kinds.sync.stragglers import schedule_slow_links, slowdown_factors
from dlsim.network.backend import NETWORKS
from dlsim.parallel.builder import worker_program
from dlsim.parallel.feasibility import split_batch
from dlsim.parallel.memory import gradient_bytes_per_param, memory_per_device
from dlsim.results.intervals import breakdown
from dlsim.results.power import power_model
from dlsim.results.result import Result, simulation_result
from dlsim.results.summary import TrainingWork, energy_summary, link_table, training_summary
from dlsim.workload.attention import attention_kernel
from dlsim.workload.costmodel import optimizer_time_s
from dlsim.workload.presets import build_model
from dlsim.workload.shapes import shape_of


def uses_parameter_server_simulator(scenario: TrainingScenario) -> bool:
    """Whether a training scenario runs here: SSP/ASP training, and BSP parameter-server
    training with failures (``dlsim.kinds.registry`` asks only of training scenarios)."""
    return scenario.sync.mode != "bsp" or (
        scenario.communication.data_parallel == "ps" and scenario.failures is not None)


def _check(scenario: TrainingScenario) -> None:
    mode = scenario.sync.mode
    if scenario.communication.data_parallel != "ps":
        raise ScenarioError(
            f"sync '{mode}' needs a parameter server (communication: {{data_parallel: ps}}); "
            "an all-reduce is a collective every rank enters each step, so all-reduce "
            "training is BSP by nature.", field="sync")
    par = scenario.parallelism
    if par.pipeline > 1 or par.zero_stage or par.tensor > 1:
        raise ScenarioError("parameter-server training is modelled for plain data "
                            "parallelism: pipeline 1, tensor 1, zero_stage 0.",
                            field="parallelism")
    failures = scenario.failures
    if failures is not None and (failures.checkpoint is not None or failures.restart_s
                                 or failures.job_steps is not None):
        raise ScenarioError("a parameter-server job goes on with its surviving workers; "
                            "checkpoint, restart_s and job_steps apply to all-reduce (BSP) "
                            "jobs.", field="failures")


def ps_training(scenario: TrainingScenario, topology: Topology) -> Result:
    _check(scenario)
    device = topology.device
    if device is None:
        raise ScenarioError("a training scenario needs a device profile for its cluster.",
                            field="cluster.device")
    train, comm = scenario.training, scenario.communication
    n = scenario.parallelism.data or topology.n_devices
    devices = placement(n, topology, scenario.placement)
    per_worker, micro = split_batch(train.global_batch, train.microbatch, n)
    if not 1 <= comm.servers <= n:
        raise ScenarioError(f"a parameter server needs 1..{n} servers for {n} workers, got "
                            f"{comm.servers}.", field="communication.servers")
    dtype = scenario.precision
    device.peak_flops(dtype)
    model = build_model(scenario.model, micro, max(DTYPE_BYTES[dtype], 2),
                        attention_kernel(scenario.model, device, dtype))
    one_worker = worker_program(model, device, dtype, per_worker // micro, train.optimizer)
    grad_bytes = model.parameters * gradient_bytes_per_param(dtype, train.grad_dtype)
    shard_bytes = grad_bytes / comm.servers
    mode = scenario.sync.mode
    budget = train.steps if mode == "bsp" else train.steps * n
    rng = np.random.default_rng(scenario.seed)
    job = PSJob(
        mode=mode, staleness=scenario.sync.staleness, placement=devices,
        servers=comm.servers, grad_bytes=grad_bytes,
        compute_s=sum(op.duration_s for op in one_worker
                      if isinstance(op, Compute) and op.role != "optimizer"),
        apply_s=optimizer_time_s(model.parameters / comm.servers, train.optimizer, device),
        sum_s=3 * shard_bytes / (device.memory_bandwidth_Bps * device.efficiency.memory),
        steps=train.steps,
        factors=slowdown_factors(scenario.stragglers, devices, budget, rng))
    failures = (failure_times(scenario.failures, devices, rng)
                if scenario.failures is not None else ())
    server = ParameterServer(topology, job, NETWORKS[scenario.simulation.network], failures)
    schedule_slow_links(server.env, server.network, topology, scenario.stragglers)
    run = server.run()

    worker_steps = int(run.steps_per_worker.sum())
    memory = memory_per_device(model, dtype, train.optimizer)
    summary = training_summary(
        scenario, topology, device, model, model,
        TrainingWork(n, run.end_s, worker_steps, per_worker // micro, micro), memory,
        run.end_s, run.network.bytes_injected, _critical_breakdown(run),
        communication={"communication": "ps"},
        parallelism={"data": n, "pipeline": 1, "schedule": scenario.parallelism.schedule,
                     "zero_stage": 0, "microbatches": per_worker // micro})
    summary.update(energy_summary(
        power_model(model, device, dtype), run.spans, n, run.end_s, train.steps,
        summary["throughput_samples_per_s"] * summary["step_time_s"],
        shape.seq_len if (shape := shape_of(scenario.model)) is not None else None,
        device.price_usd_per_hour))
    summary.update(sync_summary(scenario, run, devices, per_worker,
                                job_of(scenario.model, model, n, device.price_usd_per_hour,
                                      summary.get("average_power_W"))))
    links = link_table(topology, run.network.link_bytes, run.network.link_busy_s, run.end_s)
    return simulation_result(scenario, summary, fidelity="full", events=run.events,
                             flows=run.network.flows_started, spans=run.spans, links=links,
                             network=scenario.simulation.network)


def _critical_breakdown(run: PSRun) -> dict[str, float]:
    """The breakdown of the device that finished last (the summary gives it per step under
    BSP, per N worker-steps under SSP/ASP)."""
    last = max(run.spans, key=lambda s: (s.end_s, -s.device)).device
    return breakdown(run.spans, last, run.end_s)


def sync_summary(scenario: TrainingScenario, run: PSRun, devices: np.ndarray,
                 per_worker: int, job: Job) -> dict[str, Any]:
    """Per-worker steps and waits, the staleness histogram and the time to accuracy."""
    steps = scenario.training.steps
    waits = wait_per_device(run.spans, devices, run.end_s, steps)
    updates = len(run.staleness)
    mean_staleness = float(run.staleness.mean()) if updates else 0.0
    out: dict[str, Any] = {
        "sync": scenario.sync.mode, "staleness_bound": scenario.sync.staleness,
        "steps_per_worker": run.steps_per_worker.tolist(),
        "straggler_wait_per_device_s": waits,
        "updates_applied": updates,
        "staleness_histogram": np.bincount(run.staleness).tolist() if updates else [],
        "failed_devices": run.failed_devices,
    }
    if scenario.convergence is not None and updates:
        batch = scenario.training.global_batch if scenario.sync.mode == "bsp" else per_worker
        out.update(convergence_summary(scenario.convergence, batch, mean_staleness,
                                       run.end_s / updates, job))
    return out
