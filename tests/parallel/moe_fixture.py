"""A tiny mixture-of-experts transformer built by hand (the MoE presets arrive with the
models branch): GPT blocks whose MLP is ``experts`` routed experts of ``ffn`` hidden units,
``top_k`` per token, behind a router, with the MoEBlock convention of
``dlsim.workload.model`` (the routed kernels cover tokens * top_k copies)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dlsim.contract.scenario import ModelSpec
from dlsim.workload.model import (
    Model,
    MoEBlock,
    backward_of,
    elementwise,
    gemm,
    transformer_layers,
)
from dlsim.workload.shapes import MoEShape, TransformerShape

EXPERT_KERNELS = frozenset({"expert_up", "expert_act", "expert_down"})


def moe_model(layers: int, h: int, heads: int, s: int, vocab: int, b: int, experts: int,
              top_k: int, ffn: int, dtype_bytes: int = 2, capacity_factor: float | None = None,
              router_imbalance: float = 1.0) -> Model:
    dense = transformer_layers("moe-test", layers, h, heads, s, vocab, b, dtype_bytes)
    t = b * s
    out = []
    for layer in dense.layers:
        if layer.role != "block":
            out.append(layer)
            continue
        attention = layer.forward[:6]  # layernorm1 .. residual1+layernorm2
        fwd = (*attention, gemm(t, h, experts, dtype_bytes, "router"),
               gemm(t * top_k, h, ffn, dtype_bytes, "expert_up"),
               elementwise(t * top_k * ffn, dtype_bytes, name="expert_act"),
               gemm(t * top_k, ffn, h, dtype_bytes, "expert_down"), layer.forward[-1])
        moe = MoEBlock(experts, top_k, 2 * h * ffn, t, h * dtype_bytes, EXPERT_KERNELS,
                       capacity_factor, router_imbalance)
        out.append(replace(layer, forward=fwd, backward=backward_of(fwd), moe=moe,
                           params=4 * h * h + h * experts + experts * 2 * h * ffn))
    return Model("moe-test", tuple(out))


def moe_shape(shape: TransformerShape, experts: int, top_k: int, ffn: int,
              capacity_factor: float | None = None,
              router_imbalance: float = 1.0) -> TransformerShape:
    return replace(shape, moe=MoEShape(experts, top_k, ffn, capacity_factor=capacity_factor,
                                       router_imbalance=router_imbalance))


def use_moe(monkeypatch: pytest.MonkeyPatch, experts: int, top_k: int, ffn: int,
            **moe: float | None) -> None:
    """Make ``kind: training`` build the scenario's transformer with MoE blocks."""
    import dlsim.kinds.training as training
    import dlsim.parallel.feasibility as feasibility
    from dlsim.workload.shapes import shape_of

    def build(spec: ModelSpec, microbatch: int, dtype_bytes: int) -> Model:
        sh = shape_of(spec)
        assert sh is not None
        return moe_model(sh.layers, sh.hidden, sh.heads, sh.seq_len, sh.vocab, microbatch,
                         experts, top_k, ffn, dtype_bytes, **moe)  # type: ignore[arg-type]

    def shape(spec: ModelSpec) -> TransformerShape | None:
        sh = shape_of(spec)
        return None if sh is None else moe_shape(sh, experts, top_k, ffn, **moe)  # type: ignore[arg-type]

    monkeypatch.setattr(training, "build_model", build)
    monkeypatch.setattr(training, "shape_of", shape)
    monkeypatch.setattr(feasibility, "shape_of", shape)
