"""Communication in execution-trace replay: sizes by torch's arguments, process groups,
point to point, barriers and scaling, against closed forms on a textbook network.

Traces here are written as the JSON ExecutionTraceObserver writes (the node layout of the
4-rank gloo recording of examples/record_comms_trace.py, which the last tests record with
real torch): every collective alone on an uncontended ring or fully connected network, so a
step is its closed form, to 1e-9.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dlsim import simulate
from dlsim.cli import app
from dlsim.contract.errors import ScenarioError
from dlsim.data import ROOT
from dlsim.hardware.profiles import device as device_profile
from dlsim.workload.costmodel import kernel_time_s
from dlsim.workload.execution_trace import classify
from dlsim.workload.trace_comms import IrregularGroup, partition, resolve_group
from dlsim.workload.trace_nodes import ProcessGroup

B, ALPHA = 10e9, 5e-6  # link bandwidth (bytes/s) and latency (s)
DEVICE = "a100-sxm4-80gb"
N_ELEMS = 1 << 20  # fp32 elements of a buffer: G = 4 MiB


def _t(tensor_id: int, storage: int, numel: int = N_ELEMS) -> list:
    return [tensor_id, storage, 0, numel, 4, "cpu"]


def _node(nid: int, name: str, inputs: list[tuple], outputs: list[tuple] = (), parent: int = 2,
          attrs: list[dict] = ()) -> dict:
    return {"id": nid, "name": name, "ctrl_deps": parent,
            "inputs": {"values": [v for v, _ in inputs], "types": [k for _, k in inputs],
                       "shapes": [[] for _ in inputs]},
            "outputs": {"values": [v for v, _ in outputs], "types": [k for _, k in outputs],
                        "shapes": [[] for _ in outputs]},
            "attrs": [{"name": "rf_id", "type": "uint64", "value": nid}, *attrs]}


def _trace(path: Path, comms: list[dict], world: int, groups: list[dict] = ()) -> Path:
    listed = [{"pg_name": "0", "pg_desc": "default_pg", "ranks": [], "group_size": world},
              *groups]
    nodes = [_node(1, "[pytorch|profiler|execution_trace|process]", [], parent=1),
             _node(2, "[pytorch|profiler|execution_trace|thread]", [], parent=1),
             _node(3, "## process_group:init ##", [(json.dumps(listed), "String")]), *comms]
    path.write_text(json.dumps({"schema": "1.1.1-chakra.0.0.4", "pid": 1, "nodes": nodes}))
    return path


LIST = "GenericList[Tensor(float)]"
TENSOR = "Tensor(float)"


def _allreduce(nid: int, storage: int = 10) -> dict:
    return _node(nid, "c10d::allreduce_", [([_t(9, storage)], LIST), ("<Object>", "Object"),
                                           ("<Object>", "Object"), ("<None>", "None"),
                                           (False, "Bool"), (-1, "Int")],
                 [([_t(9, storage)], LIST), ("<Object>", "Object")])


def _scenario(trace: str | Path, devices: int, topology: str = "ring", **extra) -> dict:
    return {"name": "comms", "model": {"trace": str(trace)},
            "cluster": {"topology": topology, "devices": devices, "device": DEVICE,
                        "link": {"bandwidth_GBps": B / 1e9, "latency_us": ALPHA * 1e6}},
            "precision": "fp32", "training": {"global_batch": devices, "optimizer": "sgd"},
            **extra}


def ring_allreduce_s(n: int, size: float) -> float:
    """Patarasuk & Yuan on neighbour links: 2(N-1)/N·G/B + 2(N-1)·alpha."""
    return 2 * (n - 1) / n * size / B + 2 * (n - 1) * ALPHA


G = 4.0 * N_ELEMS


# --- sizes: the argument torch defines, not every tensor a call was given ------------------

N4 = N_ELEMS // 4  # a shard of a 4-rank group
SIZED = [  # (node name, inputs, outputs, dlsim op, G)
    ("c10d::_allgather_base_", [(_t(1, 11), TENSOR), (_t(2, 12, N4), TENSOR),
                                ("<Object>", "Object")], [(_t(1, 11), TENSOR)], "allgather", G),
    ("c10d::allgather_into_tensor_coalesced_", [([_t(1, 11)], LIST), ([_t(2, 12, N4)], LIST),
                                                ("<Object>", "Object")],
     [("<Object>", "Object")], "allgather", G),
    ("c10d::allgather_", [([[_t(i, 20 + i, N4) for i in range(4)]],
                           "GenericList[GenericList[Tensor(float),Tensor(float)]]"),
                          ([_t(2, 12, N4)], LIST), ("<Object>", "Object")], [], "allgather", G),
    ("c10d::_reduce_scatter_base_", [(_t(1, 11, N4), TENSOR), (_t(2, 12), TENSOR),
                                     ("<Object>", "Object"), ("<Object>", "Object")],
     [(_t(1, 11, N4), TENSOR)], "reducescatter", G),
    ("c10d::reduce_scatter_", [([_t(1, 11, N4)], LIST),
                               ([[_t(i, 20 + i, N4) for i in range(4)]],
                                "GenericList[GenericList[Tensor(float),Tensor(float)]]")],
     [], "reducescatter", G),
    ("c10d::alltoall_base_", [(_t(1, 11), TENSOR), (_t(2, 12), TENSOR), ("<Object>", "Object"),
                              ([], "GenericList[]"), ([], "GenericList[]")],
     [("<Object>", "Object")], "alltoall", G),
    ("_c10d_functional::all_gather_into_tensor", [(_t(2, 12, N4), TENSOR), (4, "Int"),
                                                  ("0", "String")],
     [(_t(1, 11), TENSOR)], "allgather", G),
    ("_c10d_functional::reduce_scatter_tensor", [(_t(2, 12), TENSOR), ("sum", "String"),
                                                 (4, "Int"), ("0", "String")],
     [(_t(1, 11, N4), TENSOR)], "reducescatter", G),
    ("_c10d_functional::all_to_all_single", [(_t(2, 12), TENSOR), ([], "GenericList[]"),
                                             ([], "GenericList[]"), ("0", "String")],
     [(_t(1, 11), TENSOR)], "alltoall", G),
]


@pytest.mark.parametrize("name,inputs,outputs,op,size", SIZED, ids=[s[0] for s in SIZED])
def test_sizes_follow_torchs_arguments(tmp_path, name, inputs, outputs, op, size):
    """An all-gather is its gathered output, a reduce-scatter its full input, an all-to-all
    what each rank sends: c10d's output-first arguments are not counted twice (an
    all-to-all was 2G, a reduce-scatter G + G/N, a coalesced all-gather 0)."""
    work = classify(_trace(tmp_path / "et.json", [_node(4, name, inputs, outputs)], 4), 4)
    (only,) = work.ops
    assert (only.collective, only.size_bytes) == (op, size)


def test_a_collective_writes_only_its_output_buffer(tmp_path):
    """An all-to-all reads its input and writes its output: a kernel that later reads the
    input does not wait for it; one that reads the output does."""
    a2a = SIZED[5]
    read_input = _node(5, "aten::mul", [(_t(2, 12), TENSOR), (2.0, "Double")],
                       [(_t(3, 13), TENSOR)])
    read_output = _node(6, "aten::mul", [(_t(1, 11), TENSOR), (2.0, "Double")],
                        [(_t(4, 14), TENSOR)])
    work = classify(_trace(tmp_path / "et.json", [_node(4, a2a[0], a2a[1], a2a[2]),
                                                   read_input, read_output], 4), 4)
    assert [op.deps for op in work.ops] == [(), (), (0,)]


def test_a_collective_recorded_below_another_op_is_its_own(tmp_path):
    """The observer parents a node on whatever its thread had open: an all-to-all recorded
    below a functional all-gather (as rank 1 of the recorded job has it) or below a kernel
    still runs; the all-gather's own c10d call stays inside it."""
    gather = _node(4, "_c10d_functional::all_gather_into_tensor",
                   [(_t(2, 12, N4), TENSOR), (4, "Int"), ("0", "String")], [(_t(1, 11), TENSOR)])
    own = _node(5, SIZED[1][0], SIZED[1][1], SIZED[1][2], parent=4)
    a2a = _node(6, SIZED[5][0], SIZED[5][1], SIZED[5][2], parent=4)
    mul = _node(7, "aten::mul", [(_t(3, 30), TENSOR), (2.0, "Double")], [(_t(4, 40), TENSOR)])
    under_kernel = _allreduce(8)
    under_kernel["ctrl_deps"] = 7
    work = classify(_trace(tmp_path / "et.json", [gather, own, a2a, mul, under_kernel], 4), 4)
    assert [op.collective for op in work.ops] == ["allgather", "alltoall", None, "allreduce"]


