"""The one error type users see: bad input, named by file and field.

The CLI turns a ``ScenarioError`` into a one-paragraph message and exit code 2; everything
else is a bug and keeps its traceback. ``describe_invalid`` turns pydantic's report into that
paragraph: each field as the user spelled it (dotted, list indices as numbers), the value
given (bounded), and for an unknown key the closest allowed names and all of them.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

EXCERPT_CHARS = 80  # the most of the user's input one message quotes


class ScenarioError(ValueError):
    """Invalid user input: which file, which field, what is wrong and what is allowed."""

    def __init__(self, message: str, file: str | None = None, field: str | None = None):
        # args hold the parts so that copies (SimPy re-raises type(e)(*e.args); pickling
        # across worker processes does the same) keep the message intact
        super().__init__(message, file, field)
        self.message, self.file, self.field = message, file, field

    def __str__(self) -> str:
        return self.paragraph()

    def paragraph(self) -> str:
        where = []
        if self.file:
            where.append(f"in {self.file}")
        if self.field:
            where.append(f"field '{self.field}'")
        prefix = ("Error " + ", ".join(where) + ": ") if where else "Error: "
        return prefix + self.message


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` cut to ``limit`` characters: a message never quotes a whole document."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def closest(name: str, allowed: Sequence[str]) -> str | None:
    """The allowed name ``name`` most likely misspells, if any is close (difflib ratio 0.6)."""
    close = difflib.get_close_matches(name, allowed, n=1)
    return close[0] if close else None


def did_you_mean(name: str, allowed: Sequence[str]) -> str:
    """" (did you mean 'x'?)" when ``name`` is close to one of ``allowed``, else ''."""
    near = closest(name, allowed)
    return f" (did you mean '{near}'?)" if near else ""


def describe_invalid(errors: Sequence[Mapping[str, Any]],
                     root: type[BaseModel] | None = None) -> str:
    """Pydantic's ``ValidationError.errors()`` as one sentence, each problem naming its field
    and the value given: the CLI prints one paragraph, not pydantic's multi-line report.

    With ``root``, the model validated, locations are walked through its fields: union
    member tags (``'str'``, ``'LinkIn'``) leave the path, an unknown key is named with the
    closest allowed ones, and of a union's members only those the input matched are kept.
    """
    problems = [_Problem.of(e, root) for e in errors]
    deeper = {p.path[:n] for p in problems if not p.mismatch for n in range(len(p.path) + 1)}
    kept = [p for p in problems if not (p.mismatch and p.path in deeper)]
    merged: list[_Problem] = []
    first_mismatch: dict[tuple[Any, ...], _Problem] = {}
    for p in kept:  # the members a value matched none of: one message, "a, or b"
        if p.mismatch and p.path in first_mismatch:
            first_mismatch[p.path].alternatives.append(p.msg.removeprefix("Input should be "))
            continue
        if p.mismatch:
            first_mismatch[p.path] = p
        merged.append(p)
    return "; ".join(p.sentence() for p in merged) + "."


@dataclass
class _Problem:
    path: tuple[Any, ...]
    msg: str
    shown: str
    mismatch: bool  # the input is not of the type of the union member named by the last tag
    alternatives: list[str]

    @classmethod
    def of(cls, err: Mapping[str, Any], root: type[BaseModel] | None) -> _Problem:
        path, parent, at, at_tag = _walk(root, tuple(err["loc"])) if root else (
            tuple(err["loc"]), None, None, False)
        mismatch = at_tag and (err["type"].endswith("_type") or err["type"] == "literal_error")
        given = err.get("input")
        shown = ("" if err["type"] == "missing" or isinstance(given, dict)
                 else f" (got {excerpt(repr(given))})")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and parent is not None:
            allowed = list(parent.model_fields)
            where = ".".join(map(str, path[:-1])) or "the scenario"
            msg = (f"no such field{did_you_mean(str(path[-1]), allowed)}; "
                   f"'{excerpt(where)}' takes {', '.join(allowed)}")
            shown = ""
        elif err["type"] in ("model_type", "model_attributes_type") and at is not None:
            msg = f"Input should be a mapping of {', '.join(at.model_fields)}"
        return cls(path, msg, shown, mismatch, [])

    def sentence(self) -> str:
        loc = excerpt(".".join(str(p) for p in self.path))
        msg = ", or ".join([self.msg, *self.alternatives])
        return f"field '{loc}': {msg}{self.shown}" if loc else f"{msg}{self.shown}"


def _walk(root: type[BaseModel], loc: tuple[Any, ...]
          ) -> tuple[tuple[Any, ...], type[BaseModel] | None, type[BaseModel] | None, bool]:
    """Follow ``loc`` through the model's field types: the path as the user wrote it, the
    model holding its last field, the model the path ends on (if any), and whether the last
    element of ``loc`` was a union member's tag rather than a field or index."""
    path: list[Any] = []
    tp: Any = root
    parent = None
    at_tag = False
    for elem in loc:
        tp = _unwrap(tp)
        members = _union_members(tp)
        at_tag = bool(members)
        if members:  # pydantic names the member tried: its class name, or 'str', 'list[int]'
            tp = next((m for m in members if isinstance(m, type) and m.__name__ == elem), None)
            continue
        if elem == "[key]":  # a dict's key was invalid; the path already names it
            continue
        path.append(elem)
        parent = tp if _is_model(tp) else None
        if parent is not None:
            field = parent.model_fields.get(elem)
            tp = field.annotation if field else None
        elif typing.get_origin(tp) in (list, tuple, set, frozenset):
            tp = (typing.get_args(tp) or (None,))[0]
        elif typing.get_origin(tp) is dict:
            tp = (typing.get_args(tp) or (None, None))[1]
        else:
            tp = None
    end = _unwrap(tp)
    return tuple(path), parent, end if _is_model(end) else None, at_tag


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _unwrap(tp: Any) -> Any:
    """``Annotated[X, ...]`` -> X and ``X | None`` -> X (pydantic tags neither)."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return tp


def _union_members(tp: Any) -> list[Any]:
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return []
    return [_unwrap(a) for a in typing.get_args(tp) if a is not type(None)]
