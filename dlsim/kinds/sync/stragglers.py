"""Seeded stragglers: per-rank, per-step compute slowdowns and transient slow links.

All draws come from the one generator of the run (``numpy.random.default_rng(seed)``), in a
fixed order, so the same scenario and seed give the same factors bit for bit.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import simpy

from dlsim.contract.errors import ScenarioError
from dlsim.contract.program import Compute, Op
from dlsim.contract.sync import SlowLinkSpec, StragglerSpec
from dlsim.hardware.topology import Topology
from dlsim.network.backend import NetworkBackend


def slowdown_factors(spec: StragglerSpec | None, devices: np.ndarray, steps: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Compute-time factors of shape (ranks, steps) for ranks on ``devices``: the fixed
    factor of each rank's device times a per-step draw (1 where the scenario gives none)."""
    ranks = len(devices)
    factors = np.ones((ranks, steps))
    if spec is None:
        return factors
    for device, factor in spec.fixed.items():
        factors[rank_of(devices, device, "stragglers.fixed")] *= factor
    per_step = spec.per_step
    if per_step is not None and per_step.distribution == "lognormal":
        assert per_step.sigma is not None  # PerStepSpec's validator
        factors *= rng.lognormal(0.0, per_step.sigma, size=(ranks, steps))
    elif per_step is not None:
        assert per_step.probability is not None and per_step.factor is not None  # bimodal
        hit = rng.random((ranks, steps)) < per_step.probability
        factors *= np.where(hit, per_step.factor, 1.0)
    return factors


def rank_of(devices: np.ndarray, device: int, field: str) -> int:
    """The rank that runs on ``device`` (``devices[rank]`` is each rank's device)."""
    hits = np.flatnonzero(np.asarray(devices) == device)
    if len(hits) == 0:
        raise ScenarioError(f"device {device} runs no rank of this job (its devices are "
                            f"{int(np.min(devices))}..{int(np.max(devices))}).", field=field)
    return int(hits[0])


def is_heterogeneous(spec: StragglerSpec | None) -> bool:
    """Whether the scenario makes ranks differ (then symmetry no longer holds)."""
    return spec is not None and bool(spec.fixed or spec.per_step or spec.links)


def slow_program(program: list[Op], factors: np.ndarray) -> list[Op]:
    """``program`` with each compute op of step t taking ``factors[t]`` times as long.

    A step ends with its optimizer op (role ``optimizer``); ops after the last optimizer op
    belong to the last step.
    """
    out: list[Op] = []
    step = 0
    for op in program:
        if isinstance(op, Compute):
            t = min(step, len(factors) - 1)
            # built, not dataclasses.replace'd: a 1,024-rank job slows 100,000 ops
            out.append(Compute(op.name, op.duration_s * float(factors[t]), op.deps, op.stream,
                               op.role))
            step += op.role == "optimizer"
        else:
            out.append(op)
    return out


def link_edges(topology: Topology, link: SlowLinkSpec, field: str) -> np.ndarray:
    """Edge ids of a slow link: the named directed link, or every link of a device."""
    if link.device is not None:
        if link.device >= topology.n_devices:
            raise ScenarioError(f"device {link.device} does not exist (0..."
                                f"{topology.n_devices - 1}).", field=field)
        ids = [i for i, (a, b) in enumerate(topology.edges) if link.device in (a, b)]
        return np.array(ids, dtype=np.int64)
    labels = {topology.link_label(i): i for i in range(len(topology.edges))}
    if link.link not in labels:
        sample = ", ".join(list(labels)[:4])
        raise ScenarioError(f"no link '{link.link}' in this topology; links are named "
                            f"\"src->dst\", e.g. {sample}.", field=field)
    return np.array([labels[link.link]], dtype=np.int64)


def schedule_slow_links(env: simpy.Environment, network: NetworkBackend, topology: Topology,
                        spec: StragglerSpec | None) -> None:
    """Start one process per slow link that lowers its bandwidth during [start_s, end_s)."""
    for k, link in enumerate(spec.links if spec is not None else []):
        edges = link_edges(topology, link, f"stragglers.links.{k}")
        env.process(_slow_link(env, network, edges, link))


def _slow_link(env: simpy.Environment, network: NetworkBackend, edges: np.ndarray,
               link: SlowLinkSpec) -> Generator:
    yield env.timeout(link.start_s)
    network.scale_links(edges, link.factor)
    if np.isfinite(link.end_s):
        yield env.timeout(link.end_s - link.start_s)
        network.scale_links(edges, 1.0)
