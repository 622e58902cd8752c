"""Merged compute runs change the event count, never the timeline: random small programs
(several ranks, compute runs broken by blocking and overlapped all-reduces, durations that
tie across ranks or do not) give the same spans, in the same order, the same clock and the
same link records with and without merging, in fewer events wherever a run was merged."""

from __future__ import annotations

import numpy as np
from conftest import topology_of
from hypothesis import given, settings
from hypothesis import strategies as st

from dlsim.contract.program import Collective, Compute, Op
from dlsim.engine.core import Engine
from dlsim.hardware.fabrics import LinkSpec, star
from dlsim.network.backend import NETWORKS

B = 1e9
TIED = (0.25, 0.5, 1.0)  # exact binary fractions: ranks' ops end at the same instant


@st.composite
def programs(draw: st.DrawFn) -> dict[int, list[Op]]:
    """Each rank: segments of 1-4 compute ops, each segment ending in an all-reduce over all
    ranks that the next segment waits on (blocking) or not (overlapped)."""
    ranks = draw(st.integers(2, 4))
    segments = draw(st.integers(1, 4))
    tied = draw(st.booleans())
    duration = st.sampled_from(TIED) if tied else st.floats(1e-3, 1.0)
    shape = [(draw(st.integers(1, 4)), draw(st.booleans()), draw(st.floats(1e6, 1e8)))
             for _ in range(segments)]
    out: dict[int, list[Op]] = {}
    for r in range(ranks):
        skew = 1.0 if tied else 1 + (r + 1) * 1.23456789e-4  # untied: no two ranks' sums meet
        program: list[Op] = []
        wait: tuple[int, ...] = ()
        for k, (ops, blocking, size) in enumerate(shape):
            for j in range(ops):
                program.append(Compute(f"c{k}.{j}", draw(duration) * skew,
                                       deps=wait if j == 0 else ()))
            last = len(program) - 1
            program.append(Collective(f"ar{k}", f"ar{k}", tuple(range(ranks)), "allreduce",
                                      size, "ring", deps=(last,)))
            wait = (len(program) - 1,) if blocking else ()
        out[r] = program
    return out


def _run(programs: dict[int, list[Op]], network: str, merge: bool):
    n = len(programs)
    topology = topology_of(star(n, LinkSpec("l", B, B, 1e-6)), n)
    # the event-driven run from time zero: the isolated schedule would take these whole
    return Engine(topology, programs, np.arange(n), network=NETWORKS[network],
                  merge_compute=merge, fast_forward=False).run()


@settings(max_examples=60, deadline=None)
@given(programs(), st.sampled_from(sorted(NETWORKS)))
def test_merging_keeps_every_span_and_record(programs, network):
    merged, single = _run(programs, network, True), _run(programs, network, False)
    if set(TIED) >= {op.duration_s for p in programs.values() for op in p
                     if isinstance(op, Compute)}:
        # ends that tie exactly across ranks: spans ending at one instant may come in
        # another order; the spans and every record are the same
        assert sorted(merged.spans, key=repr) == sorted(single.spans, key=repr)
    else:
        assert merged.spans == single.spans
    assert merged.end_s == single.end_s
    assert merged.rank_end_s == single.rank_end_s
    assert merged.bytes_by_role == single.bytes_by_role
    assert np.array_equal(merged.network.link_bytes, single.network.link_bytes)
    assert np.array_equal(merged.network.link_busy_s, single.network.link_busy_s)
    runs = sum(1 for p in programs.values() for a, b in zip(p, p[1:])
               if isinstance(a, Compute) and isinstance(b, Compute) and not b.deps)
    assert single.events - merged.events == runs  # one timeout fewer per op merged


def test_a_forward_pass_is_one_event():
    """Ten ops of one rank, nothing between them: one timeout; each op's span ends at the
    running sum of the durations, added in order."""
    durations = [0.1 * (k + 1) / 3 for k in range(10)]
    program: list[Op] = [Compute(f"f{k}", d) for k, d in enumerate(durations)]
    merged, single = _run({0: program, 1: []}, "fluid", True), _run({0: program, 1: []},
                                                                     "fluid", False)
    ends = []
    t = 0.0
    for d in durations:
        t += d
        ends.append(t)
    assert [s.end_s for s in merged.spans] == ends == [s.end_s for s in single.spans]
    assert single.events - merged.events == 9
