"""Hardware profiles in ``hardware_profiles/``: they load, they cross-reference, and every figure
carries its source.

The source-comment check reads the YAML text line by line (not the parsed values), so a figure
added without a ``# source`` comment on its own line fails here.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from dlsim.contract.errors import ScenarioError
from dlsim.hardware import profiles as hw

KINDS = {"devices": hw.device, "links": hw.link, "systems": hw.system}


def _files(kind: str) -> list[Path]:
    return sorted((hw.PROFILES_DIR / kind).glob("*.yaml"))


ALL_FILES = [p for kind in KINDS for p in _files(kind)]


def _ids(paths: list[Path]) -> list[str]:
    return [f"{p.parent.name}/{p.stem}" for p in paths]


# --- the profiles exist -------------------------------------------------------------------------

EXPECTED = {
    "devices": {
        "v100-sxm2-32gb", "a100-sxm4-80gb", "a100-pcie-80gb", "h100-sxm5-80gb", "h200-sxm-141gb",
        "tpu-v4", "tpu-v5e", "cpu-host", "raspberry-pi-4", "jetson-orin-nano",
        "phone-high", "phone-mid", "phone-low",
        "b200-sxm-180gb", "b300-sxm-288gb", "gb200", "gb300", "h800-sxm5-80gb", "mi300x", "mi325x",
        "tpu-v5p", "tpu-v6e",
    },
    "links": {
        "nvlink2", "nvlink3", "nvlink4", "pcie3-x16", "pcie4-x16", "pcie5-x16", "upi",
        "ib-edr", "ib-hdr", "ib-ndr", "eth-25g", "eth-100g", "eth-400g", "wifi", "lte",
        "tpu-v4-ici", "tpu-v5e-ici", "nvlink5", "nvlink4-h800", "ib-xdr", "tpu-v5p-ici",
        "tpu-v6e-ici",
    },
    "systems": {
        "dgx-a100", "dgx-h100", "hgx-h200", "dgx1-v100", "pcie-8gpu-2socket", "tpu-v4-slice",
        "dgx-b200", "hgx-h800", "gb200-nvl72", "gb300-nvl72",
    },
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_expected_profiles_present(kind):
    missing = EXPECTED[kind] - set(hw.available(kind))
    assert not missing, f"missing {kind} profiles: {sorted(missing)}"


# --- every profile loads and validates ----------------------------------------------------------

@pytest.mark.parametrize("path", ALL_FILES, ids=_ids(ALL_FILES))
def test_profile_loads(path):
    profile = KINDS[path.parent.name](path.stem)
    assert profile.name == path.stem


@pytest.mark.parametrize("path", ALL_FILES, ids=_ids(ALL_FILES))
def test_file_stem_equals_name(path):
    data = yaml.safe_load(path.read_text())
    assert data["name"] == path.stem


@pytest.mark.parametrize("path", _files("systems"), ids=_ids(_files("systems")))
def test_system_references_resolve(path):
    s = hw.system(path.stem)
    hw.device(s.device)
    for link_name in (s.device_link, s.host_link, s.socket_link, s.nic_link):
        if link_name is not None:
            hw.link(link_name)


def test_devices_have_sane_units():
    # Catches unit slips (GB/s vs TB/s, W vs kW, TFLOP/s vs GFLOP/s) rather than exact values.
    for name in hw.available("devices"):
        d = hw.device(name)
        assert 0.01 < max(d.peak_tflops.values()) < 20_000, name  # GB300 NVFP4: 14,700
        assert 1 < d.memory_bandwidth_GBps < 10_000, name
        assert 1 <= d.power_W <= 1500, name  # GB300: 1.4 kW per GPU
        assert d.kernel_launch_us < 100, name


def test_only_wireless_links_are_asymmetric():
    for name in hw.available("links"):
        link = hw.link(name)
        asymmetric = link.bandwidth_GBps is None
        assert asymmetric == (name in {"wifi", "lte"}), name
        if asymmetric:
            assert link.up_GBps < link.down_GBps, name


# --- every number has its source on the same line ------------------------------------------------

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
# A number as a YAML scalar token: not glued to letters, '-', '.' or '_' (so 'a100-sxm4-80gb',
# 'pcie4-x16' or 'fp16' do not count), optionally signed, decimal or exponent form.
_NUMBER = re.compile(r"(?<![\w.\-])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.\-])")
_MIN_SOURCE_CHARS = 10


def unsourced_number_lines(text: str) -> list[tuple[int, str]]:
    """Lines of a YAML document that hold a number but no ``# source`` comment after it."""
    bad = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        content, hash_, comment = _QUOTED.sub('""', line).partition("#")
        if not _NUMBER.search(content):
            continue
        if not hash_ or len(comment.strip()) < _MIN_SOURCE_CHARS:
            bad.append((lineno, line))
    return bad


