"""Scenarios: YAML -> one loader -> validated, immutable pydantic models, one per kind.

Field names here are dlsim's public interface (DESIGN.md, "Scenario contract"). Each
``kind`` has its own model holding only the sections it reads, so a section another kind
uses is an error, not silently ignored; ``Scenario`` is their union, told apart by ``kind``
(training when omitted). Loading has no side effects. Every problem becomes a
``ScenarioError`` naming the file, the field, what was given and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dlsim.contract.errors import (
    ScenarioError,
    closest,
    describe_invalid,
    did_you_mean,
    excerpt,
)
from dlsim.contract.federated import FederatedConvergenceSpec, FederatedSpec
from dlsim.contract.hf_config import import_fields, resolve
from dlsim.contract.inference import EdgeInferenceSpec
from dlsim.contract.loading import read_yaml
from dlsim.contract.parallelism import parallelism_conflict
from dlsim.contract.registry import ALGORITHM, COMPRESSION, PROTOCOL, SCHEDULE, member_of
from dlsim.contract.spec import Spec as _Spec
from dlsim.contract.sync import ConvergenceSpec, FailureSpec, StragglerSpec, SyncSpec
from dlsim.hardware.profiles import ATTENTION_KERNELS, AttentionKernel, FP8Recipe


class TorchInput(_Spec):
    """One input of an imported torch model; its first dimension is the micro-batch."""

    shape: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    dtype: Literal["float32", "float16", "bfloat16", "int64", "int32", "bool"] = "float32"


class MoESpec(_Spec):
    """``moe:`` of a transformer: ``experts`` routed experts of ``expert_ffn_hidden`` (SwiGLU),
    ``top_k`` of them per token, ``shared_experts`` every token passes, the first
    ``dense_layers`` blocks dense; ``capacity_factor`` caps an expert's tokens (absent:
    dropless) and ``router_imbalance`` is the busiest expert's load over the mean."""

    # required of a shape given in full; beside a preset only the routing fields are given
    experts: int | None = Field(default=None, ge=1)
    top_k: int | None = Field(default=None, ge=1)
    expert_ffn_hidden: int | None = Field(default=None, ge=1)
    shared_experts: int = Field(default=0, ge=0)
    dense_layers: int = Field(default=0, ge=0)
    capacity_factor: float | None = Field(default=None, gt=0)
    router_imbalance: float = Field(default=1.0, ge=1.0)

    @field_validator("top_k")
    @classmethod
    def _top_k_of_experts(cls, top_k: int | None, info: ValidationInfo) -> int | None:
        experts = info.data.get("experts")
        if experts is not None and top_k is not None and top_k > experts:
            raise ValueError(f"top_k ({top_k}) must be at most experts ({experts}): each "
                             "token is routed to top_k distinct experts")
        return top_k


# How tokens are routed: a run's choice, which a preset's MoE shape takes from the scenario.
MOE_ROUTING = ("capacity_factor", "router_imbalance")
MOE_SHAPE = ("experts", "top_k", "expert_ffn_hidden")


MLA_RANKS = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
BANDED = ("sliding_window", "full_attention_every", "sinks")


