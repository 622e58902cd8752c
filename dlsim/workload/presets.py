"""Models by name or by shape: ``build_model`` turns a scenario's ``model:`` into layers and
``presets`` lists every preset name.

It sits above ``model``, ``cnn`` and ``llama`` (which build on ``model``'s kernels and
layers), so that every import among them points one way.
"""

from __future__ import annotations

from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ModelSpec
from dlsim.workload.cnn import CNN_PRESETS
from dlsim.workload.llama import LLAMA_PRESETS
from dlsim.workload.model import (
    ENCODER_PRESETS,
    MLP_PRESETS,
    TRANSFORMER_PRESETS,
    Model,
    mlp_layers,
    transformer_layers,
)


def presets() -> list[str]:
    """Every model preset name, sorted."""
    return sorted([*TRANSFORMER_PRESETS, *MLP_PRESETS, *CNN_PRESETS, *LLAMA_PRESETS])


def build_model(spec: ModelSpec, microbatch: int, dtype_bytes: int) -> Model:
    """Layers of ``spec`` for one micro-batch of ``microbatch`` samples."""
    if spec.torch is not None:  # torch is optional: imported only for a torch model
        from dlsim.workload.torch_import import import_torch_model

        assert spec.inputs is not None  # ModelSpec's validator requires inputs of a torch model
        return import_torch_model(spec.torch, spec.kwargs,
                                  {k: v.model_dump() for k, v in spec.inputs.items()},
                                  microbatch, dtype_bytes)
    if spec.preset is not None:
        if spec.preset in TRANSFORMER_PRESETS:
            layers, h, a, s, v = TRANSFORMER_PRESETS[spec.preset]
            return transformer_layers(spec.preset, layers, h, a, s, v, microbatch, dtype_bytes,
                                      encoder=spec.preset in ENCODER_PRESETS)
        if spec.preset in LLAMA_PRESETS:
            return LLAMA_PRESETS[spec.preset](microbatch, dtype_bytes)
        if spec.preset in MLP_PRESETS:
            return mlp_layers(spec.preset, MLP_PRESETS[spec.preset], microbatch, dtype_bytes)
        if spec.preset in CNN_PRESETS:
            return CNN_PRESETS[spec.preset](microbatch, dtype_bytes)
        raise ScenarioError(f"unknown model preset '{spec.preset}'; available: "
                            f"{', '.join(presets())}.", field="model.preset")
    if spec.kind == "transformer":
        # ModelSpec's validator requires these of a transformer given by its shape
        assert (spec.layers is not None and spec.hidden is not None and spec.heads is not None
                and spec.seq_len is not None and spec.vocab is not None)
        name = f"transformer-{spec.layers}x{spec.hidden}"
        return transformer_layers(name, spec.layers, spec.hidden, spec.heads, spec.seq_len,
                                  spec.vocab, microbatch, dtype_bytes, spec.ffn_hidden)
    assert spec.widths is not None  # ModelSpec's validator requires widths of an mlp
    return mlp_layers("mlp-" + "-".join(map(str, spec.widths)), spec.widths, microbatch,
                      dtype_bytes)
