"""Communication reduction: gradient compression (fewer bytes on the wire for encode and
decode kernels) and local SGD (fewer synchronisations).

- ``fp16``: gradients cast to half precision and all-reduced as such (additive, so any
  all-reduce algorithm serves); a no-op when training already keeps 2-byte gradients.
- ``onebit``: 1-bit SGD with error feedback (Seide et al., "1-Bit Stochastic Gradient
  Descent and its Application to Data-Parallel Distributed Training of Speech DNNs",
  Interspeech 2014): one sign bit per element, the quantisation error carried into the
  next step. 32x fewer bytes than fp32 gradients (the two per-column reconstruction values
  are negligible and left out).
- ``topk``: top-k sparsification with error feedback (Aji & Heafield, "Sparse
  Communication for Distributed Gradient Descent", EMNLP 2017; Lin et al., "Deep Gradient
  Compression", ICLR 2018): ``topk_ratio`` of the elements, each sent as its value and a
  4-byte index.

Signs and sparse vectors do not add up, so ``onebit`` and ``topk`` are exchanged by an
all-gather of every rank's compressed gradient (its size grows with the ranks: N x the
compressed bytes, as Horovod and DGC do), or pushed to and pulled from parameter servers
when the algorithm is ``ps`` (the servers' own decode and re-encode are not modelled).

Encode and decode are memory-bound elementwise kernels timed by the cost model. They run
on the communication stream, as NCCL's reduction kernels do: they delay the next bucket's
collective, not the backward pass (the SMs they share with the backward pass are not
modelled). Bytes touched per gradient element: encode reads the gradient and the error
buffer and writes the error buffer (3 x 4 bytes) plus the compressed output; decode reads
every rank's compressed gradient and writes the fp32 sum. fp16 casts read 4 and write 2
bytes (encode) and the reverse (decode).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dlsim.costmodel import kernel_time_s
from dlsim.errors import ScenarioError
from dlsim.hardware import DeviceProfile
from dlsim.program import Collective, Compute, Op
from dlsim.results import Span
from dlsim.workload import Kernel

INDEX_BYTES = 4  # an int32 element index per top-k value
FP32 = 4


@dataclass(frozen=True)
class Compression:
    """A compression scheme as the strategy applies it to each gradient bucket."""

    scheme: str           # none, fp16, onebit or topk
    topk_ratio: float = 0.01

    def payload_bytes(self, elements: float, grad_bytes: int) -> float:
        """Bytes one rank's compressed gradient of ``elements`` values takes."""
        if self.scheme == "fp16":
            return elements * min(grad_bytes, 2)
        if self.scheme == "onebit":
            return elements / 8
        if self.scheme == "topk":
            return math.ceil(self.topk_ratio * elements) * (grad_bytes + INDEX_BYTES)
        return elements * grad_bytes

    def ratio(self, grad_bytes: int) -> float:
        """Uncompressed / compressed bytes per rank (32 for 1-bit on fp32 gradients)."""
        n = 1e6
        return n * grad_bytes / self.payload_bytes(n, grad_bytes)

    def active(self, grad_bytes: int) -> bool:
        return self.scheme in ("onebit", "topk") or (self.scheme == "fp16" and grad_bytes > 2)


def codec_times_s(c: Compression, elements: float, grad_bytes: int, received: int,
                  device: DeviceProfile, dtype: str) -> tuple[float, float]:
    """(encode, decode) time for one bucket of ``elements`` gradient values, of which
    decode reads ``received`` compressed copies (every rank's after an all-gather)."""
    payload = c.payload_bytes(elements, grad_bytes)
    if c.scheme == "fp16":
        encode = decode = elements * (grad_bytes + 2)
    else:
        encode = elements * 3 * FP32 + payload
        decode = received * payload + elements * FP32
    return (kernel_time_s(Kernel("elementwise", 0.0, encode, "encode"), device, dtype),
            kernel_time_s(Kernel("elementwise", 0.0, decode, "decode"), device, dtype))


def sync_bucket(add: Callable[[Op], int], c: Compression, name: str, key: str,
                group: tuple[int, ...], elements: float, grad_bytes: int, algorithm: str,
                servers: int, after: int, device: DeviceProfile, dtype: str) -> int:
    """Add one bucket's encode -> exchange -> decode to a program (``add`` appends an op
    and returns its index); return the index of the op the optimizer must wait for."""
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


def compression_of(comm: Any, zero_stage: int, pure_data_parallel: bool
                   ) -> Compression | None:
    """The scenario's ``communication.compression`` (None for ``none``); it applies to the
    gradient all-reduce of plain data parallelism only."""
    scheme = comm.compression
    if scheme == "none":
        return None
    if zero_stage or not pure_data_parallel:
        raise ScenarioError("gradient compression applies to plain data parallelism (no "
                            "ZeRO, tensor or pipeline parallelism); use compression: none.",
                            field="communication.compression")
    return Compression(scheme, comm.topk_ratio)


def compression_summary(comm: Any, grad_bytes: int, spans: list[Span], steps: int
                        ) -> dict[str, object]:
    """What compression did per step: the bytes ratio and the encode + decode time one
    rank spent (the price paid for the bytes saved)."""
    scheme = comm.compression
    c = Compression(scheme, comm.topk_ratio)
    first = spans[0].device if spans else 0
    codec = sum(s.end_s - s.start_s for s in spans if s.device == first
                and s.name.startswith(("encode ", "decode ")))
    return {"scheme": scheme, "bytes_ratio": c.ratio(grad_bytes), "codec_s": codec / steps}


def local_sgd_period(comm: Any, steps: int, zero_stage: int, model_parallel: int) -> int:
    """``communication.local_sgd_period`` H, checked: it needs plain data parallelism and
    a whole number of periods in ``training.steps`` (the step time is their average)."""
    period = comm.local_sgd_period
    if period > 1 and (zero_stage or model_parallel > 1):
        raise ScenarioError("local SGD applies to plain data parallelism (no ZeRO, tensor "
                            "or pipeline parallelism).", field="communication.local_sgd_period")
    if steps % period:
        raise ScenarioError(f"training.steps ({steps}) must be a multiple of "
                            f"local_sgd_period ({period}): the step time is averaged over "
                            "whole periods.", field="training.steps")
    return period