class AttentionSpec(_Spec):
    """``attention:`` of a transformer: ``mha`` (multi-head, or grouped-query with
    ``kv_heads``) or ``mla``, DeepSeek's multi-head latent attention with its low-rank
    dimensions (``q_lora_rank`` absent: queries projected at full rank), and the ``kernel``
    that runs it (flash | sdpa | eager; None: the device's default,
    ``dlsim.workload.attention``). A bare string is the kernel: ``attention: eager``."""

    kind: Literal["mha", "mla"] = "mha"
    kernel: AttentionKernel | None = None
    kv_lora_rank: int | None = Field(default=None, ge=1)
    q_lora_rank: int | None = Field(default=None, ge=1)
    qk_nope_head_dim: int | None = Field(default=None, ge=1)
    qk_rope_head_dim: int | None = Field(default=None, ge=1)
    v_head_dim: int | None = Field(default=None, ge=1)
    # a band of keys per query (Mistral, gpt-oss), in every block or all but each k-th
    sliding_window: int | None = Field(default=None, ge=1)
    full_attention_every: int | None = Field(default=None, ge=2)
    sinks: bool = False  # a learned logit per head in the softmax (gpt-oss)

    @model_validator(mode="before")
    @classmethod
    def _kernel_alone(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        if data not in ATTENTION_KERNELS:
            raise ValueError(f"'{data}' is not an attention kernel; give one of "
                             f"{', '.join(ATTENTION_KERNELS)}, or a mapping {{kind: mha|mla, "
                             "..., kernel: ...}")
        return {"kernel": data}

    @model_validator(mode="after")
    def _ranks(self) -> AttentionSpec:
        given = [f for f in (*MLA_RANKS, "q_lora_rank") if getattr(self, f) is not None]
        missing = [f for f in MLA_RANKS if getattr(self, f) is None]
        if self.kind == "mha" and given:
            raise ValueError(f"{', '.join(given)} belong to kind: mla")
        if self.kind == "mla" and missing:
            raise ValueError(f"kind: mla needs {', '.join(missing)}")
        banded = [f for f in BANDED if getattr(self, f)]
        if self.kind == "mla" and banded:
            raise ValueError(f"{', '.join(banded)} belong to grouped-query attention "
                             "(kind: mha), not mla")
        if self.full_attention_every is not None and self.sliding_window is None:
            raise ValueError("full_attention_every says which blocks skip the sliding "
                             "window: give sliding_window (keys per query) too")
        return self

    @property
    def banded(self) -> bool:
        """Whether a field beyond the kernel shapes the attention of grouped-query blocks."""
        return any(getattr(self, f) for f in BANDED)


# shape fields of a transformer beyond GPT's (DESIGN.md), each for mlp: swiglu only
DECODER_FIELDS = ("kv_heads", "tied_embeddings", "head_dim", "moe", "attention",
                  "linear_bias")
SHAPE_FIELDS = ("layers", "hidden", "heads", "seq_len", "vocab", "ffn_hidden", "mlp",
                *DECODER_FIELDS)


class ModelSpec(_Spec):
    """A preset name, a transformer / MLP given by its shape, a Hugging Face ``config.json``
    (``hf_config``: its shape fields fill the transformer's, any given beside it win), or a
    torch module's factory (``torch: "package.module:factory"``, called with ``kwargs``, run
    on ``inputs``), or a PyTorch execution trace to replay (``trace: et.json``, one file
    replicated on every rank of its process group or ``et_{rank}.json`` one per rank, with
    ``kineto:`` an optional chrome trace of measured op times). A transformer preset takes
    ``seq_len`` beside it to train at another sequence length."""

    preset: str | None = None
    hf_config: str | None = None
    kind: Literal["transformer", "mlp", "cnn"] | None = None
    layers: int | None = Field(default=None, ge=1)
    hidden: int | None = Field(default=None, ge=1)
    heads: int | None = Field(default=None, ge=1)
    seq_len: int | None = Field(default=None, ge=1)
    vocab: int | None = Field(default=None, ge=1)
    ffn_hidden: int | None = Field(default=None, ge=1)
    kv_heads: int | None = Field(default=None, ge=1)  # grouped-query attention; = heads
    mlp: Literal["gelu", "swiglu"] | None = None  # None: gelu (GPT's blocks)
    tied_embeddings: bool | None = None  # None: as released, GPT tied, swiglu decoders not
    head_dim: int | None = Field(default=None, ge=1)  # None: hidden / heads
    moe: MoESpec | None = None
    attention: AttentionSpec | None = None
    linear_bias: bool | None = None  # biased attention, router, expert layers (gpt-oss)
    widths: list[int] | None = Field(default=None, min_length=2)
    torch: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, TorchInput] | None = None
    trace: str | None = None
    kineto: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _import_hf_config(cls, data: Any, info: ValidationInfo) -> Any:
        """Fill the shape from ``hf_config``; a config that cannot be imported is left to
        the ``hf_config`` field's check, which names the field."""
        if not isinstance(data, dict) or not isinstance(data.get("hf_config"), str):
            return data
        try:
            imported = import_fields(data["hf_config"], _scenario_dir(info))
        except ValueError:
            return data
        kernel = data.get("attention")
        if isinstance(kernel, str) and isinstance(imported.get("attention"), dict):
            data = data | {"attention": imported["attention"] | {"kernel": kernel}}
        return imported | data

    @field_validator("hf_config")
    @classmethod
    def _hf_config_readable(cls, path: str | None, info: ValidationInfo) -> str | None:
        if path is not None:
            import_fields(path, _scenario_dir(info))
        return path

    @field_validator("trace", "kineto")
    @classmethod
    def _trace_found(cls, path: str | None, info: ValidationInfo) -> str | None:
        """The trace's path, absolute: relative to the scenario file, the working directory
        or dlsim's bundled data; ``{rank}`` stands for each rank's number (its 0 is looked
        for)."""
        if path is None:
            return None
        try:
            found = resolve(path.replace("{rank}", "0"), _scenario_dir(info))
        except ValueError:
            raise ValueError(f"file '{path}' not found (relative paths start from the "
                             "scenario's folder); give the JSON that "
                             "torch.profiler.ExecutionTraceObserver writes (trace) or the "
                             "chrome trace of torch.profiler (kineto)") from None
        if "{rank}" not in path:
            return str(found.resolve())
        return str(found.resolve().parent / Path(path).name)  # {rank} in the file's name

    @field_validator("kv_heads")
    @classmethod
    def _kv_heads_divide_heads(cls, kv_heads: int | None, info: ValidationInfo) -> int | None:
        heads = info.data.get("heads")
        if heads is not None and kv_heads is not None and heads % kv_heads:
            raise ValueError(f"kv_heads ({kv_heads}) must divide heads ({heads}): each key-"
                             "value head serves heads/kv_heads query heads")
        return kv_heads

    @field_validator("moe")
    @classmethod
    def _dense_layers_fewer(cls, moe: MoESpec | None, info: ValidationInfo) -> MoESpec | None:
        layers = info.data.get("layers")
        if moe is not None and layers is not None and moe.dense_layers >= layers:
            raise ValueError(f"moe.dense_layers ({moe.dense_layers}) must be fewer than "
                             f"layers ({layers}): the MoE blocks follow the dense ones")
        return moe

    @model_validator(mode="after")
    def _complete(self) -> ModelSpec:
        if self.kineto is not None and self.trace is None:
            raise ValueError("'kineto' gives measured times for a 'trace': give both")
        if self.trace is not None:
            given = [f for f in ("preset", "kind", "torch", "hf_config", "widths")
                     if getattr(self, f) is not None]
            if given:
                raise ValueError(f"give 'trace' alone (with 'kineto' at most), without "
                                 f"{', '.join(given)}: the trace is the model")
            return self
        if self.torch is not None:
            if self.preset is not None or self.kind is not None:
                raise ValueError("give 'torch' alone, without 'preset' or 'kind'")
            if not self.inputs:
                raise ValueError("a torch model needs 'inputs', e.g. {ids: {shape: [1, 1024], "
                                 "dtype: int64}} (the first dimension is the micro-batch)")
            return self
        if self.kwargs or self.inputs is not None:
            raise ValueError("'kwargs' and 'inputs' belong to a torch model ('torch: "
                             "package.module:factory')")
        if self.hf_config is not None and (self.preset is not None or self.widths is not None
                                           or self.kind != "transformer"):
            raise ValueError("'hf_config' gives a transformer: give it without 'preset', "
                             "'widths' or another kind")
        if self.preset is not None:
            fixed = [f for f in (*SHAPE_FIELDS, "widths") if f not in ("seq_len", "moe")
                     and getattr(self, f) is not None
                     and not (f == "attention" and self.attention is not None
                              and self.attention.model_fields_set <= {"kernel"})]
            if self.moe is not None:
                fixed += [f"moe.{f}" for f in sorted(self.moe.model_fields_set)
                          if f not in MOE_ROUTING]
            if fixed:
                raise ValueError(f"a preset fixes its shape; beside 'preset' only seq_len, "
                                 "the attention kernel (attention: flash|sdpa|eager) and "
                                 f"the routing of its experts (moe: {{{', '.join(MOE_ROUTING)}"
                                 f"}}) may be given (not {', '.join(fixed)}); give the whole "
                                 "shape with kind: transformer instead")
            return self
        if self.kind is None:
            raise ValueError("give either 'preset' or 'kind' (transformer or mlp)")
        if self.kind == "cnn":
            raise ValueError("a cnn model is given by preset (resnet50, resnet101, vgg16)")
        need = {"transformer": ["layers", "hidden", "heads", "seq_len", "vocab"],
                "mlp": ["widths"]}[self.kind]
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.kind} model needs {', '.join(missing)}")
        if self.kind == "mlp":
            extra = [f for f in SHAPE_FIELDS if getattr(self, f) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} belong to a transformer, not an mlp")
        else:
            self._check_transformer()
        if self.widths is not None and min(self.widths) < 1:
            raise ValueError("widths must be positive")
        return self

    def _check_transformer(self) -> None:
        mla = self.attention is not None and self.attention.kind == "mla"
        if (self.hidden is not None and self.heads is not None and self.hidden % self.heads
                and self.head_dim is None and not mla):
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads "
                             f"({self.heads}), or give head_dim")
        if self.mlp != "swiglu":
            modern = [f for f in DECODER_FIELDS if getattr(self, f) is not None
                      and not (f == "kv_heads" and self.kv_heads == self.heads)
                      and not (f == "tied_embeddings" and self.tied_embeddings)
                      and not (f == "linear_bias" and not self.linear_bias)
                      and not (f == "attention" and not mla and self.attention is not None
                               and not self.attention.banded)]
            if modern:
                raise ValueError(f"{', '.join(modern)} need mlp: swiglu (the decoder blocks of "
                                 "Llama, Mixtral, Qwen3, DeepSeek and gpt-oss); mlp: gelu builds "
                                 "GPT's "
                                 "blocks: multi-head attention, a dense MLP, tied embeddings")
        if self.moe is not None:
            missing = [f"moe.{f}" for f in MOE_SHAPE if getattr(self.moe, f) is None]
            if missing:
                raise ValueError(f"a transformer's moe block needs {', '.join(missing)}")
        if mla and self.kv_heads is not None and self.kv_heads != self.heads:
            raise ValueError(f"multi-head latent attention has a key and value for each of "
                             f"the heads ({self.heads}); kv_heads ({self.kv_heads}) must equal "
                             "heads or be left out")


