"""A mixture-of-experts MLP kernel by kernel, as Megatron-Core's ``MoELayer`` runs it with the
all-to-all token dispatcher (NVIDIA/Megatron-LM, megatron/core/transformer/moe/: router.py,
token_dispatcher.py ``MoEAlltoAllTokenDispatcher``, experts.py ``TEGroupedMLP``, moe_utils.py
``permute`` / ``unpermute`` / ``sort_chunks_by_idxs``), with the options of NVIDIA's MoE
benchmark configs (yanring/Megatron-MoE-ModelZoo model_configs/benchmarking: grouped GEMM,
``--moe-permute-fusion``, aux-loss load balancing).

Forward, for the ``tokens`` (t) a rank routes, c = top_k·t copies, h hidden, E experts, dt
bytes per element:

- ``router``: the gating GEMM t x h x E (kept in 16 bit under FP8, ``dlsim.workload.precision``).
- ``moe_route``: softmax over the E logits, top-k, the probabilities and the routing map
  scattered back to t x E, the aux loss's scores (a second softmax) summed over the tokens:
  unfused PyTorch ops, seven sweeps over t·E fp32 values, 28·t·E bytes.
- ``moe_permute``: Transformer Engine's fused permute, which reads each token once and writes
  its copies grouped by expert: (t + c)·h·dt bytes.
- ``moe_d2h``, ``moe_sync`` (token drop only): under a capacity factor the number of copies a
  rank permutes is known only on the GPU, so ``MoEAlltoAllTokenDispatcher.preprocess`` moves
  it and the all-to-all splits to the host before the first permutation
  (``cuda_sync_point = "before_permutation_1"``, ``_maybe_dtoh_and_synchronize``): five
  non-blocking device-to-host copies (tokens_per_expert, input_splits, output_splits,
  output_splits_tp, num_out_tokens) and a stream synchronisation, the GPU idle meanwhile; a
  launch latency each, and one more to relaunch the permute. Dropless, the sync point is the
  all-to-all, after the permute, whose kernel the side-stream copies run beside: nothing
  waits, nothing is charged. Forward only (the backward reuses the host splits).
- (the token-count exchange and the all-to-all dispatch, ``dlsim.parallel.expert``; under
  expert_tensor et > 1 the copies are then all-gathered over the et ranks that split each
  expert.)
- ``moe_sort``: with more than one local expert, ``sort_chunks_by_idxs`` regroups the r copies
  the rank received (from every source rank) by local expert, reading and writing them:
  2·r·h·dt bytes.
- ``expert_up``, ``expert_act``, ``expert_down``: the local experts' SwiGLU as two grouped GEMMs
  (r x h x 2f/et, then r x f/et x h) around the activation on r x f/et; a grouped GEMM is
  ``groups`` = local experts GEMMs of r/groups rows each (``Kernel.groups``: each as efficient
  as a GEMM of its own size), reading the copies, every local expert's weights and writing its
  product.
- ``moe_unsort``: the inverse regrouping, 2·r·h·dt bytes.
- (the all-to-all combine)
- ``moe_unpermute``: TE's fused unpermute: each token's copies read, weighted by their
  probabilities, summed and written: (c + t)·h·dt bytes.

The shared experts, which every token passes, follow as a dense SwiGLU MLP of shared·f
(split over the tensor ranks like the dense MLP, Megatron-Core's ``SharedExpertMLP``).

Backward (``moe_backward``: ``dlsim.workload.model.backward_of`` less the host stall) runs
each GEMM's input- and weight-gradient GEMMs (a grouped GEMM's as two grouped GEMMs of the
same groups) and moves each copy's bytes back (a permutation's gradient is the inverse
permutation). The unpermute's backward also differentiates the probabilities it weighted the
copies by: TE's ``unpermute_with_mask_map_bwd_with_merging_probs`` reads the output gradient
(t·h), the forward's permuted input (c·h, for one dot product per copy) and writes the
copies' gradient (c·h): (t + 2c)·h·dt bytes.

Built for one device holding every expert (the decoder's layers), r = c and every expert is
local; expert parallelism re-prices the routed kernels for the busiest rank with
``moe_kernels`` (``dlsim.parallel.expert``).
"""

from __future__ import annotations

from dlsim.workload.model import Kernel, backward_of, elementwise, gemm

# Between the dispatch and the combine all-to-alls: the kernels that run on received copies.
ROUTED_KERNELS = frozenset({"moe_sort", "expert_up", "expert_act", "expert_down",
                            "moe_unsort"})
# The host synchronisation of a token-dropping dispatcher: forward only, no backward.
HOST_KERNELS = frozenset({"moe_d2h", "moe_sync"})
# Every kernel of the routed path, which expert parallelism re-prices as a whole.
MOE_KERNELS = ROUTED_KERNELS | HOST_KERNELS | {"moe_route", "moe_permute", "moe_unpermute"}

