"""A small mixture-of-experts transformer written the way a user writes one
(``kind: transformer`` with a ``moe:`` block): SwiGLU decoder blocks whose MLP is
``experts`` routed experts of ``ffn`` hidden units (3·h·ffn parameters each), ``top_k`` per
token, behind a router."""

from __future__ import annotations

from typing import Any

from dlsim.contract.scenario import ModelSpec
from dlsim.workload.model import Model
from dlsim.workload.presets import build_model


def moe_spec(layers: int, h: int, heads: int, s: int, vocab: int, experts: int, top_k: int,
             ffn: int, capacity_factor: float | None = None,
             router_imbalance: float = 1.0) -> dict[str, Any]:
    moe: dict[str, Any] = {"experts": experts, "top_k": top_k, "expert_ffn_hidden": ffn,
                           "router_imbalance": router_imbalance}
    if capacity_factor is not None:
        moe["capacity_factor"] = capacity_factor
    return {"kind": "transformer", "layers": layers, "hidden": h, "heads": heads,
            "seq_len": s, "vocab": vocab, "mlp": "swiglu", "ffn_hidden": ffn, "moe": moe}


def moe_model(layers: int, h: int, heads: int, s: int, vocab: int, b: int, experts: int,
              top_k: int, ffn: int, dtype_bytes: int = 2, capacity_factor: float | None = None,
              router_imbalance: float = 1.0) -> Model:
    spec = ModelSpec.model_validate(moe_spec(layers, h, heads, s, vocab, experts, top_k, ffn,
                                             capacity_factor, router_imbalance))
    return build_model(spec, b, dtype_bytes)