def _scenario_dir(info: ValidationInfo) -> Path | None:
    """The folder of the scenario file being validated, which relative paths start from."""
    context = info.context if isinstance(info.context, dict) else {}
    where = context.get("scenario_dir")
    return where if isinstance(where, Path) else None


class LinkSpecIn(_Spec):
    bandwidth_GBps: float = Field(gt=0)
    latency_us: float = Field(default=0.0, ge=0)


class ClusterSpec(_Spec):
    """A system preset on N nodes, a device on a described node, or a textbook topology."""

    preset: str | None = None
    nodes: int = Field(default=1, ge=1)
    device: str | None = None
    devices_per_node: int | None = Field(default=None, ge=1)
    intra_node: str | None = None
    inter_node: str | None = None
    fabric: Literal["switch", "fat-tree", "rail"] = "fat-tree"
    oversubscription: float = Field(default=1.0, ge=1.0)
    # rail fabric: NCCL's PXN (cross-rail traffic goes over NVLink to the GPU on the right
    # rail first); false is NCCL_PXN_DISABLE=1
    pxn: bool = True
    nics_per_leaf: int = Field(default=32, ge=1)
    topology: Literal["ring", "switch", "fully-connected", "torus", "fat-tree"] | None = None
    devices: int | None = Field(default=None, ge=1)
    dims: list[int] | None = None
    link: LinkSpecIn | None = None
    devices_per_switch: int = Field(default=8, ge=1)
    # a `dlsim calibrate` file overlaying the device profile (dlsim/calibration/store.py);
    # one made for another profile is refused unless force_calibration
    calibration: str | None = None
    force_calibration: bool = False

    @model_validator(mode="after")
    def _one_form(self) -> ClusterSpec:
        forms = [self.preset is not None, self.topology is not None,
                 self.preset is None and self.topology is None]
        if self.preset is not None and self.topology is not None:
            raise ValueError("give either 'preset' or 'topology', not both")
        if forms[1]:
            if self.link is None:
                raise ValueError("a textbook topology needs 'link: {bandwidth_GBps, latency_us}'")
            if self.topology == "torus":
                if not self.dims or min(self.dims) < 1:
                    raise ValueError("a torus needs 'dims', a list of positive sizes")
                n = 1
                for d in self.dims:
                    n *= d
                if self.devices is not None and self.devices != n:
                    raise ValueError(f"devices ({self.devices}) must equal the product of "
                                     f"dims ({n})")
            elif self.devices is None:
                raise ValueError(f"a {self.topology} topology needs 'devices'")
        if forms[2] and (self.device is None or self.devices_per_node is None
                         or self.intra_node is None):
            raise ValueError("give 'preset', 'topology', or all of device, devices_per_node "
                             "and intra_node")
        return self