def test_a_functional_collective_recorded_twice_is_one_call(tmp_path):
    """The observer may record a functional collective's dispatcher levels as siblings
    (rank 3 of a CI recording: two all_gather_into_tensor nodes writing one buffer, the
    second parented on another op): it is one all-gather. A second call writes a buffer of
    its own, so it stays a second all-gather."""
    def gather(nid: int, out_storage: int, parent: int = 2) -> dict:
        return _node(nid, "_c10d_functional::all_gather_into_tensor",
                     [(_t(2, 12, N4), TENSOR), (4, "Int"), ("0", "String")],
                     [(_t(nid, out_storage), TENSOR)], parent=parent)

    mul = _node(5, "aten::mul", [(_t(3, 30), TENSOR), (2.0, "Double")], [(_t(4, 40), TENSOR)])
    again = classify(_trace(tmp_path / "a.json", [gather(4, 11), mul, gather(6, 11, 5)], 4), 4)
    assert [op.collective for op in again.ops] == ["allgather", None]
    assert again.counts["inside"] >= 1
    twice = classify(_trace(tmp_path / "b.json", [gather(4, 11), gather(6, 13)], 4), 4)
    assert [op.collective for op in twice.ops] == ["allgather", "allgather"]


# --- process groups ------------------------------------------------------------------------

