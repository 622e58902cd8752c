"""Strategy: a parallelism plan -> per-rank programs and a memory plan.

Data parallelism, as PyTorch DDP runs it: each rank runs forward and backward on its share of
the batch (in micro-batches with gradient accumulation when ``microbatch`` is smaller), and
gradients are all-reduced in buckets of ``bucket_cap_mb`` MiB filled in reverse layer order,
each bucket launched on the communication stream as soon as the backward pass has produced it
(Li et al., "PyTorch Distributed", VLDB 2020, §3.2.3). The optimizer step waits for every
bucket. ``bucket_cap_mb: 0`` sends all gradients in one collective after the backward pass.

ZeRO (Rajbhandari et al., SC'20) partitions model state over the N data-parallel ranks:
stage 1 the optimizer state, stage 2 also the gradients, stage 3 also the parameters. Stages
1 and 2 replace each bucket's all-reduce by a reduce-scatter and all-gather the updated
parameters after the (1/N-sized) optimizer step: the same volume as all-reduce. Stage 3 also
all-gathers each layer's parameters before its forward and again before its backward, on a
prefetch stream, and never gathers after the step: 1.5x the all-reduce volume (§7.2.2).
Prefetch runs one layer ahead: a layer's gather waits until the layer two places before it
has finished, so at most two gathered layers are resident, as a bounded prefetch keeps them.

Activation recomputation adds forward work to each backward pass (``pass_times_s``),
optimizer offload replaces the device's optimizer step by a round trip to the host
(``optimizer_steps``), and gradient compression replaces each bucket's all-reduce by encode,
exchange and decode (``sync_bucket``, sized by ``dlsim.network.compression``).
"""

from __future__ import annotations

from collections.abc import Callable

from dlsim.contract.program import Collective, Compute, Op
from dlsim.hardware import profiles as hardware
from dlsim.hardware.profiles import DeviceProfile
from dlsim.network.compression import Compression, codec_times_s
from dlsim.parallel.memory import gradient_bytes_per_param, weight_bytes_per_param
from dlsim.parallel.tensor import ATTENTION_CORE
from dlsim.workload.costmodel import kernel_time_s, layer_times_s, optimizer_time_s
from dlsim.workload.model import Layer, Model

MiB = 1024 * 1024


def pass_times_s(layer: Layer, device: DeviceProfile, dtype: str,
                 recompute: str = "none") -> tuple[float, float]:
    """(forward, backward) time of one layer for one micro-batch; the backward pass first
    recomputes what was not stored: nothing (``none``), the attention core, QK^T, softmax
    and AV (``selective``, Korthikanti et al. 2022, §4.2), or the whole forward (``full``,
    Chen et al. 2016, as Megatron-LM checkpoints each layer's input)."""
    forward, backward = layer_times_s(layer, device, dtype)
    if recompute == "full":
        return forward, backward + forward
    if recompute == "selective":
        return forward, backward + sum(kernel_time_s(k, device, dtype)
                                       for k in layer.forward if k.name in ATTENTION_CORE)
    return forward, backward


# ZeRO-Offload's host (Ren et al. 2021, §4): the node's CPU sockets; the profile's memory
# bandwidth (2 sockets x 8 channels DDR4-3200) is also a DGX A100's (2x EPYC 7742, 8 channels
# DDR4-3200 each).
OFFLOAD_HOST = "cpu-host"


def optimizer_steps(params: float, optimizer: str, device: DeviceProfile, dtype: str,
                    offload: str = "none", sharing: int = 1) -> list[tuple[str, float]]:
    """The optimizer step of ``params`` parameters, as (name, seconds) in order.

    Offloaded (ZeRO-Offload, Ren et al. 2021, §4), the gradients go to the host over the
    device's PCIe link, the CPU runs the (memory-bound) update, which the ``sharing``
    devices of a node run at once on its memory bandwidth, and the updated 16-bit
    parameters come back; one after the other, as the device needs them to go on.
    """
    if offload == "none":
        return [("optimizer", optimizer_time_s(params, optimizer, device))]
    pcie = hardware.link(device.pcie or "pcie4-x16")
    host = hardware.device(OFFLOAD_HOST)
    return [("gradients to host", params * gradient_bytes_per_param(dtype) / pcie.up_Bps),
            ("optimizer on host", optimizer_time_s(params * sharing, optimizer, host)),
            ("parameters to device", params * weight_bytes_per_param(dtype) / pcie.down_Bps)]


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


