"""The Hopper-era tables: NVIDIA's NeMo / Megatron-Bridge performance summaries, the MoE
Parallel Folding paper's tables (Liu et al. 2025, arXiv 2504.14960) and MLPerf Training
v4.0/v4.1 result logs, on H100 (other accelerators' rows belong to the Hopper/Blackwell
fidelity work).

Every H100 row is listed. A row dlsim can express is simulated from the hardware, model and
plan the row prints (never from its figure); a row it cannot express is listed with the
reason, and so is a row the engine refuses (the engine's own one-paragraph error). What is
assumed where a row is silent is said next to it here: the distributed optimizer (ZeRO-1) and
sequence parallelism with tensor > 1, as NeMo 2 / Megatron-Bridge recipes default; micro-batch
1 where none is printed; no activation recomputation where none is printed. Tensor-parallel
communication overlap (``tp_comm_overlap``, Transformer Engine userbuffers) is on where a row
says so (MLPerf's ``tp_comm_overlap`` column) and on the NeMo / Megatron-Bridge rows with
tensor > 1 (their H100 performance recipes, scripts/performance, enable it through
``CommOverlapConfig``); the MoE paper's rows print nothing and run without it.

Gradients are reduced in fp32 on the NeMo and MoE rows (``MEGATRON_GRADS``).

What is compared is the row's own figure: tokens/s per GPU (NeMo tables), MFU as Megatron-Core
counts model FLOPs (the MoE paper: ``mcore_model_flops``, over the 989.5 TFLOP/s BF16 peak it
divides by), step time (MLPerf). Rows with the same plan (a recipe measured in several
container releases) are simulated once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dlsim.contract.errors import ScenarioError
from dlsim.results.result import Result
from dlsim.simulate import simulate
from dlsim.validation.reading import Row, read_table, row

Scenario = dict[str, Any]

# NeMo / Megatron-Bridge model names -> dlsim model sections. GPT3-5B and -20B are NeMo's
# conf/gpt3/5b.yaml and 20b.yaml (24 x 4096 x 32 heads; 44 x 6144 x 48 heads, seq 2048, GPT-2
# BPE 50,257).
NEMO_MODELS: dict[str, dict[str, Any]] = {
    "LLAMA2-7B": {"preset": "llama-2-7b"},
    "LLAMA2-13B": {"preset": "llama-2-13b"},
    "LLAMA2-70B": {"preset": "llama-2-70b"},
    "LLAMA3-8B": {"preset": "llama-3-8b"},
    "LLAMA3_8B": {"preset": "llama-3-8b"},
    "LLAMA3-70B": {"preset": "llama-3-70b"},
    "LLAMA3_70B": {"preset": "llama-3-70b"},
    "LLAMA3.1_405B": {"preset": "llama-3.1-405b"},
    "GPT3-175B": {"preset": "gpt3-175b"},
    "GPT3-5B": {"kind": "transformer", "layers": 24, "hidden": 4096, "heads": 32,
                "seq_len": 2048, "vocab": 50257},
    "GPT3-20B": {"kind": "transformer", "layers": 44, "hidden": 6144, "heads": 48,
                 "seq_len": 2048, "vocab": 50257},
    "Qwen3_30B_a3B": {"preset": "qwen3-30b-a3b"},
    "Qwen3_235B_a22B": {"preset": "qwen3-235b-a22b"},
    "DeepSeekV3": {"preset": "deepseek-v3"},
    "GPT OSS 120B": {"preset": "gpt-oss-120b"},
}
# Models the rows name that dlsim has no blocks for.
NOT_EXPRESSIBLE = {
    "Nemotron": "Nemotron models are not modelled (Nemotron-4's squared-ReLU MLP and Nemotron "
                "3's Mamba-hybrid layers; the 8B/22B shapes are not printed)",
}
H100 = "H100"
PRECISIONS = {"BF16": "bf16", "FP8": "fp8", "FP8-CS": "fp8", "FP8(hybrid)": "fp8",
              # Megatron-Bridge 25.09 prints no precision; its note gives H100 FP8 blockwise
              # scaling (128x128 weights, 1x128 activations)
              "(not stated in table)": "fp8"}
# the FP8 recipes the rows name (dlsim.workload.precision); the rest run TE's default on
# H100, delayed scaling (the MLPerf configs' FP8_AMAX_HISTORY), as NeMo's FP8 rows do
RECIPES = {"FP8-CS": "current", "(not stated in table)": "blockwise"}
H100_BF16_PEAK = 989.5e12  # the MoE paper's MFU denominator (§4.1)
MISSING = ("", "n/a", "nan")
# Megatron-Core accumulates and reduces bf16 training's gradients in fp32 (main_grads fp32,
# megatron/training/arguments.py), and Megatron-Bridge's recipes say so
# (DistributedDataParallelConfig(grad_reduce_in_fp32=True)): the NeMo and MoE-paper rows run
# so; MLPerf's logs do not say, and its rows keep the training dtype.
MEGATRON_GRADS = "fp32"


def _int(value: str, default: int = 1) -> int:
    """A degree as printed: blank or n/a means the default; '1(not set)' reads as 1."""
    text = value.strip().split("(")[0].strip()
    return default if text.lower() in MISSING else int(float(text))


def _not_simulated(table: str, case: str, why: str, measured: float, unit: str) -> Row:
    return row(table, f"{case} (not simulated: {why})", math.nan, measured, unit)


class Runs:
    """Simulations by scenario, so that a plan measured in several releases runs once."""

    def __init__(self) -> None:
        self._memo: dict[str, Result] = {}

    def __call__(self, scenario: Scenario) -> Result:
        key = json.dumps(scenario, sort_keys=True)
        if key not in self._memo:
            self._memo[key] = simulate(scenario)
        return self._memo[key]


def _simulated(table: str, case: str, measured: float, unit: str, scenario: Scenario,
               runs: Runs, per_step: float | None = None) -> Row:
    """The row simulated: a rate, ``per_step`` (work of one step) over the step time, or the
    step time itself; or listed with the engine's reason for refusing its plan."""
    try:
        step_s = runs(scenario).step_time_s
    except ScenarioError as exc:
        return _not_simulated(table, case, f"dlsim refuses the plan: {exc.message}", measured,
                              unit)
    return row(table, case, step_s if per_step is None else per_step / step_s, measured, unit)