def test_a_world_allreduce_is_the_ring_closed_form_and_its_group_is_counted(tmp_path):
    """gloo names no group for c10d::allreduce_: the world is assumed and counted."""
    trace = _trace(tmp_path / "et.json", [_allreduce(4)], 4)
    result = simulate(_scenario(trace, 4))
    assert result.step_time_s == pytest.approx(ring_allreduce_s(4, G), rel=1e-9)
    assert result.summary["trace_groups_assumed"] == 1
    assert result.summary["trace"]["groups_assumed"] == 1


def test_record_param_comms_names_the_group(tmp_path):
    """NCCL's record below the c10d call gives the group: pg_name, size, start, stride."""
    record = _node(5, "record_param_comms", [], parent=4, attrs=[
        {"name": "pg_name", "type": "string", "value": "7"},
        {"name": "pg_size", "type": "uint64", "value": 2},
        {"name": "global_rank_start", "type": "uint64", "value": 0},
        {"name": "global_rank_stride", "type": "uint64", "value": 2}])
    trace = _trace(tmp_path / "et.json", [_allreduce(4), record], 4)
    work = classify(trace, 4)
    assert work.groups_assumed == 0 and work.ops[0].comm.group == "7"
    assert resolve_group(work.ops[0].comm, {}, 4).ranks == (0, 2)
    result = simulate(_scenario(trace, 4, topology="fully-connected"))
    # ranks {0, 2} and {1, 3}: each a 2-rank ring over one direct link
    assert result.step_time_s == pytest.approx(ring_allreduce_s(2, G), rel=1e-9)
    assert result.summary["trace_groups_assumed"] == 0


