"""The Hopper/Blackwell/MI300/TPU v5p-v6e profiles (issue 14 item 5): their cited figures equal
the rows of ``validation/b200_gb200_specs.csv`` they cite, read here from the table itself,
and an NVL72 rack is one NVLink domain of 72 GPUs whose rings never touch InfiniBand."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import closed_form

import dlsim
from dlsim.cluster.build import build_topology
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ClusterSpec
from dlsim.hardware import profiles as hw

SPECS = Path(__file__).resolve().parents[2] / "validation" / "b200_gb200_specs.csv"
# a number not glued to a letter (so the 2 of "HBM2e" and the 3 of "HBM3" are not read)
_NUMBER = re.compile(r"(?<![A-Za-z\d.])\d[\d,]*(?:\.\d+)?")


def _row(accelerator: str, spec: str) -> dict[str, str]:
    rows = [r for r in csv.DictReader(SPECS.open())
            if r["accelerator"] == accelerator and r["spec"] == spec]
    assert len(rows) == 1, (accelerator, spec)
    return rows[0]


def _numbers(text: str) -> list[float]:
    return [float(m.replace(",", "")) for m in _NUMBER.findall(text) if m.strip(",")]


# (profile, field, table accelerator, table spec, which number of the value, unit factor)
CITED = [
    ("b200-sxm-180gb", "bf16", "B200", "peak BF16 tensor", 0, 1),
    ("b200-sxm-180gb", "fp8", "B200", "peak FP8 tensor", 0, 1),
    ("b200-sxm-180gb", "memory_GB", "B200-SXM-180GB", "memory", 0, 1),
    ("b200-sxm-180gb", "power_W", "B200-SXM-180GB", "TGP", 0, 1),
    ("b300-sxm-288gb", "bf16", "B300", "peak BF16 tensor", 0, 1),
    ("b300-sxm-288gb", "fp8", "B300", "peak FP8 tensor", 0, 1),
    ("gb200", "bf16", "GB200", "peak BF16 tensor", 0, 1),
    ("gb200", "fp8", "GB200", "peak FP8 tensor", 0, 1),
    ("gb200", "memory_GB", "GB200", "memory", 0, 1),
    ("gb300", "bf16", "GB300", "peak BF16 tensor", 0, 1),
    ("gb300", "fp8", "GB300", "peak FP8 tensor", 0, 1),
    ("mi300x", "bf16", "MI300X", "BF16 / FP8 dense", 0, 1),
    ("mi300x", "fp8", "MI300X", "BF16 / FP8 dense", 1, 1),
    ("mi300x", "memory_GB", "MI300X", "memory / bandwidth", 0, 1),
    ("mi300x", "memory_bandwidth_GBps", "MI300X", "memory / bandwidth", 1, 1000),
    ("mi300x", "power_W", "MI300X", "TBP", 0, 1),
    ("mi325x", "fp16", "MI325X", "FP16 compute", 0, 1),
    ("mi325x", "bf16", "MI325X (MAMF theory col.)", "BF16 theory", 0, 1),
    ("mi325x", "memory_GB", "MI325X", "memory / bandwidth", 0, 1),
    ("mi325x", "memory_bandwidth_GBps", "MI325X", "memory / bandwidth", 1, 1000),
    ("tpu-v5p", "bf16", "TPU v5p", "peak BF16 per chip", 0, 1),
    ("tpu-v5p", "fp8", "TPU v5p", "peak FP8 per chip", 0, 1),
    ("tpu-v5p", "memory_GB", "TPU v5p", "HBM", 0, 1),
    ("tpu-v5p", "memory_bandwidth_GBps", "TPU v5p", "HBM", 1, 1),
    ("tpu-v6e", "bf16", "TPU v6e (Trillium)", "peak BF16 per chip", 0, 1),
    ("tpu-v6e", "memory_GB", "TPU v6e (Trillium)", "HBM", 0, 1),
    ("tpu-v6e", "memory_bandwidth_GBps", "TPU v6e (Trillium)", "HBM", 1, 1),
]


@pytest.mark.parametrize("profile,field,accelerator,spec,index,unit", CITED,
                         ids=[f"{c[0]}.{c[1]}" for c in CITED])
def test_cited_figure_equals_the_table(profile, field, accelerator, spec, index, unit):
    d = hw.device(profile)
    value = d.peak_tflops[field] if field in hw.DTYPE_BYTES else getattr(d, field)
    assert value == _numbers(_row(accelerator, spec)["value"])[index] * unit


def test_tpu_v6e_int8_is_the_tables_note():
    note = _row("TPU v6e (Trillium)", "peak BF16 per chip")["notes"]  # "Int8 1836 TOPs"
    assert hw.device("tpu-v6e").peak_tflops["int8"] == _numbers(note)[0]


def test_low_quality_rows_are_flagged_in_the_profile():
    """Every MI300X/MI325X figure the table rates 'low' says LOW on its line."""
    for name, accelerator in (("mi300x", "MI300X"), ("mi325x", "MI325X")):
        lines = (hw.PROFILES_DIR / "devices" / f"{name}.yaml").read_text().splitlines()
        for profile, field, acc, spec, _, _ in CITED:
            if profile != name or acc != accelerator:
                continue
            if _row(acc, spec)["quality"].startswith("low"):
                line = next(x for x in lines if x.strip().startswith(f"{field}:"))
                assert "LOW" in line, line


def test_new_links_are_the_cited_per_direction_rates():
    nvlink = _numbers(_row("GB200", "NVLink (per GPU)")["value"])[0]  # 1800 GB/s both ways
    assert hw.link("nvlink5").bandwidth_GBps == nvlink / 2
    xdr = _row("GB300", "NVLink / network")["value"]                  # "... 800 Gb/s per tray"
    assert hw.link("ib-xdr").bandwidth_GBps == float(re.search(r"(\d+) Gb/s", xdr)[1]) / 8
    v6e = _numbers(_row("TPU v6e (Trillium)", "ICI")["value"])          # 800 GBps, 4 ports
    assert hw.link("tpu-v6e-ici").bandwidth_GBps == v6e[0] / 2 / v6e[1]
    v5p = _row("TPU v5p", "ICI bandwidth per chip")["value"]          # 1200 GBps bidirectional
    # a 3D torus (the table's pod row): 6 ports per chip
    assert hw.link("tpu-v5p-ici").bandwidth_GBps == float(
        re.search(r"(\d+) GBps", v5p)[1]) / 2 / 6
    assert hw.link("nvlink4-h800").bandwidth_GBps == 400 / 2  # H800: 400 GB/s both ways


def test_h800_is_h100_silicon_with_its_own_nvlink():
    h800, h100 = hw.device("h800-sxm5-80gb"), hw.device("h100-sxm5-80gb")
    assert h800.efficiency == h100.efficiency  # reused on purpose: same GH100 die
    assert all(h800.peak_tflops[k] == h100.peak_tflops[k] for k in h800.peak_tflops)
    assert (h800.nvlink, h100.nvlink) == ("nvlink4-h800", "nvlink4")


def test_raspberry_pi_efficiency_is_its_own_hpl_figure():
    """HPL 11.9 GFLOP/s of the 48 GFLOP/s fp64 peak (its header), not the A100's 0.815."""
    pi = hw.device("raspberry-pi-4")
    assert pi.efficiency.gemm_max == pytest.approx(11.9 / 48, abs=5e-4)
    # the half point is the GEMM whose fixed loss is its own 10 us dispatch at its fp32 peak
    fixed_s = pi.efficiency.gemm_half_at(pi.peak_flops("fp32")) * 1e9 / (
        pi.efficiency.gemm_max * pi.peak_flops("fp32"))
    assert fixed_s == pytest.approx(pi.kernel_launch_s, rel=1e-3)


