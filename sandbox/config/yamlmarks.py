"""Load YAML safely while remembering where each key and list item is (file:line:column)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sandbox.errors import IssueCollector, Location

MERGE_TAG = "tag:yaml.org,2002:merge"
SEQ_TAG = "tag:yaml.org,2002:seq"
MAP_TAG = "tag:yaml.org,2002:map"
MAX_DEPTH = 64
"""Deepest nesting of mappings and lists (also after aliases are expanded)."""
MAX_VALUES = 100_000
"""Most values a document may hold once its aliases are expanded (a "billion laughs" has 10**9)."""


class _TooBig(Exception):
    def __init__(self, node: Node, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message


class MarkedDict(dict[Any, Any]):
    """A dict with `.marks[key]` (location of each key) and `.location` (of the mapping)."""

    def __init__(self, location: Location) -> None:
        super().__init__()
        self.location = location
        self.marks: dict[Any, Location] = {}

    def put(self, key: Any, value: Any, mark: Location) -> None:
        self[key] = value
        self.marks[key] = mark


class MarkedList(list[Any]):
    """A list with `.marks[i]` (location of each item) and `.location` (of the sequence)."""

    def __init__(self, location: Location) -> None:
        super().__init__()
        self.location = location
        self.marks: list[Location] = []

    def put(self, value: Any, mark: Location) -> None:
        self.append(value)
        self.marks.append(mark)


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    return "a list" if isinstance(node, SequenceNode) else "a scalar"


class _Builder:
    def __init__(self, display: str, issues: IssueCollector) -> None:
        self.display = display
        self.issues = issues
        self.constructor = SafeConstructor()
        self.active: set[int] = set()
        self.checked: set[int] = set()
        self.values = 0
        self.depth = 0

    def loc(self, node: Node) -> Location:
        return Location(self.display, node.start_mark.line + 1, node.start_mark.column + 1)

    def fail(self, node: Node, message: str) -> None:
        self.issues.add(self.loc(node), "", message)

    def build(self, node: Node) -> Any:
        self.values += 1
        if self.values > MAX_VALUES:
            raise _TooBig(node, f"more than {MAX_VALUES} values once aliases are expanded (an alias bomb?)")
        if isinstance(node, ScalarNode):
            try:
                return self.constructor.construct_object(node, deep=True)
            except yaml.YAMLError as exc:
                self.fail(node, getattr(exc, "problem", None) or str(exc))
                return None
        if node.tag not in (SEQ_TAG, MAP_TAG):
            self.fail(node, f"unsupported YAML tag '{node.tag}'")
            return None
        if id(node) in self.active:
            self.fail(node, "recursive alias")
            return None
        if self.depth >= MAX_DEPTH:
            raise _TooBig(node, f"nested deeper than {MAX_DEPTH} levels once aliases are expanded")
        self.active.add(id(node))
        self.depth += 1
        try:
            return self.mapping(node) if isinstance(node, MappingNode) else self.sequence(node)
        finally:
            self.depth -= 1
            self.active.discard(id(node))

    def sequence(self, node: Node) -> MarkedList:
        out = MarkedList(self.loc(node))
        for item in node.value:
            out.put(self.build(item), self.loc(item))
        return out

    def mapping(self, node: Node) -> MarkedDict:
        assert isinstance(node, MappingNode)
        if id(node) not in self.checked:
            self.checked.add(id(node))
            self.check_duplicates(node)
            try:
                self.constructor.flatten_mapping(node)
            except yaml.MarkedYAMLError as exc:
                self.fail(node, exc.problem or "invalid merge key '<<'")
                node.value = [(k, v) for k, v in node.value if k.tag != MERGE_TAG]
        out = MarkedDict(self.loc(node))
        for key_node, value_node in node.value:
            key = self.build(key_node)
            if not isinstance(key, Hashable) or not isinstance(key_node, ScalarNode):
                self.fail(key_node, f"a mapping key must be a scalar, not {_kind(key_node)}")
                continue
            out.put(key, self.build(value_node), self.loc(key_node))
        return out

    def check_duplicates(self, node: MappingNode) -> None:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG or not isinstance(key_node, ScalarNode):
                continue
            try:
                key = self.constructor.construct_object(key_node, deep=True)
            except yaml.YAMLError:
                continue
            line = key_node.start_mark.line + 1
            if key in seen:
                self.fail(key_node, f"duplicate key '{key}' (first at line {seen[key]})")
            else:
                seen[key] = line


def _syntax_issue(exc: yaml.YAMLError, display: str, issues: IssueCollector) -> None:
    if not isinstance(exc, yaml.MarkedYAMLError):
        issues.add(Location(display), "", f"YAML error: {exc}")
        return
    mark = exc.problem_mark or exc.context_mark
    where = Location(display, mark.line + 1, mark.column + 1) if mark else Location(display)
    message = exc.problem or "invalid YAML"
    if exc.context:
        ctx_mark = exc.context_mark
        at = f" at line {ctx_mark.line + 1}" if ctx_mark and ctx_mark is not mark else ""
        message += f" ({exc.context}{at})"
    issues.add(where, "", f"YAML syntax error: {message}")


def read_yaml(path: Path, display: str, issues: IssueCollector) -> MarkedDict | None:
    """Load a YAML mapping, adding every problem to `issues`; None when nothing usable was read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        issues.add(Location(display), "", "file not found")
        return None
    except UnicodeDecodeError:
        issues.add(Location(display), "", "file is not valid UTF-8")
        return None
    except OSError as exc:
        issues.add(Location(display), "", f"cannot read file: {exc.strerror}")
        return None
    try:
        too_deep = _too_deep(text)
        if too_deep is not None:  # before composing: PyYAML's composer recurses once per level
            issues.add(
                Location(display, too_deep[0] + 1, too_deep[1] + 1),
                "",
                f"nested deeper than {MAX_DEPTH} levels",
            )
            return None
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        _syntax_issue(exc, display, issues)
        return None
    if node is None:
        issues.add(Location(display, 1), "", "empty file")
        return None
    builder = _Builder(display, issues)
    if not isinstance(node, MappingNode):
        builder.fail(node, f"the top level must be a mapping of keys, not {_kind(node)}")
        return None
    try:
        data = builder.build(node)
    except _TooBig as exc:
        builder.fail(exc.node, exc.message)
        return None
    return data if isinstance(data, MarkedDict) else None


