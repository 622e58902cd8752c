"""Copy sets: the identical, link-disjoint instances of a phase, solved as one.

A symmetric job's phase carries every instance's flows (the tensor all-reduce of every node,
the pipeline send of every replica). When the instances are the same flows up to a
relabelling of links (same sizes, latencies and capacities, position by position) and their
routes share no link, max-min filling of the whole phase is k copies of the filling of one
instance: each link's share is computed from its own flows only, and the copies' links see
the same numbers. So the fluid network solves the representative (instance 0) and gives the
other instances' links the representative's records (``dlsim.network.fluid``).

That stays exact while every flow in flight on a copy's link belongs to a copy set with the
same relabelling (the k copies of the whole network state are then identical). A
``Footprint`` names, for every link an instance set crosses, which copy it is and which
representative link it stands for; two footprints are ``compatible`` when they share no link,
or agree on every shared one and share each shared representative's every copy. The fluid
network expands a copy set into its full flows whenever a newcomer is not compatible with it
(a straggler's transfer, a failure, a slow link), so heterogeneity keeps full fidelity.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import numpy as np

from dlsim.hardware.topology import Topology
from dlsim.network.algorithms import Phase

_uids = itertools.count()


@dataclass(frozen=True, eq=False)
class Footprint:
    """The links a copy set crosses: ``foot`` (sorted), and for each its copy index and the
    representative link it stands for. ``k`` = 1: flows simulated one by one."""

    k: int
    foot: np.ndarray
    rep_of: np.ndarray
    copy_of: np.ndarray
    uid: int = field(default_factory=lambda: next(_uids))

    @classmethod
    def of(cls, links: np.ndarray, copies: np.ndarray) -> Footprint:
        """Representative links ``links`` and their copies (``copies[i - 1]``: copy i's)."""
        k = len(copies) + 1
        foot = np.concatenate([links, copies.ravel()])
        order = np.argsort(foot, kind="stable")
        return cls(k, foot[order], np.tile(links, k)[order],
                   np.repeat(np.arange(k), len(links))[order])

    def expanded(self) -> Footprint:
        """The same links, every flow simulated on its own (one footprint per copy set)."""
        full = self.__dict__.get("_expanded")
        if full is None:
            full = Footprint(1, self.foot, self.foot, np.zeros(len(self.foot), dtype=np.intp))
            object.__setattr__(self, "_expanded", full)
        return full


def compatible(a: Footprint, b: Footprint) -> bool:
    """Whether copy sets ``a`` and ``b`` can be in flight together and still be solved by
    their representatives: both flow by flow, or no shared link, or the same number of copies,
    the same copy and representative on every shared link, and every copy of a shared
    representative shared."""
    if a.k == 1 and b.k == 1:
        return True
    _, ia, ib = np.intersect1d(a.foot, b.foot, assume_unique=True, return_indices=True)
    if len(ia) == 0:
        return True
    # and every shared representative shared in all its copies: the two then meet in each
    # copy as their representatives meet
    return (a.k == b.k and np.array_equal(a.rep_of[ia], b.rep_of[ib])
            and np.array_equal(a.copy_of[ia], b.copy_of[ib])
            and len(ia) == a.k * len(np.unique(a.rep_of[ia])))


@dataclass(frozen=True)
class CopySet:
    """A phase's kept flows as ``k`` instances of ``m`` flows each (instance i: flows
    ``i*m .. (i+1)*m - 1``); ``links`` are instance 0's distinct links (sorted) and
    ``copies[i - 1, j]`` the link of instance i that stands for ``links[j]``."""

    k: int
    m: int
    links: np.ndarray
    copies: np.ndarray

    def copies_of(self, links: np.ndarray) -> np.ndarray:
        """The copies of representative links ``links`` (a subset of ``self.links``)."""
        return self.copies[:, np.searchsorted(self.links, links)]


def repeats(a: np.ndarray, k: int) -> bool:
    """Whether ``a`` is ``k`` equal consecutive blocks."""
    rows = a.reshape(k, -1)
    return bool((rows[1:] == rows[0]).all())


def copy_set(k: int, keep: np.ndarray, per_flow: list[np.ndarray],
             routes: tuple[np.ndarray, np.ndarray, np.ndarray],
             capacity_Bps: np.ndarray) -> CopySet | None:
    """The copy set of a phase given as ``k`` consecutive equal blocks of flows, or None when
    the blocks are not identical link-disjoint copies. ``keep`` marks the flows of all blocks
    that carry bytes; ``per_flow`` are arrays over the kept flows that must repeat block by
    block (sizes, latencies); ``routes`` are the kept flows' (``Topology.flow_routes``)."""
    if k <= 1 or len(keep) % k or not repeats(keep, k):
        return None
    n = int(keep.sum())
    if n == 0 or any(not repeats(np.broadcast_to(a, (n,)), k) for a in per_flow):
        return None
    link_of, _starts, lengths = routes
    if not repeats(lengths, k):
        return None
    rows = link_of.reshape(k, -1)
    if not repeats(capacity_Bps[link_of], k):
        return None
    links, first, inverse = np.unique(rows[0], return_index=True, return_inverse=True)
    copies = rows[1:, first]
    # a relabelling (copy i's link is a function of instance 0's, one to one) whose copies
    # share no link: k times instance 0's distinct links in all
    if not (rows[1:] == copies[:, inverse]).all():
        return None
    if len(np.unique(link_of)) != k * len(links):
        return None
    return CopySet(k, n // k, links, copies)


def same_routes(topology: Topology, src: np.ndarray, dst: np.ndarray, offset: int) -> bool:
    """Whether flows ``src + offset -> dst + offset`` cross links just like ``src -> dst``
    do: position by position the same capacity, latency, hardware class and NVSwitch
    generation, and links shared where, and only where, the originals share theirs. Then
    whatever prices or protocol choices the originals got, the moved flows get too."""
    a = topology.flow_routes(src, dst)
    b = topology.flow_routes(src + offset, dst + offset)
    if not np.array_equal(a[2], b[2]):
        return False
    la, lb = a[0], b[0]
    if not all(np.array_equal(attr[la], attr[lb]) for attr in (
            topology.capacity_Bps, topology.latency_s, topology.link_class,
            topology.nvswitch_generation)):
        return False
    pairs = np.unique(np.stack((la, lb)), axis=1).shape[1]
    return pairs == len(np.unique(la)) == len(np.unique(lb))


def moved(topology: Topology, phases: list[Phase], offset: int) -> list[Phase] | None:
    """``phases`` (a collective planned within one node) for the same devices of the node
    ``offset`` devices on, or None where their routes there differ (``same_routes``)."""
    out = []
    for phase in phases:
        src, dst = np.asarray(phase.src), np.asarray(phase.dst)
        local = src != dst
        if local.any() and not same_routes(topology, src[local], dst[local], offset):
            return None
        out.append(replace(phase, src=src + offset, dst=dst + offset))
    return out
