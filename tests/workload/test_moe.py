"""Megatron-Core's MoE kernels (``dlsim.workload.moe``): the bytes each token movement moves,
the grouped GEMM's efficiency as that of one of its GEMMs, and the backward's counts, against
closed forms written out here."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlsim.hardware import profiles as hardware
from dlsim.workload.costmodel import compute_efficiency, roofline_s
from dlsim.workload.model import Kernel, backward_of, gemm
from dlsim.workload.moe import (
    HOST_KERNELS,
    ROUTED_KERNELS,
    grouped_gemm,
    moe_backward,
    moe_kernels,
)

H100 = hardware.device("h100-sxm5-80gb")
sizes = st.sampled_from([256, 1024, 2048, 4096])


def _by_name(kernels: tuple[Kernel, ...]) -> dict[str, Kernel]:
    return {k.name: k for k in kernels}


@given(st.sampled_from([512, 1024, 3584]), st.sampled_from([256, 2560]),
       st.sampled_from([8, 64]), st.integers(1, 8), sizes, st.sampled_from([1, 2, 4, 8]),
       st.sampled_from([1, 2]), st.sampled_from([1.0, 1.25]))
def test_token_movements_move_their_closed_form_bytes(h, f, experts, top_k, tokens, e, et,
                                                      load):
    """Per rank, at 2 bytes: permute reads each of its t tokens once and writes top_k·t
    copies, unpermute the reverse; the regrouping by local expert reads and writes the r
    copies received (r = top_k·t·load·et), and runs only with more than one local expert;
    the route sweeps 7 fp32 passes over t·E; the experts' GEMMs run E/e groups f/et wide."""
    top_k = min(top_k, experts)
    local, r = experts // e, top_k * tokens * load * et
    path = _by_name(moe_kernels(h, f, experts, top_k, 2, tokens, r, local, et))
    assert path["moe_permute"].bytes == path["moe_unpermute"].bytes == 2 * (
        tokens + top_k * tokens) * h
    assert path["moe_route"].bytes == 7 * 4 * tokens * experts
    if local > 1:
        assert path["moe_sort"].bytes == path["moe_unsort"].bytes == 2 * 2 * r * h
    else:
        assert "moe_sort" not in path and "moe_unsort" not in path
    up, down = path["expert_up"], path["expert_down"]
    assert up.groups == down.groups == local
    assert up.flops == pytest.approx(2 * r * h * 2 * f / et, rel=1e-15)
    assert down.flops == pytest.approx(2 * r * f / et * h, rel=1e-15)
    assert up.bytes == pytest.approx(2 * (r * h + local * h * 2 * f / et + r * 2 * f / et),
                                     rel=1e-15)
    assert {k.name for k in path.values() if k.name in ROUTED_KERNELS} <= ROUTED_KERNELS


@given(st.sampled_from([1, 2, 8, 16, 64, 256]), sizes, sizes, sizes)
def test_a_grouped_gemm_is_as_efficient_as_one_of_its_gemms(groups, m, k, n):
    """G GEMMs of (m x k)(k x n) in one grouped kernel reach the efficiency of one of them,
    so it takes G times as long as one of them less G - 1 launches."""
    grouped = grouped_gemm(groups * m, k, n, groups, 2, "expert_up")
    one = gemm(m, k, n, 2)
    assert compute_efficiency(grouped, H100, "bf16") == pytest.approx(
        compute_efficiency(one, H100, "bf16"), rel=1e-12)
    compute = grouped.flops / (H100.peak_flops("bf16")
                               * compute_efficiency(grouped, H100, "bf16"))
    assert compute == pytest.approx(groups * one.flops / (
        H100.peak_flops("bf16") * compute_efficiency(one, H100, "bf16")), rel=1e-12)


