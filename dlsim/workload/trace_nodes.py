"""The nodes of a PyTorch execution trace as the JSON holds them, and its process groups.

The ``chakra`` package that reads these traces for ASTRA-sim is not on the registry, so this
is a reader of the JSON itself (schema ``1.0.x`` and ``1.1.x-chakra``). A trace is
``{"schema", "pid", "nodes": [...]}``; each node has an ``id`` (in the order its operator
started), a ``name``, ``ctrl_deps`` (the id of the operator or annotation that called it),
``inputs`` / ``outputs`` with parallel ``values``, ``shapes`` and ``types`` lists (a tensor's
value is ``[tensor_id, storage_id, offset, numel, itemsize, device]``; a list of tensors is a
list of those), and ``attrs`` (``rf_id``, ``op_schema``, and on a ``record_param_comms`` node
the collective's ``pg_name``, ``pg_size``, ``global_rank_start``, ``global_rank_stride``).
The ``## process_group:init ##`` node's input is the JSON list of the process groups the
traced rank belongs to (``pg_name``, ``ranks``: empty for the default group, ``group_size``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlsim.contract.errors import ScenarioError

FIELD = "model.trace"
COMM_ATTRS = frozenset({"pg_name", "pg_desc", "pg_size", "global_rank_start",
                        "global_rank_stride", "collective_name"})
"""The ``attrs`` of a communication node that name its process group."""


@dataclass(frozen=True)
class Tensor:
    storage: int
    numel: int
    itemsize: int
    floating: bool


@dataclass(frozen=True)
class TraceNode:
    """One recorded operator or annotation."""

    id: int
    name: str
    parent: int
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    shapes: tuple[Any, ...]  # of the inputs, as recorded
    out_shapes: tuple[Any, ...]
    rf_id: int | None = None
    args: tuple[Any, ...] = ()  # the inputs' recorded values (an output_mask, a flag)
    in_args: tuple[tuple[Tensor, ...], ...] = ()  # the tensors of each input argument
    attrs: tuple[tuple[str, Any], ...] = ()  # COMM_ATTRS present on the node

    def attr(self, name: str) -> Any:
        return next((v for k, v in self.attrs if k == name), None)


@dataclass(frozen=True)
class ProcessGroup:
    name: str
    ranks: tuple[int, ...]  # empty: every rank of the job
    size: int

    def members(self, world: int) -> tuple[int, ...]:
        return self.ranks or tuple(range(world))


def fail(path: str | Path, message: str) -> ScenarioError:
    return ScenarioError(f"{path}: {message}", field=FIELD)


def _tensors(value: Any, kind: str) -> list[Tensor]:
    if not kind.startswith(("Tensor", "GenericList[Tensor", "GenericList[GenericList[Tensor")) \
            or not isinstance(value, list):
        return []
    if value and isinstance(value[0], list):  # a list of tensors
        return [t for v in value for t in _tensors(v, "Tensor" + kind)]
    if len(value) < 5:
        return []
    floating = any(n in kind for n in ("float", "double", "Half", "BFloat16", "Float8"))
    return [Tensor(int(value[1]), int(value[3]), int(value[4]), floating)]


def _side(raw: Any) -> tuple[tuple[tuple[Tensor, ...], ...], tuple[Any, ...], tuple[Any, ...]]:
    """Each argument's tensors, the shapes and the values of one side of a node."""
    raw = raw if isinstance(raw, dict) else {}
    values, types = raw.get("values") or [], raw.get("types") or []
    per_arg = tuple(tuple(_tensors(v, str(k))) for v, k in zip(values, types))
    return per_arg, tuple(raw.get("shapes") or []), tuple(values)


def _node(raw: Any, path: str | Path) -> TraceNode:
    if not isinstance(raw, dict) or "id" not in raw or "name" not in raw:
        raise fail(path, "every entry of 'nodes' needs an 'id' and a 'name' (the schema "
                   "torch.profiler.ExecutionTraceObserver writes); found "
                   f"{str(raw)[:80]}.")
    in_args, in_shapes, args = _side(raw.get("inputs"))
    out_args, out_shapes, _ = _side(raw.get("outputs"))
    attrs = [a for a in raw.get("attrs") or [] if isinstance(a, dict)]
    rf = next((a.get("value") for a in attrs if a.get("name") == "rf_id"), None)
    comm = tuple((str(a["name"]), a.get("value")) for a in attrs if a.get("name") in COMM_ATTRS)
    return TraceNode(int(raw["id"]), str(raw["name"]), int(raw.get("ctrl_deps") or 0),
                     tuple(t for a in in_args for t in a), tuple(t for a in out_args for t in a),
                     in_shapes, out_shapes, None if rf is None else int(rf), args, in_args, comm)


def _groups(raw_nodes: list[Any]) -> list[ProcessGroup]:
    for raw in raw_nodes:
        if isinstance(raw, dict) and raw.get("name") == "## process_group:init ##":
            try:
                listed = json.loads((raw.get("inputs") or {}).get("values", [""])[0])
            except (ValueError, IndexError, TypeError):
                return []
            return [ProcessGroup(str(g.get("pg_name")), tuple(g.get("ranks") or ()),
                                 int(g.get("group_size") or len(g.get("ranks") or ()) or 1))
                    for g in listed if isinstance(g, dict)]
    return []


def read_nodes(path: str | Path) -> tuple[list[TraceNode], list[ProcessGroup]]:
    """The nodes of an execution trace, in id order, and its process groups."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise fail(path, f"cannot read the execution trace ({exc.strerror}).") from exc
    except ValueError as exc:
        raise fail(path, f"is not JSON ({exc}); model.trace takes the file "
                   "torch.profiler.ExecutionTraceObserver writes.") from exc
    raw_nodes = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise fail(path, "holds no 'nodes': model.trace takes the JSON "
                   "torch.profiler.ExecutionTraceObserver writes, {\"schema\", \"nodes\": "
                   "[{\"id\", \"name\", \"ctrl_deps\", \"inputs\", \"outputs\", ...}]}.")
    nodes = sorted((_node(n, path) for n in raw_nodes), key=lambda n: n.id)
    return nodes, _groups(raw_nodes)