@pytest.mark.parametrize("fidelity", ["symmetric", "full"])
def test_a_subgroup_allreduce_runs_on_each_block_at_once(tmp_path, fidelity):
    """A functional all-reduce over new_group([0, 1]) of four ranks: one file stands for
    both pairs, each a 2-rank ring on its own ring links; every rank sends G."""
    functional = _node(4, "_c10d_functional::all_reduce",
                       [(_t(1, 10), TENSOR), ("sum", "String"), ("1", "String")],
                       [(_t(2, 11), TENSOR)])
    trace = _trace(tmp_path / "et.json", [functional], 4,
                   [{"pg_name": "1", "ranks": [0, 1], "group_size": 2}])
    result = simulate(_scenario(trace, 4, simulation={"fidelity": fidelity}))
    assert result.step_time_s == pytest.approx(ring_allreduce_s(2, G), rel=1e-9)
    assert result.summary["comm_bytes_total"] == pytest.approx(4 * G, rel=1e-12)
    assert result.summary["trace_groups_assumed"] == 0


def test_the_older_functional_collectives_name_their_ranks(tmp_path):
    """torch 2.1-2.2's c10d_functional::all_reduce(self, op, tag, ranks, group_size): the
    group is its ranks, [2, 3] of four (a block of [0, 1], [2, 3])."""
    functional = _node(4, "c10d_functional::all_reduce",
                       [(_t(1, 10), TENSOR), ("sum", "String"), ("", "String"),
                        ([2, 3], "GenericList[Int,Int]"), (2, "Int")], [(_t(2, 11), TENSOR)])
    trace = _trace(tmp_path / "et.json", [functional], 4)
    assert classify(trace, 4).groups_assumed == 0
    result = simulate(_scenario(trace, 4))
    assert result.step_time_s == pytest.approx(ring_allreduce_s(2, G), rel=1e-9)
    assert result.summary["comm_bytes_total"] == pytest.approx(4 * G, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.data())
def test_a_regular_partition_covers_the_world_once(k, stride, blocks, data):
    """Blocks of k ranks s apart tile the world, and the traced group is one of them."""
    world = k * stride * blocks
    base = data.draw(st.integers(0, blocks - 1)) * k * stride
    offset = data.draw(st.integers(0, stride - 1))
    ranks = tuple(base + offset + stride * i for i in range(k))
    parts = partition(ProcessGroup("g", ranks, k), world)
    assert sorted(r for p in parts for r in p) == list(range(world))
    assert ranks in parts
    assert all(len(p) == k and all(b - a == stride for a, b in zip(p, p[1:])) for p in parts)


@pytest.mark.parametrize("ranks,world", [((0, 2, 3), 4), ((1, 2), 4), ((0, 1, 2), 4)])
def test_an_irregular_group_is_not_a_partition(ranks, world):
    with pytest.raises(IrregularGroup):
        partition(ProcessGroup("g", ranks, len(ranks)), world)


def test_one_file_with_an_irregular_group_is_refused_with_exit_2(tmp_path):
    functional = _node(4, "_c10d_functional::all_reduce",
                       [(_t(1, 10), TENSOR), ("sum", "String"), ("5", "String")],
                       [(_t(2, 11), TENSOR)])
    trace = _trace(tmp_path / "et.json", [functional], 4,
                   [{"pg_name": "5", "ranks": [0, 2, 3], "group_size": 3}])
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(_scenario(trace, 4)))
    out = CliRunner().invoke(app, ["run", str(scenario), "--out", str(tmp_path / "out")])
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert "model.trace" in out.output and "regular partition" in out.output


# --- scaling -------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [2, 8])
def test_data_scales_a_data_parallel_trace(tmp_path, data):
    """A 4-rank DP trace replayed on ``data`` ranks: the world group's ring grows."""
    trace = _trace(tmp_path / "et.json", [_allreduce(4)], 4)
    result = simulate(_scenario(trace, data, parallelism={"data": data}))
    assert result.summary["devices"] == data
    assert result.step_time_s == pytest.approx(ring_allreduce_s(data, G), rel=1e-9)
    assert result.summary["trace"]["recorded_ranks"] == 4


