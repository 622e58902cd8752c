"""A mixture-of-experts layer written as a torch module, imported as dlsim layers: its
parameters and FLOPs equal FlopCounterMode's totals and the closed form of its routing.

The layer routes by expert choice (Zhou et al. 2022, "Mixture-of-Experts with Expert Choice
Routing"): each of E experts takes its C = t·k/E highest-scoring tokens, so every shape is
known before the data is (the meta device has none) and the experts' batched GEMMs are of
C tokens each, as a real MoE's are.
"""

from __future__ import annotations

import pytest

from dlsim.workload.model import Model
from dlsim.workload.torch_import import model_from_module

torch = pytest.importorskip("torch")
nn = torch.nn
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

H, FFN, EXPERTS, TOP_K, SEQ, B = 32, 64, 4, 2, 16, 2


class ExpertChoiceMoE(nn.Module):
    def __init__(self, h: int, ffn: int, experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(h, experts, bias=False)
        self.w_in = nn.Parameter(torch.empty(experts, h, ffn))
        self.w_out = nn.Parameter(torch.empty(experts, ffn, h))

    def forward(self, x):
        b, s, h = x.shape
        tokens = x.reshape(b * s, h)
        scores = self.router(tokens).softmax(dim=-1)  # [t, E]
        capacity = b * s * self.top_k // scores.shape[1]
        gate, chosen = scores.t().topk(capacity, dim=-1)  # [E, C] per expert
        picked = tokens[chosen]  # [E, C, h]
        hidden = torch.nn.functional.gelu(torch.bmm(picked, self.w_in))
        out = torch.bmm(hidden, self.w_out) * gate.unsqueeze(-1)
        return torch.zeros_like(tokens).index_add(0, chosen.reshape(-1),
                                                  out.reshape(-1, h)).reshape(b, s, h)


class MoEModel(nn.Module):
    """An embedding, the MoE layer, and a head: the layer's input needs a gradient."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, H)
        self.moe = ExpertChoiceMoE(H, FFN, EXPERTS, TOP_K)

    def forward(self, ids):
        return self.moe(self.embed(ids))


INPUTS = {"ids": {"shape": [1, SEQ], "dtype": "int64"}}


def _flop_counter() -> tuple[int, int, int]:
    with torch.device("meta"):
        module = MoEModel()
    ids = torch.zeros([B, SEQ], dtype=torch.int64, device="meta")
    with FlopCounterMode(display=False) as forward:
        out = module(ids=ids)
    with FlopCounterMode(display=False) as backward:
        out.float().sum().backward()
    fwd = forward.get_total_flops()
    return sum(p.numel() for p in module.parameters()), fwd, fwd + backward.get_total_flops()


def _imported() -> Model:
    with torch.device("meta"):
        module = MoEModel()
    return model_from_module(module, INPUTS, B, 2)


def _flops(model: Model, backward: bool) -> float:
    return sum(k.flops for layer in model.layers
               for k in (*layer.forward, *(layer.backward if backward else ()))
               if k.kind in ("gemm", "attention", "conv"))


def test_moe_flops_and_parameters_equal_flop_counter_and_the_closed_form():
    params, fwd, total = _flop_counter()
    model = _imported()
    t = B * SEQ
    capacity = t * TOP_K // EXPERTS
    assert model.parameters == params == 100 * H + H * EXPERTS + 2 * EXPERTS * H * FFN
    # forward: the router 2·t·h·E and each expert's two GEMMs over its C tokens, 2·C·h·f each
    closed_forward = 2 * t * H * EXPERTS + EXPERTS * 2 * (2 * capacity * H * FFN)
    assert _flops(model, False) == pytest.approx(fwd, rel=1e-9)
    assert fwd == closed_forward
    # backward: input and weight gradients of every GEMM (the router's input needs one: the
    # embedding is trained), twice the forward
    assert _flops(model, True) == pytest.approx(total, rel=1e-9)
    assert total == 3 * closed_forward
