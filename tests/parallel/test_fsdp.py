"""ZeRO-3 / FSDP with tensor and pipeline parallelism, hybrid sharding and the distributed
optimizer's overlapped parameter gather, against closed forms computed here.

Traffic is what the engine injected on the data axis (``communication_by_axis``, from its
records by op role): a ring all-gather or reduce-scatter of S bytes over n ranks injects
(n - 1)·S, a ring all-reduce 2(n - 1)·S. The simulator reaches those to ~1e-16, so they are
asserted to rel=1e-9.
"""

from __future__ import annotations

import pytest

import dlsim
from dlsim.contract.errors import ScenarioError
from dlsim.parallel.memory import memory_per_device
from dlsim.workload.model import Layer, Model

B, ALPHA = 25e9, 5e-6  # the switch's links: 25 GB/s, 5 us


def _scenario(par: dict, n: int = 8, batch: int | None = None, micro: int | None = 1,
              steps: int = 1, bandwidth_GBps: float = 25.0) -> dict:
    training: dict = {"global_batch": batch or n, "steps": steps}
    if micro is not None:
        training["microbatch"] = micro
    return {"name": "fsdp", "model": {"kind": "transformer", "layers": 4, "hidden": 1024,
                                      "heads": 16, "seq_len": 512, "vocab": 32000},
            "cluster": {"topology": "switch", "devices": n, "device": "a100-sxm4-80gb",
                        "link": {"bandwidth_GBps": bandwidth_GBps, "latency_us": 5}},
            "training": training, "parallelism": par}


def _data_bytes(r) -> float:
    return r.summary["communication_by_axis"]["data"]["bytes"]


