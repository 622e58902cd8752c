"""Early exits (BranchyNet: Teerapittayanon, McDanel & Kung, ICPR 2016).

A side branch after a layer classifies the request; if it is confident enough (the
entropy of its softmax under a threshold) the request leaves there. The scenario gives
each exit's probability conditional on reaching it, p_i; the unconditional share leaving
at exit i is p_i · Π_{j<i} (1 − p_j), and the final exit takes what is left. Expected latency is
Σ_i share_i · latency_to_exit_i, where the latency to exit i includes every branch
evaluated on the way: a request pays for every branch it passed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dlsim.contract.errors import ScenarioError
from dlsim.contract.inference import ExitSpec
from dlsim.workload.model import Kernel, Model, elementwise


@dataclass(frozen=True)
class Exit:
    layer: int  # index of the layer the branch follows
    probability: float  # conditional on reaching the exit
    branch: tuple[Kernel, ...]


def exit_shares(conditional: Sequence[float]) -> np.ndarray:
    """Unconditional share of requests leaving at each exit, then at the final output."""
    p = np.asarray(conditional, dtype=float)
    reach = np.cumprod(np.concatenate([[1.0], 1.0 - p]))
    return np.append(reach[:-1] * p, reach[-1])


def branch_kernels(model: Model, layer: int, batch: int, dtype_bytes: int) -> tuple[Kernel, ...]:
    """The lightest branch: global average pooling, then one fully connected layer to the
    model's outputs. BranchyNet's own branches add one or two convolutions; this assumes
    the minimal form. A layer without convolutions is classified from its whole output."""
    out = model.layers[layer]
    elements = out.output_bytes / dtype_bytes
    features = out.convs[-1].c_out if out.convs else elements / batch
    classes = model.layers[-1].output_bytes / dtype_bytes / batch
    fc = Kernel("gemm", 2.0 * batch * features * classes,
                dtype_bytes * (batch * features + features * classes + batch * classes))
    return (elementwise(elements, dtype_bytes, 1.0), fc)


def resolve_exits(specs: Sequence[ExitSpec], model: Model, batch: int,
                  dtype_bytes: int) -> list[Exit]:
    """Exits in model order; a layer the model lacks, the last layer (that is the model's own
    output) or two exits after one layer are input errors naming the exit."""
    index = {layer.name: i for i, layer in enumerate(model.layers)}
    exits: list[Exit] = []
    for n, spec in enumerate(specs):
        field = f"inference.exits.{n}.after"
        if spec.after not in index:
            names = [layer.name for layer in model.layers[:-1]]
            raise ScenarioError(f"{model.name} has no layer '{spec.after}'; exits can follow "
                                f"{', '.join(names)}.", field=field)
        i = index[spec.after]
        if i == len(model.layers) - 1:
            raise ScenarioError(f"'{spec.after}' is the model's last layer, its own output; "
                                "an early exit must follow an earlier layer.", field=field)
        if exits and i <= exits[-1].layer:
            raise ScenarioError("exits must follow different layers, in model order.",
                                field=field)
        exits.append(Exit(i, spec.probability, branch_kernels(model, i, batch, dtype_bytes)))
    return exits
