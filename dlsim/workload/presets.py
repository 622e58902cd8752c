"""Models by name or by shape: ``build_model`` turns a scenario's ``model:`` into layers,
``layer_count`` says how many it would have, and ``presets`` lists every preset name.

It sits above ``model``, ``cnn`` and ``decoder`` (which build on ``model``'s kernels and
layers), so that every import among them points one way. The scenario's ``ModelSpec`` is a
type here only: the contract's validators call the feasibility rules, which count layers
with this module while the contract is still loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dlsim.contract.errors import ScenarioError
from dlsim.hardware.profiles import AttentionKernel
from dlsim.workload.cnn import CNN_PRESETS
from dlsim.workload.decoder import decoder_layers
from dlsim.workload.model import MLP_PRESETS, Model, mlp_layers, transformer_layers
from dlsim.workload.shapes import TRANSFORMER_SHAPES, TransformerShape, shape_of

if TYPE_CHECKING:
    from dlsim.contract.scenario import ModelSpec


def presets() -> list[str]:
    """Every model preset name, sorted."""
    return sorted([*TRANSFORMER_SHAPES, *MLP_PRESETS, *CNN_PRESETS])


def preset_rows() -> list[dict[str, object]]:
    """One row per preset: its name, parameters and the parameters one token passes through
    (``Model.active_parameters``: fewer than all for mixture-of-experts models only)."""
    rows: list[dict[str, object]] = []
    for name in presets():
        model = build_model(_preset_spec(name), 1, 2)
        rows.append({"name": name, "parameters": model.parameters,
                     "active_parameters": model.active_parameters})
    return rows


def _preset_spec(name: str) -> ModelSpec:
    from dlsim.contract.scenario import ModelSpec  # the contract loads after this module

    return ModelSpec(preset=name)


def transformer_model(name: str, shape: TransformerShape, b: int, dtype_bytes: int,
                      attention: AttentionKernel = "eager") -> Model:
    """The layers of ``shape``: the modern decoder's blocks for a SwiGLU shape, else GPT's or
    BERT's, their attention run by ``attention``."""
    if shape.mlp == "swiglu":
        return decoder_layers(name, shape, b, dtype_bytes, attention)
    return transformer_layers(name, shape.layers, shape.hidden, shape.heads, shape.seq_len,
                              shape.vocab, b, dtype_bytes, shape.ffn_hidden, shape.encoder,
                              attention)


def build_model(spec: ModelSpec, microbatch: int, dtype_bytes: int,
                attention: AttentionKernel = "eager") -> Model:
    """Layers of ``spec`` for one micro-batch of ``microbatch`` samples; a transformer's
    attention runs as ``attention`` (``dlsim.workload.attention.attention_kernel`` picks it
    for a run's device)."""
    if spec.torch is not None:  # torch is optional: imported only for a torch model
        from dlsim.workload.torch_import import import_torch_model

        assert spec.inputs is not None  # ModelSpec's validator requires inputs of a torch model
        return import_torch_model(spec.torch, spec.kwargs,
                                  {k: v.model_dump() for k, v in spec.inputs.items()},
                                  microbatch, dtype_bytes)
    shape = shape_of(spec)
    if shape is not None:
        name = spec.preset or _imported_name(spec) or f"transformer-{spec.layers}x{spec.hidden}"
        return transformer_model(name, shape, microbatch, dtype_bytes, attention)
    if spec.preset is not None and spec.seq_len is not None:
        raise ScenarioError(f"seq_len sets a transformer preset's sequence length; "
                            f"'{spec.preset}' is not a transformer.", field="model.seq_len")
    if spec.preset in MLP_PRESETS:
        return mlp_layers(spec.preset, MLP_PRESETS[spec.preset], microbatch, dtype_bytes)
    if spec.preset is not None:
        if spec.preset in CNN_PRESETS:
            return CNN_PRESETS[spec.preset](microbatch, dtype_bytes)
        raise ScenarioError(f"unknown model preset '{spec.preset}'; available: "
                            f"{', '.join(presets())}.", field="model.preset")
    assert spec.widths is not None  # ModelSpec's validator requires widths of an mlp
    return mlp_layers("mlp-" + "-".join(map(str, spec.widths)), spec.widths, microbatch,
                      dtype_bytes)


def layer_count(spec: ModelSpec) -> int:
    """How many layers ``build_model`` gives ``spec`` (what a pipeline cuts), without building
    a transformer: its blocks, the embedding and the head."""
    shape = shape_of(spec)
    if shape is not None:
        return shape.model_layers
    if spec.widths is not None:
        return len(spec.widths) - 1
    if spec.preset in MLP_PRESETS:
        return len(MLP_PRESETS[spec.preset]) - 1
    return len(build_model(spec, 1, 2).layers)  # a CNN preset or an imported torch model


def _imported_name(spec: ModelSpec) -> str | None:
    """An imported config's name: its file's stem, or its folder's for a ``config.json`` (a
    Hugging Face snapshot is a folder named after the model)."""
    if spec.hf_config is None:
        return None
    path = Path(spec.hf_config)
    if path.stem == "config" and path.parent.name:
        return path.parent.name
    return path.stem
