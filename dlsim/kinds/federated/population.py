"""The client population: one row per client, held as numpy arrays.

Each client belongs to a device class (a device profile on a link profile; the classes'
shares of the population are exact, the assignment a seeded shuffle). From the class
it gets its training speed (the roofline cost model of dlsim.workload.costmodel, or
flops_per_sample / (peak · gemm_max) when the scenario gives FLOPs per sample), its link's
up/down bandwidth and latency, and its power. Within a class, speed and bandwidth vary by a
lognormal factor exp(N(0, sigma)) whose median is the class figure. Traces, where given,
replace speed and bandwidth client by client.

Packet loss p: each packet is lost independently with probability p and resent until it
arrives, so a packet takes 1/(1-p) transmissions on average (a geometric number) and the
goodput is bandwidth · (1 - p). This is the link-layer view; it ignores TCP's congestion
response to loss (Mathis et al., CCR 1997), which would slow a flow further.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dlsim.contract.errors import ScenarioError
from dlsim.contract.federated import FederatedSpec, SamplesSpec
from dlsim.contract.scenario import Scenario
from dlsim.hardware import profiles as hardware
from dlsim.hardware.profiles import DTYPE_BYTES, DeviceProfile
from dlsim.kinds.federated import traces
from dlsim.workload.costmodel import kernel_time_s, layer_times_s, optimizer_time_s
from dlsim.workload.model import Kernel, build_model


@dataclass(frozen=True)
class Workload:
    """One client's training work per sample at full width, and the update size."""

    flops_per_sample: float
    parameters: int
    dtype: str

    @property
    def model_bytes(self) -> float:
        return self.parameters * DTYPE_BYTES[self.dtype]


def workload(scenario: Scenario) -> Workload:
    fed = scenario.federated
    if fed.flops_per_sample is not None and fed.parameters is not None:  # given together
        return Workload(fed.flops_per_sample, fed.parameters, scenario.precision)
    if scenario.model is None:
        raise ScenarioError("a federated scenario needs 'model', or both "
                            "federated.flops_per_sample and federated.parameters.",
                            field="model")
    model = build_model(scenario.model, fed.batch_size, DTYPE_BYTES[scenario.precision])
    flops = sum(k.flops for layer in model.layers for k in (*layer.forward, *layer.backward))
    return Workload(flops / fed.batch_size, model.parameters, scenario.precision)


def sample_seconds(scenario: Scenario, work: Workload, device: DeviceProfile) -> float:
    """Forward + backward seconds per sample on ``device`` at full width.

    With a model, one batch of ``batch_size`` costs its layers' roofline times plus an SGD
    step, spread over the batch; with given FLOPs it is flops / (peak · gemm_max).
    """
    fed, dtype = scenario.federated, scenario.precision
    if fed.flops_per_sample is not None:
        return work.flops_per_sample / (device.peak_flops(dtype) * device.efficiency.gemm_max)
    assert scenario.model is not None  # workload() refused a scenario with neither
    model = build_model(scenario.model, fed.batch_size, DTYPE_BYTES[dtype])
    batch_s = sum(sum(layer_times_s(layer, device, dtype)) for layer in model.layers)
    return (batch_s + optimizer_time_s(model.parameters, "sgd", device)) / fed.batch_size


def proximal_step_seconds(work: Workload, device: DeviceProfile, width: float) -> float:
    """FedProx's extra cost per local step (Li et al., MLSys 2020, Eq. 2): the proximal
    term's gradient mu·(w - w_global) is added to the gradient, one elementwise pass that
    reads w, w_global and the gradient and writes the gradient: 3 FLOPs and 4 tensor
    accesses per parameter, memory-bound."""
    params = work.parameters * width ** 2
    kernel = Kernel("elementwise", 3.0 * params, 4.0 * DTYPE_BYTES[work.dtype] * params)
    return kernel_time_s(kernel, device, work.dtype)