@given(st.sampled_from([2, 8, 64]), sizes, sizes)
def test_backward_runs_two_grouped_gemms_and_moves_copies_back(groups, m, h):
    """A grouped GEMM's backward is the input- and weight-gradient grouped GEMMs, each of the
    forward's groups and sizes: twice the FLOPs at the forward's efficiency; a token
    permutation's backward moves the same bytes the other way."""
    forward = moe_kernels(h, 2 * h, groups, 2, 2, m, 2 * m, groups)
    backward = _by_name(backward_of(forward))
    up = _by_name(forward)["expert_up"]
    assert backward["expert_up"].flops == 2 * up.flops
    assert backward["expert_up"].groups == 2 * groups
    assert compute_efficiency(backward["expert_up"], H100, "bf16") == pytest.approx(
        compute_efficiency(up, H100, "bf16"), rel=1e-12)
    for name in ("moe_permute", "moe_sort", "moe_unsort"):
        assert backward[name].bytes == _by_name(forward)[name].bytes
        assert roofline_s(backward[name], H100, "bf16") == pytest.approx(
            backward[name].bytes / (H100.memory_bandwidth_Bps * H100.efficiency.memory)
            + H100.kernel_launch_s, rel=1e-12)


@pytest.mark.parametrize(("capacity", "e", "et", "copies"),
                         [(1.0, 4, 1, 5), (1.0, 1, 2, 5), (1.0, 1, 1, 2), (None, 4, 1, 0)])
def test_a_token_dropping_dispatcher_stalls_for_its_host_copies_in_forward_only(
        capacity, e, et, copies):
    """Under a capacity factor Megatron-Core moves the copy counts and the all-to-all splits
    to the host before the first permutation and synchronises: five device-to-host copies
    with expert or expert-tensor ranks (tokens_per_expert and num_out_tokens alone without),
    then the relaunch, a launch latency each on a GPU that has nothing else queued: (n + 1)
    launches before ``moe_permute`` in the forward, none in the backward; dropless, nothing."""
    from dlsim.parallel.expert import ExpertLayout, rank_kernels
    from dlsim.workload.model import MoEBlock

    moe = MoEBlock(8, 2, 3 * 512 * 1024, 1024, 512 * 2, ROUTED_KERNELS, capacity, 1.0,
                   512, 1024, 2)
    forward = rank_kernels(moe, ExpertLayout(e, et, 1))
    names = [k.name for k in forward]
    stall = [k for k in forward if k.name in HOST_KERNELS]
    assert len(stall) == (copies + 1 if copies else 0)
    assert sum(roofline_s(k, H100, "bf16") for k in stall) == pytest.approx(
        (copies + 1) * H100.kernel_launch_s if copies else 0.0, rel=1e-12)
    if copies:
        assert names.index("moe_sync") == names.index("moe_permute") - 1
        assert names.index("moe_d2h") == names.index("moe_route") + 1


@given(st.sampled_from([512, 3584]), sizes, st.integers(1, 8))
def test_the_unpermute_backward_also_reads_the_copies_for_the_probabilities_gradient(
        h, tokens, top_k):
    """TE's unpermute backward with merging probabilities reads the output gradient (t·h),
    the forward's c = top_k·t permuted copies (the probabilities' gradient is one dot
    product per copy) and writes the copies' gradient: (t + 2c)·h·2 bytes, c·h·2 more than
    the forward's unpermute; the other movements move their forward bytes back and the host
    stall has no backward."""
    forward = moe_kernels(h, 2 * h, 8, top_k, 2, tokens, top_k * tokens, 4, d2h_copies=5)
    backward = moe_backward(forward, h, tokens, top_k, 2)
    fwd, bwd = _by_name(forward), _by_name(backward)
    assert bwd["moe_unpermute"].bytes == 2 * (tokens + 2 * top_k * tokens) * h
    assert bwd["moe_unpermute"].bytes - fwd["moe_unpermute"].bytes == 2 * top_k * tokens * h
    for name in ("moe_permute", "moe_sort", "moe_unsort"):
        assert bwd[name].bytes == fwd[name].bytes
    assert not HOST_KERNELS & set(bwd)
