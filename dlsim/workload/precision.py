"""Which dtype each kernel computes in, as Transformer Engine runs FP8 and FP4 training.

Under ``precision: fp8`` (or ``fp4``: NVFP4/MXFP4 on Blackwell) Transformer Engine puts only
its linear layers in the low precision: the GEMMs of qkv, proj, the MLP (up/gate, down) and
the experts, forward and backward (dgrad and wgrad). Everything else stays in 16 bit:
attention's batched products and softmax (TE's DotProductAttention runs BF16 unless FP8
attention is asked for), embeddings, the LM head (Megatron's output layer is not a TE module),
the MoE router, norms and elementwise kernels; the optimizer keeps FP32 master state. Any
other precision runs every kernel at that precision.

Each low-precision GEMM pays memory-bound cast kernels (quantise with amax, plus the
transpose Hopper's FP8 GEMMs need for the backward; TE "Performance considerations",
"Handling transposes"): every 16-bit GEMM input is read once and written as a low-precision
copy and its transpose, forward (activation and weight) and backward (output gradient). Over
the three matrices of one GEMM (m x k)(k x n) = (m x n) that is (2 + 2 q)(mk + kn + mn)
bytes per micro-batch, q the low-precision bytes per element: (1 + q) times the GEMM's
16-bit bytes as ``model.gemm`` counts them. Kernels carry flops and bytes, not shapes, so the
cast traffic is spread over the GEMM's forward and backward kernels by their bytes (1 : 2),
a third of (1 + q) times each kernel's bytes: exact per GEMM over a step, approximate per pass.
"""

from __future__ import annotations

from dlsim.workload.model import Kernel

HIGH_PRECISION = "bf16"  # what TE keeps the non-linear-layer kernels and the weights in

# Bytes per element of a low-precision copy: FP8 is one byte (its per-tensor scale is
# negligible); NVFP4 is half a byte plus one FP8 scale per 16 elements (NVIDIA, "Introducing
# NVFP4", 2025: 16-element micro-blocks with an E4M3 scale).
LOW_PRECISION_BYTES: dict[str, float] = {"fp8": 1.0, "fp4": 0.5 + 1.0 / 16}

# GEMMs TE leaves in 16 bit: the LM head / masked-LM transform and the MoE router are
# Megatron modules outside TE's fp8_autocast.
HIGH_PRECISION_GEMMS = frozenset({"logits", "mlm_transform", "router"})


def is_low_precision(precision: str) -> bool:
    return precision in LOW_PRECISION_BYTES


def runs_low_precision(kernel: Kernel, precision: str) -> bool:
    """Whether ``kernel`` is one of the linear-layer GEMMs TE runs at ``precision``."""
    return (is_low_precision(precision) and kernel.kind == "gemm"
            and kernel.name not in HIGH_PRECISION_GEMMS)


def compute_dtype(kernel: Kernel, precision: str) -> str:
    """The dtype ``kernel`` computes in when the scenario trains at ``precision``."""
    if not is_low_precision(precision) or runs_low_precision(kernel, precision):
        return precision
    return HIGH_PRECISION


def cast_kernel(kernel: Kernel, precision: str) -> Kernel | None:
    """The memory-bound cast/amax/transpose traffic a low-precision GEMM kernel brings (module
    docstring: a third of (1 + q) times its bytes), or None for a kernel without one."""
    if not runs_low_precision(kernel, precision):
        return None
    q = LOW_PRECISION_BYTES[precision]
    return Kernel("elementwise", 0.0, (1.0 + q) * kernel.bytes / 3.0,
                  f"{kernel.name or 'gemm'}_{precision}_cast")


def weight_cache_bytes_per_param(precision: str) -> float:
    """Bytes per linear-layer parameter of TE's cached low-precision weights: a row-wise and a
    column-wise (transposed) copy, kept across micro-batches, on top of the bf16 weights."""
    return 2.0 * LOW_PRECISION_BYTES[precision] if is_low_precision(precision) else 0.0


def saved_input_ratio(precision: str) -> float:
    """Bytes of the linear-layer input TE saves for the weight gradient over its 16-bit bytes:
    the low-precision cast under FP8/FP4 (TE ``Linear`` and ``LayerNormLinear`` save the
    quantised input, not the 16-bit one), the input itself otherwise."""
    return LOW_PRECISION_BYTES[precision] / 2.0 if is_low_precision(precision) else 1.0
