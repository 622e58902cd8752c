"""Strategy: a parallelism plan -> per-rank programs and a memory plan.

Data parallelism, as PyTorch DDP runs it: each rank runs forward and backward on its share of
the batch (in micro-batches with gradient accumulation when ``microbatch`` is smaller), and
gradients are all-reduced in buckets of ``bucket_cap_mb`` MiB filled in reverse layer order,
each bucket launched on the communication stream as soon as the backward pass has produced it
(Li et al., "PyTorch Distributed", VLDB 2020, §3.2.3). The optimizer step waits for every
bucket. ``bucket_cap_mb: 0`` sends all gradients in one collective after the backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from dlsim.costmodel import layer_times_s, optimizer_time_s
from dlsim.hardware import DTYPE_BYTES, DeviceProfile
from dlsim.program import Collective, Compute, Op
from dlsim.workload import Model

MiB = 1024 * 1024

# Bytes per parameter (mixed precision keeps fp32 master weights in the optimizer state):
# ZeRO (Rajbhandari et al. 2020) §3.1: 2 + 2 + K with K = 12 for mixed-precision Adam.
OPTIMIZER_STATE_BYTES = {
    ("adam", True): 12,   # fp32 master weights, momentum, variance
    ("adam", False): 8,   # momentum, variance
    ("sgd", True): 8,     # fp32 master weights, momentum
    ("sgd", False): 4,    # momentum
}


def is_mixed(dtype: str) -> bool:
    return DTYPE_BYTES[dtype] < 4


def gradient_bytes_per_param(dtype: str) -> int:
    """Gradients are kept in the training dtype, and fp8 training keeps them in bf16."""
    return max(DTYPE_BYTES[dtype], 2)


@dataclass(frozen=True)
class MemoryPlan:
    params: float
    grads: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations

    def as_dict(self) -> dict[str, float]:
        return {"params": self.params, "grads": self.grads, "optimizer": self.optimizer,
                "activations": self.activations}


def data_parallel_memory(model: Model, dtype: str, optimizer: str) -> MemoryPlan:
    """Per-device memory of plain data parallelism: full model state plus one micro-batch
    of stored activations."""
    p = model.parameters
    weight_bytes = max(DTYPE_BYTES[dtype], 2)
    return MemoryPlan(params=p * weight_bytes, grads=p * gradient_bytes_per_param(dtype),
                      optimizer=p * OPTIMIZER_STATE_BYTES[(optimizer, is_mixed(dtype))],
                      activations=sum(layer.activation_bytes for layer in model.layers))


def gradient_buckets(model: Model, grad_bytes: int, cap_bytes: float) -> list[list[int]]:
    """Layer indices per bucket, in the order gradients become ready (last layer first)."""
    buckets: list[list[int]] = [[]]
    filled = 0.0
    for i in reversed(range(len(model.layers))):
        buckets[-1].append(i)
        filled += model.layers[i].params * grad_bytes
        if cap_bytes > 0 and filled >= cap_bytes and i > 0:
            buckets.append([])
            filled = 0.0
    return buckets


def data_parallel_program(model: Model, device: DeviceProfile, dtype: str, ranks: int,
                          accumulation: int, optimizer: str, bucket_cap_mb: float,
                          algorithm: str, servers: int, steps: int) -> list[Op]:
    """The program every data-parallel rank runs (they are identical)."""
    times = [layer_times_s(layer, device, dtype) for layer in model.layers]
    grad_bytes = gradient_bytes_per_param(dtype)
    buckets = gradient_buckets(model, grad_bytes, bucket_cap_mb * MiB)
    last_layer_of = {b[-1]: k for k, b in enumerate(buckets)}
    group = tuple(range(ranks))
    program: list[Op] = []
    for step in range(steps):
        for micro in range(accumulation):
            tag = f"s{step}" + (f" mb{micro}" if accumulation > 1 else "")
            for i, layer in enumerate(model.layers):
                program.append(Compute(f"fwd {layer.name} {tag}", times[i][0],
                                       layer.forward_flops))
            syncing = micro == accumulation - 1
            collectives = []
            for i in reversed(range(len(model.layers))):
                layer = model.layers[i]
                program.append(Compute(f"bwd {layer.name} {tag}", times[i][1],
                                       layer.backward_flops))
                if syncing and ranks > 1 and i in last_layer_of:
                    k = last_layer_of[i]
                    size = sum(model.layers[j].params for j in buckets[k]) * grad_bytes
                    program.append(Collective(
                        f"allreduce bucket {k} s{step}", f"dp s{step} b{k}", group,
                        "allreduce", size, algorithm, servers, deps=(len(program) - 1,)))
                    collectives.append(len(program) - 1)
        program.append(Compute(f"optimizer s{step}",
                               optimizer_time_s(model.parameters, optimizer, device),
                               deps=tuple(collectives)))
    return program
