"""The A100-era tables (and ZeRO's memory table, nccl-tests on DGX A100, PyTorch's DDP
benchmark on V100, GPipe's Table 2): each function reads one CSV and simulates every row
from the hardware, model and plan it describes, never from the measured figure."""

from __future__ import annotations

from pathlib import Path

from dlsim.parallel.memory import memory_per_device
from dlsim.simulate import simulate
from dlsim.validation.reading import Row, read_table, row
from dlsim.workload.model import Layer, Model
from dlsim.workload.shapes import TRANSFORMER_SHAPES


def zero_memory(directory: Path) -> list[Row]:
    """ZeRO (SC'20) Table 1: model-state GB per device, mixed-precision Adam (K = 12)."""
    rows = []
    for r in read_table(directory, "zero_memory.csv"):
        psi = float(r["params_b"]) * 1e9
        model = Model("psi", (Layer("all", int(psi), (), (), 0.0),))
        plan = memory_per_device(model, "bf16", "adam", data=int(r["dp"]),
                                 zero_stage=int(r["stage"]))
        predicted = (plan.params + plan.grads + plan.optimizer) / 1e9
        rows.append(row("zero_memory", f"{r['params_b']}B dp={r['dp']} stage={r['stage']}",
                         predicted, float(r["gb_per_device"]), "GB"))
    return rows


def nccl_allreduce(directory: Path) -> list[Row]:
    """nccl-tests all_reduce_perf bus bandwidth on one DGX A100 node, from link figures."""
    rows = []
    for r in read_table(directory, "nccl_allreduce_busbw_8xA100.csv"):
        result = simulate({"name": "nccl", "kind": "collective",
                           "cluster": {"preset": "dgx-a100", "nodes": 1},
                           "collective": {"op": "allreduce", "algorithm": "ring",
                                          "size_bytes": float(r["size_bytes_approx"])}})
        rows.append(row("nccl_allreduce_busbw_8xA100", r["size_label"],
                         result.busbw_GBps, float(r["busbw_gbps"]), "GB/s"))
    return rows