def draw_samples(spec: SamplesSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """Samples per client (quantity skew), at least one each."""
    if spec.distribution == "constant":
        raw = np.full(n, spec.mean)
    elif spec.distribution == "lognormal":  # E[exp(N(mu, s^2))] = exp(mu + s^2/2) = mean
        raw = rng.lognormal(math.log(spec.mean) - spec.sigma ** 2 / 2, spec.sigma, n)
    else:
        share = (rng.permutation(n) + 1.0) ** -spec.zipf_a
        raw = spec.mean * n * share / share.sum()
    return np.maximum(np.rint(raw), 1).astype(np.int64)


def class_counts(shares: list[float], n: int) -> np.ndarray:
    """Clients per class: the shares of n, rounded by largest remainder (Hamilton's
    method) so that they add up to n exactly."""
    exact = np.asarray(shares) / sum(shares) * n
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


@dataclass(frozen=True)
class Population:
    """Per-client arrays; index = client id. Bandwidths are goodputs (loss applied)."""

    classes: tuple[str, ...]
    class_of: np.ndarray
    samples: np.ndarray
    sample_s: np.ndarray        # seconds per sample of local training, at the client's width
    step_extra_s: np.ndarray    # extra seconds per local step (FedProx), else zeros
    flops_per_sample: np.ndarray  # at the client's width
    width: np.ndarray
    up_Bps: np.ndarray
    down_Bps: np.ndarray
    latency_s: np.ndarray
    loss: np.ndarray
    power_W: np.ndarray         # per class
    trace_entry: np.ndarray
    speeds: traces.Speeds | None

    @property
    def size(self) -> int:
        return len(self.class_of)

    def goodput(self, clients: np.ndarray, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
        """(up, down) goodput in B/s for one transfer each of ``clients``; FLASH speed
        traces draw a fresh speed per transfer."""
        if self.speeds is None:
            return self.up_Bps[clients], self.down_Bps[clients]
        e, keep = self.trace_entry[clients], 1.0 - self.loss[clients]
        up = _positive_normal(self.speeds.up_mean[e], self.speeds.up_sd[e], rng)
        down = _positive_normal(self.speeds.down_mean[e], self.speeds.down_sd[e], rng)
        return up * keep, down * keep


def _positive_normal(mean: np.ndarray, sd: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Normal draws, redrawing the non-positive ones (FLASH's device.py does the same)."""
    out = rng.normal(mean, sd)
    bad = out <= 0
    while bad.any():
        out[bad] = rng.normal(mean[bad], sd[bad])
        bad = out <= 0
    return out


def build_population(scenario: Scenario, work: Workload, rng: np.random.Generator
                     ) -> Population:
    fed: FederatedSpec = scenario.federated
    n = fed.clients
    specs = fed.population
    class_of = rng.permutation(np.repeat(np.arange(len(specs)),
                                         class_counts([c.share for c in specs], n)))
    samples = draw_samples(fed.samples, n, rng)
    speed_factor = rng.lognormal(0.0, fed.speed_sigma, n) if fed.speed_sigma else np.ones(n)
    link_factor = (rng.lognormal(0.0, fed.bandwidth_sigma, n) if fed.bandwidth_sigma
                   else np.ones(n))

    devices = [hardware.device(c.device) for c in specs]
    links = [hardware.link(c.link) for c in specs]
    width = np.array([c.width for c in specs])
    base_s = np.empty(len(specs))
    for i, dev in enumerate(devices):
        try:
            base_s[i] = sample_seconds(scenario, work, dev) * width[i] ** 2
        except ScenarioError as exc:
            raise ScenarioError(f"device class {dev.name}: {exc.message}",
                                field=exc.field) from None
    extra = np.array([proximal_step_seconds(work, dev, w) if fed.algorithm == "fedprox"
                      else 0.0 for dev, w in zip(devices, width, strict=True)])
    loss = np.array([c.packet_loss for c in specs])[class_of]
    sample_s = base_s[class_of] * speed_factor
    up = np.array([lk.up_Bps for lk in links])[class_of] * link_factor
    down = np.array([lk.down_Bps for lk in links])[class_of] * link_factor

    entries = 1
    if fed.traces.capacity is not None:
        cap = traces.fedscale_capacity(fed.traces.capacity)
        entries = len(cap.sample_s)
        e = np.arange(n) % entries
        sample_s = cap.sample_s[e] * width[class_of] ** 2
        up = down = cap.bandwidth_Bps[e]
    speeds = None
    if fed.traces.flash_speed is not None:
        speeds = traces.flash_speed(fed.traces.flash_speed)
        entries = len(speeds.up_mean)
    names = [c.device for c in specs]
    if len(set(names)) < len(names):  # the same device on two links: name both
        names = [f"{c.device} ({c.link})" for c in specs]
    return Population(
        classes=tuple(names), class_of=class_of, samples=samples,
        sample_s=sample_s, step_extra_s=extra[class_of],
        flops_per_sample=work.flops_per_sample * width[class_of] ** 2, width=width[class_of],
        up_Bps=up * (1 - loss), down_Bps=down * (1 - loss),
        latency_s=np.array([lk.latency_s for lk in links])[class_of], loss=loss,
        power_W=np.array([d.power_W for d in devices]),
        trace_entry=np.arange(n) % entries, speeds=speeds)
