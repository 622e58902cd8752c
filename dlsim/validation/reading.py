"""Reading a published table: each value knows its file, line and column, so that a
corrupt table is an input error naming them, never a traceback or a silently dropped row."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from dlsim.contract.errors import ScenarioError

Row = dict[str, Any]


def row(table: str, case: str, predicted: float, measured: float, unit: str) -> Row:
    return {"table": table, "case": case, "predicted": predicted, "measured": measured,
            "error_pct": 100.0 * (predicted - measured) / measured, "unit": unit}


class _Cell(str):
    """A CSV value that knows where it was read: a value that is not a number, converted to
    one, is an input error naming the file, line and column instead of a traceback."""

    where: str
    file: str

    def _number(self, kind: type[float] | type[int]) -> float | int:
        try:
            return kind(str(self))
        except ValueError:
            raise ScenarioError(f"{self.where}: {str(self)[:40]!r} is not a number.",
                                file=self.file) from None

    def __float__(self) -> float:
        return float(self._number(float))

    def __int__(self) -> int:
        return int(self._number(int))


class _Row(dict[str, _Cell]):
    """A CSV row; a column the table lacks is an input error naming the file."""

    def __init__(self, file: str, values: dict[str, _Cell]) -> None:
        super().__init__(values)
        self.file = file

    def __missing__(self, column: str) -> _Cell:
        raise ScenarioError(f"the table has no column '{column}'; its header is "
                            f"{', '.join(self)}.", file=self.file)


def _cell(text: str, file: str, where: str) -> _Cell:
    cell = _Cell(text)
    cell.file, cell.where = file, where
    return cell


def read_table(directory: Path, name: str) -> list[dict[str, str]]:
    """A validation table's rows; a table that cannot be read, is not UTF-8 text, has no
    rows, or has a row with missing or extra values is an input error naming the file (a
    corrupt table must not silently drop out of the comparison)."""
    path = directory / name
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ScenarioError(f"cannot read the validation table: {exc.strerror}.",
                            file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"not a UTF-8 CSV file (byte at offset {exc.start} is not "
                            "UTF-8).", file=str(path)) from None
    try:
        reader = csv.DictReader(text.splitlines())
        rows = []
        for row in reader:
            if None in row or None in row.values():
                given = sum(v is not None for k, v in row.items() if k is not None) + len(
                    row.get(None) or [])  # DictReader's restkey
                raise ScenarioError(f"line {reader.line_num} has {given} values where the "
                                    f"header names {len(reader.fieldnames or [])} columns.",
                                    file=str(path))
            rows.append(_Row(str(path), {k: _cell(v, str(path), f"line {reader.line_num}, "
                                                  f"column '{k}'") for k, v in row.items()}))
    except csv.Error as exc:
        raise ScenarioError(f"not a valid CSV file: {exc}.", file=str(path)) from None
    if not rows:
        raise ScenarioError("the validation table has no rows.", file=str(path))
    return rows  # type: ignore[return-value]  # _Row is a dict of str