def ddp_v100(directory: Path) -> list[Row]:
    """PyTorch's DDP benchmark: ResNet seconds per iteration, batch 32 per GPU, fp32, SGD,
    25 MiB buckets, on DGX-1-style V100 machines (8 GPUs each, 4x 100 Gb/s InfiniBand)."""
    rows = []
    for r in read_table(directory, "pytorch_ddp_benchmark_v100.csv"):
        gpus = int(r["gpus"])
        result = simulate({
            "name": "ddp", "model": {"preset": r["model"]},
            "cluster": {"preset": "dgx1-v100", "nodes": -(-gpus // 8)},
            "precision": "fp32", "parallelism": {"data": gpus},
            "training": {"global_batch": 32 * gpus, "optimizer": "sgd", "bucket_cap_mb": 25},
            "communication": {"data_parallel": "ring"}})
        rows.append(row("pytorch_ddp_benchmark_v100", f"{r['model']} {gpus} GPUs",
                         result.step_time_s, float(r["sec_per_iter_p50"]), "s"))
    return rows


def megatron_flops(batch: int, seq: int, layers: int, hidden: int, vocab: int) -> float:
    """FLOPs of one iteration as Megatron-LM counts them, with the recomputed forward
    (Narayanan et al. SC'21, §5.1): 96·B·s·l·h²·(1 + s/6h + V/16lh)."""
    return (96 * batch * seq * layers * hidden ** 2
            * (1 + seq / (6 * hidden) + vocab / (16 * layers * hidden)))


# Micro-batch size and layers per virtual stage of each Table 1 row, from the paper's own
# reproduction script (NVIDIA/Megatron-LM examples/sc21/run_table_1.sh: MBS and
# --num-layers-per-virtual-pipeline-stage; every row uses --recompute-method uniform).
SC21_PLANS = {"1.7": (16, None), "7.5": (16, None), "39.1": (4, None), "145.6": (2, 5),
              "529.6": (1, 1)}
# A row needing more pipeline passes than this (stages x micro-batches x chunks) takes
# minutes to simulate and is listed, not simulated (the 529.6B row: 35 x 280 x 3 = 29,400).
SC21_MAX_PASSES = 20_000


def megatron_sc21(directory: Path) -> list[Row]:
    """Megatron-LM SC'21 Table 1: TFLOP/s per A100 of GPT models under tensor, pipeline
    (interleaved 1F1B) and data parallelism with full recomputation, on DGX A100 nodes."""
    rows = []
    for r in read_table(directory, "megatron_sc21_table1.csv"):
        t, p, gpus, batch = (int(r[k]) for k in ("tp", "pp", "gpus", "global_batch"))
        layers, hidden = int(r["layers"]), int(r["hidden"])
        micro, per_chunk = SC21_PLANS[r["params_b"]]
        chunks = layers // p // per_chunk if per_chunk else 1
        data = gpus // (t * p)
        case = f"{r['params_b']}B t={t} p={p} d={data} b={micro} v={chunks}"
        measured = float(r["tflops_per_gpu"])
        if p * batch // (data * micro) * chunks > SC21_MAX_PASSES:
            rows.append(row("megatron_sc21_table1", case + " (not simulated: too many "
                             "passes)", float("nan"), measured, "TFLOP/s"))
            continue
        result = simulate({
            "name": "megatron-sc21", "model": {"preset": f"megatron-{r['params_b']}b"},
            "cluster": {"preset": "dgx-a100", "nodes": gpus // 8}, "precision": "bf16",
            "training": {"global_batch": batch, "microbatch": micro, "optimizer": "adam"},
            "parallelism": {"data": data, "tensor": t, "pipeline": p, "recompute": "full",
                            "schedule": "interleaved" if chunks > 1 else "1f1b",
                            "virtual_stages": chunks}})
        shape = TRANSFORMER_SHAPES[f"megatron-{r['params_b']}b"]
        seq, vocab = shape.seq_len, shape.vocab
        flops = megatron_flops(batch, seq, layers, hidden, vocab)
        rows.append(row("megatron_sc21_table1", case,
                         flops / result.step_time_s / gpus / 1e12, measured, "TFLOP/s"))
    return rows


def megatron_tp_scaling(directory: Path) -> list[Row]:
    """Megatron-LM's README (Sep 2020): iteration time of GPT models, tensor parallel over
    1-8 A100s of one DGX A100, batch 16 in one micro-batch, fp16. The README's TFLOP/s
    equal the 96·B·s·l·h² count of these times, so activations were recomputed (full)."""
    rows = []
    for r in read_table(directory, "megatron_2020_tp_scaling_dgxa100.csv"):
        t = int(r["tp"])
        result = simulate({
            "name": "megatron-2020", "cluster": {"preset": "dgx-a100", "nodes": 1},
            "model": {"kind": "transformer", "layers": int(r["layers"]),
                      "hidden": int(r["hidden"]), "heads": int(r["heads"]),
                      "seq_len": int(r["seq_len"]), "vocab": int(r["vocab"])},
            "precision": "fp16",
            "training": {"global_batch": int(r["batch"]), "optimizer": "adam"},
            "parallelism": {"data": 1, "tensor": t, "recompute": "full"}})
        rows.append(row("megatron_2020_tp_scaling_dgxa100", f"{r['case']} t={t}",
                         result.step_time_s * 1e3, float(r["iter_time_ms"]), "ms"))
    return rows


# Per-GPU micro-batch of NVIDIA's BERT recipe (validation README): (seq_len, precision).
DLE_BERT_MICROBATCH = {(128, "tf32"): 128, (128, "fp16"): 256, (512, "tf32"): 16,
                       (512, "fp16"): 32}
DLE_ACCUMULATION = 16  # gradient accumulation: the optimizer's share of a step is then ~1%


def dle_bert_large(directory: Path) -> list[Row]:
    """BERT-large pre-training sequences/s on one DGX A100 (NVIDIA DeepLearningExamples),
    TF32 and AMP (fp16), data parallel over 1 or 8 GPUs with DDP buckets. Modelled as a
    24-layer, 1024-wide, 16-head encoder with a vocabulary-wide output layer on every token
    (the recipe predicts only the masked ~15%: about 9% more head work than it runs) and
    Adam for LAMB (the same state and memory traffic, without LAMB's norms); the recipe
    accumulates gradients to global batches of 65,536 / 32,768, so the optimizer step is
    amortised: ``DLE_ACCUMULATION`` micro-batches per step."""
    rows = []
    for r in read_table(directory, "dle_bert_large_dgxa100_1node.csv"):
        gpus, seq = int(r["gpus"]), int(r["seq_len"])
        for precision, column in (("tf32", "tf32_seq_per_s"), ("fp16", "amp_seq_per_s")):
            micro = DLE_BERT_MICROBATCH[(seq, precision)]
            result = simulate({
                "name": "dle-bert", "cluster": {"preset": "dgx-a100", "nodes": 1},
                "model": {"kind": "transformer", "layers": 24, "hidden": 1024, "heads": 16,
                          "seq_len": seq, "vocab": 30522},
                "precision": precision,
                "training": {"global_batch": gpus * micro * DLE_ACCUMULATION,
                             "microbatch": micro, "optimizer": "adam"},
                "parallelism": {"data": gpus}})
            rows.append(row("dle_bert_large_dgxa100", f"{gpus} GPU seq {seq} {precision}",
                             result.throughput_samples_per_s, float(r[column]), "seq/s"))
    return rows


def gpipe_table2(directory: Path) -> list[Row]:
    """GPipe Table 2 (TPU, throughput normalised to K=2, M=1) is listed, not simulated: dlsim
    has no AmoebaNet model or TPU v3 profile, and the paper adjusted the batch size per row
    to fit memory without printing it, so the baseline each row divides by is unknown."""
    return [row("gpipe_table2_tpu", f"{r['model']} K={r['K']} M={r['M']} (not simulated: "
                 "batch per row unknown)", float("nan"), float(r["normalized_throughput"]),
                 "x") for r in read_table(directory, "gpipe_table2_tpu.csv")]
