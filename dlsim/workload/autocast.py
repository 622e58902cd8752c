"""PyTorch's automatic mixed precision: ``torch.autocast`` over fp32 weights
(``training.autocast: true``), rather than 16-bit weights with an fp32 master copy in the
optimizer (Megatron-Core, DeepSpeed, FSDP's MixedPrecision), which is what dlsim prices
otherwise.

Under autocast (torch.amp's op lists) every matrix product and convolution casts its fp32
weight to 16 bit in the forward, and the cast's backward turns the 16-bit weight gradient
back into the fp32 ``.grad``: per micro-batch, each weight element is read at 4 bytes and
written at 2 forward, read at 2 and written at 4 backward, 12 bytes a parameter, memory-bound
(``Kernel`` kind ``copy``, whose backward moves the same bytes back). The 16-bit copies live
from the forward to the backward of their micro-batch (autocast's cache, and autograd keeps
them for the weight gradients): 2 bytes a parameter beside the fp32 weights (4), fp32
gradients (4, reduced in fp32 by DDP) and Adam's moments (8, no master copy: the weights are
the master). Measured on an H200 (validation/h200_training_steps.csv, torch.profiler): the
8 Llama 3 8B blocks' step spent 25.8 ms eager and 18.7 ms compiled in casts and copies.

What is cast: each layer's weight matrices where the model lists them, else all its
parameters (an MLP's or CNN's layers, a GPT block's; their norm weights, which autocast
runs in fp32, are under 0.1 %); an embedding lookup is not cast, except the embedding of a
model whose output layer lists no matrix of its own, whose weight the tied logits cast.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from dlsim.contract.errors import ScenarioError
from dlsim.workload.model import Kernel, Layer, Model

if TYPE_CHECKING:
    from dlsim.contract.scenario import TrainingScenario

CAST = "autocast_cast"
CAST_BYTES = 4 + 2  # an fp32 element read and its 16-bit copy written (the backward: back)
CACHE_BYTES = 2  # the 16-bit copy of each cast weight, held through its micro-batch
FIELD = "training.autocast"


def cast_elements(model: Model) -> list[int]:
    """Weight elements each layer of ``model`` casts per micro-batch (module docstring)."""
    tied = not any(layer.role == "head" and layer.matrices for layer in model.layers)

    def of(layer: Layer) -> int:
        if layer.matrices:
            return sum(m.d_in * m.d_out for m in layer.matrices)
        if layer.role == "embedding":
            return layer.params if tied else 0
        return layer.params
    return [of(layer) for layer in model.layers]


def autocast_workload(model: Model) -> Model:
    """``model`` with each layer's weight casts: one copy kernel first in its forward and,
    for the gradients, last in its backward."""
    layers = []
    for layer, elements in zip(model.layers, cast_elements(model)):
        if elements:
            cast = Kernel("copy", 0.0, CAST_BYTES * elements, CAST)
            layer = replace(layer, forward=(cast, *layer.forward),
                            backward=(*layer.backward, cast))
        layers.append(layer)
    return replace(model, layers=tuple(layers))


def check_autocast(scenario: TrainingScenario) -> None:
    """Autocast is plain PyTorch's recipe: 16-bit compute, data parallelism (DDP) only."""
    par = scenario.parallelism
    if scenario.precision not in ("bf16", "fp16"):
        raise ScenarioError(f"autocast runs 16-bit compute over fp32 weights; it needs "
                            f"precision bf16 or fp16 (precision is {scenario.precision}).",
                            field=FIELD)
    degrees = {"tensor": par.tensor, "pipeline": par.pipeline, "context": par.context,
               "expert": par.expert}
    named = [f"{k} {v}" for k, v in degrees.items() if v > 1] + (
        [f"zero_stage {par.zero_stage}"] if par.zero_stage else [])
    if named or par.offload != "none" or scenario.training.lora is not None:
        extra = named + (["offload"] if par.offload != "none" else []) + (
            ["lora"] if scenario.training.lora is not None else [])
        raise ScenarioError(f"autocast is modelled as plain PyTorch runs it, data parallel "
                            f"(DDP) over fp32 weights; this scenario also asks for "
                            f"{', '.join(extra)}, which run 16-bit weights with an fp32 "
                            f"master copy: drop autocast for those.", field=FIELD)
    if scenario.training.grad_dtype not in (None, "fp32"):
        raise ScenarioError(f"under autocast the gradients are the fp32 weights' .grad; "
                            f"grad_dtype {scenario.training.grad_dtype} is not what DDP "
                            f"reduces there (use fp32 or leave it out).",
                            field="training.grad_dtype")
