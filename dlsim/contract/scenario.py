"""Scenario files: YAML -> one loader -> validated, immutable pydantic models.

Field names here are dlsim's public interface (DESIGN.md, "Scenario contract"). Loading has
no side effects. Every problem becomes a ``ScenarioError`` naming the file, the field, what
was given and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from dlsim.contract.errors import ScenarioError, describe_invalid
from dlsim.contract.federated import FederatedSpec
from dlsim.contract.inference import EdgeInferenceSpec
from dlsim.contract.spec import Spec as _Spec
from dlsim.contract.sync import ConvergenceSpec, FailureSpec, StragglerSpec, SyncSpec


class ModelSpec(_Spec):
    """A preset name, or a transformer / MLP given by its shape."""

    preset: str | None = None
    kind: Literal["transformer", "mlp", "cnn"] | None = None
    layers: int | None = Field(default=None, ge=1)
    hidden: int | None = Field(default=None, ge=1)
    heads: int | None = Field(default=None, ge=1)
    seq_len: int | None = Field(default=None, ge=1)
    vocab: int | None = Field(default=None, ge=1)
    ffn_hidden: int | None = Field(default=None, ge=1)
    widths: list[int] | None = Field(default=None, min_length=2)

    @model_validator(mode="after")
    def _complete(self) -> ModelSpec:
        if self.preset is not None:
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
        if self.kind == "transformer" and self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.widths is not None and min(self.widths) < 1:
            raise ValueError("widths must be positive")
        return self


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
    bucket_cap_mb: float = Field(default=25.0, ge=0)
    steps: int = Field(default=1, ge=1)
    lora: LoraSpec | None = None


class ParallelismSpec(_Spec):
    """Data (with ZeRO stages), tensor (Megatron-LM) and pipeline parallelism (GPipe, 1F1B,
    interleaved 1F1B with ``virtual_stages`` model chunks per device), activation
    recomputation and optimizer offload. ``sequence_parallel`` is Megatron-LM's sequence
    parallelism (Korthikanti et al. 2022, §4.2.2); as Megatron-LM does, it is ignored with
    tensor 1."""

    data: int | None = Field(default=None, ge=1)
    zero_stage: Literal[0, 1, 2, 3] = 0
    tensor: int = Field(default=1, ge=1)
    sequence_parallel: bool = False
    pipeline: int = Field(default=1, ge=1)
    schedule: Literal["gpipe", "1f1b", "interleaved"] = "1f1b"
    virtual_stages: int = Field(default=1, ge=1)
    recompute: Literal["none", "selective", "full"] = "none"
    offload: Literal["none", "optimizer"] = "none"

    @model_validator(mode="after")
    def _supported(self) -> ParallelismSpec:
        # the rules live with the engine's and the planner's (imported here, when a scenario
        # is validated, because that module builds on this one)
        from dlsim.parallel.feasibility import parallelism_conflict

        conflict = parallelism_conflict(self)
        if conflict:
            raise ValueError(conflict)
        return self


AllReduceAlgorithm = Literal["auto", "ring", "tree", "halving-doubling", "direct",
                             "hierarchical", "ps", "gossip"]
# dlsim.network.protocol: auto = NCCL's protocols on hardware-profile GPU clusters, ideal on
# textbook topologies; nccl = the fastest of LL, LL128 and Simple per collective
Protocol = Literal["auto", "ideal", "nccl", "LL", "LL128", "Simple"]


class CommunicationSpec(_Spec):
    """How gradients travel: the all-reduce algorithm (``auto``: the fastest by the tuner's
    estimate), the protocol, parameter servers (``servers`` shards, ``colocated`` on workers
    or on ``dedicated`` devices of their own), and gradient compression."""

    data_parallel: AllReduceAlgorithm = "ring"
    servers: int = Field(default=1, ge=1)
    server_placement: Literal["colocated", "dedicated"] = "colocated"
    protocol: Protocol = "auto"
    compression: Literal["none", "fp16", "onebit", "topk"] = "none"
    topk_ratio: float = Field(default=0.01, gt=0, le=1)
    local_sgd_period: int = Field(default=1, ge=1)  # local SGD: average every H steps


class CollectiveSpec(_Spec):
    op: Literal["allreduce", "reducescatter", "allgather", "broadcast", "reduce", "alltoall",
                "sendrecv"] = "allreduce"
    algorithm: AllReduceAlgorithm = "ring"
    size_bytes: float = Field(gt=0)
    servers: int = Field(default=1, ge=1)
    server_placement: Literal["colocated", "dedicated"] = "colocated"
    protocol: Protocol = "auto"
    devices: int | None = Field(default=None, ge=1)


class SimulationSpec(_Spec):
    """How to simulate: ``auto`` uses symmetry for homogeneous jobs, ``full`` every rank."""

    fidelity: Literal["auto", "full", "symmetric"] = "auto"


class Scenario(_Spec):
    name: str = Field(min_length=1)
    kind: Literal["training", "collective", "federated", "edge-inference"] = "training"
    description: str = ""
    model: ModelSpec | None = None
    cluster: ClusterSpec | None = None
    precision: Literal["fp32", "tf32", "fp16", "bf16", "fp8"] = "bf16"
    training: TrainingSpec | None = None
    parallelism: ParallelismSpec = ParallelismSpec()
    communication: CommunicationSpec = CommunicationSpec()
    collective: CollectiveSpec | None = None
    placement: Literal["pack", "spread"] | list[int] = "pack"  # or rank i -> device ids[i]
    sync: SyncSpec = SyncSpec()
    stragglers: StragglerSpec | None = None
    failures: FailureSpec | None = None
    convergence: ConvergenceSpec | None = None
    seed: int = 0
    simulation: SimulationSpec = SimulationSpec()
    sweep: dict[str, list[Any]] | None = None
    inference: EdgeInferenceSpec | None = None
    federated: FederatedSpec | None = None

    @model_validator(mode="after")
    def _kind_needs(self) -> Scenario:
        if self.kind in ("training", "collective") and self.cluster is None:
            raise ValueError(f"a {self.kind} scenario needs 'cluster'")
        if self.kind == "training":
            missing = [f for f in ("model", "training") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"a training scenario needs {' and '.join(missing)}")
        if self.kind == "collective" and self.collective is None:
            raise ValueError("a collective scenario needs 'collective: {op, algorithm, "
                             "size_bytes}'")
        if self.kind == "edge-inference" and (self.inference is None or self.model is None):
            raise ValueError("an edge-inference scenario needs 'model' and 'inference: "
                             "{device, server | hierarchy | spatial}'")
        if self.inference is not None and self.kind != "edge-inference":
            raise ValueError("'inference' belongs to kind: edge-inference scenarios")
        if self.kind == "federated" and self.federated is None:
            raise ValueError("a federated scenario needs 'federated: {clients, population, "
                             "...}'")
        return self


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping safely; unreadable files and bad syntax are input errors."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ScenarioError(f"cannot read the file: {exc.strerror}.", file=str(path)) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or "invalid syntax"
        raise ScenarioError(f"not valid YAML{at}: {problem}.", file=str(path)) from None
    if not isinstance(data, dict):
        raise ScenarioError("a scenario must be a YAML mapping with at least 'name' and "
                            "'cluster'.", file=str(path))
    return data


def load_scenario(source: str | Path | dict[str, Any]) -> Scenario:
    """Validate a scenario from a YAML file path or an already-parsed dict."""
    file = None if isinstance(source, dict) else str(source)
    data = source if isinstance(source, dict) else read_yaml(source)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(describe_invalid(exc.errors()), file=file) from None
