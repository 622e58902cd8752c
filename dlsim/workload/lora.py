"""LoRA fine-tuning (Hu et al., "LoRA", ICLR'22): what it trains and what it runs.

The base weights are frozen, so every weight GEMM's backward computes the input gradient
only (one GEMM, not two), and each layer's trainable parameters, which gradients
synchronise and the optimizer updates, are its adapters': r·(d_in + d_out) for every matrix
named in the targets (W + BA, B d_out x r and A r x d_in, §4.1).

The adapters' GEMMs are under 1 % of the base's FLOPs at r = 16, but they are memory-bound:
each sweeps the activations of the matrix it adapts. They run in 16 bit whatever the base
runs in (NeMo's ``ParallelLinearAdapter`` is a Megatron linear layer, not a Transformer
Engine one under fp8_autocast), as two kernels beside each adapted GEMM, the adapters of
the matrices one GEMM computes (q, k and v of a fused QKV, gate and up) fused as NeMo's
``linear_qkv`` and ``linear_fc1`` adapters are. For T tokens, inputs of d_in and adapted
outputs of d_out in all (dt bytes an element):

- forward, ``<gemm>_lora_in``: x·A reads the input, T·d_in·dt, writes T·r per adapter;
  ``<gemm>_lora_out``: (xA)·B writes T·d_out and adds it to the base output (read and
  write): 3·T·d_out·dt;
- backward, ``_lora_out``: dB and dY·Bᵀ read dY twice, 2·T·d_out·dt;
  ``_lora_in``: dA reads the input, and dX += (dY·Bᵀ)·Aᵀ reads and writes dX, 3·T·d_in·dt.

Under tensor parallelism a column-parallel GEMM's adapter (qkv, mlp_up) reads its whole
gathered input on every rank and writes its rank's d_out / t; a row-parallel one's (proj,
mlp_down) reads the rank's d_in / t (``dlsim.parallel.tensor``). The rank-r all-gathers and
all-reduces between A and B (T·r elements) are left out. Adapters on matrices of no other
GEMM (MLA's projections, a shared expert) are priced as a column-parallel GEMM's, beside
the layer's first GEMM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from dlsim.contract.errors import ScenarioError
from dlsim.workload.model import Kernel, Layer, Matrix, Model

# the GEMM kernel that computes each adaptable matrix (dlsim.workload.model and .decoder)
GEMM_OF = {"qkv": "qkv", "q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv",
           "proj": "proj", "o_proj": "proj",
           "mlp_up": "mlp_up", "gate_proj": "mlp_up", "up_proj": "mlp_up",
           "mlp_down": "mlp_down", "down_proj": "mlp_down"}
ADAPTER_DTYPE_BYTES = 2  # bf16 adapters, whatever the base GEMMs run in


def lora_parameters(layers: Sequence[Layer], rank: int, targets: Sequence[str]) -> int:
    """Trainable adapter parameters: r*(d_in + d_out) for every matrix named in ``targets``."""
    named = {m.name for layer in layers for m in layer.matrices}
    unknown = sorted(set(targets) - named)
    if unknown:
        raise ScenarioError(f"LoRA targets {unknown} are not weight matrices of this model; "
                            f"it has {', '.join(sorted(named)) or 'none'}.",
                            field="training.lora.targets")
    return sum(_adapters(layer, rank, targets) for layer in layers)


def _adapters(layer: Layer, rank: int, targets: Sequence[str]) -> int:
    return sum(rank * (m.d_in + m.d_out) for m in layer.matrices if m.name in targets)


def adapter_kernels(name: str, tokens: float, d_in: int, d_out: int, r: int
                    ) -> tuple[tuple[Kernel, Kernel], tuple[Kernel, Kernel]]:
    """((forward in, out), (backward in, out)) of adapters of rank ``r`` in all on a GEMM
    ``name`` of ``tokens`` rows, from ``d_in`` to ``d_out`` adapted outputs in all (module
    docstring)."""
    dt = ADAPTER_DTYPE_BYTES
    forward = (Kernel("elementwise", 2.0 * tokens * d_in * r, dt * tokens * (d_in + r),
                      f"{name}_lora_in"),
               Kernel("elementwise", 2.0 * tokens * r * d_out, dt * tokens * (r + 3 * d_out),
                      f"{name}_lora_out"))
    backward = (Kernel("elementwise", 4.0 * tokens * d_in * r, dt * tokens * (3 * d_in + r),
                       f"{name}_lora_in"),
                Kernel("elementwise", 4.0 * tokens * r * d_out, dt * tokens * (2 * d_out + r),
                       f"{name}_lora_out"))
    return forward, backward


def _rows(gemm: Kernel, matrices: Sequence[Matrix]) -> float:
    """Rows (tokens) of the GEMM that computes ``matrices``: its FLOPs over 2·d_in·(their
    widths)."""
    return gemm.flops / (2.0 * matrices[0].d_in * sum(m.d_out for m in matrices))


def _tokens(layer: Layer) -> float | None:
    """Rows of the layer's GEMMs, counted on the first GEMM whose matrices it names."""
    for kernel in layer.forward:
        computed = [m for m in layer.matrices if GEMM_OF.get(m.name) == kernel.name]
        if kernel.kind == "gemm" and computed:
            return _rows(kernel, computed)
    return None


def _frozen(kernel: Kernel) -> Kernel:
    """A frozen weight GEMM's backward: the input gradient alone."""
    if kernel.kind not in ("gemm", "conv"):
        return kernel
    return replace(kernel, flops=kernel.flops / 2, bytes=kernel.bytes / 2)


def _adapted_layer(layer: Layer, rank: int, targets: Sequence[str]) -> Layer:
    adapted = [m for m in layer.matrices if m.name in targets]
    forward, backward = list(layer.forward), [_frozen(k) for k in layer.backward]
    tokens = _tokens(layer) if adapted else None
    for gemm in dict.fromkeys(GEMM_OF.get(m.name, "lora") for m in adapted):
        mine = [m for m in adapted if GEMM_OF.get(m.name, "lora") == gemm]
        # beside the GEMM they adapt; a matrix of no known GEMM, after the layer's first
        at = next((i for i, k in enumerate(forward) if k.kind == "gemm" and k.name == gemm),
                  None)
        if at is None:
            at = next(i for i, k in enumerate(forward) if k.kind == "gemm")
        if tokens is None:  # no known GEMM to count rows by: the matrix's own GEMM
            tokens = _rows(forward[at], mine)
        (f_in, f_out), (b_in, b_out) = adapter_kernels(
            gemm, tokens, mine[0].d_in, sum(m.d_out for m in mine), rank * len(mine))
        forward[at + 1:at + 1] = [f_in, f_out]
        backward[at + 1:at + 1] = [b_out, b_in]
    return replace(layer, params=_adapters(layer, rank, targets), forward=tuple(forward),
                   backward=tuple(backward))


def lora_workload(model: Model, rank: int, targets: Sequence[str]) -> Model:
    """What LoRA fine-tuning runs (module docstring): frozen base GEMMs' backward, the
    adapters' kernels beside the GEMMs they adapt, the adapters as trainable parameters."""
    lora_parameters(model.layers, rank, targets)  # reject unknown targets
    return replace(model, layers=tuple(_adapted_layer(layer, rank, targets)
                                       for layer in model.layers))
