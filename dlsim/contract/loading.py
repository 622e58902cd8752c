"""Reading a scenario file: safe YAML, one value per key, no alias bombs.

PyYAML's ``safe_load`` constructs no arbitrary objects, but it lets a repeated key silently
replace the earlier one (YAML 1.2, §3.2.1.1, says keys are unique) and it composes a
"billion laughs" document, whose aliases refer to aliases, into a graph that anything
walking it (validation, a sweep's deep copy, a JSON dump) expands exponentially. The loader
here refuses both while composing, before any object is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from dlsim.contract.errors import ScenarioError, excerpt

# A scenario reuses a block by alias a few times at most; past these bounds it is refused.
MAX_ALIASES = 100
MAX_ALIAS_NODES = 10_000  # nodes that aliases may add to the document once expanded
MERGE_TAG = "tag:yaml.org,2002:merge"


class Refused(yaml.MarkedYAMLError):
    """Well-formed YAML that dlsim will not load: repeated keys, too many aliases."""


class ScenarioLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts aliases while composing and, before constructing,
    checks the composed graph for repeated keys and for expansion past the bounds above."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise Refused(problem=f"more than {MAX_ALIASES} aliases (*name references); "
                              "a scenario needs a few at most",
                              problem_mark=self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def construct_document(self, node: Node) -> Any:
        sizes: dict[int, int] = {}
        expanded = _expanded_size(node, sizes, set())
        distinct = len(sizes)
        if expanded - distinct > MAX_ALIAS_NODES:
            raise Refused(problem=f"aliases expand this document to {expanded:,} values from "
                          f"the {distinct:,} written (a 'billion laughs'); at most "
                          f"{MAX_ALIAS_NODES:,} more than written are allowed",
                          problem_mark=node.start_mark)
        _unique_keys(node, "", set())
        return super().construct_document(node)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _expanded_size(node: Node, sizes: dict[int, int], open_: set[int]) -> int:
    """Values the document holds with every alias expanded: linear in the nodes written,
    since each node's size is computed once; a node that contains itself is refused."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise Refused(problem="an alias refers to a node that contains it (a recursive "
                      "document)", problem_mark=node.start_mark)
    open_.add(key)
    size = 1 + sum(_expanded_size(child, sizes, open_) for child in _children(node))
    open_.discard(key)
    sizes[key] = size
    return size


def _unique_keys(node: Node, path: str, seen: set[int]) -> None:
    """Refuse a key given twice in one mapping, naming its dotted path and both lines.
    Merge keys (``<<: *base``) may be overridden, as YAML intends."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, SequenceNode):
        for i, child in enumerate(node.value):
            _unique_keys(child, f"{path}.{i}" if path else str(i), seen)
        return
    if not isinstance(node, MappingNode):
        return
    first_line: dict[tuple[str, str], int] = {}
    for key, value in node.value:
        if not isinstance(key, ScalarNode) or key.tag == MERGE_TAG:
            continue
        name = f"{path}.{key.value}" if path else key.value
        line = key.start_mark.line + 1
        if (key.tag, key.value) in first_line:
            first = first_line[key.tag, key.value]
            lines = f"on line {line}" if first == line else f"at lines {first} and {line}"
            raise Refused(problem=f"field '{excerpt(name)}' is given twice, {lines}; give each "
                          "key once (YAML keys are unique; the last would silently win)",
                          problem_mark=key.start_mark)
        first_line[key.tag, key.value] = line
        _unique_keys(value, name, seen)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping safely; unreadable files, bad syntax, repeated keys and alias
    bombs are input errors naming the file and line."""
    try:
        data = yaml.load(read_text(path), Loader=ScenarioLoader)
    except Refused as exc:
        raise ScenarioError(f"refused{_at(exc.problem_mark)}: {exc.problem}.",
                            file=str(path)) from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"not valid YAML{_at(getattr(exc, 'problem_mark', None))}: "
                            f"{_problem(exc)}.", file=str(path)) from None
    if not isinstance(data, dict):
        raise ScenarioError("a scenario must be a YAML mapping of its sections (at least "
                            "'name').", file=str(path))
    return data


def read_text(path: str | Path) -> str:
    """A user's text file as UTF-8; a missing, unreadable or binary file is an input error
    naming the file (and, for bytes that are not UTF-8, where the first one is)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ScenarioError(f"cannot read the file: {exc.strerror or exc}.",
                            file=str(path)) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"not a UTF-8 text file (byte 0x{raw[exc.start]:02x} at offset "
                            f"{exc.start} is not UTF-8); save it as UTF-8 text.",
                            file=str(path)) from None


def _at(mark: yaml.Mark | None) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def _problem(exc: yaml.YAMLError) -> str:
    """PyYAML's problem, with its context (a duplicate anchor's first occurrence) and
    bounded: the text quotes the input."""
    problem = getattr(exc, "problem", None) or "invalid syntax"
    context = getattr(exc, "context", None)
    if context:
        mark = getattr(exc, "context_mark", None)
        problem = f"{context}{_at(mark)}, {problem}"
    return excerpt(problem, 200)