def test_source_checker_can_fail():
    doc = (
        "name: x-1\n"
        'display_name: "Thing 8380"\n'           # digits inside a quoted string: fine
        "memory_GB: 80\n"                        # no comment: flagged
        "power_W: 400  # NVIDIA datasheet\n"     # sourced: fine
        "mesh:\n"
        "  - {a: 0, b: 1, lanes: 2}  # x\n"      # comment too short to be a source: flagged
        "torus_dims: [4, 4, 4]\n"                # flow list of numbers, no comment: flagged
        "device_link: pcie4-x16\n"               # digits inside a name: fine
        "# 312 TFLOP/s in a comment-only line\n"  # comment-only: fine
    )
    assert [n for n, _ in unsourced_number_lines(doc)] == [3, 6, 7]


@pytest.mark.parametrize("path", ALL_FILES, ids=_ids(ALL_FILES))
def test_every_number_has_a_source_comment(path):
    bad = unsourced_number_lines(path.read_text())
    assert not bad, f"{path.name}: lines without a '# source' comment: {bad}"


# --- NCCL transport class of links ---------------------------------------------------------------

def _class_by_name_prefix(name: str) -> str:
    """The rule dlsim used before links declared their transport, kept here as the oracle."""
    if name.startswith(("nvlink", "tpu")):
        return "nvlink"
    if name.startswith(("pcie", "upi")):
        return "pci"
    return "net"


@pytest.mark.parametrize("path", _files("links"), ids=_ids(_files("links")))
def test_every_link_declares_its_transport(path):
    declared = yaml.safe_load(path.read_text()).get("transport")
    assert declared == _class_by_name_prefix(path.stem)
    assert hw.link(path.stem).transport == declared


@pytest.mark.parametrize("line,problem", [
    ("", "field 'transport': Field required"),
    ("transport: infiniband\n", "field 'transport': Input should be 'nvlink', 'pci' or 'net' "
                                 "(got 'infiniband')"),
])
def test_bad_transport_is_a_one_paragraph_error(tmp_path, monkeypatch, line, problem):
    (tmp_path / "links").mkdir()
    bad = tmp_path / "links" / "my-link.yaml"
    bad.write_text(f"name: my-link\ndisplay_name: mine\n{line}bandwidth_GBps: 1\nlatency_us: 1\n")
    monkeypatch.setattr(hw, "PROFILES_DIR", tmp_path)
    hw._load.cache_clear()
    try:
        with pytest.raises(ScenarioError) as info:
            hw.link("my-link")
    finally:
        hw._load.cache_clear()
    message = str(info.value)
    assert message == f"Error in {bad}: invalid link profile: {problem}."
    assert "\n" not in message


# --- DGX-1 hybrid cube mesh ---------------------------------------------------------------------

def test_dgx1_mesh_gives_every_gpu_six_nvlink_lanes():
    s = hw.system("dgx1-v100")
    assert s.intra_node == "mesh"
    assert s.device_link == "nvlink2"
    lanes = Counter()
    pairs = set()
    for m in s.mesh:
        pair = frozenset((m.a, m.b))
        assert pair not in pairs, f"duplicate mesh entry {sorted(pair)}"
        pairs.add(pair)
        lanes[m.a] += m.lanes
        lanes[m.b] += m.lanes
    assert {gpu: lanes[gpu] for gpu in range(s.devices_per_node)} == {g: 6 for g in range(8)}


def test_dgx1_mesh_matches_nvidia_smi_topology():
    expected = {
        (0, 1): 1, (0, 2): 1, (0, 3): 2, (0, 4): 2, (1, 2): 2, (1, 3): 1, (1, 5): 2, (2, 3): 2,
        (2, 6): 1, (3, 7): 1, (4, 5): 1, (4, 6): 1, (4, 7): 2, (5, 6): 2, (5, 7): 1, (6, 7): 2,
    }
    got = {tuple(sorted((m.a, m.b))): m.lanes for m in hw.system("dgx1-v100").mesh}
    assert got == expected


def test_tpu_slice_torus_shape():
    s = hw.system("tpu-v4-slice")
    assert s.torus_dims == [4, 4, 4] and s.devices_per_node == 64


# --- unknown names ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,known", [
    ("devices", "a100-sxm4-80gb"), ("links", "nvlink3"), ("systems", "dgx-a100"),
])
def test_unknown_name_lists_what_is_available(kind, known):
    with pytest.raises(ScenarioError) as info:
        KINDS[kind]("no-such-profile")
    message = str(info.value)
    assert "no-such-profile" in message
    assert "available" in message
    assert known in message
    assert all(name in message for name in hw.available(kind))


