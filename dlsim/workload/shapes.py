"""Transformer shapes: one typed table of every transformer preset, and the shape of a
``model:`` section.

Field names are the scenario contract's (DESIGN.md: layers, hidden, heads, seq_len, vocab,
ffn_hidden, kv_heads, mlp, tied_embeddings, head_dim, moe, attention; gpt-oss adds
attention.sliding_window, attention.full_attention_every, attention.sinks and
linear_bias). Two block families are
built: GPT's and BERT's (``dlsim.workload.model``: layer norm, GeLU MLP, learned positions,
tied logits, multi-head attention) and the modern decoder's (``dlsim.workload.decoder``:
RMSNorm, SwiGLU MLP, rotary positions, grouped-query or multi-head latent attention, dense
or mixture-of-experts MLPs, tied or untied output); ``norm`` and ``mlp`` name which,
``encoder`` marks BERT.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from dlsim.contract.errors import ScenarioError

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
    ffn_hidden: int  # the dense MLP's intermediate size (MoE: of the first dense_layers)
    kv_heads: int  # key-value heads (grouped-query attention); = heads without GQA
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    mlp: Literal["gelu", "swiglu"] = "gelu"
    encoder: bool = False  # BERT: token types, an embedding norm, the masked-LM head
    moe: MoEShape | None = None
    mla: MLAShape | None = None
    tied_embeddings: bool = True  # the LM head reuses the embedding table (GPT; not Llama)
    head_dim: int | None = None  # None: hidden / heads (Qwen3 and gpt-oss give their own)
    sliding_window: int | None = None  # keys a windowed query sees, itself included
    full_attention_every: int | None = None  # k: every k-th block full; None: all windowed
    attention_sinks: bool = False  # a learned logit per head beside the keys (gpt-oss)
    linear_bias: bool = False  # attention, router and expert linear layers biased (gpt-oss)

    def __post_init__(self) -> None:
        if (self.norm, self.mlp) not in FAMILIES or (self.encoder and self.mlp != "gelu"):
            raise ValueError(f"no blocks are built for norm {self.norm}, mlp {self.mlp}"
                             f"{', encoder' if self.encoder else ''}")
        modern = (self.kv_heads != self.heads or self.moe is not None or self.mla is not None
                  or not self.tied_embeddings or self.head_dim is not None
                  or self.sliding_window is not None or self.attention_sinks
                  or self.linear_bias)
        if self.mlp == "gelu" and modern:
            raise ValueError("GPT's and BERT's blocks (gelu) have multi-head attention, a dense "
                             "MLP and tied embeddings; GQA, MoE, MLA, head_dim, sliding "
                             "windows, sinks, biases and untied embeddings are built with mlp "
                             "swiglu")
        if self.mla is not None and (self.sliding_window is not None or self.attention_sinks):
            raise ValueError("sliding windows and sinks are built for grouped-query "
                             "attention, not MLA")
        if self.full_attention_every is not None and self.sliding_window is None:
            raise ValueError("full_attention_every sets which blocks skip the sliding "
                             "window: give sliding_window too")
        if self.heads % self.kv_heads:
            raise ValueError(f"kv_heads {self.kv_heads} does not divide heads {self.heads}")
        if self.moe is not None and not (self.moe.top_k <= self.moe.experts
                                         and self.moe.dense_layers < self.layers):
            raise ValueError(f"moe {self.moe} does not fit {self.layers} layers")

    @property
    def model_layers(self) -> int:
        """Layers of the built model, what a pipeline cuts: the embedding, the blocks, the
        head (``dlsim.workload.model.transformer_model``)."""
        return self.layers + 2

    @property
    def head_size(self) -> int:
        """Width of one query/key/value head (without MLA)."""
        return self.head_dim if self.head_dim is not None else self.hidden // self.heads

    def windowed(self, block: int) -> bool:
        """Whether block ``block`` (from 0) attends within the sliding window: every block
        but each ``full_attention_every``-th (gpt-oss: 0, 2, 4, ... windowed, 1, 3, ... full,
        its config's ``layer_types``)."""
        if self.sliding_window is None or self.sliding_window >= self.seq_len:
            return False
        every = self.full_attention_every
        return every is None or (block + 1) % every != 0

    @property
    def moe_layers(self) -> int:
        """Blocks whose MLP is a mixture of experts (after the first ``dense_layers``)."""
        return 0 if self.moe is None else self.layers - self.moe.dense_layers


def gpt(layers: int, hidden: int, heads: int, seq_len: int, vocab: int,
        encoder: bool = False) -> TransformerShape:
    """A GPT (or BERT) shape: a 4h MLP and as many key-value heads as heads."""
    return TransformerShape(layers, hidden, heads, seq_len, vocab, 4 * hidden, heads,
                            encoder=encoder)


def llama(layers: int, hidden: int, heads: int, kv_heads: int, ffn_hidden: int, seq_len: int,
          vocab: int, *, moe: MoEShape | None = None, mla: MLAShape | None = None,
          tied_embeddings: bool = False, head_dim: int | None = None,
          sliding_window: int | None = None, full_attention_every: int | None = None,
          attention_sinks: bool = False, linear_bias: bool = False) -> TransformerShape:
    """A modern decoder's shape (RMSNorm, SwiGLU, rotary positions), untied unless told; a
    ``head_dim`` of hidden/heads is the default and kept as None (so equal shapes compare
    equal however they were written)."""
    if head_dim is not None and head_dim * heads == hidden:
        head_dim = None
    return TransformerShape(layers, hidden, heads, seq_len, vocab, ffn_hidden, kv_heads,
                            "rmsnorm", "swiglu", moe=moe, mla=mla,
                            tied_embeddings=tied_embeddings, head_dim=head_dim,
                            sliding_window=sliding_window,
                            full_attention_every=full_attention_every,
                            attention_sinks=attention_sinks, linear_bias=linear_bias)


def swiglu_ffn_hidden(hidden: int, multiple_of: int = 256) -> int:
    """Llama's SwiGLU width for a 4h MLP: 2/3 of 4h, rounded up to ``multiple_of`` (Meta's
    llama/model.py, FeedForward: 11008 for h = 4096), so that the MLP keeps 8h^2 weights."""
    width = 2 * 4 * hidden // 3
    return multiple_of * ((width + multiple_of - 1) // multiple_of)


# GPT-2 sizes from Radford et al. 2019 Table 2 and the released configs (n_ctx 1024, vocab
# 50257); GPT-3 from Brown et al. 2020 Table 2.1; BERT-large from Devlin et al. 2019 (L=24,
# H=1024, A=16, WordPiece 30522, 512 positions); Narayanan et al., SC'21, Table 1: heads,
# hidden and layers of its ten GPT models, with sequence 2048 and vocabulary 51,200 (§5.1),
# named by the parameters the table prints; LLaMA-2 from the released params.json /
# config.json (dim, n_layers, n_heads, n_kv_heads, intermediate_size,
# max_position_embeddings 4096, vocab_size 32000).
#
# The modern decoders take every shape field from their released config.json (shipped, shape
# fields only, in examples/hf/: ``model: {hf_config: ...}`` gives the same shape), and as
# seq_len the length they were pre-trained at where it is published: Llama 3 and 3.1, 8,192
# (Llama 3 paper §3.4.1: 8K-token sequences before the long-context stage); Mixtral 8x7B,
# 32,768 (Jiang et al. 2024 §2: "trained with a context size of 32k tokens"); Mixtral 8x22B,
# its config's 65,536 (no paper); Qwen3, 4,096 (Qwen3 technical report §3.2, stage 1);
# DeepSeek-V3, 4,096 (technical report §4.2); gpt-oss-120b, 4,096 (its config's
# initial_context_length, the length YaRN extends to 131,072: model card, arXiv 2508.10925
# §2.1). ``seq_len:`` next to a preset overrides it.
#
# gpt-oss-120b (openai/gpt-oss-120b config.json: num_hidden_layers 36, hidden_size 2880,
# num_attention_heads 64, head_dim 64, num_key_value_heads 8, num_local_experts 128,
# num_experts_per_tok 4, intermediate_size 2880, vocab_size 201088, tie_word_embeddings
# false, attention_bias true, sliding_window 128 with layer_types sliding/full alternating
# from the first block; the model card §2.1: "banded window and fully dense patterns, where
# the bandwidth is 128 tokens", a learned sink logit per head in the softmax, biased expert
# projections as in its reference implementation's MLPBlock): 116.83B parameters, 5.13B
# active (card Table 1, which counts the unembedding and not the embedding as active).
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
    "llama-3-8b": llama(32, 4096, 32, 8, 14336, 8192, 128256),
    "llama-3-70b": llama(80, 8192, 64, 8, 28672, 8192, 128256),
    "llama-3.1-405b": llama(126, 16384, 128, 8, 53248, 8192, 128256),
    "mixtral-8x7b": llama(32, 4096, 32, 8, 14336, 32768, 32000,
                          moe=MoEShape(experts=8, top_k=2, expert_ffn_hidden=14336)),
    "mixtral-8x22b": llama(56, 6144, 48, 8, 16384, 65536, 32768,
                           moe=MoEShape(experts=8, top_k=2, expert_ffn_hidden=16384)),
    "qwen3-30b-a3b": llama(48, 2048, 32, 4, 6144, 4096, 151936, head_dim=128,
                           moe=MoEShape(experts=128, top_k=8, expert_ffn_hidden=768)),
    "qwen3-235b-a22b": llama(94, 4096, 64, 4, 12288, 4096, 151936, head_dim=128,
                             moe=MoEShape(experts=128, top_k=8, expert_ffn_hidden=1536)),
    "deepseek-v3": llama(61, 7168, 128, 128, 18432, 4096, 129280,
                         moe=MoEShape(experts=256, top_k=8, expert_ffn_hidden=2048,
                                      shared_experts=1, dense_layers=3),
                         mla=MLAShape(kv_lora_rank=512, qk_nope_head_dim=128,
                                      qk_rope_head_dim=64, v_head_dim=128, q_lora_rank=1536)),
    "gpt-oss-120b": llama(36, 2880, 64, 8, 2880, 4096, 201088, head_dim=64,
                          moe=MoEShape(experts=128, top_k=4, expert_ffn_hidden=2880),
                          sliding_window=128, full_attention_every=2, attention_sinks=True,
                          linear_bias=True),
}


def shape_of(spec: ModelSpec) -> TransformerShape | None:
    """The transformer shape of a ``model:`` section (a preset, with its ``seq_len`` if one
    is given, ``kind: transformer`` or an imported ``hf_config``, which the contract has
    already turned into the transformer's fields), or None for other models (MLP, CNN,
    unknown presets)."""
    if spec.preset is not None:
        shape = TRANSFORMER_SHAPES.get(spec.preset)
        if shape is None:
            return None
        if spec.moe is not None:  # the run's routing of the preset's experts
            if shape.moe is None:
                raise ScenarioError(f"'{spec.preset}' has no experts to route; 'moe' beside a "
                                    "preset sets the routing of a mixture-of-experts "
                                    "preset's experts.", field="model.moe")
            shape = replace(shape, moe=replace(
                shape.moe, capacity_factor=spec.moe.capacity_factor,
                router_imbalance=spec.moe.router_imbalance))
        return shape if spec.seq_len is None else replace(shape, seq_len=spec.seq_len)
    if spec.kind != "transformer":
        return None
    # ModelSpec's validator requires these of a transformer given by its shape
    assert (spec.layers is not None and spec.hidden is not None and spec.heads is not None
            and spec.seq_len is not None and spec.vocab is not None)
    if spec.mlp != "swiglu":  # GPT's blocks (the contract refuses decoder fields with them)
        return TransformerShape(spec.layers, spec.hidden, spec.heads, spec.seq_len,
                                spec.vocab, spec.ffn_hidden or 4 * spec.hidden, spec.heads)
    moe = None
    if spec.moe is not None:
        m = spec.moe
        # ModelSpec's validator requires a full moe block of a transformer given by its shape
        assert m.experts is not None and m.top_k is not None and m.expert_ffn_hidden is not None
        moe = MoEShape(m.experts, m.top_k, m.expert_ffn_hidden, m.shared_experts,
                       m.dense_layers, m.capacity_factor, m.router_imbalance)
    att = spec.attention
    mla = None
    if att is not None and att.kind == "mla":
        # AttentionSpec's validator requires the ranks of kind: mla
        assert (att.kv_lora_rank is not None and att.qk_nope_head_dim is not None
                and att.qk_rope_head_dim is not None and att.v_head_dim is not None)
        mla = MLAShape(att.kv_lora_rank, att.qk_nope_head_dim, att.qk_rope_head_dim,
                       att.v_head_dim, att.q_lora_rank)
    return llama(spec.layers, spec.hidden, spec.heads, spec.kv_heads or spec.heads,
                 spec.ffn_hidden or swiglu_ffn_hidden(spec.hidden), spec.seq_len, spec.vocab,
                 moe=moe, mla=mla, tied_embeddings=bool(spec.tied_embeddings),
                 head_dim=spec.head_dim,
                 sliding_window=None if att is None else att.sliding_window,
                 full_attention_every=None if att is None else att.full_attention_every,
                 attention_sinks=att is not None and att.sinks,
                 linear_bias=bool(spec.linear_bias))
