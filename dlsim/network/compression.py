"""Gradient compression arithmetic: how many bytes one rank's compressed gradient puts on
the wire, and the compression ratio. The ops that apply it to a gradient bucket, and the
encode and decode kernels' time, are the strategy's
(``dlsim.parallel.data_parallel.sync_bucket`` and ``codec_times_s``), the scenario check is
``dlsim.parallel.feasibility.compression_of``, and the summary fields are
``dlsim.results.summary.compression_summary``.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

INDEX_BYTES = 4  # an int32 element index per top-k value


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

