"""The bundled long-context scenario: context parallelism halves activations per GPU and
sends the closed form's K/V traffic around the ring."""

from __future__ import annotations

from pathlib import Path

import pytest

import dlsim
from dlsim.contract.loading import read_yaml

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "long-context.yaml"


def point(context: int, attention: str) -> dict:
    data = read_yaml(SCENARIO)
    data.pop("sweep")
    data["parallelism"]["context"] = context
    data["model"]["attention"] = attention
    return data


@pytest.mark.parametrize("attention, recomputed_rings", [("eager", 1), ("flash", 0)])
def test_context_two_halves_activations_and_sends_the_ring_closed_form(attention,
                                                                       recomputed_rings):
    one, two = dlsim.simulate(point(1, attention)), dlsim.simulate(point(2, attention))
    act = "activations"
    assert two.summary["memory_breakdown_bytes"][act] == pytest.approx(
        one.summary["memory_breakdown_bytes"][act] / 2, rel=1e-12)
    assert one.summary["parallelism"]["data"] == 2 and two.summary["parallelism"]["data"] == 1
    # per rank, layer and micro-batch: forward (c-1)/c·KV, backward twice that, and the
    # unfused attention's selective recomputation runs the forward ring again (fused attention
    # stores no scores: nothing to recompute); KV = 2·b·s·h·2 bytes / t
    c, t, layers, s, h, micro, ranks = 2, 8, 32, 32768, 4096, 2, 16
    kv = 2 * s * h * 2 / t
    per_layer = (c - 1) / c * kv * (1 + 2 + recomputed_rings)
    ring = two.summary["communication_by_axis"]["context"]
    assert ring["bytes"] == pytest.approx(per_layer * layers * micro * ranks, rel=1e-12)
    assert "context" not in one.summary["communication_by_axis"]
