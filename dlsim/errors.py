"""The one error type users see: bad input, named by file and field.

The CLI turns a ``ScenarioError`` into a one-paragraph message and exit code 2; everything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ScenarioError(ValueError):
    """Invalid user input: which file, which field, what is wrong and what is allowed."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None):
        self.file = file
        self.field = field
        self.message = message
        super().__init__(self.paragraph())

    def paragraph(self) -> str:
        where = []
        if self.file:
            where.append(f"in {self.file}")
        if self.field:
            where.append(f"field '{self.field}'")
        prefix = ("Error " + ", ".join(where) + ": ") if where else "Error: "
        return prefix + self.message