def test_a_subgroup_trace_does_not_scale(tmp_path):
    functional = _node(4, "_c10d_functional::all_reduce",
                       [(_t(1, 10), TENSOR), ("sum", "String"), ("1", "String")],
                       [(_t(2, 11), TENSOR)])
    trace = _trace(tmp_path / "et.json", [_allreduce(5), functional], 4,
                   [{"pg_name": "1", "ranks": [0, 1], "group_size": 2}])
    with pytest.raises(ScenarioError) as err:
        simulate(_scenario(trace, 8, parallelism={"data": 8}))
    assert err.value.field == "parallelism.data" and "process group(s) 1" in err.value.message


# --- point to point and barriers ------------------------------------------------------------

def _p2p(nid: int, name: str, peer: int, storage: int, numel: int = N_ELEMS) -> dict:
    return _node(nid, name, [([_t(1, storage, numel)], LIST), ("<Object>", "Object"),
                             (peer, "Int"), (0, "Int")], [("<Object>", "Object")])


def test_a_send_is_bytes_over_bandwidth_plus_latency(tmp_path):
    """The k-th send from 0 to 1 meets the k-th receive on 1 from 0; two sends queue on
    the send stream: 2·alpha + (G + G/2)/B. Rank 1's first-issued receive and send run on
    streams of their own, so rank 0 sending first does not deadlock."""
    half = N_ELEMS // 2
    _trace(tmp_path / "et_0.json", [_p2p(4, "c10d::send", 1, 10),
                                    _p2p(5, "c10d::send", 1, 11, half)], 2)
    _trace(tmp_path / "et_1.json", [_p2p(4, "c10d::recv_", 0, 10),
                                    _p2p(5, "c10d::recv_", 0, 11, half)], 2)
    result = simulate(_scenario(tmp_path / "et_{rank}.json", 2, topology="fully-connected"))
    assert result.step_time_s == pytest.approx(2 * ALPHA + 1.5 * G / B, rel=1e-9)
    assert result.summary["trace"]["p2p_ops"] == 2


@pytest.mark.parametrize("rank_1,says", [
    ([_p2p(4, "c10d::recv_", 0, 10), _allreduce(5)], "rank 0: 0, rank 1: 1"),
    ([], "rank 0 sends 1 time(s) to rank 1, which receives 0"),
])
def test_unmatched_communication_is_said_not_deadlocked(tmp_path, rank_1, says):
    _trace(tmp_path / "et_0.json", [_p2p(4, "c10d::send", 1, 10)], 2)
    _trace(tmp_path / "et_1.json", rank_1 or [_node(4, "aten::mul", [(_t(1, 5), TENSOR)],
                                                    [(_t(2, 6), TENSOR)])], 2)
    with pytest.raises(ScenarioError) as err:
        simulate(_scenario(tmp_path / "et_{rank}.json", 2, topology="fully-connected"))
    assert err.value.field == "model.trace" and says in err.value.message


def test_one_file_with_sends_is_refused(tmp_path):
    trace = _trace(tmp_path / "et.json", [_p2p(4, "c10d::send", 1, 10)], 2)
    with pytest.raises(ScenarioError) as err:
        simulate(_scenario(trace, 2, topology="fully-connected"))
    assert err.value.field == "model.trace" and "et_{rank}.json" in err.value.message


