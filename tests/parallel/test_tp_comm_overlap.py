"""Tensor-parallel communication overlap (``parallelism.tp_comm_overlap``, Transformer
Engine's userbuffers): sequence parallelism's all-gathers and reduce-scatters run beside the
pass's compute, which they slow by the device's ``comm_contention`` u while they run. Where a
pass's collectives (b) are shorter than its compute (a), a pass takes a + u·b instead of
a + b (closed form over the unoverlapped run's spans)."""

from __future__ import annotations

import pytest

import dlsim
from dlsim.contract.errors import ScenarioError
from dlsim.hardware import profiles as hardware

H, HEADS, SEQ, VOCAB, B = 4096, 32, 2048, 32000, 1
DEVICE = "h100-sxm5-80gb"
SWITCH = {"topology": "switch", "devices": 8, "device": DEVICE,
          "link": {"bandwidth_GBps": 200, "latency_us": 2}}


def _scenario(overlap: bool, **parallelism: object) -> dict:
    return {"name": "tp-overlap",
            "model": {"kind": "transformer", "layers": 2, "hidden": H, "heads": HEADS,
                      "seq_len": SEQ, "vocab": VOCAB},
            "cluster": SWITCH, "precision": "bf16",
            "training": {"global_batch": 2 * B, "microbatch": B},
            "parallelism": {"data": 1, "tensor": 8, "sequence_parallel": True,
                            "tp_comm_overlap": overlap} | parallelism}


def test_h100_contention_is_calculons_nvlink_processor_usage():
    assert hardware.device(DEVICE).comm_contention == 0.15


def _overlapped_pass_s(a: float, b: float, u: float) -> float:
    """A pass of compute a beside collectives b slowing it by u: its compute ends at
    a + u·b while b < a / (1 - u) (the collectives end first), else at a / (1 - u) < b."""
    return a + u * b if b < a / (1 - u) else b


@pytest.mark.parametrize("tensor", [2, 8])
def test_each_pass_takes_its_compute_plus_u_of_its_communication(tensor):
    """From the unoverlapped run's spans on rank 0: each pass's compute a and the tensor
    collectives b after it; overlapped, the pass takes ``_overlapped_pass_s`` (t=2: every
    pass's b is shorter than a; t=8: the forward passes' b outlasts a / (1 - u))."""
    u = hardware.device(DEVICE).comm_contention
    plain = dlsim.simulate(_scenario(False, tensor=tensor))
    overlapped = dlsim.simulate(_scenario(True, tensor=tensor))
    passes: list[list[float]] = []
    other_s = 0.0
    for span in sorted((s for s in plain.spans if s.device == 0), key=lambda s: s.start_s):
        length = span.end_s - span.start_s
        if span.category == "comm" and span.role == "tensor":
            passes[-1][1] += length
        elif span.name.startswith(("fwd", "bwd")):
            passes.append([length, 0.0])
        else:
            other_s += length  # the optimizer step
    assert len(passes) == 4 and all(b > 0 for _, b in passes)
    assert (tensor == 8) == any(b >= a / (1 - u) for a, b in passes)
    expected = sum(_overlapped_pass_s(a, b, u) for a, b in passes) + other_s
    assert overlapped.step_time_s == pytest.approx(expected, rel=1e-9)
    assert overlapped.step_time_s < plain.step_time_s
    assert overlapped.parallelism["tp_comm_overlap"] is True


def test_overlap_needs_sequence_parallel_tensor_parallelism():
    with pytest.raises(ScenarioError, match="tp_comm_overlap"):
        dlsim.simulate(_scenario(True, sequence_parallel=False))
