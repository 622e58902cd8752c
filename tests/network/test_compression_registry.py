"""A gradient compression scheme is one registration: scenarios, the bucket exchange, the
codec kernels, the summary and the error messages all read the registry
(dlsim.contract.registry, dlsim.network.compression)."""

from __future__ import annotations

import pytest

import dlsim
from dlsim.contract.errors import ScenarioError
from dlsim.contract.registry import COMPRESSION, register, registered, unregister
from dlsim.contract.scenario import load_scenario
from dlsim.hardware.profiles import device
from dlsim.network.compression import Scheme

N, WIDTH = 4, 2048
MLP = {"kind": "mlp", "widths": [WIDTH, WIDTH, WIDTH]}
PARAMS = 2 * (WIDTH * WIDTH + WIDTH)  # two dense layers with biases


class Int8(Scheme):
    """One byte per element, with the error-feedback codec; ``additive`` says whether the
    bytes are all-reduced as they are or every rank's is all-gathered."""

    def __init__(self, additive: bool) -> None:
        self.additive = additive

    def payload_bytes(self, elements: float, grad_bytes: int, topk_ratio: float) -> float:
        return elements * 1


@pytest.fixture
def int8():
    register(COMPRESSION, "int8", Int8(additive=False))
    register(COMPRESSION, "int8-sum", Int8(additive=True))
    yield
    unregister(COMPRESSION, "int8")
    unregister(COMPRESSION, "int8-sum")


def _scenario(compression: str, algorithm: str = "ring") -> dict:
    return {"name": "c", "model": MLP, "precision": "fp32",
            "cluster": {"topology": "switch", "devices": N, "device": "a100-sxm4-80gb",
                        "link": {"bandwidth_GBps": 1, "latency_us": 5}},
            "training": {"global_batch": 4 * N, "optimizer": "sgd", "bucket_cap_mb": 0},
            "communication": {"data_parallel": algorithm, "compression": compression}}


def test_a_registered_scheme_is_all_gathered_at_its_payload(int8):
    """Not additive: a ring all-gather of every rank's payload P = PARAMS bytes, N(N-1)P
    on the wire; the summary's ratio is 4 bytes over 1."""
    r = dlsim.simulate(_scenario("int8"))
    assert r.comm_bytes_total == (N - 1) * N * PARAMS * 1
    assert r.summary["compression"]["scheme"] == "int8"
    assert r.summary["compression"]["bytes_ratio"] == 4.0


def test_an_additive_registered_scheme_is_all_reduced_at_its_payload(int8):
    """Additive: the ring all-reduce of P moves 2(N-1)P, whatever the algorithm's choice
    (parameter servers: push and pull of P by the N-1 workers whose shard is remote)."""
    assert dlsim.simulate(_scenario("int8-sum")).comm_bytes_total == 2 * (N - 1) * PARAMS
    assert dlsim.simulate(_scenario("int8", "ps")).comm_bytes_total == 2 * (N - 1) * PARAMS


def test_a_registered_scheme_pays_its_codec_bytes_at_the_roofline(int8):
    """The default (error-feedback) codec: encode 12 B/element plus the 1-byte output,
    decode the N received payloads plus the fp32 sum; each one memory-bound launch."""
    a100 = device("a100-sxm4-80gb")
    rate = a100.memory_bandwidth_Bps * a100.efficiency.memory
    encode = (PARAMS * 12 + PARAMS) / rate + a100.kernel_launch_s
    decode = (N * PARAMS + PARAMS * 4) / rate + a100.kernel_launch_s
    r = dlsim.simulate(_scenario("int8"))
    assert r.summary["compression"]["codec_s"] == pytest.approx(encode + decode, rel=1e-9)


def test_unregistered_afterwards():
    assert "int8" not in registered(COMPRESSION)
    assert list(registered(COMPRESSION)) == ["none", "fp16", "onebit", "topk"]


def test_a_misspelled_scheme_gets_did_you_mean_and_the_registered_names(int8):
    with pytest.raises(ScenarioError) as err:
        load_scenario(_scenario("int9"))
    message = str(err.value)
    assert "field 'communication.compression'" in message
    assert "did you mean 'int8'?" in message
    assert "allowed: none, fp16, onebit, topk, int8, int8-sum" in message
    with pytest.raises(ScenarioError, match=r"did you mean 'onebit'\?\); allowed: none, "
                                            r"fp16, onebit, topk"):
        load_scenario(_scenario("onebitt"))
