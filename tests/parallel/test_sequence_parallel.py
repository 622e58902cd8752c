"""Sequence parallelism (Korthikanti et al. 2022, §4.2.2): the layernorms and residuals that
tensor parallelism replicates run on s/t of the sequence, each tensor all-reduce becomes a
reduce-scatter and an all-gather of the same bytes, and every activation is split t ways."""

from __future__ import annotations

import pytest

import dlsim
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ModelSpec
from dlsim.hardware import profiles as hardware
from dlsim.parallel.tensor import SEQUENCE_SPLIT, shard_model, tensor_collectives
from dlsim.workload.presets import build_model

H, HEADS, SEQ, VOCAB, B = 1024, 16, 512, 32000, 2
DEVICE = "a100-sxm4-80gb"
SWITCH = {"topology": "switch", "devices": 8, "device": DEVICE,
          "link": {"bandwidth_GBps": 100, "latency_us": 2}}
FREE = {"topology": "switch", "devices": 8, "device": DEVICE,
        "link": {"bandwidth_GBps": 1e200, "latency_us": 0}}
# What each model runs whole on every tensor rank without sequence parallelism.
REPLICATED = {"layernorm1", "residual1+layernorm2", "residual2", "final_layernorm"}
LLAMA_REPLICATED = {"rmsnorm1", "residual1+rmsnorm2", "residual2", "final_layernorm"}


def _scenario(layers: int, t: int, sp: bool, cluster: dict | None = None, micro: int = 1,
              **extra) -> dict:
    return {"name": "sp", "model": {"kind": "transformer", "layers": layers, "hidden": H,
                                    "heads": HEADS, "seq_len": SEQ, "vocab": VOCAB},
            "cluster": cluster or SWITCH,
            "training": {"global_batch": micro * B, "microbatch": B},
            "parallelism": {"data": 1, "tensor": t, "sequence_parallel": sp,
                            **extra.pop("parallelism", {})}, **extra}


@pytest.mark.parametrize("t", [2, 4, 8])
def test_one_blocks_activations_are_korthikanti_table_2(t):
    """Per device, one GPT block stores s·b·h·(10 + 24/t + 5·a·s/(h·t)) bytes with tensor
    parallelism and s·b·h·(34/t + 5·a·s/(h·t)) with sequence parallelism (Table 2)."""
    s, b, h, a = SEQ, B, H, HEADS
    expected = {False: s * b * h * (10 + 24 / t + 5 * a * s / (h * t)),
                True: s * b * h * (34 / t + 5 * a * s / (h * t))}
    for sp, block_bytes in expected.items():
        one, two = (dlsim.simulate(_scenario(layers, t, sp)) for layers in (1, 2))
        per_block = (two.memory_breakdown_bytes["activations"]
                     - one.memory_breakdown_bytes["activations"])
        assert per_block == pytest.approx(block_bytes, rel=1e-12)
        assert two.parallelism["sequence_parallel"] is sp


@pytest.mark.parametrize("t", [2, 4, 8])
def test_the_replicated_kernels_run_one_tth_of_the_sequence(t):
    for spec, replicated in (
            (ModelSpec(kind="transformer", layers=1, hidden=H, heads=HEADS, seq_len=SEQ,
                       vocab=VOCAB), REPLICATED),
            (ModelSpec(preset="llama-2-7b"), LLAMA_REPLICATED)):
        model = build_model(spec, 1, 2)
        plain, sp = shard_model(model, t), shard_model(model, t, sequence_parallel=True)
        for whole, tp, seq in zip(model.layers, plain.layers, sp.layers):
            for passes in ("forward", "backward"):
                for k, k_tp, k_sp in zip(getattr(whole, passes), getattr(tp, passes),
                                         getattr(seq, passes)):
                    if k.name in replicated:
                        assert k_tp.flops == k.flops and k_tp.bytes == k.bytes
                        assert (k_sp.flops, k_sp.bytes) == (k.flops / t, k.bytes / t)
                    else:  # everything else is as tensor parallelism alone shards it
                        assert k_sp == k_tp
        names = {k.name for layer in model.layers for k in layer.forward}
        assert replicated <= names and replicated <= SEQUENCE_SPLIT


def test_each_allreduce_becomes_a_reduce_scatter_and_an_all_gather():
    """Per block 2 all-gathers and 2 reduce-scatters in each pass (f and g, Fig. 5); the
    embedding's forward all-reduce a reduce-scatter, the head's backward one an
    all-gather in forward; ring all-reduce = reduce-scatter + all-gather, so the bytes and
    the collectives' count are those without sequence parallelism."""
    model = build_model(ModelSpec(kind="transformer", layers=1, hidden=H, heads=HEADS,
                                  seq_len=SEQ, vocab=VOCAB), 1, 2)
    embedding, block, head = model.layers
    assert tensor_collectives(block, True) == ((("allgather", 2), ("reducescatter", 2)),) * 2
    assert tensor_collectives(embedding, True) == ((("reducescatter", 1),),
                                                   (("allgather", 1),))
    assert tensor_collectives(head, True) == ((("allgather", 1),), (("reducescatter", 1),))
    for layer in model.layers:
        plain = sum(n for part in tensor_collectives(layer) for _, n in part)
        sp = sum(n for part in tensor_collectives(layer, True) for _, n in part)
        assert sp == 2 * plain  # each all-reduce's halves