def test_a_barrier_is_a_one_byte_allreduce_that_fences_the_step(tmp_path):
    """An all-reduce, a barrier, then a kernel on an unrelated tensor: without the barrier
    the kernel would run at once beside the all-reduce; with it, it starts after the
    all-reduce and the barrier's 1-byte ring all-reduce."""
    barrier = _node(5, "c10d::barrier", [(_t(3, 30, 1), "Tensor(unsigned char)"),
                                         ("<Object>", "Object")], [("<Object>", "Object")])
    mul = _node(6, "aten::mul", [(_t(4, 40), TENSOR), (2.0, "Double")], [(_t(5, 50), TENSOR)])
    trace = _trace(tmp_path / "et.json", [_allreduce(4, 10), barrier, mul], 4)
    work = classify(trace, 4)
    assert [op.collective for op in work.ops] == ["allreduce", "barrier", None]
    assert work.ops[1].size_bytes == 1 and work.ops[1].deps == (0,)
    assert work.ops[2].deps == (1,)
    kernel_s = kernel_time_s(work.ops[2].kernel, device_profile(DEVICE), "fp32")
    result = simulate(_scenario(trace, 4))
    assert result.step_time_s == pytest.approx(
        ring_allreduce_s(4, G) + ring_allreduce_s(4, 1.0) + kernel_s, rel=1e-9)


# --- a job recorded with real torch ---------------------------------------------------------

@pytest.fixture(scope="module")
def comms_recorder():
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location(
        "record_comms_trace", ROOT / "examples" / "record_comms_trace.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def comms(comms_recorder, tmp_path_factory) -> Path:
    return comms_recorder.record(tmp_path_factory.mktemp("comms"), start_method="fork")


def test_the_recorded_job_maps_every_communication(comms_recorder, comms):
    """Four gloo ranks: every communication at the size the recorder computed, the
    functional ones over the rank's new_group pair, the c10d ones (gloo names no group)
    over the assumed world, and nothing unmapped."""
    sizes = comms_recorder.SIZES
    for rank in range(4):
        work = classify(comms / f"comms_et_{rank}.json", 4)
        got = [(op.collective, op.size_bytes, op.comm.group) for op in work.ops if op.comm]
        pair = "1" if rank < 2 else "2"
        p2p = ["send", "recv"] if rank % 2 == 0 else ["recv", "send"]
        assert got == [("allreduce", sizes["allreduce"], None),
                       ("allreduce", sizes["pair_allreduce"], pair),
                       ("allgather", sizes["pair_allgather"], pair),
                       ("alltoall", sizes["alltoall"], None), ("barrier", 1.0, None),
                       *((op, sizes["p2p"], None) for op in p2p)]
        assert work.groups_assumed == 5 and not work.unmapped
        assert work.ops[2].deps == (1,)  # the gather of the pair's all-reduce waits for it


def test_the_recorded_job_replays_on_a_ring_and_a_dgx(comms_recorder, comms):
    """Per-rank files on a 4-device ring: the bytes on the wire are the closed forms of
    each communication (ring all-reduce 2(N-1)/N·G per rank, ring all-gather (N-1)/N·G,
    direct all-to-all (N-1)/N·G, every send G); the same job on a DGX A100 runs without
    error."""
    s = comms_recorder.SIZES
    ring = simulate(_scenario(comms / "comms_et_{rank}.json", 4))
    per_rank = (2 * 3 / 4 * s["allreduce"] + s["pair_allreduce"] + s["pair_allgather"] / 2
                + 3 / 4 * s["alltoall"] + 2 * 3 / 4 * 1 + s["p2p"])
    assert ring.summary["comm_bytes_total"] == pytest.approx(4 * per_rank, rel=1e-12)
    assert ring.summary["trace_groups_assumed"] == 5
    dgx = simulate(_scenario(comms / "comms_et_{rank}.json", 4) | {
        "cluster": {"preset": "dgx-a100", "nodes": 1}})
    assert dgx.summary["devices"] == 4 and dgx.step_time_s > 0
    assert dgx.summary["unmapped_trace_nodes"] == 0


def test_import_model_lists_each_op_with_its_group(comms):
    table = CliRunner().invoke(app, ["import-model", str(comms / "comms_et_0.json"), "--json"])
    assert table.exit_code == 0, table.output
    rows = {(r["op"], r["group"]) for r in json.loads(table.output)}
    assert ("_c10d_functional::all_reduce", "1") in rows
    assert ("c10d::allreduce_", "world (assumed)") in rows
