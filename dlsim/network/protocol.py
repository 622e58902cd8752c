"""Protocols: what a collective library adds to the wire, per message and per byte.

A textbook (``ideal``) collective pays each link's latency per hop and moves its bytes at
the links' line rate. A real library does not: NCCL runs every collective with one of three
protocols (Jeaugey, "NCCL 2.0", GTC 2017; NCCL ``src/device/prims_*.h``):

- ``LL`` (low latency): 8-byte stores of 4 data bytes + a 4-byte flag, so no fence is needed
  and a step costs well under a microsecond, at a fraction of the bandwidth;
- ``LL128``: 128-byte lines carrying 120 data bytes and an 8-byte flag (NVLink only);
- ``Simple``: large chunks with a memory fence and a flag per step: full bandwidth, the
  largest per-step latency.

Per step latencies, fixed per-collective latencies and the fraction of the bus bandwidth
each protocol reaches are NCCL's own tuner constants, ``src/graph/tuning.cc`` (NVIDIA/nccl,
2.19-2.2x: ``baseLat``, ``hwLat`` and the "model refinements" of ``ncclTopoTuneModel``). A
step pays its latency once whatever the number of hops (NCCL charges ``hwLat`` per ring
step, by the step's link class: NVLink, PCI or NET), not once per switch hop.

The payload a transport carries is less than its line rate; NCCL's topology search assumes
20 GB/s per NVLink 2/3 link (``SM70_NVLINK_BW``/``SM80_NVLINK_BW`` in ``src/graph/topo.h``)
of the 25 GB/s line rate, 12 GB/s for PCIe Gen3 x16 (``PCI_BW``) of 15.75, and 12 GB/s for a
100 Gb/s NIC (``NET_BW``) of 12.5. Those ratios are applied to every link of that class;
NCCL's author puts NVLink's protocol overhead at about 20% (450 GB/s line rate, ~370 GB/s
effective on H100: S. Jeaugey, NVIDIA/nccl-tests issue #212, 2024).

Here a protocol is applied to the phases an algorithm lowers to: each flow puts 1 /
efficiency wire bytes on its links per payload byte (so it moves its payload at the rate
the protocol reaches; the payload is what ``comm_bytes_total`` counts), and its latency
becomes the protocol's per-step latency times the steps it pays in sequence plus, once per
collective, the protocol's fixed latency and one kernel launch (NCCL runs a collective as
one kernel; the launch cost is the device profile's ``kernel_launch_us``).

LL's bus bandwidth is also capped per architecture and node count (``llMaxBws``, tuning.cc
2.19+: Ampere 87.7 / 22.5 / 19.0 GB/s for 1 / 2 / more nodes): every sender's LL payload,
its flows together, moves at most that fast.

NVLS (``dlsim.network.algorithms.nvls``) runs with Simple only (NCCL enables no other
protocol for it). Its flows move at the NVLink payload rate times NCCL's ``nvlsEfficiency``
for the switch generation's GPU architecture (``src/graph/tuning.cc``, 2.19+: Hopper 0.85,
Blackwell 0.74), both NCCL's own constants, nothing fitted. Its per-collective latency is
the one constant fitted here: 71 us (NCCL's own model charges 25), fitted on NVIDIA's DGX
H100 sample output alone (``nccl_h100_other_sources.csv``, the dgxc-benchmarking rows of
4 MiB and more, 13 rows: the integer latency with the lowest median absolute error of
``algorithm: auto``); the H200 and B200 tables of that file are held out
(``dlsim.validation.nccl_other``).

Not modelled: NCCL's channels. A collective runs on the communicator's channels (24 on an
8x A100 NVSwitch board, nccl-tests issue #100), fewer for small sizes (``src/enqueue.cc``
removes one while the size is below channels x threads x a per-thread threshold: LL 512 x
8 x ranks, LL128 640 x 8, Simple 512 x 64 bytes). Charged as NCCL's time model charges it
(bandwidth in proportion to the channels), that makes an 8-GPU LL all-reduce 1.8x slower at
65 KiB than at 1 KiB where nccl-tests measures the same 43-45 us on an A100 node, so LL's
small-message bandwidth is not that share, and the reduction is left out.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from dlsim.contract.registry import PROTOCOL, register
from dlsim.hardware.topology import LINK_CLASSES, Topology
from dlsim.network.algorithms import Phase

PROTOCOLS = ("LL", "LL128", "Simple")
# What communication.protocol and collective.protocol accept besides auto (resolve_mode)
for _name, _meaning in {"ideal": "textbook: path latency per step, links at line rate",
                        "nccl": "the fastest of NCCL's protocols per collective",
                        **{p: f"NCCL's {p} protocol" for p in PROTOCOLS}}.items():
    register(PROTOCOL, _name, _meaning)

# NCCL tuning.cc baseLat[algorithm][protocol], us: Tree {6.8, 14.0, 8.4}, Ring {6.6, 14.0, 8.4},
# NVLS {0, 0, 0} (its whole latency is its hwLat)
BASE_LATENCY_US = {"tree": {"LL": 6.8, "LL128": 14.0, "Simple": 8.4},
                   "ring": {"LL": 6.6, "LL128": 14.0, "Simple": 8.4},
                   "nvls": {"Simple": 0.0}}
# NVLS's latency per collective, us: fitted on the DGX H100 sample (module docstring); NCCL's
# hwLat[NVLINK][NVLS][Simple] is 25. NVLS flows cross NVLink only (nvls.on_reducing_switch).
NVLS_LATENCY_US = 71.0
# NCCL tuning.cc hwLat[hw][algorithm][protocol], us per step, hw = NVLINK, PCI, NET
STEP_LATENCY_US = {
    ("nvlink", "tree"): {"LL": 0.6, "LL128": 1.25, "Simple": 4.0},
    ("nvlink", "ring"): {"LL": 0.6, "LL128": 1.9, "Simple": 3.4},
    ("pci", "tree"): {"LL": 1.0, "LL128": 1.9, "Simple": 4.0},
    ("pci", "ring"): {"LL": 1.0, "LL128": 2.5, "Simple": 5.7},
    ("net", "tree"): {"LL": 5.0, "LL128": 8.5, "Simple": 14.0},
    ("net", "ring"): {"LL": 2.7, "LL128": 4.0, "Simple": 14.0},
    **{(c, "nvls"): {"Simple": NVLS_LATENCY_US} for c in ("nvlink", "pci")},
    # NVLS-Tree's inter-node steps (only NVLS-Tree's flows cross a NIC): hwLat[NET][NVLSTree]
    ("net", "nvls"): {"Simple": 20.9},
}
# Fraction of the bus bandwidth each protocol reaches (ncclTopoTuneModel refinements): ring
# LL x 0.5, LL128 x 0.92 (~120/128); tree all-reduce x 0.92, then LL x 1/3.8, LL128 x 120/128.
PROTOCOL_EFFICIENCY = {"ring": {"LL": 0.5, "LL128": 0.92, "Simple": 1.0},
                       "tree": {"LL": 0.92 / 3.8, "LL128": 0.92 * 120 / 128, "Simple": 0.92},
                       "nvls": {"Simple": 1.0}}
# NCCL tuning.cc nvlsEfficiency by compute capability (Hopper 0.85, Blackwell 0.74), keyed
# here by the NVSwitch generation each architecture ships with (3: Hopper, 4: Blackwell).
NVLS_EFFICIENCY = {3: 0.85, 4: 0.74}
# Payload rate NCCL assumes per link / line rate (src/graph/topo.h, see the module docstring).
TRANSPORT_EFFICIENCY = {"nvlink": 20.0 / 25.0, "pci": 12.0 / 15.75, "net": 12.0 / 12.5}
# LL bus-bandwidth cap, GB/s, by architecture for 1, 2 and more nodes (tuning.cc llMaxBws,
# NCCL 2.19+). The Volta and Ampere rows are the same in every version read; the Hopper row
# is 141 / 45 / 35 in some and a copy of Ampere's in others (no profile marks Hopper yet).
LL_MAX_BUSBW_GBPS = {"volta": (39.0, 39.0, 20.4), "ampere": (87.7, 22.5, 19.0),
                     "hopper": (141.0, 45.0, 35.0)}
# The collectives NCCL's tuner prices (NCCL_NUM_FUNCTIONS); the LL cap applies to these only.
TUNED_OPS = ("allreduce", "reducescatter", "allgather", "broadcast", "reduce")


def resolve_mode(mode: str, topology: Topology, textbook: bool) -> str:
    """``auto``: NCCL's protocols on GPU clusters built from hardware profiles, the ideal
    (textbook) model on textbook topologies and non-GPU devices, whose link figures are
    the user's own or have no NCCL behind them."""
    if mode != "auto":
        return mode
    gpu = topology.device is not None and topology.device.kind == "gpu"
    return "nccl" if gpu and not textbook else "ideal"


