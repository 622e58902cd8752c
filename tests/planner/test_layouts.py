"""The estimate against the engine on the layouts of issue 13: context parallelism (ring
attention), expert parallelism (all-to-alls, the busiest rank's experts, expert gradients
over the expert-data group) and hybrid sharding (ZeRO in shard groups, an all-reduce across).

Each test samples every ``stride``-th plan of a space narrowed to that layout and compares
the closed form with the engine on the plan's scenario (``scenario_of``); the tolerances are
the errors reached. Tensor-parallel overlap (searched on H100) has its own sample."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import dlsim
from dlsim.cluster.build import build_topology
from dlsim.contract.scenario import ClusterSpec
from dlsim.planner import PlanRequest, run_plan
from dlsim.planner.estimate import CostTable, Fabric, estimate
from dlsim.planner.models import model_shape, model_spec
from dlsim.planner.search import scenario_of
from dlsim.planner.space import Plan, Target, enumerate_plans
from dlsim.workload.attention import attention_kernel
from dlsim.workload.presets import build_model

NARROW = {"offload": ("none",), "protocol": ("auto",)}
# a Mixtral-like MoE of 4 blocks (8 experts, top-2) and a Llama-like model at 32k tokens
TINY_MOE = {"architectures": ["MixtralForCausalLM"], "num_hidden_layers": 4,
            "hidden_size": 1024, "num_attention_heads": 16, "num_key_value_heads": 4,
            "intermediate_size": 2816, "num_local_experts": 8, "num_experts_per_tok": 2,
            "max_position_embeddings": 4096, "vocab_size": 32000}
# gpt-oss's attention (banded blocks, sinks) at 8k tokens: its context parallelism is a2a
BANDED = {"architectures": ["GptOssForCausalLM"], "num_hidden_layers": 4, "hidden_size": 1024,
          "num_attention_heads": 16, "head_dim": 64, "num_key_value_heads": 8,
          "intermediate_size": 1024, "max_position_embeddings": 8192, "vocab_size": 32000,
          "tie_word_embeddings": False, "attention_bias": True, "num_local_experts": 8,
          "num_experts_per_tok": 2, "sliding_window": 128,
          "layer_types": ["sliding_attention", "full_attention"] * 2}
LONG_CONTEXT = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 4,
                "hidden_size": 2048, "num_attention_heads": 16, "num_key_value_heads": 4,
                "intermediate_size": 5632, "max_position_embeddings": 32768,
                "vocab_size": 32000}


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("hf")
    out = {}
    for name, config in (("tiny-moe", TINY_MOE), ("long-context", LONG_CONTEXT),
                         ("banded", BANDED)):
        path = folder / f"{name}.json"
        path.write_text(json.dumps(config))
        out[name] = str(path)
    return out


def _errors(model: str, cluster: str, gpus: int, batch: int, keep: Callable[[Plan], bool],
            stride: int, **only: tuple) -> list[float]:
    shape = model_shape(model)
    topology = build_topology(ClusterSpec(preset=cluster, nodes=gpus // 8))
    fabric, target = Fabric(topology), Target.on(topology, "bf16")
    request = PlanRequest(model, cluster, (gpus,), batch)
    plans = [p for p in enumerate_plans(shape, batch, target, **NARROW, **only) if keep(p)]
    errors = []
    for plan in plans[::stride]:
        spec = model_spec(model)
        kernel = attention_kernel(spec, topology.device, "bf16")  # the run's: flash on H100
        table = CostTable(build_model(spec, plan.microbatch, 2, kernel), topology.device,
                          "bf16", plan.microbatch * shape.seq_len, shape.hidden, shape,
                          plan.microbatch)
        est = estimate(plan, table, "adam", batch, fabric).step_time_s
        sim = dlsim.simulate(scenario_of(request, plan, 8)).step_time_s
        errors.append(abs(est - sim) / sim)
    return errors


def test_context_parallel_estimate_tracks_the_engine(configs):
    """32k tokens on 16 H100s, every context degree with data, tensor and pipeline
    parallelism, ZeRO (FSDP included) and both placements, FlashAttention as the H100 runs
    it: every 40th of 3,762 plans (95). Reached: median 0.0094%, worst 9.32% (ZeRO-3 with
    c = 8 and two stages: the estimate adds the per-layer gathers' exposed time and the ring
    steps' separately, where the engine overlaps them on the prefetch stream; without FSDP
    the worst is 1.7%)."""
    errors = _errors(configs["long-context"], "dgx-h100", 16, 16,
                     lambda p: p.context > 1 and not p.tp_comm_overlap, 40, microbatch=(1, 2))
    assert len(errors) == 95
    assert np.median(errors) <= 9.5e-5 and max(errors) <= 0.0933


def test_a2a_context_estimate_tracks_the_engine(configs):
    """Banded attention with sinks on 16 H100s: every context plan runs the a2a exchange
    (its scenario says context_comm a2a), the estimate pricing each all-to-all over the
    context group whole, as the engine blocks on it: every 400th of the plans (33) with
    ZeRO 0 or 1. Reached: median 7.5e-15, worst 1.11%; 5.8e-15 and 1.14% with the H100's
    BF16 GEMM curve measured on an H200 (2026-12-04: slower GEMMs)."""
    errors = _errors(configs["banded"], "dgx-h100", 16, 16,
                     lambda p: p.context > 1 and not p.tp_comm_overlap, 400,
                     microbatch=(1,), zero_stage=(0, 1))
    assert len(errors) == 33
    assert np.median(errors) <= 1e-14 and max(errors) <= 0.0114


def test_expert_parallel_estimate_tracks_the_engine(configs):
    """The MoE model on 16 H100s, every expert and expert-tensor degree folded into data,
    tensor and pipeline parallelism: every 800th of the plans (51). Reached: median 2.35e-5
    (the all-to-alls and expert-tensor gathers block the compute in the engine as in the
    closed form; 25 plans agree to 1e-13, and the median plan, c = 4, e = 2, et = 2 spread
    over two nodes, differs by 2.35e-5 since its expert-tensor gathers were added: not
    explained yet), worst 5.68% (ZeRO-3 with c = 2, e = 4 and two stages spread over two
    nodes, under the engine; 12.5% over it, d = 2 with c = 8, before the estimate hid a
    pass's gathers behind its exposed ring and all-to-all time as the engine's prefetch
    stream does; without FSDP the worst is 1.6%). With the H100's BF16 GEMM curve measured
    on an H200 (2026-12-04: 10 % slower GEMMs, so the exposed communication weighs
    differently): median 9.17e-5, worst 5.70%."""
    errors = _errors(configs["tiny-moe"], "dgx-h100", 16, 32,
                     lambda p: p.expert > 1 and not p.tp_comm_overlap, 800, microbatch=(1, 2))
    assert len(errors) == 51
    assert np.median(errors) <= 9.2e-5 and max(errors) <= 0.0571


def test_tensor_parallel_overlap_estimate_tracks_the_engine(configs):
    """Transformer Engine's TP overlap on 16 H100s (comm_contention 0.15): each pass's
    sequence-parallel collectives T beside its compute, max(T, rest + u T) for a stage's
    forward passes and for its backward passes. Every 20th overlapped plan of the 32k
    model (108): reached median 0.031 %, worst 1.41 % (t = 2, p = 4 with ZeRO-3: its
    non-overlapped twin is 1.16 % off too); pricing all passes at once instead, the worst
    was 5.8 % (t = 4 spread over nodes: its forward passes wait on their collectives, its
    backward passes do not). Every 400th of the MoE model's (56): median 0.28 %, worst
    6.18 %, under the engine, where the overlapped collectives share NVLink with the expert
    all-to-alls and expert-tensor gathers (their non-overlapped twins agree to 1e-12)."""
    errors = _errors(configs["long-context"], "dgx-h100", 16, 16,
                     lambda p: p.tp_comm_overlap, 20, microbatch=(1, 2))
    assert len(errors) == 108
    assert np.median(errors) <= 3.2e-4 and max(errors) <= 0.0142
    errors = _errors(configs["tiny-moe"], "dgx-h100", 16, 32, lambda p: p.tp_comm_overlap,
                     400, microbatch=(1, 2))
    assert len(errors) == 56
    assert np.median(errors) <= 0.0029 and max(errors) <= 0.0618


def test_hybrid_sharding_estimate_tracks_the_engine():
    """Megatron's 7.5B model on 32 A100s with ZeRO 1-3 in shard groups of 2-16: every 100th
    of the plans (46, context parallelism with FSDP among them). Reached: median 0.0037%,
    worst 6.62% (the new ZeRO-3 with context plans; before them 0.86%). Known gap, outside this
    sample: ZeRO-3 in shard groups spread across nodes with a pipeline (d16 p2 shard group
    4, micro-batch 1) is 6.4% under the engine (11.6% before the estimate priced the gathers
    layer by layer and the last backward's reduce-scatters on their links), whose
    cross-group all-reduces also contend for the same NICs in the last backward."""
    errors = _errors("megatron-7.5b", "dgx-a100", 32, 128,
                     lambda p: p.shard_group is not None, 100, microbatch=(1, 2, 4, 8),
                     virtual_stages=(1, 2, 4))
    assert len(errors) == 46
    assert np.median(errors) <= 3.7e-5 and max(errors) <= 0.0662


def test_every_enumerated_layout_is_priced(configs):
    """Context, expert and hybrid-sharded plans are ranked with the rest: the planner's
    candidates include each, and the engine confirms the best."""
    result = run_plan(PlanRequest(configs["tiny-moe"], "dgx-h100", (16,), 32, confirm=1))
    rows = result.candidates
    assert "unpriced" not in result.space
    assert result.space["estimated"] == len(rows) == result.fitting
    assert any(r["expert"] > 1 for r in rows) and any(r["context"] > 1 for r in rows)
    assert any(r["shard_group"] is not None for r in rows)
    assert result.plans[0]["step_time_source"] == "simulated"
    Path(result.plans[0]["scenario"]["model"]["hf_config"]).is_file()