def holds_nothing(text: str) -> bool:
    """True for a document of only comments (or nothing); False otherwise, also for bad YAML.

    Reads the event stream only: nothing is composed, so no alias bomb or deep nesting costs here.
    """
    try:
        return not any(isinstance(e, yaml.NodeEvent) for e in yaml.parse(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError:
        return False


def _too_deep(text: str) -> tuple[int, int] | None:
    """Where the nesting first passes MAX_DEPTH (read from the event stream, which does not recurse)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                return (mark.line, mark.column) if mark is not None else (0, 0)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return None


def load_yaml(path: Path, display: str) -> MarkedDict:
    """Load a YAML mapping with marks; raise ConfigError listing every problem."""
    issues = IssueCollector()
    data = read_yaml(path, display, issues)
    issues.raise_if_any()
    assert data is not None
    return data


def locate(raw: Any, loc: Sequence[str | int]) -> Location:
    """The deepest location known along `loc` (a key path) in marked data."""
    best: Location = getattr(raw, "location", None) or Location("<unknown>")
    cur = raw
    for key in loc:
        in_dict = isinstance(cur, MarkedDict) and isinstance(key, Hashable) and key in cur.marks
        in_list = isinstance(cur, MarkedList) and type(key) is int and 0 <= key < len(cur)
        if in_dict or in_list:
            best, cur = cur.marks[key], cur[key]
        else:
            if isinstance(cur, MarkedDict | MarkedList):
                best = cur.location
            break
    return best


def to_plain(data: Any) -> Any:
    """Deep copy of marked data as plain dicts and lists."""
    if isinstance(data, dict):
        return {k: to_plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [to_plain(v) for v in data]
    return data
