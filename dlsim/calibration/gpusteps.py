"""Real torch training steps on one GPU, held out from calibration, against dlsim's prediction
for the same model on that GPU's hardware profile (`dlsim validate`, tables h200_training_*).

The models are built from dlsim's shapes so that both sides describe one network: a GPT as
``hostruns.GPT`` (``workload.transformer_layers``) and a Llama-style decoder as
``workload.decoder`` lays one out (RMSNorm, grouped-query attention with rotary positions,
SwiGLU MLP, untied or tied output). A step is what a plain PyTorch user runs: bf16 autocast
over fp32 weights, torch's fused AdamW, ``scaled_dot_product_attention`` (cuDNN's fused
attention on Hopper with torch 2.11, or the backend ``sdpa`` holds it to), zero_grad,
forward, loss, backward and the optimizer; its time is the median of the timed steps after
warm-up, the peak memory torch's allocator held, and the profiler's kernel table of one more
step says where the time went.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlsim.calibration.bench import time_call
from dlsim.calibration.hostruns import GPT


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021) of ``dim`` channels, the rotate-half form."""

    def __init__(self, dim: int, seq: int, base: float = 500000.0):
        super().__init__()
        inv = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv)
        emb = torch.cat((angles, angles), dim=-1)
        self.cos: torch.Tensor
        self.sin: torch.Tensor
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        s = x.shape[-2]
        return (x * self.cos[:s] + rotated * self.sin[:s]).to(x.dtype)


class LlamaBlock(nn.Module):
    def __init__(self, h: int, heads: int, kv_heads: int, ffn: int, seq: int):
        super().__init__()
        self.heads, self.kv_heads, self.d = heads, kv_heads, h // heads
        self.norm1, self.norm2 = nn.RMSNorm(h), nn.RMSNorm(h)
        self.qkv = nn.Linear(h, (heads + 2 * kv_heads) * self.d, bias=False)
        self.o = nn.Linear(heads * self.d, h, bias=False)
        self.gate_up = nn.Linear(h, 2 * ffn, bias=False)
        self.down = nn.Linear(ffn, h, bias=False)
        self.rope = Rotary(self.d, seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(
            [self.heads * self.d, self.kv_heads * self.d, self.kv_heads * self.d], dim=-1)
        q = self.rope(q.view(b, s, self.heads, self.d).transpose(1, 2))
        k = self.rope(k.view(b, s, self.kv_heads, self.d).transpose(1, 2))
        v = v.view(b, s, self.kv_heads, self.d).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           enable_gqa=self.kv_heads != self.heads)
        x = x + self.o(a.transpose(1, 2).reshape(b, s, h))
        gate, up = self.gate_up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class Llama(nn.Module):
    def __init__(self, layers: int, hidden: int, heads: int, kv_heads: int, ffn_hidden: int,
                 vocab: int, seq_len: int, tied_embeddings: bool = False):
        super().__init__()
        self.tok = nn.Embedding(vocab, hidden)
        self.blocks = nn.Sequential(*(LlamaBlock(hidden, heads, kv_heads, ffn_hidden, seq_len)
                                      for _ in range(layers)))
        self.norm = nn.RMSNorm(hidden)
        self.head = nn.Linear(hidden, vocab, bias=False)
        if tied_embeddings:
            self.head.weight = self.tok.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.tok(idx))))


@dataclass(frozen=True)
class GpuCase:
    """One held-out model: its dlsim model block and micro-batch."""

    name: str
    model: dict[str, Any]
    batch: int

    def build(self) -> nn.Module:
        m = {k: v for k, v in self.model.items() if k not in ("kind", "mlp")}
        if self.model.get("mlp") == "swiglu":
            return Llama(**m)
        return GPT(m["layers"], m["hidden"], m["heads"], m["seq_len"], m["vocab"])


LLAMA3_8B_BLOCK = {"hidden": 4096, "heads": 32, "kv_heads": 8, "ffn_hidden": 14336,
                   "vocab": 128256, "mlp": "swiglu", "tied_embeddings": False}