@pytest.mark.parametrize("t,p", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_fsdp_moves_three_times_the_parameters_and_zero1_two(t, p):
    """One micro-batch per step: ZeRO-3 all-gathers every parameter before the forward and
    again before the backward and reduce-scatters the gradients (3x the parameter bytes per
    data-parallel group), ZeRO-1 reduce-scatters and all-gathers once (2x). Each tensor rank
    moves its own 1/t shard over its own group of d = n/(t·p) replicas, each stage its own
    layers, so over all groups each collective injects (d - 1)·2Ψ bytes at bf16."""
    n = 8
    d = n // (t * p)
    par = {"tensor": t, "pipeline": p, "data": d}
    fsdp = dlsim.simulate(_scenario({**par, "zero_stage": 3}, batch=d))
    zero1 = dlsim.simulate(_scenario({**par, "zero_stage": 1}, batch=d))
    weights = 2 * fsdp.parameters
    assert _data_bytes(fsdp) == pytest.approx(3 * (d - 1) * weights, rel=1e-9)
    assert _data_bytes(zero1) == pytest.approx(2 * (d - 1) * weights, rel=1e-9)


def test_fsdp_regathers_each_micro_batch_and_reduce_scatters_once():
    """With m micro-batches a step all-gathers every layer before each micro-batch's forward
    and backward (reshard after forward and after backward) and reduce-scatters the
    accumulated gradients once, in the last backward: (2m + 1)x the parameter bytes."""
    d, p, m = 2, 2, 4
    r = dlsim.simulate(_scenario({"pipeline": p, "data": d, "zero_stage": 3}, n=d * p,
                                 batch=d * m))
    assert r.summary["parallelism"]["microbatches"] == m
    assert _data_bytes(r) == pytest.approx((2 * m + 1) * (d - 1) * 2 * r.parameters, rel=1e-9)


@pytest.mark.parametrize("k", [2, 4])
def test_hybrid_sharding_gathers_within_groups_and_all_reduces_a_shard_across(k):
    """HSDP over D = 8 replicas in D/k shard groups of k: the two all-gathers and the
    reduce-scatter stay in the groups, (D/k)·(k - 1)·G each, and the 1/k gradient shard is
    all-reduced across the k replica groups of D/k ranks, k·2(D/k - 1)·G/k."""
    n = 8
    r = dlsim.simulate(_scenario({"zero_stage": 3, "shard_group": k}, n=n))
    g = 2 * r.parameters
    within = 3 * (n // k) * (k - 1) * g
    across = k * 2 * (n // k - 1) * g / k
    assert _data_bytes(r) == pytest.approx(within + across, rel=1e-9)
    assert r.summary["parallelism"]["shard_group"] == k


def test_shard_group_of_the_whole_data_degree_is_plain_fsdp():
    whole = dlsim.simulate(_scenario({"zero_stage": 3, "shard_group": 8}))
    plain = dlsim.simulate(_scenario({"zero_stage": 3}))
    assert whole.step_time_s == plain.step_time_s
    assert _data_bytes(whole) == _data_bytes(plain)


def test_hybrid_zero1_reduce_scatters_within_and_gathers_within():
    """The distributed optimizer with shard groups (Megatron-Core's optimizer instances):
    reduce-scatter and all-gather within the k ranks, all-reduce of 1/k across."""
    n, k = 8, 2
    r = dlsim.simulate(_scenario({"zero_stage": 1, "shard_group": k, "pipeline": 2,
                                  "data": 4}, batch=4))
    d = 4
    g = 2 * r.parameters
    expected = 2 * (d // k) * (k - 1) * g + k * 2 * (d // k - 1) * g / k
    assert _data_bytes(r) == pytest.approx(expected, rel=1e-9)
    assert r.memory_breakdown_bytes["optimizer"] < dlsim.simulate(_scenario(
        {"zero_stage": 1, "pipeline": 2, "data": 4, "shard_group": 1}, n=n,
        batch=4)).memory_breakdown_bytes["optimizer"]


@pytest.mark.parametrize("par", [
    {"zero_stage": 3, "tensor": 2, "pipeline": 2, "data": 2},
    {"zero_stage": 3, "shard_group": 2},
    {"zero_stage": 1, "shard_group": 2, "tensor": 2, "data": 4},
    {"zero_stage": 1, "pipeline": 2, "data": 4, "overlap_param_gather": True},
])
def test_full_fidelity_equals_symmetry(par):
    scenario = _scenario(par, batch=8)
    sym = dlsim.simulate(scenario)
    full = dlsim.simulate({**scenario, "simulation": {"fidelity": "full"}})
    assert full.step_time_s == pytest.approx(sym.step_time_s, rel=1e-12)
    assert full.comm_bytes_total == pytest.approx(sym.comm_bytes_total, rel=1e-12)


WIDTHS = [8192, 8192, 8192, 8192]


def _mlp(par: dict, n: int, steps: int, bandwidth_GBps: float) -> dict:
    return {"name": "overlap", "model": {"kind": "mlp", "widths": WIDTHS},
            "cluster": {"topology": "switch", "devices": n, "device": "a100-sxm4-80gb",
                        "link": {"bandwidth_GBps": bandwidth_GBps, "latency_us": 5}},
            "training": {"global_batch": 2048 * n, "steps": steps}, "parallelism": par}


def test_overlap_param_gather_hides_the_gather_behind_the_next_forward():
    """Two steps of ZeRO-1 on 4 replicas. Without overlap the second step's forward waits
    for one all-gather of every parameter after the update; with overlap_param_gather
    (Megatron-Core's --overlap-param-gather) the layers are gathered one after another on
    their own stream, layer j's gather ending at update + sum_{i<=j} g_j, and layer j's
    forward starts at the later of that and the end of layer j-1's forward. A ring
    all-gather of S bytes through the switch takes (n-1)/n·S/B + (n-1)·2α."""
    n, bandwidth = 4, 200e9
    layer_bytes = [2 * (a * b + b) for a, b in zip(WIDTHS, WIDTHS[1:])]  # bf16 weights

    def gather_s(size: float) -> float:
        return (n - 1) / n * size / bandwidth + (n - 1) * 2 * ALPHA

    def spans(r, prefix: str, step: int) -> list:
        return [s for s in r.spans if s.device == 0 and s.name.startswith(prefix)
                and f" s{step}" in s.name]

    plain = dlsim.simulate(_mlp({"zero_stage": 1}, n, 2, bandwidth / 1e9))
    over = dlsim.simulate(_mlp({"zero_stage": 1, "overlap_param_gather": True}, n, 2,
                               bandwidth / 1e9))
    assert plain.parameters == sum(layer_bytes) / 2

    update = spans(plain, "optimizer", 0)[0].end_s
    assert spans(plain, "fwd", 1)[0].start_s == pytest.approx(
        update + gather_s(sum(layer_bytes)), rel=1e-9)

    update = spans(over, "optimizer", 0)[0].end_s
    gathers, forwards = spans(over, "allgather", 0), spans(over, "fwd", 1)
    assert len(gathers) == len(forwards) == len(layer_bytes)
    ready = free = update
    waited = 0.0
    for gather, forward, size in zip(gathers, forwards, layer_bytes):
        ready += gather_s(size)
        assert gather.end_s == pytest.approx(ready, rel=1e-9)
        start = max(free, ready)
        assert forward.start_s == pytest.approx(start, rel=1e-9)
        waited += start - free
        free = forward.end_s
    # what the second step's forward waits for: the first layer's gather only, when the
    # later gathers end before the forward passes ahead of them
    assert waited == pytest.approx(gather_s(layer_bytes[0]), rel=1e-9)
    assert over.step_time_s < plain.step_time_s


# -- memory ---------------------------------------------------------------------------------

PSI_LAYER = 10**9  # parameters of each of eight equal layers
EIGHT = Model("eight", tuple(Layer(f"l{i}", PSI_LAYER, (), (), 0.0) for i in range(8)))


@pytest.mark.parametrize("t,p,d,shard", [(1, 1, 64, None), (8, 1, 8, None), (8, 2, 4, None),
                                         (4, 2, 8, 4), (2, 4, 8, 2)])
def test_fsdp_memory_is_sixteen_bytes_over_t_p_and_the_shard_group(t, p, d, shard):
    """ZeRO-3 (Rajbhandari et al. SC'20 §5, K = 12 for mixed-precision Adam):
    (2 + 2 + K)·Ψ/(t·p·N_shard) per rank, N_shard = the shard group (default d), plus the
    two gathered layers its prefetch keeps resident, 2·2·Ψ_layer/t."""
    psi = 8 * PSI_LAYER
    plan = memory_per_device(EIGHT, "bf16", "adam", data=d, tensor=t, pipeline=p,
                             zero_stage=3, shard=shard)
    n_shard = shard or d
    assert plan.params + plan.grads + plan.optimizer == pytest.approx(
        16 * psi / (t * p * n_shard), rel=1e-12)
    assert plan.gathered == pytest.approx(2 * 2 * PSI_LAYER / t, rel=1e-12)


@pytest.mark.parametrize("t,p,d,shard", [(8, 2, 4, None), (4, 4, 8, 2), (1, 8, 16, 8)])
def test_distributed_optimizer_memory_with_pipelines(t, p, d, shard):
    """ZeRO-1 with a pipeline (Megatron-Core's distributed optimizer): 16-bit weights and
    gradients whole, 4·Ψ/(t·p), and the K = 12 bytes of Adam state over the shard group."""
    psi = 8 * PSI_LAYER
    plan = memory_per_device(EIGHT, "bf16", "adam", data=d, tensor=t, pipeline=p,
                             zero_stage=1, shard=shard)
    assert plan.params + plan.grads == pytest.approx(4 * psi / (t * p), rel=1e-12)
    assert plan.optimizer == pytest.approx(12 * psi / (t * p * (shard or d)), rel=1e-12)
    assert plan.gathered == 0


def test_the_summary_memory_follows_the_shard_group():
    """A 4-layer transformer on 8 ranks, t = 2, ZeRO-3 sharded over groups of 2 of the 4
    replicas: 2 + 2 + 12 bytes of each of Ψ/t parameters over 2."""
    r = dlsim.simulate(_scenario({"zero_stage": 3, "tensor": 2, "shard_group": 2}))
    parts = r.memory_breakdown_bytes
    psi = r.parameters
    assert parts["params"] + parts["grads"] + parts["optimizer"] == pytest.approx(
        16 * psi / (2 * 2), rel=1e-12)


# -- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("par,says", [
    ({"shard_group": 2}, "zero_stage 0 shards nothing"),
    ({"zero_stage": 3, "shard_group": 3}, "must divide the data-parallel degree (8 ranks"),
    ({"zero_stage": 1, "shard_group": 16}, "use one of its divisors (1, 2, 4, 8)"),
])
def test_a_bad_shard_group_is_one_paragraph_naming_the_field(par, says):
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate(_scenario(par))
    assert err.value.field == "parallelism.shard_group"
    assert says in err.value.message and "\n" not in err.value.message


@pytest.mark.parametrize("par,says", [
    ({"zero_stage": 3, "overlap_param_gather": True}, "needs zero_stage 1 or 2"),
    ({"overlap_param_gather": True}, "needs zero_stage 1 or 2"),
    ({"zero_stage": 2, "pipeline": 2}, "ZeRO stage 2 partitions the gradients"),
])
def test_options_that_cannot_go_together_are_refused_at_load(par, says):
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate(_scenario(par))
    assert says in str(err.value)


def test_pack_keeps_each_shard_group_in_a_node():
    """Two DGX A100 nodes, 16 replicas, shard_group 8: each shard group is one node, so the
    gathers and reduce-scatters stay on NVLink and only the all-reduce of the 1/8 gradient
    shard crosses InfiniBand, each rank with its peer in the other node: 2·(1/2)·G/8 out of
    every rank's NIC (ideal protocol: bytes as the algorithm moves them)."""
    par = {"zero_stage": 3, "shard_group": 8}
    scenario = {"name": "hsdp", "model": {"kind": "transformer", "layers": 2, "hidden": 1024,
                                          "heads": 16, "seq_len": 512, "vocab": 32000},
                "cluster": {"preset": "dgx-a100", "nodes": 2},
                "training": {"global_batch": 16, "microbatch": 1}, "parallelism": par,
                "communication": {"protocol": "ideal"}}
    r = dlsim.simulate(scenario)
    links = r.links
    uplinks = links[(links.kind == "ib-hdr") & links.dst.str.startswith("leaf")]
    assert len(uplinks) == 16
    assert uplinks.bytes.sum() == pytest.approx(16 * 2 * r.parameters / 8, rel=1e-9)
    flat = dlsim.simulate({**scenario, "parallelism": {"zero_stage": 3}})
    assert r.step_time_s < flat.step_time_s