def _training(name: str, model: dict[str, Any], gpus: int, precision: str, gbs: int,
              mbs: int, par: dict[str, Any], lora: dict[str, Any] | None = None,
              tp_comm_overlap: bool = False, grad_dtype: str | None = None,
              fabric: str | None = None, fp8_recipe: str | None = None) -> Scenario:
    """A scenario on DGX H100 nodes with the recipes' defaults for what a row leaves out;
    ``tp_comm_overlap`` applies where tensor > 1 (TE's overlap needs sequence parallelism);
    ``grad_dtype`` what the gradients are reduced in; ``fabric`` the cluster's fabric where
    the row's system says which (the preset's fat tree otherwise); ``fp8_recipe`` the FP8
    scaling recipe where the row names one."""
    tensor = par.get("tensor", 1)
    parallelism = {"sequence_parallel": tensor > 1, "zero_stage": 1, **par}
    if tp_comm_overlap and tensor > 1:
        parallelism["tp_comm_overlap"] = True
    if parallelism.get("virtual_stages", 1) > 1:
        parallelism["schedule"] = "interleaved"
    training: dict[str, Any] = {"global_batch": gbs, "microbatch": mbs, "optimizer": "adam"}
    if grad_dtype is not None:
        training["grad_dtype"] = grad_dtype
    if fp8_recipe is not None:
        training["fp8_recipe"] = fp8_recipe
    if lora is not None:
        training["lora"] = lora
    cluster: dict[str, Any] = {"preset": "dgx-h100", "nodes": gpus // 8}
    if fabric is not None:
        cluster["fabric"] = fabric
    return {"name": name, "model": model, "cluster": cluster,
            "precision": precision, "training": training, "parallelism": parallelism}


def nemo_performance(directory: Path) -> list[Row]:
    """NeMo 24.07 and Megatron-Bridge 25.09-26.08 H100 rows: tokens/s per GPU."""
    table, out, runs = "nemo_performance", [], Runs()
    for r in read_table(directory, "nemo_performance.csv"):
        if H100 not in r["gpu_type"]:
            continue
        gpus, measured = int(r["gpus"]), float(r["tokens_per_s_per_gpu"])
        name = r["model"].split(" (")[0]
        variant = r["model"][len(name):].strip(" ()")
        t, p, c = _int(r["tp"]), _int(r["pp"]), _int(r["cp"])
        v, e, fsdp = _int(r["vp"]), _int(r["ep"]), _int(r["fsdp"], 0)
        seq = int(r["seq_len"].split()[0])
        case = (f"{r['model']} {r['task']} {gpus} GPUs {r['precision']} t={t} p={p} c={c} "
                f"v={v} e={e}{f' fsdp={fsdp}' if fsdp else ''} [{r['location'].split()[0]}]")
        unit = "tokens/s/GPU"
        blocked = next((why for prefix, why in NOT_EXPRESSIBLE.items()
                        if name.startswith(prefix)), None)
        if blocked is None and name not in NEMO_MODELS:
            blocked = f"no dlsim model for {name}"
        if blocked is None and "LoRA" in r["task"]:
            blocked = "the LoRA rank and targets are not printed"
        if blocked is None and r["precision"] not in PRECISIONS:
            blocked = f"precision {r['precision']} is not modelled on H100"
        if blocked is not None:
            out.append(_not_simulated(table, case, blocked, measured, unit))
            continue
        # a preset at the row's sequence length; token-drop rows cap experts at capacity 1
        model: dict[str, Any] = {**NEMO_MODELS[name], "seq_len": seq}
        if variant == "tokendrop":
            model["moe"] = {"capacity_factor": 1.0}
        par: dict[str, Any] = {"tensor": t, "pipeline": p, "context": c, "expert": e,
                               "virtual_stages": v}
        if fsdp:
            par |= {"zero_stage": 3, "shard_group": fsdp}
        scenario = _training("nemo", model, gpus, PRECISIONS[r["precision"]], int(r["gbs"]),
                             _int(r["mbs"]), par, tp_comm_overlap=True,
                             grad_dtype=MEGATRON_GRADS, fp8_recipe=RECIPES.get(r["precision"]))
        per_gpu = int(r["gbs"]) * seq / gpus  # tokens per GPU and step
        out.append(_simulated(table, case, measured, unit, scenario, runs, per_gpu))
    return out


def mcore_model_flops(shape: dict[str, Any], batch: int) -> float:
    """Model FLOPs of one step as Megatron-Core counts them (``num_floating_point_operations``
    in megatron/training/training.py, the count behind the MoE paper's MFU): 12·B·s·l·h² ·
    ((1 + g/a + s/(2h))·(a·d/h) + (f/h)·k·m + (f_shared/h)·m + V/(2·l·h)), with g query
    groups, d the head dim, f the (expert) FFN width, k experts per token (1 for a dense
    model), m = 3/2 for a gated (SwiGLU) MLP. The s/(2h) is causal masking: only half the
    score matrix multiplies V. Megatron-LM counts it so from 8873b55 (2025-03-06, "Fixes in
    number of floating-point operation estimates for MoE and attention layer"); the paper
    (April 2025) ran Megatron-Core's development branch, which its benchmark configs
    (yanring/Megatron-MoE-ModelZoo, from 2025-04-03) name. Before it the count had s/h, 3.5 %
    more at 4,096 tokens for Mixtral 8x22B and 54 % more at 131,072."""
    h, a, s, layers = shape["hidden"], shape["heads"], shape["seq_len"], shape["layers"]
    g = shape.get("kv_heads", a)
    query = a * shape.get("head_dim", h // a) / h  # query projection over hidden
    moe = shape.get("moe")
    f = moe["expert_ffn_hidden"] if moe else shape.get("ffn_hidden", 4 * h)
    k = moe["top_k"] if moe else 1
    shared = moe.get("shared_experts", 0) * moe["expert_ffn_hidden"] if moe else 0
    gated = 1.5 if shape.get("mlp") == "swiglu" else 1.0
    return 12 * batch * s * layers * h * h * (
        (1 + g / a + s / (2 * h)) * query + f / h * k * gated + shared / h * gated
        + shape["vocab"] / (2 * layers * h))


def _mixtral_8x22b(seq: int) -> dict[str, Any]:
    return {"kind": "transformer", "layers": 56, "hidden": 6144, "heads": 48, "kv_heads": 8,
            "mlp": "swiglu", "seq_len": seq, "vocab": 32000,
            "moe": {"experts": 8, "top_k": 2, "expert_ffn_hidden": 16384}}


# The paper's models as ``kind: transformer`` sections, from its columns (Megatron-MoE-ModelZoo
# benchmarking configs): Mixtral's vocabulary is the Llama-2 tokenizer's 32,000 (its row), and
# Qwen2's HF config's 151,936 with a shared expert of 20,480 = 8 x 2,560. The fine-grained
# Mixtral-8x22B-G8T8 splits each expert 8 ways (64 experts of 2,048, top-8: paper text);
# Llama3-8x70B upcycles Llama-3-70B's MLP into 8 experts, top-2 as NVIDIA's upcycling recipe
# (the table prints no top-k).
def _moe_model(model: str, seq: int) -> dict[str, Any] | None:
    if model.startswith("Mixtral-8x22B-G8T8"):
        base = _mixtral_8x22b(seq)
        return base | {"moe": {"experts": 64, "top_k": 8, "expert_ffn_hidden": 2048}}
    if model.startswith(("Mixtral-8x22B", "Mixtral 8x22B")):
        return _mixtral_8x22b(seq)
    if model.startswith("Mixtral 8x7B"):
        return {"kind": "transformer", "layers": 32, "hidden": 4096, "heads": 32,
                "kv_heads": 8, "mlp": "swiglu", "seq_len": seq, "vocab": 32000,
                "moe": {"experts": 8, "top_k": 2, "expert_ffn_hidden": 14336}}
    if model.startswith("Qwen2-57B-A14B"):
        return {"kind": "transformer", "layers": 28, "hidden": 3584, "heads": 28,
                "kv_heads": 4, "mlp": "swiglu", "seq_len": seq, "vocab": 151936,
                "moe": {"experts": 64, "top_k": 8, "expert_ffn_hidden": 2560,
                        "shared_experts": 8}}
    if model.startswith("Llama3-8x70B"):
        return {"kind": "transformer", "layers": 80, "hidden": 8192, "heads": 64,
                "kv_heads": 8, "mlp": "swiglu", "seq_len": seq, "vocab": 128256,
                "moe": {"experts": 8, "top_k": 2, "expert_ffn_hidden": 28672}}
    return None


# Methods of Table 3 whose columns are a plan dlsim can run: Megatron-Core with and without
# folding (without it, experts use the attention's tensor degree: expert_tensor = tensor) and
# TP + EP + DP. The FSDP rows' columns are copied as printed under other headers (their note).
MCORE_METHODS = {"mcore": False, "mcore w/ folding": True, "tp + ep + dp": False}


def megatron_core_moe(directory: Path) -> list[Row]:
    """MoE Parallel Folding Tables 2-5 and the Megatron-LM MoE README on DGX H100 (Eos):
    MFU (Megatron-Core's model FLOPs over 989.5 TFLOP/s per GPU), token-drop at capacity
    factor 1 in the paper's benchmarks (dropless where the row says so)."""
    table, out, runs = "megatron_core_moe", [], Runs()
    for r in read_table(directory, "megatron_core_moe.csv"):
        metric, value = r["metric"], r["value"].strip().rstrip("%")
        case = (f"{r['source_id']} {r['model']} {r['gpus']} GPUs {r['method']} "
                f"t={r['tp']} c={r['cp']} e={r['ep']} et={r['etp']} p={r['pp']}").replace(
                    "nan", "-")
        if metric not in ("MFU", "TFLOPS per GPU") or not _is_number(value):
            out.append(_not_simulated(table, case, f"{metric} {r['value']} is not a figure",
                                      math.nan, "%"))
            continue
        unit = "%" if metric == "MFU" else "TFLOP/s"
        measured = float(value)
        # a blank cell (a README row without its configuration) reads as no figure
        seq_text, gbs_text = (r["seq_len"].split() or [""])[0], (r["gbs"].split() or [""])[0]
        method = r["method"].strip().lower()
        why = None
        if "suspect" in r["quality"]:
            why = "marked suspect: the rows repeat the Mixtral rows"
        elif not _is_number(r["tp"]) or not _is_number(r["pp"]):
            why = "the table prints no parallel plan for this row"
        elif method not in MCORE_METHODS and not r["dispatcher"].strip():
            why = f"the {r['method']} rows' columns are not a plan (see the table's notes)"
        elif not _is_number(r["gpus"]) or not _is_number(seq_text):
            why = f"GPUs '{r['gpus']}' / sequence '{r['seq_len']}' not one figure"
        model = _moe_model(r["model"], int(seq_text)) if why is None else None
        if why is None and model is None:
            why = f"no dlsim model for {r['model']}"
        if why is not None or model is None:
            out.append(_not_simulated(table, case, why or "", measured, unit))
            continue
        gpus, gbs = int(r["gpus"]), int(gbs_text)
        t, p, c, e = _int(r["tp"]), _int(r["pp"]), _int(r["cp"]), _int(r["ep"])
        folding = MCORE_METHODS.get(method, True)
        et = _int(r["etp"]) if folding else t
        if "dropless" not in r["model"]:
            model["moe"]["capacity_factor"] = 1.0
        par = {"tensor": t, "pipeline": p, "context": c, "expert": e, "expert_tensor": et,
               "virtual_stages": _int(r["vpp"])}
        scenario = _training("moe-folding", model, gpus, "bf16", gbs, _int(r["mbs"]), par,
                             grad_dtype=MEGATRON_GRADS)
        # model FLOP/s per GPU over the peak (MFU, in %) or in TFLOP/s
        per_gpu = mcore_model_flops(model, gbs) / gpus / (
            H100_BF16_PEAK / 100 if metric == "MFU" else 1e12)
        out.append(_simulated(table, case, measured, unit, scenario, runs, per_gpu))
    return out


def _is_number(text: str) -> bool:
    try:
        float(text.split("(")[0])
    except ValueError:
        return False
    return not math.isnan(float(text.split("(")[0]))


# MLPerf's LoRA benchmark adapts the attention projections at rank 16 (its reference
# implementation's target modules; the table's lora_rank column).
MLPERF_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _fabric(r: dict[str, str]) -> str | None:
    """NVIDIA's Eos is a DGX SuperPOD: its compute fabric is rail-optimised, NIC k of every
    node on rail leaf k of its 32-node scalable unit, the leaves joined by a full (1:1) fat
    tree (NVIDIA DGX SuperPOD reference architecture, DGX H100, RA-11333-001). dlsim's
    ``rail`` fabric is that fabric with each rail non-blocking. The preset's default, a fat
    tree of 32 NICs (four nodes) per leaf under D-mod-K routing, is not how Eos is wired: on
    it the 11,616-GPU GPT-3 row's data-parallel rings (484 replicas of 24 GPUs, a pipeline
    stage every 1,936 GPUs, half a leaf off the leaves' boundaries) send two flows through
    the same leaf uplinks at every stage boundary and take 1.9x as long as the 10,752-GPU
    row's (448 replicas, stages on leaf boundaries), which measured the same step time."""
    return "rail" if r["submitter"] == "NVIDIA" and r["system"].startswith("eos") else None


def mlperf_training(directory: Path) -> list[Row]:
    """MLPerf Training v4.0/v4.1 on H100: GPT-3 175B pre-training and Llama-2-70B LoRA
    fine-tuning step times (median of the logged per-step timings, or training-block time
    over its steps), under the submission's launch configuration. GPT-3 runs as the
    gpt3-175b preset (the benchmark's C4 SentencePiece vocabulary size is not given)."""
    table, out, runs = "mlperf_training_v40_v41", [], Runs()
    for r in read_table(directory, "mlperf_training_v40_v41.csv"):
        if H100 not in r["accelerator"]:
            continue
        gpus = int(r["total_accelerators"])
        case = f"{r['round']} {r['benchmark']} {r['submitter']} {r['system']} {gpus} GPUs"
        measured = float(r["step_time_s_median"]) if _is_number(
            r["step_time_s_median"]) else math.nan
        quality = r["quality"]
        why = None
        if quality.startswith("low"):
            why = f"quality {quality}: no launch configuration"
        elif quality == "duplicate":
            why = "a duplicate of another row"
        elif math.isnan(measured):
            why = "no step time logged"
        elif gpus % 8:
            why = (f"{gpus} GPUs: a 4-GPU HGX H100 board, and dlsim's H100 system (dgx-h100) "
                   "has 8 GPUs per node")
        if why is not None:
            out.append(_not_simulated(table, case, why, measured, "s"))
            continue
        t, p, c = _int(r["TP"]), _int(r["PP"]), _int(r["CP"])
        gbs, dp = int(float(r["global_batch_size"])), gpus // (t * p * c)
        if r["benchmark"] == "gpt3":
            model: dict[str, Any] = {"preset": "gpt3-175b"}
            par = {"tensor": t, "pipeline": p, "context": c,
                   "virtual_stages": _int(r["virtual_pipeline"])}
            micro, lora = _int(r["micro_batch"]), None
        else:
            model = {"preset": "llama-2-70b", "seq_len": int(r["seq_len"].split()[0])}
            par = {"tensor": t, "pipeline": p, "context": c}
            micro = gbs // (dp * _int(r["grad_accum_logged"]))
            lora = {"rank": _int(r["lora_rank"]), "targets": MLPERF_LORA_TARGETS}
        overlap = r["tp_comm_overlap"].strip().lower() in ("true", "1")
        scenario = _training("mlperf", model, gpus, "fp8", gbs, micro, par, lora, overlap,
                             fabric=_fabric(r))
        out.append(_simulated(table, f"{case} t={t} p={p} c={c}", measured, "s", scenario,
                              runs))
    return out
