"""Gradient compression arithmetic: how many bytes one rank's compressed gradient puts on
the wire, the compression ratio, and how long the encode and decode kernels take. The ops
that apply it to a gradient bucket are the strategy's
(``dlsim.parallel.data_parallel.sync_bucket``), the
scenario check is ``dlsim.parallel.feasibility.compression_of``, and the summary fields are
``dlsim.results.metrics.compression_summary``.

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

Encode and decode are memory-bound elementwise kernels timed by the cost model. Bytes
touched per gradient element: encode reads the gradient and the error buffer and writes the
error buffer (3 x 4 bytes) plus the compressed output; decode reads every received
compressed gradient and writes the fp32 sum. fp16 casts read 4 and write 2 bytes (encode)
and the reverse (decode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dlsim.hardware.profiles import DeviceProfile
from dlsim.workload.costmodel import kernel_time_s
from dlsim.workload.model import Kernel

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