@pytest.mark.parametrize("t", [2, 4, 8])
def test_tensor_traffic_and_its_time_equal_the_allreduces_it_replaces(t):
    """A ring moves (t-1)/t·G per rank in a reduce-scatter and in an all-gather of G,
    2(t-1)/t·G in an all-reduce: the same bytes, and on an uncontended ring the same time,
    2(t-1)·(α + G/(t·B)) per all-reduce, α two 2 µs hops through the switch."""
    micro = 2
    runs = {sp: dlsim.simulate(_scenario(2, t, sp, micro=micro)) for sp in (False, True)}
    assert runs[True].comm_bytes_total == runs[False].comm_bytes_total
    g = B * SEQ * H * 2
    # 2 blocks x 4, the embedding's and the head's: 10 all-reduces per micro-batch
    assert runs[True].comm_bytes_total == pytest.approx(10 * micro * 2 * (t - 1) * g, rel=1e-12)
    ring_allreduce_s = 2 * (t - 1) * (2 * 2e-6 + g / t / 100e9)
    for run in runs.values():
        assert run.breakdown_s["exposed_comm"] == pytest.approx(10 * micro * ring_allreduce_s,
                                                                rel=1e-12)
    ops = {sp: {name.split()[1] for name in (s.name for s in run.spans)
                if name.startswith("tensor ")} for sp, run in runs.items()}
    assert ops == {False: {"allreduce"}, True: {"allgather", "reducescatter"}}


@pytest.mark.parametrize("t", [2, 4, 8])
def test_compute_drops_by_the_replicated_kernels_memory_time_times_one_minus_one_over_t(t):
    """On a free network the step is compute; the replicated kernels are memory-bound, so
    splitting them saves (1 - 1/t) of their bytes / (bandwidth · eff_m), forward and
    backward, per micro-batch; launch overheads stay."""
    micro = 2
    device = hardware.device(DEVICE)
    model = build_model(ModelSpec(kind="transformer", layers=2, hidden=H, heads=HEADS,
                                  seq_len=SEQ, vocab=VOCAB), B, 2)
    replicated_bytes = sum(k.bytes for layer in model.layers
                           for k in (*layer.forward, *layer.backward) if k.name in REPLICATED)
    saved = (micro * replicated_bytes * (1 - 1 / t)
             / (device.memory_bandwidth_Bps * device.efficiency.memory))
    plain, sp = (dlsim.simulate(_scenario(2, t, on, FREE, micro=micro)) for on in (False, True))
    assert plain.step_time_s - sp.step_time_s == pytest.approx(saved, rel=1e-12)
    assert plain.breakdown_s["compute"] - sp.breakdown_s["compute"] == \
        pytest.approx(saved, rel=1e-12)


@pytest.mark.parametrize("schedule,v", [("1f1b", 1), ("interleaved", 2)])
def test_full_fidelity_equals_symmetry_with_sequence_parallelism(schedule, v):
    cluster = {"preset": "dgx-a100", "nodes": 1}
    scenario = _scenario(4, 2, True, cluster, micro=4,
                         parallelism={"data": 2, "pipeline": 2, "schedule": schedule,
                                      "virtual_stages": v})
    scenario["training"]["global_batch"] = 8 * B
    sym = dlsim.simulate(scenario)
    full = dlsim.simulate({**scenario, "simulation": {"fidelity": "full"}})
    assert sym.summary["simulation"]["fidelity"] == "symmetric"
    assert full.summary["simulation"]["fidelity"] == "full"
    assert full.step_time_s == pytest.approx(sym.step_time_s, rel=1e-12)
    assert full.comm_bytes_total == pytest.approx(sym.comm_bytes_total, rel=1e-12)


def test_sequence_parallelism_is_ignored_without_tensor_parallelism():
    """Megatron-LM turns it off at t = 1; so does dlsim, and says so in the summary."""
    plain, sp = (dlsim.simulate(_scenario(2, 1, on)) for on in (False, True))
    assert sp.step_time_s == plain.step_time_s
    assert sp.memory_per_device_bytes == plain.memory_per_device_bytes
    assert sp.parallelism["sequence_parallel"] is False


def test_a_non_boolean_is_a_scenario_error_naming_the_field():
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate(_scenario(1, 2, "sometimes"))  # type: ignore[arg-type]
    assert "parallelism.sequence_parallel" in str(err.value)
    assert "\n" not in str(err.value)
