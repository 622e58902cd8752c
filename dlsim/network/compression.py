"""Gradient compression schemes, one small class each, registered under the names
``communication.compression`` accepts (``dlsim.contract.registry.COMPRESSION``).

A scheme says how many bytes one rank's compressed gradient puts on the wire, whether
compressed gradients add up (then any all-reduce algorithm serves; if not, every rank's
is all-gathered), and how many bytes its encode and decode kernels touch. The ops that
apply it to a gradient bucket and the kernels' time are the strategy's
(``dlsim.parallel.data_parallel.sync_bucket`` and ``codec_times_s``), the scenario check is
``dlsim.parallel.feasibility.compression_of``, and the summary fields are
``dlsim.results.summary.compression_summary``.
A new scheme is a ``Scheme`` registered under its name, from any module; nothing else
lists them.

- ``none``: gradients as they are.
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

The schemes share one module because each is a few lines of the same arithmetic (the
error-feedback codec, the fp32 and index sizes): side by side their differences show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dlsim.contract.registry import COMPRESSION, register, registered

INDEX_BYTES = 4  # an int32 element index per top-k value
FP32 = 4  # the error-feedback buffer and the decoded sum are fp32


class Scheme:
    """A compression scheme: bytes on the wire and codec bytes per bucket of gradients.

    The defaults are an error-feedback compressor whose output does not add up (1-bit,
    top-k): encode reads the gradient and the error buffer and writes the error buffer
    (3 x 4 bytes per element) plus the compressed output; decode reads every received
    compressed gradient and writes the fp32 sum.
    """

    additive = False  # compressed gradients add up, so an all-reduce serves
    passthrough = False  # gradients travel as they are (``none``): nothing to check or run

    def payload_bytes(self, elements: float, grad_bytes: int, topk_ratio: float) -> float:
        """Bytes one rank's compressed gradient of ``elements`` values takes
        (``topk_ratio`` is ``communication.topk_ratio``, for schemes that keep a share)."""
        raise NotImplementedError

    def active(self, grad_bytes: int) -> bool:
        """Whether it changes gradients of ``grad_bytes`` bytes (else a plain all-reduce)."""
        return True

    def codec_bytes(self, elements: float, grad_bytes: int, payload: float,
                    received: int) -> tuple[float, float]:
        """(encode, decode) bytes touched for ``elements`` gradient values whose compressed
        form is ``payload`` bytes, decode reading ``received`` compressed copies."""
        return elements * 3 * FP32 + payload, received * payload + elements * FP32


class NoCompression(Scheme):
    additive = passthrough = True

    def payload_bytes(self, elements: float, grad_bytes: int, topk_ratio: float) -> float:
        return elements * grad_bytes

    def active(self, grad_bytes: int) -> bool:
        return False


class HalfPrecision(Scheme):
    """Casts read 4 and write 2 bytes (encode) and the reverse (decode)."""

    additive = True

    def payload_bytes(self, elements: float, grad_bytes: int, topk_ratio: float) -> float:
        return elements * min(grad_bytes, 2)

    def active(self, grad_bytes: int) -> bool:
        return grad_bytes > 2

    def codec_bytes(self, elements: float, grad_bytes: int, payload: float,
                    received: int) -> tuple[float, float]:
        cast = elements * (grad_bytes + 2)
        return cast, cast


class OneBit(Scheme):
    def payload_bytes(self, elements: float, grad_bytes: int, topk_ratio: float) -> float:
        return elements / 8


class TopK(Scheme):
    def payload_bytes(self, elements: float, grad_bytes: int, topk_ratio: float) -> float:
        return math.ceil(topk_ratio * elements) * (grad_bytes + INDEX_BYTES)


register(COMPRESSION, "none", NoCompression())
register(COMPRESSION, "fp16", HalfPrecision())
register(COMPRESSION, "onebit", OneBit())
register(COMPRESSION, "topk", TopK())


@dataclass(frozen=True)
class Compression:
    """The scenario's scheme, by name, with its parameters, as the strategy applies it to
    each gradient bucket."""

    scheme: str  # a registered name: none, fp16, onebit, topk, ...
    topk_ratio: float = 0.01

    @property
    def method(self) -> Scheme:
        scheme: Scheme = registered(COMPRESSION)[self.scheme]
        return scheme

    def payload_bytes(self, elements: float, grad_bytes: int) -> float:
        """Bytes one rank's compressed gradient of ``elements`` values takes."""
        return self.method.payload_bytes(elements, grad_bytes, self.topk_ratio)

    def ratio(self, grad_bytes: int) -> float:
        """Uncompressed / compressed bytes per rank (32 for 1-bit on fp32 gradients)."""
        n = 1e6
        return n * grad_bytes / self.payload_bytes(n, grad_bytes)

    def active(self, grad_bytes: int) -> bool:
        return self.method.active(grad_bytes)
