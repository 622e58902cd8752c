"""Spatial partitioning of a CNN's convolutions over k devices, in row strips.

Each device holds a strip of ceil(H/k) rows of every feature map and computes the matching
output rows, so a layer takes as long as its tallest strip (kernels rescaled to that strip;
weights are read whole on every device). Two strategies:

- ``halo``: before every window (convolution or pooling) with kernel K, stride S and 'same'
  padding P = (K-1)//2, neighbouring strips swap border rows: the strip below needs the P
  rows above its top, the strip above needs max(K-P-S, 0) rows below its bottom. Each of
  the n-1 boundaries carries (P + max(K-P-S, 0)) rows × width × channels × dtype × batch
  bytes; the exchange takes the link latency plus the busiest device's bytes over its
  bandwidth.
- ``fdsp``: ADCNN's fully decomposable spatial partition (Zhang et al., "Towards Real-time
  Cooperative Deep Inference over the Cloud and Edge End Devices", IMWUT 2020): every
  strip is zero-padded as if it were the whole image, so no rows are exchanged between
  layers. The outputs near strip borders differ from the unpartitioned model's; ADCNN
  retrains the model with tiled padding to recover most of the accuracy, and dlsim does not
  model accuracy.

Both first scatter the input's strips from device 0 and finally gather the last
convolutional output there, where the remaining (fully connected) layers run. Every device
has its own link to a switch or access point; a shared Wi-Fi channel would be slower.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dlsim.hardware.profiles import DeviceProfile
from dlsim.kinds.inference.tiers import Hop
from dlsim.workload.costmodel import kernel_time_s
from dlsim.workload.model import ConvShape, Kernel, Layer, Model

STRATEGIES = ("halo", "fdsp")


def halo_rows(shape: ConvShape) -> tuple[int, int]:
    """Rows a strip needs from (above, below) its own for one window with 'same' padding."""
    pad = (shape.kernel - 1) // 2
    return pad, max(shape.kernel - pad - shape.stride, 0)


def strips(hw: int, k: int) -> int:
    """How many of k row strips hold rows of an ``hw``-row map (ceil(hw/k) rows each)."""
    return math.ceil(hw / math.ceil(hw / k))


def halo_exchange(shape: ConvShape, k: int, batch: int, dtype_bytes: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Bytes each strip sends and receives before ``shape`` runs on k strips."""
    n = strips(shape.hw_in, k)
    above, below = halo_rows(shape)
    row = shape.hw_in * shape.c_in * dtype_bytes * batch
    sent, received = np.zeros(n), np.zeros(n)
    sent[1:] += below * row      # to the strip above
    sent[:-1] += above * row     # to the strip below
    received[1:] += above * row
    received[:-1] += below * row
    return sent, received


def exchange_s(shape: ConvShape, k: int, link: Hop, batch: int, dtype_bytes: int) -> float:
    """Time of one halo exchange: latency plus the busiest strip's bytes over its link."""
    sent, received = halo_exchange(shape, k, batch, dtype_bytes)
    if not sent.any():
        return 0.0
    return link.latency_s + float(np.max(np.maximum(sent / link.up_Bps,
                                                    received / link.down_Bps)))


def _tile(kernel: Kernel, fraction: float, weight_bytes: float) -> Kernel:
    return Kernel(kernel.kind, kernel.flops * fraction,
                  weight_bytes + (kernel.bytes - weight_bytes) * fraction)


def strip_time_s(layer: Layer, k: int, device: DeviceProfile, dtype: str,
                 dtype_bytes: int) -> float:
    """Forward time of the tallest of k strips of a convolutional layer: each conv kernel's
    activation traffic and FLOPs scale with the strip's share of output rows; the memory-bound
    kernels after it scale with the same share."""
    convs = iter(s for s in layer.convs if s.op == "conv")
    fraction, total = 1.0, 0.0
    for kernel in layer.forward:
        weights = 0.0
        if kernel.kind == "conv":
            shape = next(convs)
            fraction = math.ceil(shape.hw_out / k) / shape.hw_out
            weights = dtype_bytes * shape.c_in * shape.c_out * shape.kernel ** 2
        total += kernel_time_s(_tile(kernel, fraction, weights), device, dtype)
    return total


def conv_prefix(model: Model) -> int:
    """How many leading layers are convolutional (the part that is partitioned)."""
    return next((i for i, layer in enumerate(model.layers) if not layer.convs),
                len(model.layers))


def scatter_gather_s(model: Model, link: Hop, k: int) -> tuple[float, float]:
    """Device 0 sends the other k-1 their strips of the input, then receives their strips of
    the last convolutional output: latency plus the slower end of each transfer."""
    if k == 1:
        return 0.0, 0.0
    first, last = model.input_bytes, model.layers[conv_prefix(model) - 1].output_bytes
    return (link.latency_s + max(first * (k - 1) / k / link.up_Bps, first / k / link.down_Bps),
            link.latency_s + max(last / k / link.up_Bps, last * (k - 1) / k / link.down_Bps))


def tail_s(model: Model, device: DeviceProfile, dtype: str) -> float:
    """The layers after the convolutions, on device 0."""
    return sum(kernel_time_s(kern, device, dtype) for layer in model.layers[conv_prefix(model):]
               for kern in layer.forward)


def partition(model: Model, device: DeviceProfile, link: Hop, k: int, strategy: str,
              dtype: str, dtype_bytes: int, batch: int) -> dict[str, float | str]:
    """Latency of one request with the convolutional layers spread over k devices."""
    n_conv = conv_prefix(model)
    compute = sum(strip_time_s(layer, k, device, dtype, dtype_bytes)
                  for layer in model.layers[:n_conv])
    exchange = exchange_bytes = 0.0
    if strategy == "halo" and k > 1:
        for shape in (s for layer in model.layers[:n_conv] for s in layer.convs):
            exchange += exchange_s(shape, k, link, batch, dtype_bytes)
            exchange_bytes += float(halo_exchange(shape, k, batch, dtype_bytes)[0].sum())
    scatter, gather = scatter_gather_s(model, link, k)
    scatter_gather = scatter + gather
    tail = tail_s(model, device, dtype)
    return {"strategy": strategy, "devices": k, "compute_s": compute,
            "exchange_s": exchange, "exchange_bytes": exchange_bytes,
            "scatter_gather_s": scatter_gather, "tail_s": tail,
            "latency_s": compute + exchange + scatter_gather + tail}


def spatial_table(model: Model, device: DeviceProfile, link: Hop, counts: list[int],
                  dtype: str, dtype_bytes: int, batch: int) -> pd.DataFrame:
    rows = [partition(model, device, link, k, strategy, dtype, dtype_bytes, batch)
            for strategy in STRATEGIES for k in sorted(set(counts))]
    table = pd.DataFrame(rows)
    single = table.loc[table["devices"] == 1, "latency_s"]
    one = float(single.iloc[0]) if len(single) else float(
        partition(model, device, link, 1, "fdsp", dtype, dtype_bytes, batch)["latency_s"])
    table["speedup"] = one / table["latency_s"]
    return table