ROUTE_SWEEPS = 7  # softmax read+write, top-k read, probs and map scatter, aux softmax, sum
FP32 = 4
# tokens_per_expert, input_splits, output_splits, output_splits_tp and num_out_tokens
# (``_maybe_dtoh_and_synchronize``; the splits exist with expert or expert-tensor ranks)
D2H_COPIES = 5


def grouped_gemm(rows: float, k: float, n: float, groups: int, dtype_bytes: int,
                 name: str) -> Kernel:
    """``groups`` expert GEMMs sharing ``rows`` rows of (. x k)(k x n): 2·rows·k·n FLOPs,
    reading the rows and every group's weights once and writing the products."""
    return Kernel("gemm", 2.0 * rows * k * n,
                  dtype_bytes * (rows * k + groups * k * n + rows * n), name, groups=groups)


def copy(elements: float, dtype_bytes: int, name: str) -> Kernel:
    """A memory-bound data movement of ``elements`` read and written in total."""
    return Kernel("copy", 0.0, dtype_bytes * elements, name)


def host_sync(copies: int) -> tuple[Kernel, ...]:
    """``copies`` device-to-host copies and the synchronisation after them: kernels with no
    work, a launch latency each, the last one the relaunch of the stalled stream."""
    return (*(Kernel("copy", 0.0, 0.0, "moe_d2h") for _ in range(copies)),
            Kernel("copy", 0.0, 0.0, "moe_sync"))


def moe_kernels(hidden: int, ffn: int, experts: int, top_k: int, dtype_bytes: int,
                tokens: float, received: float, local_experts: int,
                expert_tensor: int = 1, d2h_copies: int = 0) -> tuple[Kernel, ...]:
    """The routed path of one MoE layer after the router GEMM (module docstring,
    ``moe_route`` to ``moe_unpermute``) on one rank that routes ``tokens`` tokens and whose
    ``local_experts`` compute on ``received`` token copies, each expert split
    ``expert_tensor`` ways; ``d2h_copies`` > 0 (token drop) stalls for them and a
    synchronisation before the permute."""
    h, dt, copies = hidden, dtype_bytes, top_k * tokens
    f = ffn / expert_tensor
    sort = local_experts > 1
    return (
        Kernel("elementwise", ROUTE_SWEEPS * tokens * experts,
               ROUTE_SWEEPS * FP32 * tokens * experts, "moe_route"),
        *(host_sync(d2h_copies) if d2h_copies else ()),
        copy((tokens + copies) * h, dt, "moe_permute"),
        *((copy(2 * received * h, dt, "moe_sort"),) if sort else ()),
        grouped_gemm(received, h, 2 * f, local_experts, dt, "expert_up"),
        elementwise(received * f, dt, 3.0, "expert_act"),
        grouped_gemm(received, f, h, local_experts, dt, "expert_down"),
        *((copy(2 * received * h, dt, "moe_unsort"),) if sort else ()),
        copy((copies + tokens) * h, dt, "moe_unpermute"),
    )


def moe_backward(forward: tuple[Kernel, ...], hidden: int, tokens: float, top_k: int,
                 dtype_bytes: int) -> tuple[Kernel, ...]:
    """The backward of a routed path (``moe_kernels``) of ``tokens`` routed tokens: no host
    stall, and an unpermute that also reads the forward's copies for the probabilities'
    gradient, (t + 2·top_k·t)·h·dt bytes."""
    unpermute = copy((tokens + 2 * top_k * tokens) * hidden, dtype_bytes, "moe_unpermute")
    return tuple(unpermute if k.name == "moe_unpermute" else k
                 for k in backward_of(tuple(k for k in forward if k.name not in HOST_KERNELS)))


def router(hidden: int, experts: int, tokens: float, dtype_bytes: int) -> Kernel:
    """The gating GEMM, t x h x E (tensor parallelism splits it along the sequence)."""
    return gemm(tokens, hidden, experts, dtype_bytes, "router")


def shared_expert_kernels(hidden: int, shared_ffn: int, tokens: float,
                          dtype_bytes: int) -> tuple[Kernel, ...]:
    """The shared experts as one dense SwiGLU MLP of ``shared_ffn`` (gate and up, down)."""
    if not shared_ffn:
        return ()
    return (gemm(tokens, hidden, 2 * shared_ffn, dtype_bytes, "shared_up"),
            elementwise(tokens * shared_ffn, dtype_bytes, 3.0, "shared_act"),
            gemm(tokens, shared_ffn, hidden, dtype_bytes, "shared_down"))
