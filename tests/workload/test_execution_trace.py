"""PyTorch execution traces replayed on dlsim clusters.

A real DDP step is recorded here (examples/record_ddp_trace.py: two gloo processes on this
CPU, the MLP of ``dlsim validate --host``'s host-ddp row) and replayed on the host's
calibration and on a DGX A100; the committed trace examples/traces/ddp_mlp_et_0.json (an
MLP whose GEMMs dominate) replays to the step time of the dlsim scenario of the same model.
Reading and replaying a trace needs no torch; only the tests that record one skip without it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dlsim import simulate
from dlsim.cli import app
from dlsim.contract.errors import ScenarioError
from dlsim.data import ROOT
from dlsim.workload.execution_trace import classify

EXAMPLE = ROOT / "examples" / "traces" / "ddp_mlp_et_0.json"
EXAMPLE_WIDTHS, EXAMPLE_BATCH = [32, 2048, 2048, 32], 2048  # per rank; see record_ddp_trace
HOST_CLUSTER = yaml.safe_load((ROOT / "scenarios" / "host-calibrated-ddp.yaml").read_text())[
    "cluster"] | {"calibration": str(ROOT / "calibration" / "cpu-amd-epyc-2c-1t-32dd4ebe.json")}
# docs/calibration.md, host-ddp row "mlp 1024-2048-2048-256 b64x2 sgd gloo": measured 84.1 ms
# on the quiet machine; the host-ddp rows' worst error is 16.0 % (README, validation table)
MEASURED_HOST_DDP_S, HOST_DDP_WORST = 84.1e-3, 0.160


def _recorder():
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location(
        "record_ddp_trace", ROOT / "examples" / "record_ddp_trace.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recorder():
    return _recorder()


def _operators(folder: Path, rank: int) -> list[str]:
    nodes = json.loads((folder / f"ddp_mlp_et_{rank}.json").read_text())["nodes"]
    return sorted(node["name"] for node in nodes)


@pytest.fixture(scope="module")
def recorded(recorder, tmp_path_factory) -> Path:
    """One DDP step of the host-ddp MLP on two gloo ranks, with its Kineto trace. Torch's
    ExecutionTraceObserver now and then leaves an operator out of one rank's trace (a CI
    run's rank 0 lacked one of the middle layer's GEMMs, 278 of 279 nodes); both ranks run
    the same program, so a recording whose ranks' operators differ is taken again, three
    times at most: the input is checked, the tests below still check dlsim on it."""
    for _ in range(3):
        folder = recorder.record(tmp_path_factory.mktemp("et"), kineto=True,
                                 start_method="fork")
        if _operators(folder, 0) == _operators(folder, 1):
            return folder
    pytest.fail("three recordings in a row whose ranks' traces hold different operators")


def _scenario(trace: str | Path, cluster: dict, precision: str = "fp32", batch: int = 128,
              **model) -> dict:
    return {"name": "replay", "model": {"trace": str(trace), **model}, "cluster": cluster,
            "precision": precision,
            "training": {"global_batch": batch, "optimizer": "sgd", "bucket_cap_mb": 25}}


def _params(widths: list[int]) -> int:
    return sum(a * b + b for a, b in zip(widths, widths[1:]))


def test_the_recorded_step_is_its_gemms_and_gradient_all_reduces(recorder, recorded):
    """Closed forms of the MLP: forward 2·b·Σ w_i·w_(i+1) GEMM FLOPs, backward twice that
    but for the first layer's input gradient (the data needs none); the all-reduces carry
    every fp32 gradient once; nothing is left unmapped."""
    work = classify(recorded / "ddp_mlp_et_0.json", 4)
    w, b = recorder.WIDTHS, recorder.BATCH
    gemm = sum(op.kernel.flops for op in work.ops if op.kernel and op.kernel.kind == "gemm")
    pairs = sum(x * y for x, y in zip(w, w[1:]))
    assert gemm == pytest.approx(6 * b * pairs - 2 * b * w[0] * w[1], rel=1e-12)
    reduced = sum(op.size_bytes for op in work.ops if op.collective == "allreduce")
    assert reduced == 4 * _params(w)
    assert work.world == 2 and not work.unmapped


def test_replay_on_the_host_calibration_is_within_the_host_validation_error(recorded):
    """Replayed with this host's calibration (the cost model prices every operator), the
    step is within host-ddp's worst error of the step measured with real torch (89.1 ms
    against 84.1 ms: +6.0 %)."""
    result = simulate(_scenario(recorded / "ddp_mlp_et_0.json", HOST_CLUSTER))
    error = result.step_time_s / MEASURED_HOST_DDP_S - 1
    assert abs(error) <= HOST_DDP_WORST
    assert result.summary["unmapped_trace_nodes"] == 0
    # ring all-reduce of G over 2 ranks: each sends G; the chain broadcast G once
    sizes = classify(recorded / "ddp_mlp_et_0.json", 4).ops
    sent = sum(2 * o.size_bytes if o.collective == "allreduce" else o.size_bytes
               for o in sizes if o.collective)
    assert result.summary["comm_bytes_total"] == pytest.approx(sent, rel=1e-12)


def test_replay_on_a_dgx_a100(recorded):
    """The same job on two A100s over NVSwitch: every node maps, and the step is far shorter
    than on the CPU host."""
    host = simulate(_scenario(recorded / "ddp_mlp_et_0.json", HOST_CLUSTER))
    dgx = simulate(_scenario(recorded / "ddp_mlp_et_0.json", {"preset": "dgx-a100",
                                                               "nodes": 1}, "bf16"))
    assert dgx.summary["devices"] == 2 and dgx.summary["device"].startswith("a100")
    assert dgx.summary["unmapped_trace_nodes"] == 0
    assert 0 < dgx.step_time_s < host.step_time_s / 10


def test_kineto_times_replace_the_cost_model(recorded):
    """With the Kineto trace every compute op runs for its measured time: rank 0's compute
    (one stream, in order) is their sum."""
    from dlsim.workload.kineto import kineto_durations
    kineto = recorded / "ddp_mlp_kineto_0.json"
    measured = kineto_durations(kineto)
    work = classify(recorded / "ddp_mlp_et_0.json", 4, measured)
    computed = [op for op in work.ops if op.kernel is not None]
    assert all(op.measured_s is not None for op in computed)
    result = simulate(_scenario(recorded / "ddp_mlp_et_0.json", HOST_CLUSTER,
                                kineto=str(kineto)))
    assert result.summary["trace"]["measured_ops"] == len(computed)
    assert result.summary["breakdown_s"]["compute"] == pytest.approx(
        sum(op.measured_s for op in computed), rel=1e-9)


def test_one_file_per_rank_replays_every_rank(recorded):
    """et_{rank}.json: both ranks' own traces, simulated in full, take the step the
    symmetric replay of rank 0's file takes (the ranks ran the same shapes)."""
    per_rank = simulate(_scenario(recorded / "ddp_mlp_et_{rank}.json", HOST_CLUSTER))
    single = simulate(_scenario(recorded / "ddp_mlp_et_0.json", HOST_CLUSTER))
    assert per_rank.summary["simulation"]["fidelity"] == "full"
    assert per_rank.summary["trace"]["files"] == 2
    assert per_rank.step_time_s == pytest.approx(single.step_time_s, rel=1e-9)