def test_missing_dtype_is_a_scenario_error():
    with pytest.raises(ScenarioError, match="bf16"):
        hw.device("v100-sxm2-32gb").peak_flops("bf16")


# --- spot checks against the validation README's vendor figures ----------------------------------

def test_published_figures():
    assert hw.device("a100-sxm4-80gb").peak_tflops["bf16"] == 312
    assert hw.device("a100-sxm4-80gb").peak_tflops["fp32"] == 19.5
    assert hw.device("a100-sxm4-80gb").memory_bandwidth_GBps == 2039
    assert hw.device("h100-sxm5-80gb").peak_tflops["bf16"] == pytest.approx(989, abs=1)
    assert hw.device("h100-sxm5-80gb").peak_tflops["fp32"] == 67
    assert hw.device("h100-sxm5-80gb").memory_bandwidth_GBps == 3350
    h200 = hw.device("h200-sxm-141gb")
    assert h200.memory_GB == 141
    assert h200.memory_bandwidth_GBps == 4800
    assert h200.peak_tflops["bf16"] == pytest.approx(989, abs=1)
    v100 = hw.device("v100-sxm2-32gb")
    assert v100.peak_tflops["fp16"] == 125
    assert v100.peak_tflops["fp32"] == 15.7
    assert v100.memory_bandwidth_GBps == 900
    tpu4 = hw.device("tpu-v4")
    assert tpu4.peak_tflops["bf16"] == 275
    assert tpu4.memory_bandwidth_GBps == 1200
    assert tpu4.memory_GB == pytest.approx(32 * 2**30 / 1e9, rel=1e-3)  # 32 GiB
    tpu5e = hw.device("tpu-v5e")
    assert tpu5e.peak_tflops["bf16"] == 197
    assert (tpu5e.memory_GB, tpu5e.memory_bandwidth_GBps) == (16, 819)
    assert hw.device("raspberry-pi-4").power_W == 7.2


def test_link_bandwidths_per_direction():
    assert hw.link("pcie3-x16").bandwidth_GBps == 15.75
    assert hw.link("pcie4-x16").bandwidth_GBps == 31.5
    assert hw.link("pcie5-x16").bandwidth_GBps == 63
    # NVLink per GPU, both directions together: 300 (V100, 6 bricks) / 600 (A100) / 900 (H100)
    assert 6 * hw.link("nvlink2").bandwidth_GBps * 2 == 300
    assert hw.link("nvlink3").bandwidth_GBps * 2 == 600
    assert hw.link("nvlink4").bandwidth_GBps * 2 == 900
    # InfiniBand EDR / HDR / NDR: 100 / 200 / 400 Gb/s per port
    for name, gbit in [("ib-edr", 100), ("ib-hdr", 200), ("ib-ndr", 400)]:
        assert hw.link(name).bandwidth_GBps == gbit / 8
    for name, gbit in [("eth-25g", 25), ("eth-100g", 100), ("eth-400g", 400)]:
        assert hw.link(name).bandwidth_GBps == gbit / 8


# --- efficiencies reproduce the published microbenchmarks they were fitted to ---------------------

# (device, dtype of the published GEMM, TFLOP/s at 1024^3 and 8192^3, HBM copy TB/s,
#  attention TFLOP/s)
# from /work/shared/validation/published_microbenchmarks.csv (Azure AI-benchmarking-guide).
PUBLISHED = [
    ("a100-sxm4-80gb", "fp16", 119.4, 253.7, 1.61, 46.0),
    ("h100-sxm5-80gb", "fp8", 274.1, 1290.1, 2.9, 145.1),
    ("h200-sxm-141gb", "fp8", 290.8, 1300.6, 4.01, 161.5),
]


@pytest.mark.parametrize("name,dtype,t1024,t8192,copy_tbs,attn", PUBLISHED)
def test_efficiency_reproduces_published_microbenchmarks(name, dtype, t1024, t8192, copy_tbs, attn):
    d = hw.device(name)
    e = d.efficiency
    peak = d.peak_tflops[dtype]
    for n, published in [(1024, t1024), (8192, t8192)]:
        f = 2 * n**3 / 1e9
        top, half = e.gemm_curve(dtype, d.peak_flops(dtype))
        predicted = peak * top * f / (f + half)
        assert predicted == pytest.approx(published, rel=0.01), (n, predicted)
    assert e.memory * d.memory_bandwidth_GBps / 1000 == pytest.approx(copy_tbs, rel=0.01)
    assert e.attention * d.peak_tflops["bf16"] == pytest.approx(attn, rel=0.01)