def family(algorithm: str) -> str:
    """Which of NCCL's constant sets an algorithm pays: trees and NVLS their own, all else
    the ring's (halving-doubling, direct, PS and chains are point-to-point steps)."""
    return "nvls" if algorithm == "nvls-tree" else (
        algorithm if algorithm in ("tree", "nvls") else "ring")


def runs(protocol: str, algorithm: str) -> bool:
    """Whether NCCL runs ``algorithm`` with ``protocol`` (NVLS: Simple only)."""
    return protocol in ("ideal", *PROTOCOL_EFFICIENCY[family(algorithm)])


FlowLinks = tuple[np.ndarray, np.ndarray, np.ndarray]


def flow_links(topology: Topology, phases: list[Phase]) -> list[FlowLinks]:
    """``_flow_links`` of every phase: what ``enabled`` and ``apply`` read of the routes,
    found once where a tuner tries every protocol on the same phases."""
    return [_flow_links(topology, phase.src, phase.dst) for phase in phases]


def _flow_links(topology: Topology, src: np.ndarray, dst: np.ndarray) -> FlowLinks:
    """Per flow: the slowest hardware class on its route (index into LINK_CLASSES), the
    class of its narrowest link (whose payload efficiency bounds the flow) and that link's
    capacity, B/s (inf for a local flow)."""
    worst = np.zeros(len(src), dtype=int)
    narrow = np.zeros(len(src), dtype=int)
    capacity_min = np.full(len(src), np.inf)
    moving = np.flatnonzero(np.asarray(src) != np.asarray(dst))
    if len(moving) == 0:
        return worst, narrow, capacity_min
    links, starts, lengths = topology.flow_routes(np.asarray(src)[moving],
                                                  np.asarray(dst)[moving])
    classes = topology.link_class[links]
    capacity = topology.capacity_Bps[links]
    worst[moving] = np.maximum.reduceat(classes, starts)
    capacity_min[moving] = np.minimum.reduceat(capacity, starts)
    at_min = capacity == np.repeat(capacity_min[moving], lengths)
    narrow[moving] = np.maximum.reduceat(np.where(at_min, classes, -1), starts)
    return worst, narrow, capacity_min


