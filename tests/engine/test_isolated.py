"""The isolated schedule (``dlsim.engine.isolated``) stands for the event-driven run: random
programs whose transfers share links or do not, taken whole, resumed from a cut or sent
alone, give the clock, every span, the link records and the bytes by role of the run
simulated from time zero; and small training jobs give the same summary."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import topology_of
from hypothesis import given, settings
from hypothesis import strategies as st

import dlsim
from dlsim.contract.program import Collective, Compute, Op
from dlsim.engine.core import Engine
from dlsim.engine.isolated import AloneCosts, private
from dlsim.hardware.fabrics import LinkSpec, star
from dlsim.network.backend import NETWORKS

B = 1e9


@st.composite
def programs(draw: st.DrawFn) -> dict[int, list[Op]]:
    """Each rank: compute segments, each ending in an all-reduce over all ranks (blocking or
    overlapped, on one of two streams: the same collective on two streams may run twice at
    once) or a point-to-point send to the next rank on a stream of its own; sends of
    neighbouring ranks meet on the star's links when their timing overlaps."""
    ranks = draw(st.integers(2, 4))
    segments = draw(st.integers(1, 5))
    group = tuple(range(ranks))
    shape = [(draw(st.integers(1, 3)), draw(st.sampled_from(["comm", "comm2", "send"])),
              draw(st.booleans()), draw(st.floats(1e6, 1e8)),
              [draw(st.floats(1e-4, 0.2)) for _ in range(ranks)]) for _ in range(segments)]
    out: dict[int, list[Op]] = {}
    for r in range(ranks):
        program: list[Op] = []
        wait: tuple[int, ...] = ()
        for k, (ops, kind, blocking, size, durations) in enumerate(shape):
            for j in range(ops):
                program.append(Compute(f"c{k}.{j}", durations[r] * (j + 1),
                                       deps=wait if j == 0 else ()))
            last = len(program) - 1
            if kind != "send":
                program.append(Collective(f"ar{k}", f"ar{k}", group, "allreduce", size,
                                          "ring", deps=(last,), stream=kind))
                wait = (len(program) - 1,) if blocking else ()
                continue
            # send to the next rank, receive from the previous: two collectives a rank
            to, frm = (r + 1) % ranks, (r - 1) % ranks
            program.append(Collective(f"send{k}", f"p2p{k} {r}->{to}", (r, to), "send",
                                      size, "direct", deps=(last,), stream="send",
                                      role="pipeline"))
            program.append(Collective(f"recv{k}", f"p2p{k} {frm}->{r}", (frm, r), "send",
                                      size, "direct", stream="recv", role="pipeline"))
            wait = (len(program) - 1,) if blocking else ()
        out[r] = program
    return out


def _run(programs: dict[int, list[Op]], network: str, fast_forward: bool):
    n = len(programs)
    topology = topology_of(star(n, LinkSpec("l", B, B, 1e-6)), n)
    return Engine(topology, programs, np.arange(n), network=NETWORKS[network],
                  fast_forward=fast_forward).run()


def _key(span):
    return (span.device, span.stream, span.name, span.category)


@settings(max_examples=80, deadline=None)
@given(programs(), st.sampled_from(sorted(NETWORKS)))
def test_the_isolated_schedule_gives_the_event_driven_run(programs, network):
    fast, events = _run(programs, network, True), _run(programs, network, False)
    assert fast.end_s == pytest.approx(events.end_s, rel=1e-12)
    assert fast.rank_end_s.keys() == events.rank_end_s.keys()
    for rank, end_s in events.rank_end_s.items():
        assert fast.rank_end_s[rank] == pytest.approx(end_s, rel=1e-12)
    mine, theirs = sorted(fast.spans, key=_key), sorted(events.spans, key=_key)
    assert [_key(s) for s in mine] == [_key(s) for s in theirs]
    assert [s.start_s for s in mine] == pytest.approx([s.start_s for s in theirs], rel=1e-12,
                                                       abs=1e-15)
    assert [s.end_s for s in mine] == pytest.approx([s.end_s for s in theirs], rel=1e-12)
    assert fast.bytes_by_role == pytest.approx(events.bytes_by_role, rel=1e-12)
    assert fast.network.link_bytes == pytest.approx(events.network.link_bytes, rel=1e-12)
    assert fast.network.link_busy_s == pytest.approx(events.network.link_busy_s, rel=1e-12,
                                                     abs=1e-15)
    assert fast.network.flows_started == events.network.flows_started
    assert fast.events <= events.events


