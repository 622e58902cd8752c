"""A ``kind: edge-inference`` scenario -> Result: the split curve, early exits, the hierarchy
and spatial partitions, with one request's timeline as spans.

Every cost is a closed form over per-layer roofline times and link transfers (see
``path``): a single request meets no contention, so no event engine is needed. The
timeline shows the request the chosen split (else the hierarchy, else the fastest spatial
partition) serves, reaching the model's output, and the headline ``latency_s`` is that same
answer's (expected, with exits) latency.
"""

from __future__ import annotations

from typing import Any

from dlsim.contract.errors import ScenarioError
from dlsim.contract.inference import EdgeInferenceSpec, HierarchySpec, SpatialSpec, TierSpec
from dlsim.contract.scenario import EdgeInferenceScenario
from dlsim.contract.span import Span
from dlsim.hardware.profiles import DTYPE_BYTES
from dlsim.kinds.inference.exits import Exit, exit_shares, resolve_exits
from dlsim.kinds.inference.hierarchy import hierarchy_table
from dlsim.kinds.inference.path import Route, Segment, walk
from dlsim.kinds.inference.spatial import (
    conv_prefix,
    exchange_s,
    scatter_gather_s,
    spatial_table,
    strip_time_s,
    strips,
    tail_s,
)
from dlsim.kinds.inference.split import best_row, split_table
from dlsim.kinds.inference.tiers import Tier, device_profile, hop, tier
from dlsim.results.result import Result, records, simulation_result
from dlsim.workload.model import Model
from dlsim.workload.presets import build_model


def _spans(segments: list[Segment]) -> list[Span]:
    """Compute on the tier's own row; a hop's transfers on the row of the tier below it."""
    return [Span(g.where, "compute" if g.kind == "compute" else "link", g.name,
                 "compute" if g.kind == "compute" else "comm", g.start_s, g.end_s)
            for g in segments]


def _layer_index(model: Model, name: str, field: str) -> int:
    names = [layer.name for layer in model.layers]
    if name not in names:
        raise ScenarioError(f"{model.name} has no layer '{name}'; its layers are "
                            f"{', '.join(names)}.", field=field)
    return names.index(name)


def _spatial_spans(model: Model, spec: EdgeInferenceSpec, sp: SpatialSpec, best: dict[str, Any],
                   dtype: str, dt: int) -> list[Span]:
    """The fastest partition: scatter, per-layer strips and halo exchanges, gather, tail."""
    device = device_profile(sp.device, "inference.spatial.device", dtype)
    link = hop(sp.link, "inference.spatial.link")
    k, t = int(best["devices"]), 0.0
    spans: list[Span] = []

    def add(devices: int, stream: str, name: str, d: float) -> None:
        nonlocal t
        category = "compute" if stream == "compute" else "comm"
        spans.extend(Span(i, stream, name, category, t, t + d) for i in range(devices))
        t += d

    scatter, gather = scatter_gather_s(model, link, k)
    if scatter:
        add(k, "link", "scatter input strips", scatter)
    for layer in model.layers[:conv_prefix(model)]:
        if best["strategy"] == "halo" and k > 1:
            for shape in layer.convs:
                d = exchange_s(shape, k, link, spec.batch, dt)
                if d > 0:
                    add(strips(shape.hw_in, k), "link", f"halo {layer.name}", d)
        add(k, "compute", layer.name, strip_time_s(layer, k, device, dtype, dt))
    if gather:
        add(k, "link", "gather output strips", gather)
    add(1, "compute", "fully connected layers", tail_s(model, device, dtype))
    return spans


def _split(spec: EdgeInferenceSpec, server_spec: TierSpec, device: Tier, model: Model,
           exits: list[Exit], dtype: str) -> tuple[dict[str, Any], list[Segment]]:
    server = tier("server", server_spec.device, "inference.server.device", model, dtype)
    link = hop(server_spec.link, "inference.server.link")
    table = split_table(device, server, link, model, exits, dtype, spec.batch, spec.radio)
    prefix = "expected_" if exits else ""
    by_latency = best_row(table, prefix + "latency_s")
    by_energy = best_row(table, prefix + "energy_J")
    chosen = by_latency if spec.objective == "latency" else by_energy
    route = Route((device, server), (link,), (int(chosen["device_layers"]),))
    part = {"server": server.device.name, "link": link.name,
            "radio_counted": spec.radio is not None, "best_latency": by_latency,
            "best_energy": by_energy,
            "server_only_latency_s": float(table["latency_s"].iloc[0]),
            "table": records(table),
            "latency_s": chosen[prefix + "latency_s"], "energy_J": chosen[prefix + "energy_J"]}
    return part, walk(route, model, exits, len(exits), dtype)