class LoraSpec(_Spec):
    """LoRA fine-tuning (Hu et al. 2021): the base weights are frozen and rank-``rank``
    adapters train on the weight matrices named in ``targets`` (GPT: qkv, proj, mlp_up,
    mlp_down; LLaMA: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)."""

    rank: int = Field(ge=1)
    targets: list[str] = Field(min_length=1)


class TrainingSpec(_Spec):
    global_batch: int = Field(ge=1)
    microbatch: int | None = Field(default=None, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    bucket_cap_mb: float = Field(default=25.0, ge=0)  # 0: one bucket of every gradient
    steps: int = Field(default=1, ge=1)
    lora: LoraSpec | None = None
    # the dtype gradients are accumulated and reduced in: None, the training dtype (bf16
    # under fp8), as PyTorch DDP, FSDP and DeepSpeed keep them; fp32 as Megatron-Core does
    # with bf16 (main_grads fp32 buffers, --accumulate-allreduce-grads-in-fp32)
    grad_dtype: Literal["fp32", "bf16", "fp16"] | None = None
    # Transformer Engine's FP8 scaling recipe under precision fp8 (dlsim.workload.precision);
    # None: TE's default for the device
    fp8_recipe: FP8Recipe | None = None
    # torch.autocast over fp32 weights (PyTorch AMP, dlsim.workload.autocast) instead of
    # 16-bit weights with an fp32 master copy in the optimizer
    autocast: bool = False


# the schedules dlsim.parallel.schedules registers (gpipe, 1f1b, interleaved, ...)
PipelineSchedule = Annotated[str, member_of(SCHEDULE)]


class ParallelismSpec(_Spec):
    """Data (with ZeRO stages), tensor (Megatron-LM) and pipeline parallelism (GPipe, 1F1B,
    interleaved 1F1B with ``virtual_stages`` model chunks per device), activation
    recomputation and optimizer offload. ``sequence_parallel`` is Megatron-LM's sequence
    parallelism (Korthikanti et al. 2022, §4.2.2); as Megatron-LM does, it is ignored with
    tensor 1. ZeRO-3 composes with tensor and pipeline parallelism as FSDP does
    (``dlsim.parallel.builder``), ``shard_group`` is hybrid sharding
    (``dlsim.parallel.sharding``) and ``overlap_param_gather`` Megatron-Core's overlapped
    distributed-optimizer gather."""

    data: int | None = Field(default=None, ge=1)
    zero_stage: Literal[0, 1, 2, 3] = 0
    tensor: int = Field(default=1, ge=1)
    sequence_parallel: bool = False
    pipeline: int = Field(default=1, ge=1)
    schedule: PipelineSchedule = "1f1b"
    virtual_stages: int = Field(default=1, ge=1)
    # transformer blocks on each pipeline piece in model order (pipeline x virtual_stages of
    # them; the embedding rides with the first, the head with the last): Megatron-Core's
    # uneven layouts (--decoder-first/last-pipeline-num-layers, --pipeline-model-parallel-
    # layout); None: equal runs
    stage_blocks: list[Annotated[int, Field(ge=1)]] | None = None
    recompute: Literal["none", "selective", "full"] = "none"
    offload: Literal["none", "optimizer"] = "none"
    # context parallelism: devices = data x context x tensor x pipeline; how the context
    # group exchanges (Megatron-Core's --cp-comm-type): p2p, ring attention passing K/V
    # blocks; a2a, all-to-alls that trade the sequence split for a head split around the
    # attention core (DeepSpeed-Ulysses), the one Transformer Engine runs windowed attention
    # and attention sinks with
    context: int = Field(default=1, ge=1)
    context_comm: Literal["p2p", "a2a"] = "p2p"
    # expert parallelism, folded out of a stage's data x context x tensor ranks
    expert: int = Field(default=1, ge=1)
    expert_tensor: int = Field(default=1, ge=1)
    # hybrid sharding: ZeRO/FSDP shards within groups of k data-parallel ranks, replicates
    # across them (None: shard over the whole data-parallel group)
    shard_group: int | None = Field(default=None, ge=1)
    # ZeRO-1/2: the parameter all-gather after the update overlaps the next step's forward
    # (Megatron-Core's --overlap-param-gather, off by default as there)
    overlap_param_gather: bool = False
    # sequence-parallel TP: the all-gathers and reduce-scatters run beside the pass's GEMMs
    # (Transformer Engine userbuffers, Megatron-LM's --tp-comm-overlap), slowing them by the
    # device's comm_contention while they run (dlsim.parallel.builder)
    tp_comm_overlap: bool = False

    @model_validator(mode="after")
    def _supported(self) -> ParallelismSpec:
        conflict = parallelism_conflict(self)
        if conflict:
            raise ValueError(conflict)
        if self.tp_comm_overlap and not (self.tensor > 1 and self.sequence_parallel):
            raise ValueError("tp_comm_overlap overlaps sequence parallelism's all-gathers and "
                             "reduce-scatters with the GEMMs beside them, so it needs tensor > 1 "
                             "and sequence_parallel: true (Megatron-LM's --tp-comm-overlap "
                             "requires --sequence-parallel)")
        return self


# the algorithms dlsim.network.algorithms registers (any op's; kinds check the op), or auto:
# the fastest by the tuner's estimate
AllReduceAlgorithm = Annotated[str, member_of(ALGORITHM, also=("auto",))]
# dlsim.network.protocol: auto = NCCL's protocols on hardware-profile GPU clusters, ideal on
# textbook topologies; nccl = the fastest of LL, LL128 and Simple per collective
Protocol = Annotated[str, member_of(PROTOCOL, also=("auto",))]
# the schemes dlsim.network.compression registers (none, fp16, onebit, topk, ...)
GradientCompression = Annotated[str, member_of(COMPRESSION)]


class CommunicationSpec(_Spec):
    """How gradients travel: the all-reduce algorithm (``auto``: the fastest by the tuner's
    estimate), the protocol, parameter servers (``servers`` shards, ``colocated`` on workers
    or on ``dedicated`` devices of their own), and gradient compression."""

    data_parallel: AllReduceAlgorithm = "ring"
    servers: int = Field(default=1, ge=1)
    server_placement: Literal["colocated", "dedicated"] = "colocated"
    protocol: Protocol = "auto"
    compression: GradientCompression = "none"
    topk_ratio: float = Field(default=0.01, gt=0, le=1)
    local_sgd_period: int = Field(default=1, ge=1)  # local SGD: average every H steps


MAX_MESSAGE_BYTES = 2.0**50  # 1 PiB in one buffer: thousands of times any device's memory


class CollectiveSpec(_Spec):
    op: Literal["allreduce", "reducescatter", "allgather", "broadcast", "reduce", "alltoall",
                "sendrecv"] = "allreduce"
    algorithm: AllReduceAlgorithm = "ring"
    size_bytes: float = Field(gt=0, le=MAX_MESSAGE_BYTES)
    servers: int = Field(default=1, ge=1)
    server_placement: Literal["colocated", "dedicated"] = "colocated"
    protocol: Protocol = "auto"
    devices: int | None = Field(default=None, ge=1)


DEFAULT_MAX_EVENTS = 100_000_000  # about 15 minutes of engine work; raise it to go further


class SimulationSpec(_Spec):
    """How to simulate: ``auto`` uses symmetry for homogeneous jobs, ``full`` every rank;
    the network model (``dlsim.network.backend``) is ``fluid`` (flows share links max-min
    fairly) or ``analytical`` (each phase its closed-form time, as if alone on the network)."""

    fidelity: Literal["auto", "full", "symmetric"] = "auto"
    network: Literal["fluid", "analytical"] = "fluid"
    # admission control (dlsim.admission): a run whose estimated events exceed this is
    # refused before it starts, instead of running for hours or exhausting memory
    max_events: int = Field(default=DEFAULT_MAX_EVENTS, ge=1)


Precision = Literal["fp32", "tf32", "fp16", "bf16", "fp8", "fp4"]
Placement = Literal["pack", "spread"] | list[int]  # or rank i -> device ids[i]
Name = Annotated[str, Field(min_length=1)]
Sweep = dict[str, list[Any]]  # dotted field path -> values (dlsim.sweep.grid)

# Each kind model lists its sections in one order (a scenario's dump, shown in its report,
# follows it); name, kind, description, seed and sweep belong to every kind.


class TrainingScenario(_Spec):
    """``kind: training``, the default: training steps of a model on a cluster under a
    parallelism plan, with their synchronisation, stragglers, failures and convergence."""

    name: Name
    kind: Literal["training"] = "training"
    description: str = ""
    model: ModelSpec
    cluster: ClusterSpec
    precision: Precision = "bf16"
    training: TrainingSpec
    parallelism: ParallelismSpec = ParallelismSpec()
    communication: CommunicationSpec = CommunicationSpec()
    placement: Placement = "pack"
    sync: SyncSpec = SyncSpec()
    stragglers: StragglerSpec | None = None
    failures: FailureSpec | None = None
    convergence: ConvergenceSpec | None = None
    seed: int = Field(default=0, ge=0)  # numpy's SeedSequence takes non-negative ints
    simulation: SimulationSpec = SimulationSpec()
    sweep: Sweep | None = None


class CollectiveScenario(_Spec):
    """``kind: collective``: one collective on a cluster, reported as nccl-tests does."""

    name: Name
    kind: Literal["collective"] = "collective"
    description: str = ""
    cluster: ClusterSpec
    collective: CollectiveSpec
    placement: Placement = "pack"
    seed: int = Field(default=0, ge=0)  # numpy's SeedSequence takes non-negative ints
    simulation: SimulationSpec = SimulationSpec()
    sweep: Sweep | None = None


class FederatedScenario(_Spec):
    """``kind: federated``: rounds of client updates; the model gives each client's work
    unless ``federated`` gives flops_per_sample and parameters; ``convergence`` turns the
    rounds' rate of updates into a time to a target accuracy."""

    name: Name
    kind: Literal["federated"] = "federated"
    description: str = ""
    model: ModelSpec | None = None
    precision: Precision = "bf16"
    seed: int = Field(default=0, ge=0)  # numpy's SeedSequence takes non-negative ints
    sweep: Sweep | None = None
    federated: FederatedSpec
    convergence: FederatedConvergenceSpec | None = None


class EdgeInferenceScenario(_Spec):
    """``kind: edge-inference``: one request of a model served from an end device."""

    name: Name
    kind: Literal["edge-inference"] = "edge-inference"
    description: str = ""
    model: ModelSpec
    precision: Precision = "bf16"
    seed: int = Field(default=0, ge=0)  # numpy's SeedSequence takes non-negative ints
    sweep: Sweep | None = None
    inference: EdgeInferenceSpec


KindModel = type[TrainingScenario | CollectiveScenario | FederatedScenario
                 | EdgeInferenceScenario]
KINDS: dict[str, KindModel] = {model.model_fields["kind"].default: model for model in (
    TrainingScenario, CollectiveScenario, FederatedScenario, EdgeInferenceScenario)}
DEFAULT_KIND = "training"


def _kind_of(value: Any) -> Any:
    return value.get("kind", DEFAULT_KIND) if isinstance(value, dict) else value.kind


Scenario = Annotated[
    Annotated[TrainingScenario, Tag("training")]
    | Annotated[CollectiveScenario, Tag("collective")]
    | Annotated[FederatedScenario, Tag("federated")]
    | Annotated[EdgeInferenceScenario, Tag("edge-inference")],
    Discriminator(_kind_of)]
_SCENARIO: TypeAdapter[Scenario] = TypeAdapter(Scenario)

# What a missing required section holds, for the error that asks for it.
SECTION_HINTS = {"model": "{preset} or {kind, ...}", "cluster": "{preset, nodes} or "
                 "{topology, devices, link}", "training": "{global_batch, ...}",
                 "collective": "{op, algorithm, size_bytes}",
                 "federated": "{clients, population, ...}",
                 "inference": "{device, server | hierarchy | spatial}"}


def _a(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} scenario"


def scenario_model(data: dict[str, Any], file: str | None = None) -> KindModel:
    """The model of the scenario's ``kind``; an unknown kind names the kinds there are."""
    kind = data.get("kind", DEFAULT_KIND)
    if isinstance(kind, str) and kind in KINDS:
        return KINDS[kind]
    hint = did_you_mean(kind, list(KINDS)) if isinstance(kind, str) else ""
    raise ScenarioError(f"{excerpt(repr(kind))} is not a scenario kind{hint}; the kinds are "
                        f"{', '.join(KINDS)} (default {DEFAULT_KIND}).", file=file,
                        field="kind")


def _check_sections(data: dict[str, Any], model: KindModel, file: str | None) -> None:
    """Every top-level key is a section of the kind, and its required ones are there: a
    section of another kind is named with the kinds that have it, a near miss with the
    section meant."""
    kind = model.model_fields["kind"].default
    allowed = list(model.model_fields)
    problems: list[tuple[str, str]] = []
    meant = set()
    for key in data:
        if key in allowed:
            continue
        name = excerpt(str(key))
        owners = [k for k, m in KINDS.items() if key in m.model_fields]
        near = closest(str(key), allowed)
        why = (f" ('{name}' belongs to {', '.join(owners)} scenarios)" if owners
               else f" (did you mean '{near}'?)" if near else "")
        meant.add(near)
        problems.append((name, f"{_a(kind)} has no '{name}' section{why}; its sections are "
                               f"{', '.join(allowed)}"))
    for key, field in model.model_fields.items():
        if field.is_required() and key not in data and key not in meant:
            hint = f": {SECTION_HINTS[key]}" if key in SECTION_HINTS else ""
            problems.append((key, f"{_a(kind)} needs '{key}{hint}'"))
    if len(problems) == 1:
        raise ScenarioError(problems[0][1] + ".", file=file, field=problems[0][0])
    if problems:
        raise ScenarioError("; ".join(why for _, why in problems) + ".", file=file)


def load_scenario(source: str | Path | dict[str, Any]) -> Scenario:
    """Validate a scenario from a YAML file path or an already-parsed dict."""
    file = None if isinstance(source, dict) else str(source)
    data = source if isinstance(source, dict) else read_yaml(source)
    model = scenario_model(data, file)
    _check_sections(data, model, file)
    try:
        # relative paths in the model (hf_config) start from the scenario file's folder
        context = {"scenario_dir": Path(file).parent} if file else None
        return _SCENARIO.validate_python(data, context=context)
    except ValidationError as exc:
        # the first location is the kind's tag, which the checks above already settled
        errors = [{**e, "loc": e["loc"][1:]} for e in exc.errors()]
        raise ScenarioError(describe_invalid(errors, model), file=file) from None
