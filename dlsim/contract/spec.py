"""The base of every scenario spec model: immutable, unknown fields are errors, and a
number is a number.

It lives apart from scenario.py so that the modules of sections with their own file
(federated, inference, sync) can define their spec models without an import cycle.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """Pydantic reads ``true`` as 1 for an int or float field (``global_batch: true``
        would train on one sample); a count or size given as a boolean is an error."""
        if info.field_name is None or not _numeric(cls.model_fields[info.field_name]
                                                   .annotation):
            return value
        items = value if isinstance(value, list) else [value]
        if any(isinstance(v, bool) for v in items):
            raise ValueError("a number is expected, not a boolean")
        return value


def _numeric(tp: Any) -> bool:
    """Whether a field's type holds numbers and no booleans: int, float, their Optional,
    Annotated and list forms, and Literals of ints (``zero_stage``)."""
    if tp in (int, float):
        return True
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated or origin is list:
        return _numeric(args[0])
    if origin is typing.Literal:
        return all(isinstance(a, int) and not isinstance(a, bool) for a in args)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        return bool(members) and all(_numeric(a) for a in members)
    return False
