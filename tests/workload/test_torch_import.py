"""Torch models imported as dlsim layers, against FlopCounterMode and dlsim's own presets.

The GPT, Llama-style and ResNet models are written here as plain torch modules and built on
the meta device. Their imported GEMM, attention and convolution FLOPs (forward, and forward +
backward) and parameters equal FlopCounterMode's totals for the same run; the GPT and Llama
models built to a dlsim shape also equal ``transformer_layers`` / ``decoder_layers`` by kernel
kind (GEMM and attention separately), to 1e-9 relative. Element-wise kernels cannot match:
dlsim's presets price fused passes (one "residual1+layernorm2" kernel), torch dispatches each
aten operator, and FlopCounterMode counts none of them.
"""

from __future__ import annotations

import json
import math
import sys

import pytest
from typer.testing import CliRunner

from dlsim import simulate
from dlsim.cli import app
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ModelSpec
from dlsim.workload.decoder import decoder_layers
from dlsim.workload.model import Model, transformer_layers
from dlsim.workload.presets import build_model
from dlsim.workload.shapes import TransformerShape, llama
from dlsim.workload.torch_import import import_torch_model, model_from_module

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402


class GPTBlock(nn.Module):
    """Pre-LN: attention written out as matmuls, then a GeLU MLP."""

    def __init__(self, h: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.qkv, self.proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.up, self.down = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)

    def forward(self, x):
        b, s, h = x.shape
        q, k, v = (t.view(b, s, self.heads, -1).transpose(1, 2)
                   for t in self.qkv(self.ln1(x)).split(h, dim=-1))
        att = ((q @ k.transpose(-2, -1)) / math.sqrt(h // self.heads)).softmax(-1) @ v
        x = x + self.proj(att.transpose(1, 2).reshape(b, s, h))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, layers: int, h: int, heads: int, seq: int, vocab: int) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, h), nn.Embedding(seq, h)
        self.blocks = nn.ModuleList(GPTBlock(h, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(h)

    def forward(self, ids):
        x = self.tokens(ids) + self.positions.weight[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return F.linear(self.norm(x), self.tokens.weight)  # tied


class RMSNorm(nn.Module):
    def __init__(self, h: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(h))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


def rope(x, positions):
    """Rotary embedding (Su et al. 2021) on the last dimension, in halves."""
    half = x.shape[-1] // 2
    freq = 1.0 / 10000 ** (torch.arange(half, device=x.device) / half)
    angle = positions[:, None] * freq[None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * angle.cos() - x2 * angle.sin(), x1 * angle.sin() + x2 * angle.cos()],
                     dim=-1)


class LlamaBlock(nn.Module):
    """RMSNorm, grouped-query attention with RoPE, SwiGLU MLP; no biases."""

    def __init__(self, h: int, heads: int, kv_heads: int, ffn: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.d = heads, kv_heads, h // heads
        self.norm1, self.norm2 = RMSNorm(h), RMSNorm(h)
        self.q = nn.Linear(h, h, bias=False)
        self.k = nn.Linear(h, kv_heads * self.d, bias=False)
        self.v = nn.Linear(h, kv_heads * self.d, bias=False)
        self.o = nn.Linear(h, h, bias=False)
        self.gate, self.up = nn.Linear(h, ffn, bias=False), nn.Linear(h, ffn, bias=False)
        self.down = nn.Linear(ffn, h, bias=False)

    def forward(self, x):
        b, s, h = x.shape
        y = self.norm1(x)
        pos = torch.arange(s, device=x.device, dtype=torch.float32)
        q = rope(self.q(y).view(b, s, self.heads, self.d).transpose(1, 2), pos)
        k = rope(self.k(y).view(b, s, self.kv_heads, self.d).transpose(1, 2), pos)
        v = self.v(y).view(b, s, self.kv_heads, self.d).transpose(1, 2)
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        att = ((q @ k.transpose(-2, -1)) / math.sqrt(self.d)).softmax(-1) @ v
        x = x + self.o(att.transpose(1, 2).reshape(b, s, h))
        z = self.norm2(x)
        return x + self.down(F.silu(self.gate(z)) * self.up(z))


class Llama(nn.Module):
    def __init__(self, shape: TransformerShape) -> None:
        super().__init__()
        h = shape.hidden
        self.embed = nn.Embedding(shape.vocab, h)
        self.layers = nn.ModuleList(LlamaBlock(h, shape.heads, shape.kv_heads, shape.ffn_hidden)
                                    for _ in range(shape.layers))
        self.norm = RMSNorm(h)
        self.lm_head = nn.Linear(h, shape.vocab, bias=False)  # untied

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))


class BasicBlock(nn.Module):
    """He et al. 2016's two 3x3 convolutions with a projection shortcut when shapes change."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                       nn.BatchNorm2d(c_out))
                         if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class SmallResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.stages = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 16, 1),
                                    BasicBlock(16, 32, 2), BasicBlock(32, 32, 1))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1))


IDS = {"ids": {"shape": [1, 32], "dtype": "int64"}}
IMAGES = {"x": {"shape": [1, 3, 32, 32], "dtype": "float32"}}
B = 2


def _flop_counter(build, inputs: dict) -> tuple[int, int, int]:
    """(parameters, forward FLOPs, forward + backward FLOPs) from FlopCounterMode."""
    with torch.device("meta"):
        module = build()
    batch = {name: torch.zeros([B, *spec["shape"][1:]], dtype=getattr(torch, spec["dtype"]),
                               device="meta") for name, spec in inputs.items()}
    with FlopCounterMode(display=False) as forward:
        out = module(**batch)
    with FlopCounterMode(display=False) as backward:
        out.float().sum().backward()
    fwd = forward.get_total_flops()
    return sum(p.numel() for p in module.parameters()), fwd, fwd + backward.get_total_flops()


def _imported(build, inputs: dict) -> Model:
    with torch.device("meta"):
        module = build()
    return model_from_module(module, inputs, B, 2)


def _flops(model: Model, kinds: tuple[str, ...], backward: bool = True) -> float:
    passes = [layer.forward + (layer.backward if backward else ()) for layer in model.layers]
    return sum(k.flops for kernels in passes for k in kernels if k.kind in kinds)


COUNTED = ("gemm", "attention", "conv")
GPT_SHAPE = (2, 64, 4, 32, 100)  # layers, hidden, heads, seq, vocab
LLAMA_SHAPE = llama(2, 64, 4, 2, 160, 32, 100)
CASES = {"gpt": (lambda: GPT(*GPT_SHAPE), IDS), "llama": (lambda: Llama(LLAMA_SHAPE), IDS),
         "resnet": (SmallResNet, IMAGES)}


@pytest.mark.parametrize("case", CASES)
def test_flops_and_parameters_equal_flop_counter_totals(case):
    build, inputs = CASES[case]
    params, fwd, total = _flop_counter(build, inputs)
    model = _imported(build, inputs)
    assert model.parameters == params
    assert _flops(model, COUNTED, backward=False) == pytest.approx(fwd, rel=1e-12)
    assert _flops(model, COUNTED) == pytest.approx(total, rel=1e-12)


@pytest.mark.parametrize("case,preset", [
    ("gpt", lambda: transformer_layers("gpt", *GPT_SHAPE, b=B, dtype_bytes=2)),
    ("llama", lambda: decoder_layers("llama", LLAMA_SHAPE, B, 2)),
])
def test_transformers_equal_the_dlsim_preset_of_their_shape(case, preset):
    """Parameters, and GEMM and attention FLOPs of each pass, kind by kind; the blocks are
    recognised as blocks, the embedding and head are not."""
    build, inputs = CASES[case]
    model, ours = _imported(build, inputs), preset()
    assert model.parameters == ours.parameters
    for kind in ("gemm", "attention"):
        assert _flops(model, (kind,), False) == pytest.approx(_flops(ours, (kind,), False),
                                                              rel=1e-9)
        assert _flops(model, (kind,)) == pytest.approx(_flops(ours, (kind,)), rel=1e-9)
    blocks = [layer for layer in model.layers if layer.role == "block"]
    assert len(blocks) == 2 and all(layer.block is not None for layer in blocks)
    assert [layer.params for layer in blocks] == [ours.layers[1].params] * 2
    assert model.layers[0].role == "other" and model.layers[-1].role == "other"


def test_gpt_block_activations_are_the_saved_tensors():
    """What autograd keeps per block at 2 bytes an element, each tensor once (Korthikanti et
    al. 2022 §4.1 without dropout): layer-norm inputs 2x(2sbh) and outputs feeding QKV and
    the MLP 2x(2sbh), Q, K, V (6sbh), the softmax output (2as^2b: the attention core), the
    attention output fed to the projection (2sbh), the MLP-up output fed to GeLU (8sbh) and
    GeLU's output (8sbh); layer norm's mean and rstd (2 x 4 bytes x sb) are fp32 in torch but
    floating point, so priced at 2 bytes here."""
    layers, h, a, s, _ = GPT_SHAPE
    model = _imported(*CASES["gpt"])
    block = model.layers[2]
    sbh = s * B * h
    expected = (4 + 4 + 6 + 2 + 8 + 8) * sbh + 2 * a * s * s * B + 2 * 2 * 2 * s * B
    assert block.activation_bytes == expected
    assert block.block is not None
    assert block.block.attention_core == 2 * a * s * s * B
    assert block.block.block_input == 2 * sbh


def test_resnet_has_no_transformer_blocks_and_cuts_by_time():
    model = _imported(*CASES["resnet"])
    assert all(layer.role == "other" and layer.block is None for layer in model.layers)
    assert [layer.name for layer in model.layers] == [
        "stem.0", "stem.1", "stem.2", "stages.0", "stages.1", "stages.2", "stages.3", "fc"]


def test_the_micro_batch_scales_the_first_dimension():
    one, four = (import_torch_model("tiny_gpt:tiny_gpt", {"layers": 1}, IDS, b, 2)
                 for b in (1, 4))
    assert _flops(four, COUNTED) == pytest.approx(4 * _flops(one, COUNTED), rel=1e-12)
    assert four.input_bytes == 4 * one.input_bytes == 4 * 32 * 8  # int64 ids


TORCH_SCENARIO = {
    "name": "byo", "precision": "bf16",
    "model": {"torch": "tiny_gpt:tiny_gpt", "kwargs": {"layers": 4, "hidden": 64, "heads": 4,
                                                        "seq_len": 32, "vocab": 100},
              "inputs": IDS},
    "cluster": {"preset": "dgx-a100", "nodes": 1},
    "training": {"global_batch": 16, "microbatch": 2, "optimizer": "adam"},
    "parallelism": {"data": 4, "pipeline": 2},
}


def test_a_scenario_naming_a_torch_factory_runs():
    """examples/tiny_gpt.py at a small shape: its parameters are the GPT closed form
    (tied embedding, position table, 12h^2 + 13h per block, final norm) and the pipeline
    holds two blocks per stage."""
    layers, h, s, v = 4, 64, 32, 100
    result = simulate(TORCH_SCENARIO)
    assert result.parameters == v * h + s * h + layers * (12 * h * h + 13 * h) + 2 * h
    assert result.step_time_s > 0 and result.fits_in_memory


def test_a_bad_factory_is_one_paragraph_naming_model_torch():
    for target, says in [("no_such_module:make", "cannot import 'no_such_module'"),
                         ("tiny_gpt:no_such_factory", "has no callable 'no_such_factory'"),
                         ("tiny_gpt", "package.module:factory")]:
        bad = TORCH_SCENARIO | {"model": TORCH_SCENARIO["model"] | {"torch": target}}
        with pytest.raises(ScenarioError) as err:
            simulate(bad)
        assert err.value.field == "model.torch"
        assert says in err.value.message and "\n" not in err.value.paragraph()


def test_a_factory_that_fails_on_the_meta_device_says_why():
    spec = ModelSpec(torch="tiny_gpt:tiny_gpt", kwargs={"hiddenn": 64}, inputs=IDS)
    with pytest.raises(ScenarioError) as err:
        build_model(spec, 1, 2)
    assert err.value.field == "model.torch" and "hiddenn" in err.value.message


def test_without_torch_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    spec = ModelSpec(torch="tiny_gpt:tiny_gpt", inputs=IDS)
    with pytest.raises(ScenarioError) as err:
        build_model(spec, 1, 2)
    assert "pip install 'dlsim[calibrate]'" in err.value.message


def test_tensor_parallelism_is_refused_with_the_reason():
    bad = TORCH_SCENARIO | {"parallelism": {"data": 2, "tensor": 2, "pipeline": 2}}
    with pytest.raises(ScenarioError) as err:
        simulate(bad)
    assert err.value.field == "parallelism.tensor" and "imported from torch" in err.value.message


def test_inputs_belong_to_a_torch_model_only():
    with pytest.raises(ValueError, match="belong to a torch model"):
        ModelSpec(preset="gpt2-124m", inputs=IDS)
    with pytest.raises(ValueError, match="needs 'inputs'"):
        ModelSpec(torch="tiny_gpt:tiny_gpt")


def test_cli_import_model_prints_the_layer_table_as_json():
    kwargs = json.dumps(TORCH_SCENARIO["model"]["kwargs"])
    result = CliRunner().invoke(app, ["import-model", "tiny_gpt:tiny_gpt", "--kwargs", kwargs,
                                      "--inputs", json.dumps(IDS), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    expected = simulate(TORCH_SCENARIO).parameters
    assert sum(row["params"] for row in rows) == expected
    assert [row["role"] for row in rows].count("block") == 4
    bad = CliRunner().invoke(app, ["import-model", "nowhere:f", "--inputs", json.dumps(IDS)])
    assert bad.exit_code == 2 and "model.torch" in bad.output