def test_nvl72_domain_is_the_tables_72_gpus():
    domain = _numbers(_row("GB200 NVL72", "NVLink domain size")["value"])[0]
    tray = _numbers(_row("GB200", "GPUs per compute tray (node in MLPerf)")["value"])[0]
    for name in ("gb200-nvl72", "gb300-nvl72"):
        s = hw.system(name)
        assert s.devices_per_node == tray
        assert s.devices_per_node * s.nvlink_domain_nodes == domain


def test_an_nvlink_domain_needs_a_switch_node(tmp_path, monkeypatch):
    data = yaml.safe_load((hw.PROFILES_DIR / "systems" / "dgx1-v100.yaml").read_text())
    data["nvlink_domain_nodes"] = 2
    (tmp_path / "systems").mkdir()
    (tmp_path / "systems" / "dgx1-v100.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setattr(hw, "PROFILES_DIR", tmp_path)
    hw._load.cache_clear()
    try:
        with pytest.raises(ScenarioError, match="nvlink_domain_nodes"):
            hw.system("dgx1-v100")
    finally:
        hw._load.cache_clear()


# --- NVL72: one NVLink domain over 18 trays ----------------------------------------------------

def _ring_links(topo, n: int) -> set[str]:
    return {topo.graph.edges[topo.edges[e]]["link"]
            for i in range(n) for e in topo.route(i, (i + 1) % n)}


@pytest.mark.parametrize("preset,nic", [("gb200-nvl72", "ib-ndr"), ("gb300-nvl72", "ib-xdr")])
def test_ring_over_one_nvl72_rack_stays_on_nvlink(preset, nic):
    """72 GPUs on 18 trays: every ring hop is GPU -> shared NVSwitch -> GPU, so the ring
    all-reduce is the closed form on NVLink 5: 2(n-1)/n S / 900 GB/s + 2(n-1) x 2 hops x 3.4 us
    (ideal model), and no flow touches a NIC."""
    topo = build_topology(ClusterSpec(preset=preset, nodes=18))
    n, size = 72, 1e8
    assert _ring_links(topo, n) == {"nvlink5"}
    assert [topo.edges[e][1] for e in topo.route(3, 4)] == ["d0/nvswitch", 4]  # tray 0 -> 1
    link = hw.link("nvlink5")
    r = dlsim.simulate({"name": "nvl72", "kind": "collective",
                        "cluster": {"preset": preset, "nodes": 18},
                        "collective": {"size_bytes": size, "devices": n, "protocol": "ideal"}})
    expected = closed_form(2 * (n - 1) * size / n / link.up_Bps,
                           2 * (n - 1) * 2 * link.latency_s)
    assert r.time_s == pytest.approx(expected, rel=1e-9)


def test_ring_over_two_nvl72_racks_crosses_infiniband_between_them():
    """144 GPUs = 2 racks: the two ring hops between racks (71 -> 72, 143 -> 0) leave through
    the trays' NICs over InfiniBand; the rest stay on NVLink. The ring then runs at the pace
    of its slowest hop: 2(n-1)/n S / b + 2(n-1) x lat, b and lat those of the rack-crossing
    route (edge-disjoint from the other crossing one, so nothing shares it)."""
    topo = build_topology(ClusterSpec(preset="gb200-nvl72", nodes=36))
    n, size = 144, 1e8
    assert "ib-ndr" in _ring_links(topo, n)
    within = {topo.graph.edges[topo.edges[e]]["link"] for e in topo.route(70, 71)}
    assert within == {"nvlink5"}
    cross = [topo.route(71, 72), topo.route(143, 0)]
    assert not set(cross[0]) & set(cross[1])
    b = min(topo.capacity_Bps[c].min() for c in cross)
    lat = max(topo.latency_s[c].sum() for c in cross)
    assert b == hw.link("ib-ndr").up_Bps  # 50 GB/s NDR below PCIe Gen5's 63
    r = dlsim.simulate({"name": "nvl72x2", "kind": "collective",
                        "cluster": {"preset": "gb200-nvl72", "nodes": 36},
                        "collective": {"size_bytes": size, "devices": n, "protocol": "ideal"}})
    expected = closed_form(2 * (n - 1) * size / n / b, 2 * (n - 1) * lat)
    assert r.time_s == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("fabric,pxn", [("fat-tree", True), ("rail", True), ("rail", False)])
def test_routes_between_nvl72_racks_from_cached_legs_equal_a_full_search(fabric, pxn):
    """As for the 8-GPU presets (test_topology): between two racks a route is composed from
    cached legs; it must be what a breadth-first search over the whole graph finds. Within
    a rack no route is composed at all (it is GPU -> NVSwitch -> GPU)."""
    topo = build_topology(ClusterSpec(preset="gb200-nvl72", nodes=36, fabric=fabric, pxn=pxn,
                                      oversubscription=2, nics_per_leaf=8))

    def searched(s: int, d: int) -> np.ndarray:
        return topo._edge_ids(topo._ecmp_path(topo._path(s, d), d))

    for s in (0, 5, 71):
        assert not any(topo._between_nodes(s, d) for d in range(72))
        for d in range(72, 144):
            proxy = topo._pxn_proxy(s, d)
            expected = (searched(s, d) if proxy is None else
                        np.concatenate((searched(s, proxy), searched(proxy, d))))
            assert topo.route(s, d).tolist() == expected.tolist(), (s, d)
