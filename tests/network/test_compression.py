"""Gradient compression: bytes by definition, codec time by the roofline, written out here."""

from __future__ import annotations

import pytest

import dlsim
from dlsim.hardware.profiles import device
from dlsim.network.compression import Compression

N, WIDTH = 4, 2048
MLP = {"kind": "mlp", "widths": [WIDTH, WIDTH, WIDTH]}
PARAMS = 2 * (WIDTH * WIDTH + WIDTH)  # two dense layers with biases


def _run(compression: str, algorithm: str = "ring", steps: int = 1, **extra) -> dlsim.Result:
    return dlsim.simulate({
        "name": "c", "model": MLP, "precision": "fp32",
        "cluster": {"topology": "switch", "devices": N, "device": "a100-sxm4-80gb",
                    "link": {"bandwidth_GBps": 1, "latency_us": 5}},
        "training": {"global_batch": 4 * N, "optimizer": "sgd", "bucket_cap_mb": 0,
                     "steps": steps},
        "communication": {"data_parallel": algorithm, "compression": compression, **extra}})


@pytest.mark.parametrize("scheme,grad_bytes,ratio", [
    ("onebit", 4, 32.0),              # one bit per 32-bit element
    ("fp16", 4, 2.0),
    ("fp16", 2, 1.0),                 # bf16 gradients are already 2 bytes
    ("topk", 4, 4 / (0.01 * (4 + 4))),  # 1% of elements, value + int32 index each
    ("none", 4, 1.0)])
def test_bytes_ratio(scheme, grad_bytes, ratio):
    assert Compression(scheme, 0.01).ratio(grad_bytes) == pytest.approx(ratio, rel=1e-12)


def test_onebit_is_all_gathered_and_moves_n_over_64_of_the_ring_bytes():
    """A ring all-reduce moves 2(N-1)G; an all-gather of every rank's G/32 moves
    (N-1) N G/32: the ratio is 64/N, and the summary says 32x per rank."""
    g = PARAMS * 4
    plain, onebit = _run("none"), _run("onebit")
    assert plain.comm_bytes_total == pytest.approx(2 * (N - 1) * g, rel=1e-9)
    assert onebit.comm_bytes_total == pytest.approx((N - 1) * N * g / 32, rel=1e-9)
    assert onebit.summary["compression"]["bytes_ratio"] == 32.0


def test_onebit_through_parameter_servers_pushes_and_pulls_compressed_bytes():
    g = PARAMS * 4
    r = _run("onebit", "ps")
    assert r.comm_bytes_total == pytest.approx(2 * (N - 1) * g / 32, rel=1e-9)


def test_codec_time_is_the_elementwise_roofline():
    """Encode reads gradient and error buffer and writes the error buffer (12 B/element)
    plus the bits; decode reads N ranks' bits and writes the fp32 sum. One bucket, both
    kernels memory-bound, each with one launch."""
    a100 = device("a100-sxm4-80gb")
    rate = a100.memory_bandwidth_Bps * a100.efficiency.memory
    encode = (PARAMS * 12 + PARAMS / 8) / rate + a100.kernel_launch_s
    decode = (N * PARAMS / 8 + PARAMS * 4) / rate + a100.kernel_launch_s
    r = _run("onebit")
    assert r.summary["compression"]["codec_s"] == pytest.approx(encode + decode, rel=1e-9)


def test_compression_saves_time_on_a_slow_link_and_reports_its_price():
    plain, onebit = _run("none"), _run("onebit")
    assert onebit.step_time_s < plain.step_time_s
    assert onebit.summary["compression"]["codec_s"] > 0
    assert plain.summary["compression"] == {"scheme": "none", "bytes_ratio": 1.0,
                                            "codec_s": 0.0}


def test_compression_with_zero_is_an_input_error():
    with pytest.raises(dlsim.ScenarioError) as err:
        dlsim.simulate({
            "name": "c", "model": MLP, "precision": "fp32",
            "cluster": {"topology": "switch", "devices": N, "device": "a100-sxm4-80gb",
                        "link": {"bandwidth_GBps": 1, "latency_us": 5}},
            "training": {"global_batch": 8}, "parallelism": {"zero_stage": 1},
            "communication": {"compression": "fp16"}})
    assert err.value.field == "communication.compression"


def test_local_sgd_averages_every_h_steps():
    """H = 4: three steps without communication, then one exactly like a synchronous step;
    a quarter of the bytes per step."""
    every = _run("none", local_sgd_period=4, steps=4)
    sync = _run("none", local_sgd_period=1, steps=1)
    one_replica = dlsim.simulate({
        "name": "c", "model": MLP, "precision": "fp32",
        "cluster": {"topology": "switch", "devices": 1, "device": "a100-sxm4-80gb",
                    "link": {"bandwidth_GBps": 1, "latency_us": 5}},
        "training": {"global_batch": 4, "optimizer": "sgd", "bucket_cap_mb": 0}})
    assert 4 * every.step_time_s == pytest.approx(
        3 * one_replica.step_time_s + sync.step_time_s, rel=1e-9)
    assert every.comm_bytes_total == pytest.approx(sync.comm_bytes_total / 4, rel=1e-9)


def test_local_sgd_needs_whole_periods():
    with pytest.raises(dlsim.ScenarioError) as err:
        _run("none", local_sgd_period=4, steps=6)
    assert err.value.field == "training.steps"
