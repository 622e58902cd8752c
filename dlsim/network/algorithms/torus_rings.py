"""Torus rings: an all-reduce on a wrap-around torus as bidirectional rings per dimension.

On a torus (Cloud TPU v4: 4x4x4 chips, a link to each of 6 neighbours) one ring through
every chip uses 2 of 6 links. The torus all-reduce of TPU pods (Jouppi et al., "TPU v4",
ISCA 2023, section 2: ICI all-reduce over the 3D torus; Ying et al., "Image Classification
at Supercomputer Scale", 2018: 2D-torus all-reduce) is a reduce-scatter along each
dimension in turn, each on the dimension's lines as two rings of opposite direction
carrying half the data, then the all-gathers in reverse. So that every link is busy, the
data is split into D parts (D dimensions of two or more), part p taking the dimensions
in the order p, p+1, ...: in each stage every dimension carries one part.

On dims d_1..d_D a part of G/D bytes is reduce-scattered along its first dimension down
to G/(D d_1), and so on; along a line of d chips each direction's ring sends (d-1)/d of
half the part's current size. With every dimension 4 the bus bandwidth of the all-reduce
is 2D links' rate: each of a chip's 2D links carries (d-1)/d x (G/D)/2 x (1 + 1/d + ...)
per reduce-scatter. A dimension of 2 has one link, which both halves share.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from dlsim.contract.errors import ScenarioError
from dlsim.contract.registry import register
from dlsim.hardware.topology import Topology
from dlsim.network.algorithms.base import ALGORITHM, Algorithm, Phase


def torus_of(topology: Topology | None, devices: np.ndarray) -> tuple[int, tuple[int, ...]]:
    """The first device id and dims of the torus whose chips are exactly ``devices``."""
    members = set(np.asarray(devices).tolist())
    tori = [] if topology is None else topology.graph.graph.get("tori", [])
    for first, dims in tori:
        if members == set(range(first, first + int(np.prod(dims)))):
            return first, dims
    where = "no topology" if topology is None else topology.description
    raise ScenarioError(f"torus-rings runs on a whole torus (every chip of it, a group of "
                        f"{len(members)} here), which {where} does not give; use ring, "
                        f"tree or auto.", field="algorithm")


def _stage(first: int, dims: tuple[int, ...], axis: int, part_bytes: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every chip's flows of one ring stage along ``axis`` on a part now ``part_bytes``:
    (src, dst, bytes, latency rounds); bytes are a whole reduce-scatter (or all-gather)
    along the dimension, d-1 chunks sent back to back."""
    d = dims[axis]
    n = int(np.prod(dims))
    coords = np.array(np.unravel_index(np.arange(n), dims))
    ids = np.arange(n) + first
    ahead = coords.copy()
    ahead[axis] = (coords[axis] + 1) % d
    plus = np.ravel_multi_index(tuple(ahead), dims) + first
    if d == 2:  # one link: the whole part one way, (d-1)/d of it
        return ids, plus, np.full(n, part_bytes / 2), np.full(n, 1)
    behind = coords.copy()
    behind[axis] = (coords[axis] - 1) % d
    minus = np.ravel_multi_index(tuple(behind), dims) + first
    each = part_bytes / 2 * (d - 1) / d
    return (np.concatenate([ids, ids]), np.concatenate([plus, minus]), np.full(2 * n, each),
            np.full(2 * n, d - 1))


def torus_rings(op: str, devices: np.ndarray, size_bytes: float,
                topology: Topology | None = None, **_: object) -> list[Phase]:
    """Reduce-scatter stages (and, for all-reduce, the all-gathers in reverse), the D parts
    of the data on D different dimensions in each stage (module docstring)."""
    if len(devices) < 2:
        return []
    first, dims = torus_of(topology, devices)
    axes = [a for a, d in enumerate(dims) if d > 1]
    parts = len(axes)
    orders = [[axes[(p + s) % parts] for s in range(parts)] for p in range(parts)]
    stages: list[Phase] = []
    for s in range(parts):
        flows = []
        for order in orders:
            before = int(np.prod([dims[a] for a in order[:s]]))
            flows.append(_stage(first, dims, order[s], size_bytes / parts / before))
        src, dst, size, lat = (np.concatenate(x) for x in zip(*flows, strict=True))
        stages.append(Phase(f"torus stage {s + 1}", src, dst, size, 1, lat))
    gathers = [Phase(p.label.replace("stage", "all-gather stage"), p.dst, p.src,
                     p.size_bytes, 1, p.latency_rounds) for p in reversed(stages)]
    scatters = [Phase(p.label.replace("stage", "reduce-scatter stage"), p.src, p.dst,
                      p.size_bytes, 1, p.latency_rounds) for p in stages]
    if op == "reducescatter":
        return scatters
    if op == "allgather":
        return gathers
    return scatters + gathers


register(ALGORITHM, "torus-rings", Algorithm(
    {op: partial(torus_rings, op) for op in ("allreduce", "reducescatter", "allgather")},
    nccl=False, precedence=9))