def _nvls_efficiency(topology: Topology, phase: Phase) -> np.ndarray:
    """Per flow, NCCL's nvlsEfficiency for the oldest NVSwitch generation on its route; 1
    for a flow through no NVSwitch (NVLS-Tree's inter-node legs, NIC to NIC)."""
    links, starts, _ = topology.flow_routes(phase.src, phase.dst)
    generation = np.minimum.reduceat(topology.nvswitch_generation[links], starts)
    newest = max(NVLS_EFFICIENCY)
    return np.array([NVLS_EFFICIENCY[min(int(g), newest)] if g else 1.0 for g in generation])


def enabled(protocol: str, topology: Topology, phases: list[Phase],
            links: list[FlowLinks] | None = None) -> bool:
    """NCCL enables LL128 by default only where the intra-node path is NVLink
    (tuning.cc, protoEnable); LL and Simple always. ``links``: ``flow_links(phases)``."""
    if protocol != "LL128":
        return True
    for worst, _, _ in links if links is not None else flow_links(topology, phases):
        if (worst == LINK_CLASSES.index("pci")).any():
            return False
    return True


def apply(phases: list[Phase], topology: Topology, protocol: str, algorithm: str,
          nodes: int = 1, op: str = "allreduce",
          links: list[FlowLinks] | None = None) -> list[Phase]:
    """The phases as ``protocol`` runs them (``ideal``: unchanged); ``nodes`` (how many
    nodes the collective spans) picks the LL cap where the device has ``nccl_arch``;
    ``links``: ``flow_links(phases)``, where known. The
    cap is a figure of NCCL's tuner, which prices its five collectives only
    (``NCCL_NUM_FUNCTIONS 5 // Send/Recv not included``), so point-to-point ops go uncapped."""
    if protocol == "ideal" or not phases:
        return phases
    fam = family(algorithm)
    launch_s = topology.device.kernel_launch_s if topology.device is not None else 0.0
    start_s = BASE_LATENCY_US[fam][protocol] * 1e-6 + launch_s
    arch = topology.device.nccl_arch if topology.device is not None else None
    ll_cap = (LL_MAX_BUSBW_GBPS[arch][min(max(nodes, 1), 3) - 1] * 1e9
              if protocol == "LL" and fam == "ring" and arch is not None
              and op in TUNED_OPS else None)
    out = []
    if links is None:
        links = flow_links(topology, phases)
    for k, (phase, (worst, narrow, capacity_min)) in enumerate(zip(phases, links)):
        step = np.array([STEP_LATENCY_US[(c, fam)][protocol] for c in LINK_CLASSES])[worst]
        eff = PROTOCOL_EFFICIENCY[fam][protocol] * np.array(
            [TRANSPORT_EFFICIENCY[c] for c in LINK_CLASSES])[narrow]
        if fam == "nvls":
            eff = eff * _nvls_efficiency(topology, phase)
        if ll_cap is not None:
            # every sender's LL payload, all its flows together, at most the cap
            src = np.asarray(phase.src)
            _, inverse, counts = np.unique(src, return_inverse=True, return_counts=True)
            room = ll_cap / counts[inverse] / capacity_min  # 0 where a flow stays local
            eff = np.where(room > 0, np.minimum(eff, room), eff)
        steps = phase.rounds if phase.latency_rounds is None else phase.latency_rounds
        if np.ndim(steps) == 0 and steps > 1:
            # ring steps and pipelines: a chunk travels the ring (or the tree), so a step
            # costs the mean hop latency of its flows; NCCL charges intraLat for intra-node
            # steps and interLat for inter-node ones in the same way
            step = np.full(len(step), step.mean())
        latency_s = steps * step * 1e-6 + (start_s if k == 0 else 0.0)
        out.append(replace(phase, latency_s=latency_s, wire_factor=1.0 / eff))
    return out
