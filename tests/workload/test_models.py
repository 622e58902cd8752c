"""Model presets against independent counts: torch's FlopCounterMode on hand-built torch
models (GPT-2, BERT-large, ResNet-50), the published LLaMA-2 and Megatron-LM sizes, and each
device's peak for each training precision.

FlopCounterMode counts matrix products (mm, addmm, bmm: 2·M·N·K), convolutions (2 FLOPs per
multiply-accumulate, and in backward only the gradients autograd asks for) and fused
attention kernels; it skips element-wise work (norms, softmax, activations, embeddings,
pooling). dlsim's GEMM, attention and convolution kernels are compared with it; the models
are built on the meta device, so nothing is allocated or computed.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ModelSpec
from dlsim.hardware import profiles as hardware
from dlsim.workload.presets import build_model

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

VALIDATION = Path(__file__).resolve().parents[2] / "validation"  # bundled copy


class _Block(nn.Module):
    """A GPT-2 (pre-LN) or BERT (post-LN) block with attention written out as matmuls."""

    def __init__(self, h: int, heads: int, pre_ln: bool):
        super().__init__()
        self.heads, self.pre_ln = heads, pre_ln
        self.ln1, self.ln2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.qkv, self.proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.up, self.down = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)

    def _attention(self, x):
        b, s, h = x.shape
        q, k, v = (t.view(b, s, self.heads, -1).transpose(1, 2)
                   for t in self.qkv(x).split(h, dim=-1))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(h // self.heads)
        out = scores.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, s, h))

    def forward(self, x):
        if self.pre_ln:
            x = x + self._attention(self.ln1(x))
            return x + self.down(F.gelu(self.up(self.ln2(x))))
        x = self.ln1(x + self._attention(x))
        return self.ln2(x + self.down(F.gelu(self.up(x))))


class _Transformer(nn.Module):
    """GPT-2 (Radford et al. 2019) or, with ``bert``, BERT with its masked-LM head."""

    def __init__(self, layers: int, h: int, heads: int, seq: int, vocab: int, bert: bool):
        super().__init__()
        self.bert = bert
        self.tokens, self.positions = nn.Embedding(vocab, h), nn.Embedding(seq, h)
        self.blocks = nn.ModuleList(_Block(h, heads, not bert) for _ in range(layers))
        self.norm = nn.LayerNorm(h)  # GPT-2's final norm; BERT's embedding norm
        if bert:
            self.token_types = nn.Embedding(2, h)
            self.transform, self.transform_norm = nn.Linear(h, h), nn.LayerNorm(h)
            self.decoder_bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, ids):
        x = self.tokens(ids) + self.positions.weight[: ids.shape[1]]
        if self.bert:
            x = self.norm(x + self.token_types.weight[0])
        for block in self.blocks:
            x = block(x)
        if self.bert:
            x = self.transform_norm(F.gelu(self.transform(x)))
            return F.linear(x, self.tokens.weight, self.decoder_bias)
        return F.linear(self.norm(x), self.tokens.weight)  # tied


def _resnet50():
    """torchvision's ResNet-50 (v1.5: the stride on the 3x3 convolution), as the host
    validation trains it."""
    from dlsim.calibration.hostruns import ResNet

    return ResNet((3, 4, 6, 3))


def _torch_counts(model, batch) -> tuple[int, int, int]:
    """(parameters, forward FLOPs, forward + backward FLOPs) from FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as forward:
        out = model(batch)
    with FlopCounterMode(display=False) as backward:
        out.float().sum().backward()
    fwd = forward.get_total_flops()
    return sum(p.numel() for p in model.parameters()), fwd, fwd + backward.get_total_flops()


def _dlsim_counts(preset: str, b: int) -> tuple[int, float, float]:
    model = build_model(ModelSpec(preset=preset), b, 2)
    fwd = sum(k.flops for layer in model.layers for k in layer.forward
              if k.kind != "elementwise")
    bwd = sum(k.flops for layer in model.layers for k in layer.backward
              if k.kind != "elementwise")
    return model.parameters, fwd, fwd + bwd


@pytest.mark.parametrize("preset,build,batch", [
    ("gpt2-124m", lambda: _Transformer(12, 768, 12, 1024, 50257, bert=False),
     lambda: torch.zeros(2, 1024, dtype=torch.long, device="meta")),
    ("bert-large", lambda: _Transformer(24, 1024, 16, 512, 30522, bert=True),
     lambda: torch.zeros(2, 512, dtype=torch.long, device="meta")),
    ("resnet50", _resnet50, lambda: torch.zeros(2, 3, 224, 224, device="meta")),
])
def test_flops_and_parameters_agree_with_torch_flop_counter(preset, build, batch):
    """Exact agreement (the FLOP counts to 1e-12 relative, float rounding of the sums):
    forward, forward + backward, and the parameter count."""
    with torch.device("meta"):
        model = build()
    params, fwd, total = _torch_counts(model, batch())
    ours = _dlsim_counts(preset, 2)
    assert ours[0] == params
    assert ours[1] == pytest.approx(fwd, rel=1e-12)
    assert ours[2] == pytest.approx(total, rel=1e-12)


