"""A CUDA host's calibration overlays its own GPU's profile (issue 14 item 7), tested with
the names torch.cuda.get_device_name() reports; a GPU without a profile is refused."""

from __future__ import annotations

import re

import pytest

from dlsim.calibration.gpu_names import NOT_PROFILED, PROFILE_OF, profile_for_gpu
from dlsim.contract.errors import ScenarioError
from dlsim.hardware import profiles as hardware


@pytest.mark.parametrize("torch_name,profile", [
    ("NVIDIA A100-SXM4-80GB", "a100-sxm4-80gb"),   # used to map to a100-pcie-80gb
    ("NVIDIA A100 80GB PCIe", "a100-pcie-80gb"),
    ("NVIDIA H100 80GB HBM3", "h100-sxm5-80gb"),
    ("NVIDIA H200", "h200-sxm-141gb"),
    ("NVIDIA B200", "b200-sxm-180gb"),
    ("NVIDIA H800", "h800-sxm5-80gb"),
])
def test_torch_names_map_to_their_own_profile(torch_name, profile):
    assert profile_for_gpu(torch_name) == profile
    assert profile_for_gpu(f"  {torch_name.lower()} ") == profile  # case and spacing


@pytest.mark.parametrize("torch_name", [
    "NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB", "NVIDIA H100 PCIe",
    "NVIDIA GH200 480GB",  # used to map to h200-sxm-141gb
])
def test_variants_without_a_profile_are_refused_with_the_reason(torch_name):
    with pytest.raises(ScenarioError, match="has no hardware profile") as err:
        profile_for_gpu(torch_name)
    assert torch_name in err.value.message and err.value.field == "--device"


def test_an_unknown_gpu_is_refused_naming_the_known_ones():
    with pytest.raises(ScenarioError, match="no hardware profile is known") as err:
        profile_for_gpu("NVIDIA RTX PRO 6000 Blackwell")
    assert "NVIDIA H100 80GB HBM3" in err.value.message


def test_every_mapped_profile_exists_and_its_memory_is_the_names():
    for torch_name, profile in PROFILE_OF.items():
        device = hardware.device(profile)
        assert device.kind == "gpu"
        size = re.search(r"(\d+)GB", torch_name)
        if size:
            assert device.memory_GB == float(size[1]), torch_name
    assert not set(PROFILE_OF) & set(NOT_PROFILED)


def test_calibrate_overlays_the_mapped_profile():
    pytest.importorskip("torch")
    from dlsim.calibration.calibrate import _profile_for

    assert _profile_for("NVIDIA A100-SXM4-80GB", "cuda").name == "a100-sxm4-80gb"
    assert _profile_for("whatever CPU", "cpu").name == "cpu-host"
    with pytest.raises(ScenarioError):
        _profile_for("NVIDIA GH200 480GB", "cuda")