def _hierarchy(spec: EdgeInferenceSpec, h: HierarchySpec, device: Tier, model: Model,
               exits: list[Exit], dtype: str) -> tuple[dict[str, Any], list[Segment]]:
    at = "inference.hierarchy"
    tiers = (device,
             tier("edge", h.edge.device, f"{at}.edge.device", model, dtype),
             tier("cloud", h.cloud.device, f"{at}.cloud.device", model, dtype))
    hops = (hop(h.edge.link, f"{at}.edge.link"), hop(h.cloud.link, f"{at}.cloud.link"))
    cuts = (_layer_index(model, h.edge.first_layer, f"{at}.edge.first_layer"),
            _layer_index(model, h.cloud.first_layer, f"{at}.cloud.first_layer"))
    if cuts[1] < cuts[0]:
        raise ScenarioError("the cloud's first layer comes before the edge's.",
                            field=f"{at}.cloud.first_layer")
    route = Route(tiers, hops, cuts)
    table, expected = hierarchy_table(route, model, exits, dtype, spec.radio)
    part = {"edge": tiers[1].device.name, "cloud": tiers[2].device.name,
            "edge_first_layer": h.edge.first_layer, "cloud_first_layer": h.cloud.first_layer,
            **expected, "table": records(table)}
    return part, walk(route, model, exits, len(exits), dtype)


def _spatial(spec: EdgeInferenceSpec, sp: SpatialSpec, model: Model, dtype: str,
             dt: int) -> dict[str, Any]:
    if conv_prefix(model) == 0:
        raise ScenarioError(f"{model.name} has no convolutional layers to partition.",
                            field="inference.spatial")
    profile = device_profile(sp.device, "inference.spatial.device", dtype)
    table = spatial_table(model, profile, hop(sp.link, "inference.spatial.link"), sp.devices,
                          dtype, dt, spec.batch)
    return {"device": profile.name, "best": best_row(table, "latency_s"),
            "table": records(table)}


def simulate_edge_inference(scenario: EdgeInferenceScenario) -> Result:
    spec, dtype = scenario.inference, scenario.precision
    dt = DTYPE_BYTES[dtype]
    model = build_model(scenario.model, spec.batch, dt)
    if model.input_bytes <= 0:
        raise ScenarioError(f"{model.name} has no defined input size; edge inference "
                            "supports CNN and MLP models.", field="model")
    exits = resolve_exits(spec.exits, model, spec.batch, dt)
    device = tier("device", spec.device, "inference.device", model, dtype)
    summary: dict[str, Any] = {
        "name": scenario.name, "kind": "edge-inference", "model": model.name,
        "parameters": model.parameters, "layers": len(model.layers), "precision": dtype,
        "batch": spec.batch, "device": device.device.name, "objective": spec.objective,
        "device_only_latency_s": float(device.layer_s.sum()),
    }
    timelines: list[list[Span]] = []
    if spec.server is not None:
        split, segments = _split(spec, spec.server, device, model, exits, dtype)
        summary["latency_s"], summary["energy_J"] = split.pop("latency_s"), split.pop("energy_J")
        summary["split"] = split
        timelines.append(_spans(segments))
    if exits:
        shares = exit_shares([e.probability for e in exits])
        summary["exits"] = [
            {"after": model.layers[e.layer].name, "probability": e.probability,
             "share": float(share)} for e, share in zip(exits, shares)]
        summary["final_output_share"] = float(shares[-1])
    if spec.hierarchy is not None:
        summary["hierarchy"], segments = _hierarchy(spec, spec.hierarchy, device, model, exits,
                                                    dtype)
        summary.setdefault("latency_s", summary["hierarchy"]["expected_latency_s"])
        timelines.append(_spans(segments))
    if spec.spatial is not None:
        summary["spatial"] = _spatial(spec, spec.spatial, model, dtype, dt)
        best = summary["spatial"]["best"]
        summary.setdefault("latency_s", best["latency_s"])
        if not timelines:
            timelines.append(_spatial_spans(model, spec, spec.spatial, best, dtype, dt))
    spans = timelines[0]
    return simulation_result(scenario, summary, fidelity="analytic", events=len(spans),
                             spans=spans)
