"""Transformer shapes: one typed table of every transformer preset, and the shape of a
``model:`` section.

Field names are the scenario contract's (DESIGN.md: layers, hidden, heads, seq_len, vocab,
ffn_hidden, kv_heads, mlp). Two block families are built (``dlsim.workload.model`` and
``dlsim.workload.llama``): GPT's and BERT's (layer norm, GeLU MLP, learned positions, tied
logits) and LLaMA's (RMSNorm, SwiGLU MLP, rotary positions, untied output); ``norm`` and
``mlp`` name which, ``encoder`` marks BERT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the contract imports the feasibility rules, which read shapes here
    from dlsim.contract.scenario import ModelSpec

FAMILIES = {("layernorm", "gelu"), ("rmsnorm", "swiglu")}  # (norm, mlp) of the built blocks


@dataclass(frozen=True)
class MoEShape:
    """A ``moe:`` block (DESIGN.md): routed experts of ``expert_ffn_hidden``, ``top_k`` per
    token, ``shared_experts`` every token passes, the first ``dense_layers`` blocks dense."""

    experts: int
    top_k: int
    expert_ffn_hidden: int
    shared_experts: int = 0
    dense_layers: int = 0
    capacity_factor: float | None = None  # None: dropless
    router_imbalance: float = 1.0  # the busiest expert's load over the mean


@dataclass(frozen=True)
class MLAShape:
    """Multi-head latent attention (DeepSeek-V2 §2.1, V3 §2.1.1): queries and keys/values
    through low-rank latents, a decoupled rotary part of the query/key head."""

    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None  # None: queries projected at full rank


@dataclass(frozen=True)
class TransformerShape:
    layers: int  # transformer blocks
    hidden: int
    heads: int
    seq_len: int
    vocab: int
    ffn_hidden: int
    kv_heads: int  # key-value heads (grouped-query attention); = heads without GQA
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    mlp: Literal["gelu", "swiglu"] = "gelu"
    encoder: bool = False  # BERT: token types, an embedding norm, the masked-LM head
    moe: MoEShape | None = None
    mla: MLAShape | None = None

    def __post_init__(self) -> None:
        if (self.norm, self.mlp) not in FAMILIES or (self.encoder and self.mlp != "gelu"):
            raise ValueError(f"no blocks are built for norm {self.norm}, mlp {self.mlp}"
                             f"{', encoder' if self.encoder else ''}")

    @property
    def model_layers(self) -> int:
        """Layers of the built model, what a pipeline cuts: the embedding, the blocks, the
        head (``dlsim.workload.model.transformer_model``)."""
        return self.layers + 2


def gpt(layers: int, hidden: int, heads: int, seq_len: int, vocab: int,
        encoder: bool = False) -> TransformerShape:
    """A GPT (or BERT) shape: a 4h MLP and as many key-value heads as heads."""
    return TransformerShape(layers, hidden, heads, seq_len, vocab, 4 * hidden, heads,
                            encoder=encoder)


def llama(layers: int, hidden: int, heads: int, kv_heads: int, ffn_hidden: int, seq_len: int,
          vocab: int) -> TransformerShape:
    return TransformerShape(layers, hidden, heads, seq_len, vocab, ffn_hidden, kv_heads,
                            "rmsnorm", "swiglu")


# GPT-2 sizes from Radford et al. 2019 Table 2 and the released configs (n_ctx 1024, vocab
# 50257); GPT-3 from Brown et al. 2020 Table 2.1; BERT-large from Devlin et al. 2019 (L=24,
# H=1024, A=16, WordPiece 30522, 512 positions); Narayanan et al., SC'21, Table 1: heads,
# hidden and layers of its ten GPT models, with sequence 2048 and vocabulary 51,200 (§5.1),
# named by the parameters the table prints; LLaMA-2 from the released params.json /
# config.json (dim, n_layers, n_heads, n_kv_heads, intermediate_size,
# max_position_embeddings 4096, vocab_size 32000).
TRANSFORMER_SHAPES: dict[str, TransformerShape] = {
    "gpt2-124m": gpt(12, 768, 12, 1024, 50257),
    "gpt2-1.5b": gpt(48, 1600, 25, 1024, 50257),
    "gpt3-175b": gpt(96, 12288, 96, 2048, 50257),
    "bert-large": gpt(24, 1024, 16, 512, 30522, encoder=True),
    "megatron-1.7b": gpt(24, 2304, 24, 2048, 51200),
    "megatron-3.6b": gpt(30, 3072, 32, 2048, 51200),
    "megatron-7.5b": gpt(36, 4096, 32, 2048, 51200),
    "megatron-18.4b": gpt(40, 6144, 48, 2048, 51200),
    "megatron-39.1b": gpt(48, 8192, 64, 2048, 51200),
    "megatron-76.1b": gpt(60, 10240, 80, 2048, 51200),
    "megatron-145.6b": gpt(80, 12288, 96, 2048, 51200),
    "megatron-310.1b": gpt(96, 16384, 128, 2048, 51200),
    "megatron-529.6b": gpt(105, 20480, 128, 2048, 51200),
    "megatron-1t": gpt(128, 25600, 160, 2048, 51200),
    "llama-2-7b": llama(32, 4096, 32, 32, 11008, 4096, 32000),
    "llama-2-13b": llama(40, 5120, 40, 40, 13824, 4096, 32000),
    "llama-2-70b": llama(80, 8192, 64, 8, 28672, 4096, 32000),
}


def shape_of(spec: ModelSpec) -> TransformerShape | None:
    """The transformer shape of a ``model:`` section (a preset or ``kind: transformer``), or
    None for other models (MLP, CNN, unknown presets)."""
    if spec.preset is not None:
        return TRANSFORMER_SHAPES.get(spec.preset)
    if spec.kind != "transformer":
        return None
    # ModelSpec's validator requires these of a transformer given by its shape
    assert (spec.layers is not None and spec.hidden is not None and spec.heads is not None
            and spec.seq_len is not None and spec.vocab is not None)
    return TransformerShape(spec.layers, spec.hidden, spec.heads, spec.seq_len, spec.vocab,
                            spec.ffn_hidden or 4 * spec.hidden, spec.heads)
