"""NVLS (in-switch reduction on NVSwitch gen 3+) against closed forms written out here from
NCCL's constants (src/graph/tuning.cc nvlsEfficiency, topo.h NVLink payload rate), the
datasheet link rates and the one fitted latency (dlsim.network.protocol.NVLS_LATENCY_US)."""

from __future__ import annotations

import pytest

import dlsim
from dlsim.contract.errors import ScenarioError
from dlsim.network.algorithms import algorithms_for

N = 8
LAUNCH = 4e-6        # h100 / b200 profiles: kernel_launch_us
FITTED = 71e-6       # NVLS latency fitted on the DGX H100 sample (protocol.py docstring)
PAYLOAD = 20 / 25    # NCCL's NVLink payload rate per line rate (topo.h)
H100 = (450e9, 0.85)  # NVLink 4 per direction (H100 datasheet), nvlsEfficiency Hopper
B200 = (900e9, 0.74)  # NVLink 5 per direction (b200_gb200_specs.csv), nvlsEfficiency Blackwell


def _run(preset: str, size: float, algorithm: str = "nvls", op: str = "allreduce",
         nodes: int = 1, **collective: object) -> dict:
    return dlsim.simulate({"name": "nvls", "kind": "collective",
                           "cluster": {"preset": preset, "nodes": nodes},
                           "collective": {"op": op, "algorithm": algorithm,
                                          "size_bytes": size, **collective}}).summary


def _nvls_time(size: float, port: tuple[float, float], port_bytes_per_g: float) -> float:
    line, efficiency = port
    return LAUNCH + FITTED + size * port_bytes_per_g / (line * PAYLOAD * efficiency)


@pytest.mark.parametrize("preset, port", [("dgx-h100", H100), ("hgx-h200", H100),
                                          ("dgx-b200", B200)])
@pytest.mark.parametrize("size", [2.0 ** 22, 2.0 ** 30, 2.0 ** 33])
def test_allreduce_moves_n_plus_one_over_n_through_each_port(preset, port, size):
    s = _run(preset, size)
    # ld_reduce: G up, G/N down; multimem.st: G/N up, G down -> (N+1)/N each way
    assert s["time_s"] == pytest.approx(_nvls_time(size, port, (N + 1) / N), rel=1e-12)
    assert s["busbw_GBps"] == pytest.approx(size / s["time_s"] * 2 * (N - 1) / N / 1e9,
                                            rel=1e-12)
    assert s["protocol"] == "Simple"


@pytest.mark.parametrize("op", ["reducescatter", "allgather"])
def test_reduce_scatter_and_all_gather_carry_g_through_the_busier_direction(op):
    size = 2.0 ** 30
    s = _run("dgx-h100", size, op=op)
    assert s["time_s"] == pytest.approx(_nvls_time(size, H100, 1.0), rel=1e-12)


def test_nvls_bus_bandwidth_beats_the_ring_ceiling_by_nvls_over_ring_load():
    """At 8 GiB the latencies shift it by 0.09%, so the busbw ratio is the ring's port load over
    NVLS's times NVLS's efficiency: (2(N-1)/N) / ((N+1)/N) x 0.85 = 14/9 x 0.85 = 1.32."""
    size = 2.0 ** 33
    ratio = _run("dgx-h100", size)["busbw_GBps"] / _run("dgx-h100", size, "ring")["busbw_GBps"]
    closed = (2 * (N - 1) / N) / ((N + 1) / N) * 0.85
    assert ratio == pytest.approx(closed, rel=1e-3)  # reached 9.4e-4: the latencies


def test_auto_passes_over_nvls_at_4_mib_and_picks_it_at_64_mib():
    """NCCL's tuner: lowest estimated time wins. Ring/Simple on H100 is launch + 8.4 us +
    2(N-1) x 3.4 us + 2(N-1)/N G / (450 GB/s x 0.8), NVLS as above; at 4 MiB the ring (or
    the tree, faster still there) beats NVLS's fitted latency."""
    for size, nvls_wins in ((2.0 ** 22, False), (2.0 ** 26, True)):
        ring = LAUNCH + (8.4 + 2 * (N - 1) * 3.4) * 1e-6 + 2 * (N - 1) / N * size / (450e9
                                                                                     * PAYLOAD)
        nvls = _nvls_time(size, H100, (N + 1) / N)
        assert (nvls < ring) == nvls_wins
        s = _run("dgx-h100", size, "auto")
        assert (s["algorithm_chosen"] == "nvls") == nvls_wins
        assert s["time_s"] <= min(ring, nvls) * (1 + 1e-12)


@pytest.mark.parametrize("preset", ["dgx-a100", "dgx1-v100"])
def test_auto_never_picks_nvls_without_a_reducing_switch(preset):
    for size in (2.0 ** 20, 2.0 ** 33):
        assert _run(preset, size, "auto")["algorithm_chosen"] != "nvls"


@pytest.mark.parametrize("preset, nodes", [("dgx-a100", 1), ("dgx1-v100", 1), ("dgx-h100", 2)])
def test_nvls_where_no_gen3_switch_joins_the_group_is_an_input_error(preset, nodes):
    with pytest.raises(ScenarioError, match="NVSwitch of generation 3"):
        _run(preset, 2.0 ** 26, nodes=nodes)
    # across nodes auto falls back to NCCL's other algorithms
    assert _run(preset, 2.0 ** 26, "auto", nodes=nodes)["algorithm_chosen"] != "nvls"


def test_nvls_with_ll_is_an_input_error():
    with pytest.raises(ScenarioError, match="Simple protocol only"):
        _run("dgx-h100", 2.0 ** 26, protocol="LL")


def test_nvls_is_an_nccl_algorithm_for_the_three_ops():
    serving = [op for op in ("allreduce", "reducescatter", "allgather", "broadcast")
               if "nvls" in algorithms_for(op)]
    assert serving == ["allreduce", "reducescatter", "allgather"]
    spec = algorithms_for("allreduce")["nvls"]
    assert spec.nccl and not spec.auto


def test_yaml_collective_and_data_parallel_accept_nvls(tmp_path):
    path = tmp_path / "nvls.yaml"
    path.write_text("name: nvls\nkind: collective\ncluster: {preset: dgx-h100}\n"
                    "collective: {op: allreduce, algorithm: nvls, size_bytes: 1.0e+9}\n")
    assert dlsim.simulate(path).summary["algorithm_chosen"] == "nvls"
    step = {}
    for algorithm in ("ring", "nvls"):
        step[algorithm] = dlsim.simulate({
            "name": "dp", "model": {"preset": "gpt2-124m"}, "cluster": {"preset": "dgx-h100"},
            "precision": "bf16", "parallelism": {"data": 8},
            "training": {"global_batch": 64, "microbatch": 8, "optimizer": "adam",
                         "bucket_cap_mb": 25},
            "communication": {"data_parallel": algorithm}}).step_time_s
    assert step["nvls"] < step["ring"]
