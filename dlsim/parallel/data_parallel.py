"""The pieces of a data-parallel step that the program builder (``dlsim.parallel.builder``)
puts together: the batch split into replicas and micro-batches, pass times with activation
recomputation (``pass_times_s``), the optimizer step and its offload to the host
(``optimizer_steps``), DDP's gradient buckets (``gradient_buckets``), and gradient
compression, which replaces a bucket's all-reduce by encode, exchange and decode
(``sync_bucket``, sized by ``dlsim.network.compression``), and local SGD.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dlsim.contract.program import Collective, Compute, Op, Role
from dlsim.hardware import profiles as hardware
from dlsim.hardware.profiles import DeviceProfile
from dlsim.network.compression import Compression
from dlsim.parallel.memory import gradient_bytes_per_param, weight_bytes_per_param
from dlsim.parallel.tensor import ATTENTION_CORE
from dlsim.workload.costmodel import kernel_time_s, layer_times_s, optimizer_time_s
from dlsim.workload.model import Kernel, Layer

MiB = 1024 * 1024


def pass_times_s(layer: Layer, device: DeviceProfile, dtype: str,
                 recompute: str = "none") -> tuple[float, float]:
    """(forward, backward) time of one layer for one micro-batch; the backward pass first
    recomputes what was not stored: nothing (``none``), the attention core, QK^T, softmax
    and AV (``selective``, Korthikanti et al. 2022, §4.2; nothing with fused attention, which
    stores no scores and recomputes them in its own backward), or the whole forward (``full``,
    Chen et al. 2016, as Megatron-LM checkpoints each layer's input)."""
    forward, backward = layer_times_s(layer, device, dtype)
    if recompute == "full":
        return forward, backward + forward
    if recompute == "selective":
        return forward, backward + sum(kernel_time_s(k, device, dtype)
                                       for k in layer.forward
                                       if k.name in ATTENTION_CORE and k.fused is None)
    return forward, backward


# ZeRO-Offload's host (Ren et al. 2021, §4): the node's CPU sockets; the profile's memory
# bandwidth (2 sockets x 8 channels DDR4-3200) is also a DGX A100's (2x EPYC 7742, 8 channels
# DDR4-3200 each).
OFFLOAD_HOST = "cpu-host"


def optimizer_steps(params: float, optimizer: str, device: DeviceProfile, dtype: str,
                    offload: str = "none", sharing: int = 1,
                    grad_dtype: str | None = None) -> list[tuple[str, float, Role]]:
    """The optimizer step of ``params`` parameters, as (name, seconds, role) in order.

    Offloaded (ZeRO-Offload, Ren et al. 2021, §4), the gradients go to the host over the
    device's PCIe link, the CPU runs the (memory-bound) update, which the ``sharing``
    devices of a node run at once on its memory bandwidth, and the updated 16-bit
    parameters come back; one after the other, as the device needs them to go on.
    """
    if offload == "none":
        return [("optimizer", optimizer_time_s(params, optimizer, device), "optimizer")]
    pcie = hardware.link(device.pcie or "pcie4-x16")
    host = hardware.device(OFFLOAD_HOST)
    return [("gradients to host",
             params * gradient_bytes_per_param(dtype, grad_dtype) / pcie.up_Bps,
             "offload"),
            ("optimizer on host", optimizer_time_s(params * sharing, optimizer, host),
             "optimizer"),
            ("parameters to device", params * weight_bytes_per_param(dtype) / pcie.down_Bps,
             "offload")]


def gradient_buckets(layer_params: Sequence[int], grad_bytes: int,
                     cap_bytes: float) -> list[list[int]]:
    """Layer indices per bucket, in the order gradients become ready (last layer first);
    ``cap_bytes`` 0 is one bucket of every layer."""
    buckets: list[list[int]] = [[]]
    filled = 0.0
    for i in reversed(range(len(layer_params))):
        buckets[-1].append(i)
        filled += layer_params[i] * grad_bytes
        if cap_bytes > 0 and filled >= cap_bytes and i > 0:
            buckets.append([])
            filled = 0.0
    return buckets


def codec_times_s(c: Compression, elements: float, grad_bytes: int, received: int,
                  device: DeviceProfile, dtype: str) -> tuple[float, float]:
    """(encode, decode) time for one bucket of ``elements`` gradient values, of which
    decode reads ``received`` compressed copies (every rank's after an all-gather).

    Both are memory-bound elementwise kernels timed by the cost model, touching the bytes
    the scheme says (``dlsim.network.compression.Scheme.codec_bytes``).
    """
    encode, decode = c.method.codec_bytes(elements, grad_bytes,
                                          c.payload_bytes(elements, grad_bytes), received)
    return (kernel_time_s(Kernel("elementwise", 0.0, encode, "encode"), device, dtype),
            kernel_time_s(Kernel("elementwise", 0.0, decode, "decode"), device, dtype))


def sync_bucket(add: Callable[[Op], int], c: Compression, name: str, key: str,
                group: tuple[int, ...], elements: float, grad_bytes: int, algorithm: str,
                servers: int, after: int, device: DeviceProfile, dtype: str) -> int:
    """Add one bucket's encode -> exchange -> decode to a program (``add`` appends an op
    and returns its index); return the index of the op the optimizer must wait for.

    What does not add up (a scheme that is not ``additive``: signs and sparse vectors,
    ``onebit`` and ``topk``) is exchanged by an all-gather of every rank's compressed
    gradient (its size grows with the ranks: N x the compressed bytes, as Horovod and DGC
    do), or pushed to and pulled from parameter servers
    when the algorithm is ``ps`` (the servers' own decode and re-encode are not modelled).
    Encode and decode run on the communication stream, as NCCL's reduction kernels do: they
    delay the next bucket's collective, not the backward pass (the SMs they share with the
    backward pass are not modelled).
    """
    if not c.active(grad_bytes):  # fp16 of gradients that are already 2 bytes
        return add(Collective(f"allreduce {name}", key, group, "allreduce",
                              elements * grad_bytes, algorithm, servers, deps=(after,),
                              role="data"))
    payload = c.payload_bytes(elements, grad_bytes)
    additive = c.method.additive or algorithm == "ps"
    encode_s, decode_s = codec_times_s(c, elements, grad_bytes, 1 if additive else len(group),
                                       device, dtype)
    op, size = ("allreduce", payload) if additive else ("allgather", len(group) * payload)
    encode = add(Compute(f"encode {name}", encode_s, deps=(after,), stream="comm",
                         role="codec"))
    exchange = add(Collective(f"{op} {name} ({c.scheme})", key, group, op, size,
                              algorithm if op == "allreduce" else "ring", servers,
                              deps=(encode,), role="data"))
    return add(Compute(f"decode {name}", decode_s, deps=(exchange,), stream="comm",
                       role="codec"))
