"""What ``--model`` names: a transformer preset, or a Hugging Face ``config.json`` on disk.

A value that is a preset name is the preset; anything else is read as a config path
(``dlsim.contract.hf_config``: absolute, relative to the working directory, or bundled as
``examples/hf/<model>.json``), trained at its ``max_position_embeddings`` as the contract
does. Either way the planner gets the same ``ModelSpec`` a scenario's ``model:`` section
gives, so the estimate and the engine's confirmations build one model.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ModelSpec
from dlsim.workload.shapes import TRANSFORMER_SHAPES, TransformerShape, shape_of


def is_preset(model: str) -> bool:
    return model in TRANSFORMER_SHAPES


def _path(model: str) -> str:
    """An existing file as an absolute path (the confirmations' scenarios are run from
    memory, not beside the file); else as given, for the bundled lookup."""
    given = Path(model)
    return str(given.resolve()) if given.is_file() else model


def model_section(model: str) -> dict[str, Any]:
    """The scenario's ``model:`` section for ``--model``."""
    return {"preset": model} if is_preset(model) else {"hf_config": _path(model)}


@lru_cache(maxsize=16)
def model_spec(model: str) -> ModelSpec:
    """The ``ModelSpec`` of ``--model``; a config that cannot be found, read or built (an
    unknown ``architectures``) is a ScenarioError naming ``--model``."""
    if is_preset(model):
        return ModelSpec(preset=model)
    looks_like_file = model.endswith(".json") or "/" in model or Path(model).exists()
    if not looks_like_file:
        raise ScenarioError(f"the planner plans transformer models; '{model}' is neither one "
                            f"of the presets {', '.join(sorted(TRANSFORMER_SHAPES))} nor a "
                            "Hugging Face config.json (give its path, e.g. "
                            "examples/hf/llama-3-8b.json).", field="--model")
    try:
        return ModelSpec.model_validate(model_section(model))
    except ValidationError as exc:
        why = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise ScenarioError(f"--model '{model}' is not a Hugging Face config dlsim can plan: "
                            f"{why}.", field="--model") from None


def model_shape(model: str) -> TransformerShape:
    """The transformer shape ``--model`` names (``model_spec``)."""
    shape = shape_of(model_spec(model))
    if shape is None:  # an hf_config always imports a transformer
        raise ScenarioError(f"'{model}' is not a transformer; the planner plans "
                            "transformers.", field="--model")
    return shape


def model_name(model: str) -> str:
    """A short name for titles and folders: the preset, or the config's model (its file's
    stem, or its folder's for a ``config.json`` of a Hugging Face snapshot)."""
    if is_preset(model):
        return model
    path = Path(model)
    return path.parent.name if path.stem == "config" and path.parent.name else path.stem