def test_closed_loop_a_trace_of_the_scenarios_model_takes_its_step_time():
    """The committed trace (MLP 32-2048-2048-32, 2048 samples per rank, DDP over two gloo
    ranks) against the dlsim scenario of that MLP on the same calibrated host: the issue
    asks for 2 %; reached 0.02 % (0.7320 s against 0.7322 s)."""
    trace = simulate(_scenario(EXAMPLE, HOST_CLUSTER, batch=2 * EXAMPLE_BATCH))
    preset = simulate({"name": "preset", "model": {"kind": "mlp", "widths": EXAMPLE_WIDTHS},
                       "cluster": HOST_CLUSTER, "precision": "fp32",
                       "parallelism": {"data": 2},
                       "training": {"global_batch": 2 * EXAMPLE_BATCH, "optimizer": "sgd",
                                    "bucket_cap_mb": 25}})
    assert trace.step_time_s == pytest.approx(preset.step_time_s, rel=1e-3)
    assert trace.summary["throughput_samples_per_s"] == pytest.approx(
        preset.summary["throughput_samples_per_s"], rel=1e-3)


def test_unmapped_nodes_are_reported_by_name(tmp_path):
    """A custom kernel without a measured time runs nothing and is listed, never dropped."""
    data = json.loads(EXAMPLE.read_text())
    data["nodes"].append({"id": 10**6, "name": "mylib::fused_gelu", "ctrl_deps": 2,
                          "inputs": {"values": [[1, 1, 0, 64, 4, "cpu"]], "shapes": [[64]],
                                     "types": ["Tensor(float)"]},
                          "outputs": {"values": [], "shapes": [], "types": []}})
    path = tmp_path / "et.json"
    path.write_text(json.dumps(data))
    result = simulate(_scenario(path, HOST_CLUSTER, batch=2 * EXAMPLE_BATCH))
    assert result.summary["unmapped_trace_nodes"] == 1
    assert result.summary["trace"]["unmapped"] == {"mylib::fused_gelu": 1}
    table = CliRunner().invoke(app, ["import-model", str(path), "--json"])
    assert table.exit_code == 0, table.output
    rows = json.loads(table.output)
    assert {"op": "mylib::fused_gelu", "kind": "unmapped", "count": 1}.items() <= rows[-1].items()