def sync_bucket(add: Callable[[Op], int], c: Compression, name: str, key: str,
                group: tuple[int, ...], elements: float, grad_bytes: int, algorithm: str,
                servers: int, after: int, device: DeviceProfile, dtype: str) -> int:
    """Add one bucket's encode -> exchange -> decode to a program (``add`` appends an op
    and returns its index); return the index of the op the optimizer must wait for.

    Signs and sparse vectors do not add up, so ``onebit`` and ``topk`` are exchanged by an
    all-gather of every rank's compressed gradient (its size grows with the ranks: N x the
    compressed bytes, as Horovod and DGC do), or pushed to and pulled from parameter servers
    when the algorithm is ``ps`` (the servers' own decode and re-encode are not modelled).
    Encode and decode run on the communication stream, as NCCL's reduction kernels do: they
    delay the next bucket's collective, not the backward pass (the SMs they share with the
    backward pass are not modelled).
    """
    if not c.active(grad_bytes):  # fp16 of gradients that are already 2 bytes
        return add(Collective(f"allreduce {name}", key, group, "allreduce",
                              elements * grad_bytes, algorithm, servers, deps=(after,)))
    payload = c.payload_bytes(elements, grad_bytes)
    additive = c.scheme == "fp16" or algorithm == "ps"
    encode_s, decode_s = codec_times_s(c, elements, grad_bytes, 1 if additive else len(group),
                                       device, dtype)
    op, size = ("allreduce", payload) if additive else ("allgather", len(group) * payload)
    encode = add(Compute(f"encode {name}", encode_s, deps=(after,), stream="comm"))
    exchange = add(Collective(f"{op} {name} ({c.scheme})", key, group, op, size,
                              algorithm if op == "allreduce" else "ring", servers,
                              deps=(encode,)))
    return add(Compute(f"decode {name}", decode_s, deps=(exchange,), stream="comm"))


def data_parallel_program(model: Model, device: DeviceProfile, dtype: str, ranks: int,
                          accumulation: int, optimizer: str, bucket_cap_mb: float,
                          algorithm: str, servers: int, steps: int,
                          zero_stage: int = 0, recompute: str = "none",
                          offload: str = "none", sharing: int = 1,
                          compression: Compression | None = None,
                          sync_every: int = 1) -> list[Op]:
    """The program every data-parallel rank runs (they are identical); ``compression``
    replaces each bucket's all-reduce by encode, exchange and decode; ``sync_every`` H > 1
    is local SGD (Stich, "Local SGD Converges Fast and Communicates Little", ICLR 2019):
    each replica steps on its own and the models are averaged (an all-reduce of the same
    size) every H-th step only."""
    times = [pass_times_s(layer, device, dtype, recompute) for layer in model.layers]
    grad_bytes = gradient_bytes_per_param(dtype)
    weight_bytes = weight_bytes_per_param(dtype)
    buckets = gradient_buckets(model, grad_bytes, bucket_cap_mb * MiB)
    last_layer_of = {b[-1]: k for k, b in enumerate(buckets)}
    group = tuple(range(ranks))
    sharded = zero_stage > 0 and ranks > 1
    gather_layers = zero_stage == 3 and ranks > 1
    program: list[Op] = []

    def add(op: Op) -> int:
        program.append(op)
        return len(program) - 1

    def gather(layer_index: int, phase: str, tag: str, ran: list[int]) -> tuple[int, ...]:
        """ZeRO-3: all-gather one layer's parameters before it runs (prefetch stream), once
        the layer two places earlier in this pass (``ran``: compute ops so far) is done."""
        layer = model.layers[layer_index]
        if not gather_layers or layer.params == 0:
            return ()
        return (add(Collective(f"allgather {layer.name} ({phase}) {tag}",
                               f"zero3 {tag} {phase} {layer_index}", group, "allgather",
                               layer.params * weight_bytes, "ring",
                               deps=tuple(ran[-2:-1]), stream="prefetch")),)

    for step in range(steps):
        for micro in range(accumulation):
            tag = f"s{step}" + (f" mb{micro}" if accumulation > 1 else "")
            ran: list[int] = []
            for i, layer in enumerate(model.layers):
                deps = gather(i, "fwd", tag, ran)
                ran.append(add(Compute(f"fwd {layer.name} {tag}", times[i][0], deps)))
            syncing = micro == accumulation - 1 and (step + 1) % sync_every == 0
            collectives, ran = [], []
            for i in reversed(range(len(model.layers))):
                layer = model.layers[i]
                deps = gather(i, "bwd", tag, ran)
                backward = add(Compute(f"bwd {layer.name} {tag}", times[i][1], deps))
                ran.append(backward)
                if syncing and ranks > 1 and i in last_layer_of:
                    k = last_layer_of[i]
                    size = sum(model.layers[j].params for j in buckets[k]) * grad_bytes
                    op = "reducescatter" if sharded else "allreduce"
                    if compression is not None and not sharded:
                        collectives.append(sync_bucket(
                            add, compression, f"bucket {k} s{step}", f"dp s{step} b{k}",
                            group, size / grad_bytes, grad_bytes, algorithm, servers,
                            backward, device, dtype))
                        continue
                    collectives.append(add(Collective(
                        f"{op} bucket {k} s{step}", f"dp s{step} b{k}", group, op, size,
                        algorithm if op == "allreduce" else "ring", servers,
                        deps=(backward,))))
        owned = model.parameters / ranks if sharded else model.parameters
        update = None
        for what, seconds in optimizer_steps(owned, optimizer, device, dtype, offload,
                                             sharing):
            update = add(Compute(f"{what} s{step}", seconds,
                                 deps=tuple(collectives) if update is None else (update,)))
        if sharded and zero_stage < 3:
            add(Collective(f"allgather parameters s{step}", f"zero s{step} params", group,
                           "allgather", model.parameters * weight_bytes, "ring",
                           deps=(update,)))
    return program