def _sends(overlap: bool) -> dict[int, list[Op]]:
    """Ranks 0 and 1 both send to rank 2 (its downlink shared) at once, or one after the
    other."""
    wait = 0.0 if overlap else 1.0
    return {0: [Compute("a", 0.1), Collective("s0", "s0", (0, 2), "send", 1e8, "direct",
                                              deps=(0,), stream="send")],
            1: [Compute("b", 0.1 + wait), Collective("s1", "s1", (1, 2), "send", 1e8,
                                                     "direct", deps=(0,), stream="send")],
            2: [Collective("s0", "s0", (0, 2), "send", 1e8, "direct", stream="r0"),
                Collective("s1", "s1", (1, 2), "send", 1e8, "direct", stream="r1")]}


def test_a_run_whose_links_never_meet_is_taken_whole_and_one_that_meets_resumes():
    apart, together = _run(_sends(False), "fluid", True), _run(_sends(True), "fluid", True)
    assert apart.events == 0  # no event: the schedule whole
    assert apart.end_s == pytest.approx(1.1 + 1e8 / B + 2e-6, rel=1e-12)
    assert together.events > 0  # simulated from the cut: the two sends share rank 2's link
    assert together.end_s == pytest.approx(0.1 + 2e8 / B + 2e-6, rel=1e-12)
    assert together.end_s == pytest.approx(_run(_sends(True), "fluid", False).end_s, rel=1e-12)


def test_only_collectives_whose_links_are_their_own_are_private():
    """Rank 2's two receives share its downlink and come from different streams: neither is
    private. A collective alone on its links is."""
    topology = topology_of(star(4, LinkSpec("l", B, B, 1e-6)), 4)
    programs = _sends(True)
    programs[3] = [Collective("own", "own", (3, 0), "send", 1e8, "direct", stream="x")]
    programs[0] = [*programs[0], Collective("own", "own", (3, 0), "send", 1e8, "direct",
                                            stream="y")]
    engine = Engine(topology, programs, np.arange(4))
    mine = private(engine.programs, engine._lower, AloneCosts(engine.network_factory, topology))
    by_name = {op.name: id(engine._lower(op)) for p in programs.values() for op in p
               if isinstance(op, Collective)}
    assert by_name["own"] in mine
    assert by_name["s0"] not in mine and by_name["s1"] not in mine


def _job(parallelism: dict, model: str = "gpt2-124m", nodes: int = 2, micro: int = 8,
         **extra) -> dict:
    return {"name": "iso", "model": {"preset": model},
            "cluster": {"preset": "dgx-a100", "nodes": nodes}, "precision": "bf16",
            "training": {"global_batch": micro * parallelism.get("data", 1), "microbatch": 1,
                         "optimizer": "adam"},
            "parallelism": parallelism, "placement": "pack", **extra}


JOBS = [
    _job({"data": 2, "tensor": 4, "pipeline": 2}),
    _job({"data": 2, "tensor": 2, "pipeline": 4, "schedule": "interleaved",
          "virtual_stages": 2}),
    _job({"data": 4, "tensor": 2, "pipeline": 2, "zero_stage": 1}),
    _job({"data": 16}, micro=2),
    _job({"data": 8, "tensor": 2, "zero_stage": 3}),
    _job({"data": 4, "tensor": 2, "pipeline": 2, "sequence_parallel": True}),
    _job({"data": 4, "tensor": 2, "pipeline": 2}, stragglers={"fixed": {3: 1.3}}),
    _job({"data": 16}, micro=2, communication={"data_parallel": "ps"}),
]


def _flat(d, prefix=""):
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in _flat(val, f"{prefix}.{key}").items()}
    if isinstance(d, list):
        return {k: v for i, val in enumerate(d) for k, v in _flat(val, f"{prefix}[{i}]").items()}
    return {prefix: d}


@pytest.mark.parametrize("scenario", JOBS, ids=lambda s: str(s["parallelism"]))
def test_training_summaries_are_those_of_the_event_driven_run(scenario, monkeypatch):
    fast = _flat(dlsim.simulate(scenario).summary)
    original = Engine.__init__

    def from_time_zero(self, *args, **kwargs):
        original(self, *args, **{**kwargs, "fast_forward": False})

    monkeypatch.setattr(Engine, "__init__", from_time_zero)
    slow = _flat(dlsim.simulate(scenario).summary)
    assert fast.keys() == slow.keys()
    for key, value in slow.items():
        if key == ".simulation.events":
            assert fast[key] <= value
        elif isinstance(value, float):
            assert fast[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
        else:
            assert fast[key] == value, key


def test_progress_is_told_while_the_schedule_is_evaluated(monkeypatch):
    monkeypatch.setattr("dlsim.engine.isolated.PROGRESS_EVERY", 4)
    programs = {0: [Compute(f"a{i}", 0.5) for i in range(40)]}
    topology = topology_of(star(2, LinkSpec("l", B, B, 0.0)), 2)
    seen: list[float] = []
    run = Engine(topology, programs, np.arange(2)).run(lambda now, _end: seen.append(now))
    assert run.end_s == 20.0 and run.events == 0
    assert seen and seen == sorted(seen) and seen[-1] <= 20.0