@pytest.mark.parametrize("content,says", [
    ("not json {", "is not JSON"),
    ('{"schema": "1.1.1", "nodes": []}', "holds no 'nodes'"),
    ('{"nodes": [{"id": 1, "name": "[pytorch|profiler|execution_trace|process]", '
     '"ctrl_deps": 1}]}', "no operator to replay"),
])
def test_a_bad_trace_is_one_paragraph_naming_model_trace(tmp_path, content, says):
    path = tmp_path / "et.json"
    path.write_text(content)
    with pytest.raises(ScenarioError) as err:
        simulate(_scenario(path, HOST_CLUSTER))
    assert err.value.field == "model.trace" and says in err.value.message
    assert str(path) in err.value.message and "\n" not in err.value.paragraph()


def test_a_process_group_larger_than_the_cluster_is_refused():
    with pytest.raises(ScenarioError) as err:
        simulate(_scenario(EXAMPLE, HOST_CLUSTER | {"devices": 1}))
    assert err.value.field == "model.trace"
    assert "has 2 ranks" in err.value.message and "1 device(s)" in err.value.message


def test_cli_exit_2_for_a_missing_trace(tmp_path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(_scenario(tmp_path / "nowhere.json", HOST_CLUSTER)))
    result = CliRunner().invoke(app, ["run", str(scenario), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "model.trace" in result.output and "Traceback" not in result.output


def test_trace_goes_alone():
    bad = _scenario(EXAMPLE, HOST_CLUSTER, preset="gpt2")
    with pytest.raises(ScenarioError) as err:
        simulate(bad)
    assert "give 'trace' alone" in err.value.message


def test_conv_attention_and_batched_gemms_count_as_flop_counter_does(tmp_path):
    """A convolution, a linear layer, fused attention and batched GEMMs, traced in this
    process: GEMM and conv FLOPs (forward and backward) equal FlopCounterMode's total for the
    same step; attention, which FlopCounterMode does not count on CPU, is 4·b·h·s²·d forward
    and FlashAttention's 10·b·h·s²·d backward; nothing is unmapped."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode
    nn, F = torch.nn, torch.nn.functional
    b, heads, s, d = 2, 2, 64, 8

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.lin = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, heads * d)

        def forward(self, x):
            t = self.conv(x).flatten(2).transpose(1, 2)  # [b, s, 8]
            t = self.lin(t).view(b, s, heads, d).transpose(1, 2)
            a = F.scaled_dot_product_attention(t, t, t).reshape(b * heads, s, d)
            return torch.bmm(a, a.transpose(1, 2)).sum()

    model, x = Small(), torch.randn(b, 3, 8, 8)
    with FlopCounterMode(display=False) as counter:
        model(x).backward()
    observer = torch.profiler.ExecutionTraceObserver()
    observer.register_callback(str(tmp_path / "et.json"))
    observer.start()
    model(x).backward()
    observer.stop()
    observer.unregister_callback()
    work = classify(tmp_path / "et.json", 4)
    flops = {kind: sum(op.kernel.flops for op in work.ops
                       if op.kernel is not None and op.kernel.kind == kind)
             for kind in ("gemm", "conv", "attention")}
    assert flops["gemm"] + flops["conv"] == counter.get_total_flops()
    assert flops["conv"] > 0
    assert flops["attention"] == (4 + 10) * b * heads * s * s * d
    assert not work.unmapped


@pytest.mark.parametrize("extra,field", [({"parallelism": {"tensor": 2}}, "parallelism"),
                                         ({"parallelism": {"data": 4}}, "model.trace"),
                                         ({"stragglers": {"fixed": {1: 2.0}}}, "stragglers")])
def test_what_the_trace_fixes_cannot_be_given_beside_it(extra, field):
    """A plan, or a straggler model, is refused; data: 4 scales the trace but needs four
    devices (the host cluster has two)."""
    with pytest.raises(ScenarioError) as err:
        simulate(_scenario(EXAMPLE, HOST_CLUSTER, batch=2 * EXAMPLE_BATCH) | extra)
    assert err.value.field == field


def test_data_equal_to_the_traces_ranks_is_allowed():
    given = simulate(_scenario(EXAMPLE, HOST_CLUSTER, batch=2 * EXAMPLE_BATCH)
                     | {"parallelism": {"data": 2}})
    bare = simulate(_scenario(EXAMPLE, HOST_CLUSTER, batch=2 * EXAMPLE_BATCH))
    assert given.step_time_s == bare.step_time_s


def test_closed_loop_scaled_the_trace_takes_the_scenarios_step_on_eight_ranks():
    """parallelism.data: 8 scales the committed 2-rank DDP trace (every collective over the
    world group) to eight ranks of the calibrated host network; the dlsim scenario of that
    MLP on eight ranks takes the same step: the issue asks for 2 %; reached 0.89 % (0.7589 s
    against 0.7521 s: the trace's gradient buckets are torch's, not dlsim's bucket model),
    and the bytes on the wire agree to 1e-5 (the trace's two 36-byte broadcasts)."""
    cluster = HOST_CLUSTER | {"devices": 8}
    training = {"global_batch": 8 * EXAMPLE_BATCH, "optimizer": "sgd", "bucket_cap_mb": 25}
    trace = simulate(_scenario(EXAMPLE, cluster) | {"parallelism": {"data": 8},
                                                    "training": training})
    preset = simulate({"name": "preset", "model": {"kind": "mlp", "widths": EXAMPLE_WIDTHS},
                       "cluster": cluster, "precision": "fp32", "parallelism": {"data": 8},
                       "training": training})
    assert trace.summary["devices"] == 8 and trace.summary["trace"]["recorded_ranks"] == 2
    assert trace.step_time_s == pytest.approx(preset.step_time_s, rel=1e-2)
    assert trace.summary["comm_bytes_total"] == pytest.approx(
        preset.summary["comm_bytes_total"], rel=1e-5)


@pytest.mark.parametrize("example,devices", [("trace-replay.yaml", 2),
                                             ("trace-replay-scaled.yaml", 64)])
def test_the_example_scenarios_run_from_the_cli(tmp_path, monkeypatch, example, devices):
    """`dlsim run examples/...` from the checkout (the examples name their trace relative
    to it), end to end: summary.json holds the replay's ranks and its assumed groups."""
    monkeypatch.chdir(ROOT)
    out = CliRunner().invoke(app, ["run", f"examples/{example}", "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    (summary,) = tmp_path.glob("*/summary.json")
    data = json.loads(summary.read_text())
    assert data["devices"] == devices and data["trace"]["recorded_ranks"] == 2
    assert data["trace_groups_assumed"] == 4  # gloo names no group: 2 broadcasts, 2 all-reduces