def _llama_parameters(layers, h, heads, kv_heads, ffn, vocab) -> int:
    """Touvron et al. 2023: q, o (h x h), k, v (h x kv·h/heads), gate, up, down (h x ffn),
    two RMSNorms per block, a final norm, untied embedding and output."""
    kv = kv_heads * h // heads
    return layers * (2 * h * h + 2 * h * kv + 3 * h * ffn + 2 * h) + h + 2 * vocab * h


@pytest.mark.parametrize("preset,shape,published", [
    ("llama-2-7b", (32, 4096, 32, 32, 11008, 32000), 6.74e9),
    ("llama-2-13b", (40, 5120, 40, 40, 13824, 32000), 13.02e9),
    ("llama-2-70b", (80, 8192, 64, 8, 28672, 32000), 68.98e9),
])
def test_llama_2_parameters(preset, shape, published):
    """The counts the released checkpoints have (6,738,415,616 and 68,976,648,192 for 7B and
    70B), and the published sizes to their printed precision."""
    model = build_model(ModelSpec(preset=preset), 1, 2)
    assert model.parameters == _llama_parameters(*shape)
    assert abs(model.parameters - published) < 0.005e9


def _megatron_table_1() -> list[dict[str, str]]:
    """Narayanan et al. SC'21 Table 1: the five rows in validation/ and the other five
    as printed in the paper (params in billions, heads, hidden, layers)."""
    rows = list(csv.DictReader(open(VALIDATION / "megatron_sc21_table1.csv")))
    printed = [("3.6", 32, 3072, 30), ("18.4", 48, 6144, 40), ("76.1", 80, 10240, 60),
               ("310.1", 128, 16384, 96), ("1008.0", 160, 25600, 128)]
    return rows + [dict(params_b=p, heads=str(a), hidden=str(h), layers=str(n))
                   for p, a, h, n in printed]


@pytest.mark.parametrize("row", _megatron_table_1(), ids=lambda r: r["params_b"])
def test_megatron_presets_match_table_1(row):
    """Shape as printed; parameters P = 12lh²(1 + 13/12h + (V + s)/12lh) (SC'21, §5.1) with
    V = 51,200 and s = 2048, within half a unit of the printed digit; dlsim's count adds
    only the final layer norm (2h) to that formula."""
    layers, h = int(row["layers"]), int(row["hidden"])
    billions = float(row["params_b"])
    name = "megatron-1t" if billions > 1000 else f"megatron-{row['params_b']}b"
    model = build_model(ModelSpec(preset=name), 1, 2)
    formula = 12 * layers * h * h * (1 + 13 / (12 * h) + (51200 + 2048) / (12 * layers * h))
    assert model.parameters == pytest.approx(formula + 2 * h, rel=1e-12)
    unit = 10.0 ** -len(row["params_b"].partition(".")[2])
    assert abs(model.parameters / 1e9 - billions) <= unit / 2 + 1e-9
    assert len([x for x in model.layers if x.block is not None]) == layers


# Vendor datasheet figures (dense TFLOP/s) listed in validation/README.md.
PUBLISHED_PEAKS = {
    "a100-sxm4-80gb": {"bf16": 312, "fp32": 19.5}, "h100-sxm5-80gb": {"bf16": 989, "fp32": 67},
    "h200-sxm-141gb": {"bf16": 989}, "v100-sxm2-32gb": {"fp16": 125, "fp32": 15.7},
    "tpu-v4": {"bf16": 275}, "tpu-v5e": {"bf16": 197},
}
PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "fp8")


@pytest.mark.parametrize("name", hardware.available("devices"))
def test_every_profile_has_the_peaks_it_claims_and_names_the_rest(name):
    device = hardware.device(name)
    for dtype, tflops in PUBLISHED_PEAKS.get(name, {}).items():
        assert device.peak_flops(dtype) == tflops * 1e12
    for dtype in PRECISIONS:
        if dtype in device.peak_tflops:
            assert device.peak_flops(dtype) == device.peak_tflops[dtype] * 1e12 > 0
            continue
        with pytest.raises(ScenarioError) as err:
            device.peak_flops(dtype)
        assert err.value.field == "precision"
        assert all(d in err.value.message for d in device.peak_tflops)
