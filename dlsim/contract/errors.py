"""The one error type users see: bad input, named by file and field.

The CLI turns a ``ScenarioError`` into a one-paragraph message and exit code 2; everything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic_core import ErrorDetails


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


def describe_invalid(errors: Sequence[ErrorDetails]) -> str:
    """Pydantic's ``ValidationError.errors()`` as one sentence, each problem naming its field
    and the value given: the CLI prints one paragraph, not pydantic's multi-line report."""
    return "; ".join(_describe(e) for e in errors) + "."


def _describe(err: ErrorDetails) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    given = err.get("input")
    shown = "" if err["type"] == "missing" or isinstance(given, dict) else f" (got {given!r})"
    return (f"field '{loc}': {msg}{shown}" if loc else f"{msg}")