CASES = [
    GpuCase("gpt 24x1024 s1024 (GPT-2 medium)",
            {"kind": "transformer", "layers": 24, "hidden": 1024, "heads": 16,
             "seq_len": 1024, "vocab": 50304}, 16),
    GpuCase("llama 16x2048 gqa8 s4096 (Llama 3.2 1B)",
            {"kind": "transformer", "layers": 16, "hidden": 2048, "heads": 32, "kv_heads": 8,
             "ffn_hidden": 8192, "vocab": 128256, "seq_len": 4096, "mlp": "swiglu",
             "tied_embeddings": True}, 2),
    GpuCase("llama 8x4096 gqa8 s8192 (Llama 3 8B blocks)",
            {"kind": "transformer", "layers": 8, "seq_len": 8192, **LLAMA3_8B_BLOCK}, 1),
    GpuCase("llama 8x4096 gqa8 s2048 (Llama 3 8B blocks)",
            {"kind": "transformer", "layers": 8, "seq_len": 2048, **LLAMA3_8B_BLOCK}, 4),
]


def _step(model: nn.Module, vocab: int, batch: int, seq: int, device: str,
          sdpa: str | None) -> Any:
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    from dlsim.calibration.bench import SDPA_BACKENDS

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, vocab, (batch, seq), device=device)
    y = torch.randint(0, vocab, (batch, seq), device=device)

    def step() -> None:
        held = nullcontext() if sdpa is None else sdpa_kernel(
            getattr(SDPBackend, SDPA_BACKENDS[sdpa]))
        opt.zero_grad(set_to_none=True)
        with held, torch.autocast(device, dtype=torch.bfloat16):
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
        loss.backward()
        opt.step()
    return step


def _kernel_table(step: Any, device: str, rows: int = 40) -> list[dict[str, Any]]:
    """The profiler's kernels (CPU: operators) of one step, by their own device time."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    table = []
    for e in prof.key_averages():
        # torch renamed self_cuda_time_total to self_device_time_total (2.4)
        own = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        us = float(own or 0) if cuda else float(e.self_cpu_time_total or 0)
        if us > 0:
            table.append({"kernel": e.key[:160], "calls": e.count, "device_us": us})
    table.sort(key=lambda r: -r["device_us"])
    return table[:rows]


def measure(case: GpuCase, repeats: int = 10, device: str = "cuda",
            compiled: bool = False, sdpa: str | None = None) -> dict[str, Any]:
    """One case's median step time, tokens per second, peak memory and kernel table
    (``device`` cpu only to try the code on a machine without a GPU); ``compiled``: each
    block through torch.compile (Inductor fuses its elementwise kernels, as the fused kernels
    of Megatron-Core and Transformer Engine that dlsim prices do); ``sdpa`` holds attention
    to one backend of ``bench.SDPA_BACKENDS`` (default: torch's choice)."""
    cuda = device == "cuda"
    torch.manual_seed(0)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with torch.device(device):  # initialised where it runs: a CPU init of 3B weights is slow
        model = case.build()
    if compiled:
        for block in model.get_submodule("blocks").children():
            block.compile()
    params = sum(p.numel() for p in model.parameters())
    seq = case.model["seq_len"]
    step = _step(model, case.model["vocab"], case.batch, seq, device, sdpa)
    started = time.time()
    t = time_call(step, device, repeats, warmup=3, inner=1, clock="wall")
    row = {"started_unix_s": started, "ended_unix_s": time.time(), "case": case.name,
           "compiled": compiled, "sdpa": sdpa, "model": case.model, "batch": case.batch,
           "params": params,
           "step_s": t.median_s, "iqr_s": t.iqr_s, "repeats": t.repeats,
           "tokens_per_s": case.batch * seq / t.median_s,
           "peak_memory_GB": torch.cuda.max_memory_allocated() / 1e9 if cuda else None}
    row["kernels"] = _kernel_table(step, device)
    row["device_total_ms"] = math.fsum(r["device_us"] for r in row["kernels"]) / 1e3
    del model, step
    if cuda:
        torch.cuda.empty_cache()
    return row
