"""The network model: max-min fairness by its definition, and the fluid timeline."""

from __future__ import annotations

import numpy as np
import pytest
import simpy
from conftest import topology_of
from hypothesis import given, settings
from hypothesis import strategies as st

from dlsim.hardware.fabrics import LinkSpec, star
from dlsim.network.fluid import Network, max_min_rates


def test_textbook_max_min_example():
    """Two links of capacity 1 in series; flow 0 crosses both, flows 1 and 2 one each
    (Bertsekas & Gallager): everyone gets 1/2."""
    flow_of = np.array([0, 0, 1, 2])
    link_of = np.array([0, 1, 0, 1])
    rates = max_min_rates(flow_of, link_of, np.array([1.0, 1.0]), 3)
    assert rates == pytest.approx([0.5, 0.5, 0.5])


def test_unequal_bottlenecks():
    """Link 0 (cap 1) carries flows 0, 1; link 1 (cap 10) carries flows 1, 2.
    Flows 0 and 1 get 1/2 on link 0; flow 2 takes the rest of link 1: 9.5."""
    rates = max_min_rates(np.array([0, 1, 1, 2]), np.array([0, 0, 1, 1]),
                          np.array([1.0, 10.0]), 3)
    assert rates == pytest.approx([0.5, 0.5, 9.5])


@st.composite
def flow_sets(draw):
    n_links = draw(st.integers(1, 6))
    caps = draw(st.lists(st.floats(0.1, 100), min_size=n_links, max_size=n_links))
    n_flows = draw(st.integers(1, 8))
    flow_of, link_of = [], []
    for f in range(n_flows):
        links = draw(st.sets(st.integers(0, n_links - 1), min_size=1, max_size=n_links))
        flow_of += [f] * len(links)
        link_of += sorted(links)
    return np.array(flow_of), np.array(link_of), np.array(caps), n_flows


@settings(max_examples=300, deadline=None)
@given(flow_sets())
def test_max_min_is_feasible_and_every_flow_has_a_bottleneck(case):
    """Max-min fairness by definition: no link is over capacity, and every flow crosses a
    saturated link on which no other flow gets more than it does."""
    flow_of, link_of, caps, n = case
    rates = max_min_rates(flow_of, link_of, caps, n)
    load = np.bincount(link_of, weights=rates[flow_of], minlength=len(caps))
    assert np.all(load <= caps * (1 + 1e-9))
    for f in range(n):
        mine = link_of[flow_of == f]
        has_bottleneck = False
        for link in mine:
            saturated = load[link] >= caps[link] * (1 - 1e-9)
            others = rates[flow_of[link_of == link]]
            if saturated and rates[f] >= others.max() * (1 - 1e-9):
                has_bottleneck = True
        assert has_bottleneck, f"flow {f} has no bottleneck link"


def test_a_flow_speeds_up_when_a_competitor_finishes():
    """Two flows share one 1 GB/s link: 1 GB and 3 GB. Both run at 0.5 GB/s until the small
    one ends at 2 s; the big one then has the link alone: 2 GB left at 1 GB/s -> 4 s."""
    env = simpy.Environment()
    topo = topology_of(star(3, LinkSpec("l", 1e9, 1e9, 0.0)), 3)
    net = Network(env, topo)
    done = {}
    for size, name in [(1e9, "small"), (3e9, "big")]:
        ev = net.transfer(np.array([1]), np.array([0]), np.array([size]))
        ev.callbacks.append(lambda _e, name=name: done.__setitem__(name, env.now))
    env.run()
    assert done == pytest.approx({"small": 2.0, "big": 4.0})
    assert net.link_bytes.sum() == pytest.approx(2 * 4e9)  # two hops per byte
    assert net.bytes_injected == pytest.approx(4e9)


def test_latency_then_bandwidth():
    env = simpy.Environment()
    topo = topology_of(star(2, LinkSpec("l", 1e9, 1e9, 1e-3)), 2)
    net = Network(env, topo)
    net.transfer(np.array([0]), np.array([1]), np.array([1e6]), rounds=4)
    env.run()
    assert env.now == pytest.approx(4 * (2e-3 + 1e-3))


def test_a_named_transfer_is_the_transfer_its_name_first_stood_for():
    """The two sends of the competitor example, each named and sent again as soon as it
    ends: the same times as when the network compares their arguments, and a name never
    stands for another transfer's arguments."""
    topo = topology_of(star(3, LinkSpec("l", 1e9, 1e9, 0.0)), 3)

    def run(named: bool) -> list[tuple[str, float]]:
        env = simpy.Environment()
        net = Network(env, topo)
        done: list[tuple[str, float]] = []

        def send(size: float, label: str):
            for _ in range(2):
                yield net.transfer(np.array([1]), np.array([0]), np.array([size]),
                                   name=label if named else None)
                done.append((label, env.now))

        for size, label in [(1e9, "small"), (3e9, "big")]:
            env.process(send(size, label))
        env.run()
        return done

    named = run(named=True)
    assert named == run(named=False)
    assert [label for label, _ in named] == ["small", "small", "big", "big"]
    # both at 0.5 GB/s until each small one ends (2 s, 4 s), then the big one alone
    assert [t for _, t in named] == pytest.approx([2.0, 4.0, 5.0, 8.0], rel=1e-15)
