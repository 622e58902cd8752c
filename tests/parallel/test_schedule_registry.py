"""A pipeline schedule is one registration: scenarios, the simulator, memory, the planner
and the error messages all read the registry (dlsim.contract.registry,
dlsim.parallel.schedules)."""

from __future__ import annotations

import pytest

import dlsim
from dlsim.cluster.build import build_topology
from dlsim.contract.errors import ScenarioError
from dlsim.contract.registry import SCHEDULE, register, registered, unregister
from dlsim.contract.scenario import ClusterSpec, ModelSpec, load_scenario
from dlsim.hardware import profiles as hardware
from dlsim.parallel.pipeline import in_flight, schedule
from dlsim.parallel.schedules import GPipe, OneFOneB, Pass, schedule_names
from dlsim.planner.space import Target, enumerate_plans
from dlsim.workload.costmodel import layer_times_s, optimizer_time_s
from dlsim.workload.presets import build_model
from dlsim.workload.shapes import gpt

WIDTH, LAYERS, MICRO = 1024, 8, 16


class LastInFirstOut(GPipe):
    """GPipe whose backwards take the micro-batches last first (the order a stage's stored
    activations were made, reversed): a different order with GPipe's dependencies."""

    def order(self, stage: int, stages: int, micro: int, chunks: int = 1) -> list[Pass]:
        return ([("F", i, 0) for i in range(micro)]
                + [("B", i, 0) for i in reversed(range(micro))])


@pytest.fixture
def lifo():
    register(SCHEDULE, "gpipe-lifo", LastInFirstOut())
    yield
    unregister(SCHEDULE, "gpipe-lifo")


@pytest.fixture
def copy_of_1f1b():
    register(SCHEDULE, "pipedream-flush", OneFOneB())
    yield
    unregister(SCHEDULE, "pipedream-flush")


def _yaml(p: int, m: int, kind: str) -> str:
    return (f"name: pp\nmodel: {{kind: mlp, widths: {[WIDTH] * (LAYERS + 1)}}}\n"
            f"cluster: {{topology: switch, devices: {p}, device: a100-sxm4-80gb, "
            "link: {bandwidth_GBps: 1e200, latency_us: 0}}\n"
            f"training: {{global_batch: {MICRO * m}, microbatch: {MICRO}, optimizer: sgd}}\n"
            f"parallelism: {{pipeline: {p}, schedule: {kind}}}\n")


@pytest.mark.parametrize("p,m", [(2, 4), (4, 4), (4, 16), (8, 3)])
def test_a_registered_schedule_runs_from_yaml_with_the_closed_form_bubble(lifo, tmp_path,
                                                                          p, m):
    """Free communication: every stage's passes take (t_f + t_b)·L/p, and the step is
    (m + p - 1) of them plus the optimizer; the bubble is (p - 1)/(m + p - 1) of it."""
    device = hardware.device("a100-sxm4-80gb")
    model = build_model(ModelSpec(kind="mlp", widths=[WIDTH] * (LAYERS + 1)), MICRO, 2)
    fwd, bwd = layer_times_s(model.layers[0], device, "bf16")
    stage_f, stage_b = fwd * LAYERS / p, bwd * LAYERS / p
    pipe = (m + p - 1) * (stage_f + stage_b)
    opt = optimizer_time_s(model.parameters / p, "sgd", device)
    path = tmp_path / "lifo.yaml"
    path.write_text(_yaml(p, m, "gpipe-lifo"))
    r = dlsim.simulate(path)
    assert r.parallelism["schedule"] == "gpipe-lifo"
    assert r.step_time_s == pytest.approx(pipe + opt, rel=1e-9)
    assert r.breakdown_s["bubble"] / pipe == pytest.approx((p - 1) / (m + p - 1), rel=1e-9)
    # it holds GPipe's m micro-batches of activations, from the schedule's in_flight
    gpipe = dlsim.simulate(_scenario(p, m, "gpipe"))
    assert (r.memory_breakdown_bytes["activations"]
            == gpipe.memory_breakdown_bytes["activations"])
    assert in_flight("gpipe-lifo", 0, p, m) == m


def _scenario(p: int, m: int, kind: str) -> dict:
    return {"name": "pp", "model": {"kind": "mlp", "widths": [WIDTH] * (LAYERS + 1)},
            "cluster": {"topology": "switch", "devices": p, "device": "a100-sxm4-80gb",
                        "link": {"bandwidth_GBps": 1e200, "latency_us": 0}},
            "training": {"global_batch": MICRO * m, "microbatch": MICRO, "optimizer": "sgd"},
            "parallelism": {"pipeline": p, "schedule": kind}}


def test_the_simulator_runs_the_registered_order(lifo):
    """Each stage's spans follow the schedule's order: backwards last micro-batch first."""
    r = dlsim.simulate(_scenario(4, 4, "gpipe-lifo"))
    for stage in range(4):
        mine = sorted((s for s in r.spans if s.device == stage
                       and s.name.startswith("bwd")), key=lambda s: s.start_s)
        assert [s.name.split("mb")[-1].split()[0] for s in mine] == ["3", "2", "1", "0"]
    assert schedule("gpipe-lifo", 0, 4, 3) == [("F", 0, 0), ("F", 1, 0), ("F", 2, 0),
                                               ("B", 2, 0), ("B", 1, 0), ("B", 0, 0)]


def test_a_copy_of_1f1b_under_another_name_is_1f1b(copy_of_1f1b):
    copy, original = (dlsim.simulate(_scenario(4, 8, kind))
                      for kind in ("pipedream-flush", "1f1b"))
    assert copy.step_time_s == original.step_time_s
    assert copy.breakdown_s == original.breakdown_s
    assert copy.memory_breakdown_bytes == original.memory_breakdown_bytes


def test_the_planner_enumerates_the_registered_schedules_in_order(lifo):
    """Shipped ones first, in the order ties break (gpipe, 1f1b, interleaved), then the
    registered one; it takes no virtual stages, interleaved takes 2 and 4."""
    assert schedule_names() == ("gpipe", "1f1b", "interleaved", "gpipe-lifo")
    four = build_topology(ClusterSpec(topology="switch", devices=4, device="a100-sxm4-80gb",
                                      link={"bandwidth_GBps": 50, "latency_us": 1}))
    plans = enumerate_plans(gpt(8, 512, 8, 128, 1000), 16, Target.on(four, "bf16"),
                            recompute=("none",), placements=("pack",),
                            sequence_parallel=(False,), offload=("none",), protocol=("auto",))
    piped = [(p.schedule, p.virtual_stages) for p in plans
             if p.pipeline == 4 and p.microbatch == 1]
    assert piped == [("gpipe", 1), ("1f1b", 1), ("interleaved", 2), ("gpipe-lifo", 1)]


def test_unregistered_afterwards():
    assert "gpipe-lifo" not in registered(SCHEDULE)
    assert schedule_names() == ("gpipe", "1f1b", "interleaved")


def test_a_misspelled_schedule_gets_did_you_mean_and_the_registered_names(lifo):
    with pytest.raises(ScenarioError) as err:
        load_scenario(_scenario(4, 4, "gpipe-lifp"))
    message = str(err.value)
    assert "field 'parallelism.schedule'" in message
    assert "did you mean 'gpipe-lifo'?" in message
    assert "allowed: gpipe, 1f1b, interleaved, gpipe-lifo" in message
    with pytest.raises(ScenarioError, match=r"did you mean '1f1b'\?\); allowed: gpipe, "
                                            r"1f1b, interleaved"):
        load_scenario(_scenario(4, 4, "1f1bb"))
