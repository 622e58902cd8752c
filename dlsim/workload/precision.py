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

FP8 recipes (Transformer Engine's ``transformer_engine.common.recipe`` and the device checks
of ``transformer_engine.pytorch.quantization``), which change what a cast moves:

- ``delayed`` (DelayedScaling): the scale comes from the amax history of earlier steps, so
  the cast reads the 16-bit tensor once and writes its copy and transpose: (1 + q).
- ``current`` (Float8CurrentScaling): the scale comes from this tensor's amax, a separate
  reduction that reads the 16-bit tensor before the cast does: (2 + q).
- ``blockwise`` (Float8BlockScaling, DeepSeek-V3's 1x128 activation and 128x128 weight
  blocks): the cast finds each block's amax as it goes and writes an fp32 scale per 128
  elements with each copy: (1 + q + 4/128).
- ``mxfp8`` (MXFP8BlockScaling, Blackwell): an E8M0 scale per 32 elements with each of the
  row-wise and column-wise copies: (1 + q + 1/32).

TE runs delayed and current scaling from compute capability 8.9, block scaling from 9.0
(CUDA 12.9), MXFP8 on 10.x only; its default recipe is MXFP8 where MXFP8 runs, current
scaling from 12.0, delayed scaling otherwise (``get_default_fp8_recipe``). The FP8 GEMM
curve is the device's whatever the recipe: no calibration input measures block-scaled or MX
GEMMs apart.
"""

from __future__ import annotations

from dlsim.contract.errors import ScenarioError
from dlsim.hardware.profiles import DeviceProfile, FP8Recipe
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


# per recipe, what a cast moves over the 16-bit bytes it reads once, less q (module docstring)
RECIPE_CAST_EXTRA: dict[str, float] = {"delayed": 1.0, "current": 2.0,
                                       "blockwise": 1.0 + 4.0 / 128, "mxfp8": 1.0 + 1.0 / 32}
# the compute capabilities TE runs each recipe on: [from, below)
RECIPE_CAPABILITY: dict[str, tuple[float, float]] = {
    "delayed": (8.9, float("inf")), "current": (8.9, float("inf")),
    "blockwise": (9.0, float("inf")), "mxfp8": (10.0, 12.0)}


def default_fp8_recipe(capability: float | None) -> FP8Recipe:
    """TE's ``get_default_fp8_recipe`` for a device of ``capability`` (delayed scaling where
    the capability is not known: a device TE does not run on, whose FP8 is priced alike)."""
    if capability is None:
        return "delayed"
    low, high = RECIPE_CAPABILITY["mxfp8"]
    if low <= capability < high:
        return "mxfp8"
    return "current" if capability >= 12.0 else "delayed"


def fp8_recipe_of(device: DeviceProfile) -> FP8Recipe:
    """The recipe a run on ``device`` uses: the scenario's, else TE's default for it."""
    return device.fp8_recipe or default_fp8_recipe(device.compute_capability)


def check_fp8_recipe(recipe: FP8Recipe, device: DeviceProfile, field: str) -> None:
    """Refuse a recipe TE does not run on ``device``, naming ``field``."""
    low, high = RECIPE_CAPABILITY[recipe]
    capability = device.compute_capability
    if capability is not None and not low <= capability < high:
        runs = ", ".join(r for r, (lo, hi) in RECIPE_CAPABILITY.items()
                         if lo <= capability < hi) or "no FP8 recipe"
        raise ScenarioError(f"Transformer Engine runs {recipe} scaling on compute capability "
                            f"{low:g}{'+' if high == float('inf') else f' to {high:g}'}; "
                            f"{device.name} is {capability:g}, which runs {runs}.",
                            field=field)
    if capability is None and recipe in ("blockwise", "mxfp8"):
        raise ScenarioError(f"{recipe} scaling needs an NVIDIA GPU of compute capability "
                            f"{low:g}+; {device.name} gives none (delayed or current).",
                            field=field)


def cast_kernel(kernel: Kernel, precision: str, recipe: str = "delayed") -> Kernel | None:
    """The memory-bound cast/amax/transpose traffic a low-precision GEMM kernel brings (module
    docstring: a third of (extra + q) times its bytes, extra 1 for delayed scaling), or None
    for a kernel without one; ``recipe`` applies to fp8 (fp4 casts as delayed FP8 does)."""
    if not runs_low_precision(kernel, precision):
        return None
    q = LOW_PRECISION_BYTES[precision]
    extra = RECIPE_CAST_EXTRA[recipe] if precision == "fp8" else 1.0
    return Kernel("elementwise", 0.0, (extra + q) * kernel.bytes / 3.0,
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
