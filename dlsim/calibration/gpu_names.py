"""The hardware profile a CUDA host's calibration overlays, from the name torch reports
(``torch.cuda.get_device_name``). Torch-free.

Names are matched whole, not by the model number inside them: an A100-SXM4 host used to
match ``a100-pcie-80gb`` (the first profile whose display name held "A100") and a GH200 the
H200 profile ("H200" is inside "GH200"). A GPU that has no profile of its own, or a variant
whose memory or clocks differ from the nearest profile, is refused with the reason, never
mapped to a profile of another part.
"""

from __future__ import annotations

from dlsim.contract.errors import ScenarioError

# torch.cuda.get_device_name() -> profile (nvidia-smi / torch report these strings)
PROFILE_OF: dict[str, str] = {
    "NVIDIA A100-SXM4-80GB": "a100-sxm4-80gb",
    "NVIDIA A100 80GB PCIe": "a100-pcie-80gb",
    "NVIDIA H100 80GB HBM3": "h100-sxm5-80gb",   # the SXM5 board reports its memory, not "SXM"
    "NVIDIA H200": "h200-sxm-141gb",
    "NVIDIA H800": "h800-sxm5-80gb",
    "NVIDIA B200": "b200-sxm-180gb",
    "Tesla V100-SXM2-32GB": "v100-sxm2-32gb",
}

# parts torch reports that look like a profile's but are not that part
NOT_PROFILED: dict[str, str] = {
    "NVIDIA A100-SXM4-40GB": "40 GB HBM2 at 1,555 GB/s, where a100-sxm4-80gb has 80 GB at "
                             "2,039 GB/s",
    "NVIDIA A100-PCIE-40GB": "40 GB HBM2 at 1,555 GB/s and 250 W, where a100-pcie-80gb has "
                             "80 GB",
    "NVIDIA H100 PCIe": "the PCIe board (756 dense BF16 TFLOP/s, 2.0 TB/s, 350 W), not the "
                        "SXM5 part of h100-sxm5-80gb",
    "NVIDIA GH200 480GB": "a Grace Hopper superchip (96 GB HBM3, NVLink-C2C to Grace), not "
                          "the H200 SXM of h200-sxm-141gb",
    "Tesla V100-SXM2-16GB": "16 GB, where v100-sxm2-32gb has 32 GB",
}


def profile_for_gpu(name: str) -> str:
    """The profile of the GPU torch calls ``name``; a GPU without one is an input error."""
    key = " ".join(name.split()).casefold()
    for known, profile in PROFILE_OF.items():
        if known.casefold() == key:
            return profile
    for known, why in NOT_PROFILED.items():
        if known.casefold() == key:
            raise ScenarioError(
                f"GPU '{name}' has no hardware profile: it is {why}. Add its own profile "
                "under hardware_profiles/devices/ and its torch name to "
                "dlsim/calibration/gpu_names.py.", field="--device")
    raise ScenarioError(
        f"no hardware profile is known for GPU '{name}' (profiled GPUs: "
        f"{', '.join(PROFILE_OF)}). Add its profile under hardware_profiles/devices/ and "
        "its torch name to dlsim/calibration/gpu_names.py.", field="--device")
