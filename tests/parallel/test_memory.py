"""The per-device memory model against closed forms written out here: ZeRO's model-state
formulas, Korthikanti et al.'s activation formulas for each recomputation mode and tensor
degree, LoRA's adapter count, optimizer offload and the pipeline's micro-batches in flight."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import LoraSpec, ModelSpec
from dlsim.parallel.memory import memory_per_device, pipeline_stages, savings
from dlsim.workload.lora import lora_workload
from dlsim.workload.model import transformer_layers
from dlsim.workload.presets import build_model

K = 12  # mixed-precision Adam (ZeRO §3.1)


def _gpt(layers: int = 4, h: int = 1024, a: int = 16, s: int = 2048, b: int = 2):
    return transformer_layers("gpt", layers, h, a, s, 51200, b, 2)


@settings(max_examples=25, deadline=None)
@given(heads=st.sampled_from([8, 16, 32]), head_dim=st.sampled_from([64, 128]),
       s=st.sampled_from([512, 1024, 2048]), b=st.integers(1, 4),
       t=st.sampled_from([1, 2, 4, 8]))
def test_block_activations_follow_korthikanti_table_2(heads, head_dim, s, b, t):
    """Per block at 16 bit, Korthikanti et al. 2022 Table 2: tensor parallelism
    s·b·h·(10 + 24/t + 5as/(ht)), with sequence parallelism s·b·h·(34 + 5as/h)/t; selective
    recomputation s·b·h·(10 + 24/t), with sequence parallelism 34·s·b·h/t; full
    recomputation 2·s·b·h, the s/t shard of it with sequence parallelism (Megatron-LM
    checkpoints each rank's sequence shard)."""
    h, a = heads * head_dim, heads
    model = transformer_layers("gpt", 2, h, heads, s, 51200, b, 2)
    block = [1]  # layer 0 is the embedding

    def acts(mode: str, sp: bool) -> float:
        return memory_per_device(model, "bf16", "adam", tensor=t, stage_layers=block,
                                 recompute=mode, sequence_parallel=sp).activations

    sbh = s * b * h
    assert acts("none", False) == pytest.approx(sbh * (10 + 24 / t + 5 * a * s / (h * t)),
                                                rel=1e-12)
    assert acts("none", True) == pytest.approx(sbh * (34 + 5 * a * s / h) / t, rel=1e-12)
    assert acts("selective", False) == pytest.approx(sbh * (10 + 24 / t), rel=1e-12)
    assert acts("selective", True) == pytest.approx(34 * sbh / t, rel=1e-12)
    assert acts("full", False) == pytest.approx(2 * sbh, rel=1e-12)
    assert acts("full", True) == pytest.approx(2 * sbh / t, rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(stage=st.sampled_from([0, 1, 2, 3]), data=st.sampled_from([1, 2, 8, 64]),
       t=st.sampled_from([1, 2, 8]))
def test_model_state_follows_zero_table_1_on_each_tensor_shard(stage, data, t):
    """Ψ = parameters per tensor rank; baseline (2+2+K)Ψ, stage 1 4Ψ + KΨ/N_d, stage 2
    2Ψ + (2+K)Ψ/N_d, stage 3 (2+2+K)Ψ/N_d (Rajbhandari et al. SC'20, Figure 1)."""
    model = _gpt()
    psi = model.parameters / t
    expected = {0: (2 + 2 + K) * psi, 1: 4 * psi + K * psi / data,
                2: 2 * psi + (2 + K) * psi / data, 3: (2 + 2 + K) * psi / data}[stage]
    plan = memory_per_device(model, "bf16", "adam", data=data, tensor=t, zero_stage=stage)
    assert plan.params + plan.grads + plan.optimizer == pytest.approx(expected, rel=1e-12)


def test_zero3_holds_two_gathered_layers_at_full_size():
    """Prefetching one layer ahead keeps the running and the next layer gathered: twice
    the largest layer (here the 51,200 x 1024 embedding plus 2048 positions) in 16 bits."""
    model = _gpt()
    plan = memory_per_device(model, "bf16", "adam", data=8, tensor=2, zero_stage=3)
    assert plan.gathered == 2 * (51200 + 2048) * 1024 / 2 * 2
    assert plan.as_dict()["gathered"] == plan.gathered
    assert "gathered" not in memory_per_device(model, "bf16", "adam", data=8,
                                               zero_stage=2).as_dict()


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_offload_moves_exactly_the_optimizer_partition_to_the_host(stage):
    """ZeRO-Offload: K·Ψ/N_d leaves the device for host memory; each step the device's
    2-byte gradients of that partition go down and its 2-byte weights come back."""
    model, data = _gpt(), 8
    psi = model.parameters
    kept = memory_per_device(model, "bf16", "adam", data=data, zero_stage=stage)
    off = memory_per_device(model, "bf16", "adam", data=data, zero_stage=stage,
                            offload="optimizer")
    assert kept.total - off.total == pytest.approx(K * psi / data, rel=1e-12)
    assert off.optimizer == 0 and off.host == pytest.approx(K * psi / data, rel=1e-12)
    assert off.offload_bytes_per_step == pytest.approx((2 + 2) * psi / data, rel=1e-12)
    assert (off.params, off.grads, off.activations) == (kept.params, kept.grads,
                                                        kept.activations)


def test_lora_trainable_parameters_are_r_times_d_in_plus_d_out():
    """LLaMA-2-7B with rank-8 adapters on q_proj and v_proj (both 4096 x 4096, 32 blocks):
    32 · 2 · 8 · (4096 + 4096) = 4,194,304, the figure peft prints for this configuration."""
    model = build_model(ModelSpec(preset="llama-2-7b"), 1, 2)
    lora = LoraSpec(rank=8, targets=["q_proj", "v_proj"])
    plan = memory_per_device(model, "bf16", "adam", lora=lora)
    assert plan.trainable_params == 32 * 2 * 8 * (4096 + 4096) == 4_194_304
    # 70B: q is 8192 x 8192, v 8192 x 1024 (8 KV heads of 128)
    big = build_model(ModelSpec(preset="llama-2-70b"), 1, 2)
    assert memory_per_device(big, "bf16", "adam", lora=LoraSpec(
        rank=16, targets=["q_proj", "v_proj"])).trainable_params == \
        80 * 16 * ((8192 + 8192) + (8192 + 1024))


def test_lora_keeps_frozen_weights_in_16_bits_and_state_only_for_adapters():
    model = build_model(ModelSpec(preset="llama-2-7b"), 1, 2)
    full = memory_per_device(model, "bf16", "adam")
    lora = memory_per_device(model, "bf16", "adam",
                             lora=LoraSpec(rank=16, targets=["q_proj", "k_proj", "v_proj",
                                                             "o_proj"]))
    adapters = 32 * 4 * 16 * (4096 + 4096)
    assert lora.params == 2 * model.parameters + 2 * adapters
    assert lora.grads == 2 * adapters and lora.optimizer == K * adapters
    assert lora.activations == full.activations
    assert full.params + full.grads + full.optimizer == 16 * model.parameters


def test_lora_rejects_targets_the_model_lacks():
    model = build_model(ModelSpec(preset="gpt2-124m"), 1, 2)
    with pytest.raises(ScenarioError, match="q_proj") as err:
        memory_per_device(model, "bf16", "adam", lora=LoraSpec(rank=8, targets=["q_proj"]))
    assert err.value.field == "training.lora.targets" and "qkv" in err.value.message


@pytest.mark.parametrize("p", [1, 2, 4])
def test_pipeline_stage_holds_its_layers_and_micro_batches_in_flight(p):
    """Blocks cut evenly, the embedding on the first stage and the head on the last; the
    fullest stage's model state (16 bytes per parameter) plus m micro-batches in flight."""
    model, m = _gpt(layers=8), 4
    parts = pipeline_stages(model, p)
    assert [len(x) for x in parts] == ([10] if p == 1 else
                                       [1 + 8 // p] + [8 // p] * (p - 2) + [8 // p + 1])
    assert sum(parts, []) == list(range(len(model.layers)))

    def stage_bytes(layers) -> float:
        return sum(16 * x.params + m * x.activation_bytes for x in layers)

    expected = max(stage_bytes(model.layers[i] for i in part) for part in parts)
    plan = memory_per_device(model, "bf16", "adam", pipeline=p, in_flight_microbatches=m)
    assert plan.total == pytest.approx(expected, rel=1e-12)


def test_savings_add_zero3_recompute_and_offload_in_turn():
    """Each entry is the plan with that saving and the ones before it."""
    model = _gpt()
    base = {"zero_stage": 1, "recompute": "none", "offload": "none"}

    def plan_of(**options):
        return memory_per_device(model, "bf16", "adam", data=8, **options)

    got = savings(plan_of, base, zero_allowed=True)
    assert list(got) == ["recompute: selective", "recompute: selective + zero_stage: 3",
                         "recompute: full + zero_stage: 3",
                         "recompute: full + zero_stage: 3 + offload: optimizer"]
    assert got["recompute: full + zero_stage: 3"] == plan_of(
        zero_stage=3, recompute="full").total
    assert list(savings(plan_of, {**base, "recompute": "full"}, zero_allowed=False)) == [
        "offload: optimizer"]


def test_lora_workload_drops_weight_gradients_and_trains_only_adapters():
    """Frozen base: a weight GEMM's backward is the input gradient alone (= its forward);
    attention (no weights) keeps both products; trainable parameters are the adapters'."""
    model = build_model(ModelSpec(preset="gpt2-124m"), 2, 2)
    tuned = lora_workload(model, 8, ["qkv"])
    for before, after in zip(model.layers, tuned.layers):
        base = [(f, b) for f, b in zip(after.forward, after.backward) if "_lora_" not in f.name]
        assert len(base) == len(before.forward)
        for (fwd, bwd), old in zip(base, before.backward):
            assert bwd.flops == (fwd.flops if fwd.kind == "gemm" else old.flops)
    assert tuned.parameters == 12 * 8 * (768 + 3 * 768)
    with pytest.raises(ScenarioError, match="targets"):
        lora_workload(model, 8, ["q_proj"])


def test_report_says_what_each_saving_would_bring_an_overflow_to():
    from dlsim.report.pages import _memory_section

    gb = 1e9
    section = _memory_section({
        "memory_breakdown_bytes": {"params": 20 * gb, "grads": 20 * gb, "optimizer": 60 * gb,
                                   "activations": 30 * gb},
        "memory_per_device_bytes": 130 * gb, "memory_capacity_bytes": 80 * gb,
        "fits_in_memory": False,
        "memory_savings_bytes": {"recompute: full": 101 * gb,
                                 "recompute: full + offload: optimizer": 41 * gb}})
    assert "50 GB (62.5 %) over" in section["overflow"]
    assert ("recompute: full: 101 GB; recompute: full + offload: optimizer: 41 GB (fits)"
            in section["overflow"])
    offloaded = _memory_section({
        "memory_breakdown_bytes": {"params": 20 * gb}, "memory_per_device_bytes": 20 * gb,
        "memory_host_bytes": 60 * gb, "offload_pcie_bytes_per_step": 20 * gb})
    assert ("optimizer offloaded to host", "60 GB", "20 GB over PCIe per step") in \
        offloaded["rows"]


def _training(n: int = 4, **sections) -> dict:
    """A small GPT on a textbook switch, sections overriding training/parallelism."""
    return {"name": "m", "model": {"kind": "transformer", "layers": 2, "hidden": 256,
                                   "heads": 4, "seq_len": 128, "vocab": 1000},
            "cluster": {"topology": "switch", "devices": n, "device": "a100-sxm4-80gb",
                        "link": {"bandwidth_GBps": 25, "latency_us": 5}},
            "training": {"global_batch": 4 * n, "microbatch": 4,
                         **sections.get("training", {})},
            "parallelism": sections.get("parallelism", {})}


def test_lora_training_synchronises_only_the_adapters():
    """Ring all-reduce moves 2(N-1)·G bytes in all; with LoRA G is the adapters' 16-bit
    gradients, 2 blocks x 8·(256 + 768) parameters for rank 8 on qkv."""
    import dlsim

    n = 4
    r = dlsim.simulate(_training(n, training={"lora": {"rank": 8, "targets": ["qkv"]}}))
    adapters = 2 * 8 * (256 + 768)
    assert r.trainable_parameters == adapters
    assert r.comm_bytes_total == pytest.approx(2 * (n - 1) * adapters * 2, rel=1e-9)
    assert r.memory_breakdown_bytes["optimizer"] == K * adapters
    full = dlsim.simulate(_training(n))
    assert full.trainable_parameters == full.parameters == r.parameters
    assert r.step_time_s < full.step_time_s


def test_offload_and_recompute_reach_the_summary():
    import dlsim

    n = 4
    r = dlsim.simulate(_training(n, parallelism={"zero_stage": 2, "offload": "optimizer",
                                                 "recompute": "full"}))
    psi = r.parameters
    assert r.memory_host_bytes == pytest.approx(K * psi / n, rel=1e-12)
    assert r.offload_pcie_bytes_per_step == pytest.approx(4 * psi / n, rel=1e-12)
    assert r.memory_breakdown_bytes["optimizer"] == 0
    s, b, h = 128, 4, 256
    embedding_and_head = 2 * s * b * h + 2 * s * b * (h + 1000)
    assert r.memory_breakdown_bytes["activations"] == pytest.approx(
        2 * (2 * s * b * h) + embedding_and_head, rel=1e-12)


@pytest.mark.parametrize("lora,field", [({"rank": 8, "targets": ["q_proj"]}, "targets"),
                                        ({"rank": 0, "targets": ["qkv"]}, "rank")])
def test_bad_lora_names_the_field(lora, field):
    import dlsim

    with pytest.raises(ScenarioError, match=f"training.lora.{field}"):
        dlsim.simulate(_training(training={"lora": lora}))


def test_llama_block_activations_count_what_megatron_and_te_save():
    """LLaMA-2-70B block at 16 bit, eager attention, s = 4096, b = 1: norm inputs 4sbh and
    their fp32 1/rms 8sb, QKV/output/MLP inputs 6sbh, Q 2sbh, K and V 2sb·kv each (kv = 8
    heads x 128), softmax output 2as²b, the fused SwiGLU's input (gate and up) and output
    6sb·ffn; selective recomputation drops the softmax output."""
    model = build_model(ModelSpec(preset="llama-2-70b"), 1, 2)
    s, h, a, kv, ffn = 4096, 8192, 64, 1024, 28672
    expected = 12 * s * h + 4 * s * kv + 6 * s * ffn + 2 * a * s * s + 8 * s
    assert model.layers[1].activation_bytes == expected
    selective = memory_per_device(model, "bf16", "adam", stage_layers=[1],
                                  recompute="selective").activations
    assert selective == expected - 2 * a * s * s


def test_lora_with_zero3_is_refused_not_half_modelled():
    import dlsim

    with pytest.raises(ScenarioError, match="ZeRO-3") as err:
        dlsim.simulate(_training(training={"lora": {"rank": 8, "targets": ["qkv"]}},
                                 parallelism={"zero_stage": 3}))
    assert err.value.field == "training.lora"


def test_an_overflowing_tensor_parallel_plan_is_offered_sequence_parallelism_first():
    """Korthikanti's 22B GPT at t=8, batch 4, no recomputation, overflows an 80 GB A100;
    the first saving offered is sequence parallelism, worth exactly what the same run with
    it holds, then selective recomputation on top. Plain data parallelism never offers it."""
    import dlsim

    scenario = {"name": "sp", "model": {"kind": "transformer", "layers": 48, "hidden": 6144,
                                        "heads": 64, "seq_len": 2048, "vocab": 51200},
                "cluster": {"preset": "dgx-a100", "nodes": 1}, "precision": "bf16",
                "training": {"global_batch": 4, "microbatch": 4, "optimizer": "adam"},
                "parallelism": {"data": 1, "tensor": 8}}
    r = dlsim.simulate(scenario)
    assert not r.fits_in_memory
    savings = list(r.summary["memory_savings_bytes"].items())
    assert [k for k, _ in savings[:2]] == [
        "sequence_parallel: true", "sequence_parallel: true + recompute: selective"]
    for (_, held), extra in zip(savings[:2], ({}, {"recompute": "selective"})):
        with_it = dlsim.simulate({**scenario, "parallelism": {
            **scenario["parallelism"], "sequence_parallel": True, **extra}})
        assert held == with_it.memory_per_device_bytes
    data_parallel = dlsim.simulate({**scenario, "parallelism": {"data": 8},
                                    "training": {**scenario["training"], "global_batch": 32}})
    assert not data_parallel.fits_in_memory
    assert not any("sequence_parallel" in k for k in data_parallel.summary["memory_savings_bytes"])
