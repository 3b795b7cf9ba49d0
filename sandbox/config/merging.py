"""Helpers shared by the recipe and profile loaders: merging marked YAML data, display paths."""

from __future__ import annotations

import os
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from sandbox.config.yamlmarks import MarkedDict, MarkedList


def deep_merge(parent: Any, child: Any) -> Any:
    """Child mapping over parent mapping, recursively; anything else: the child. Marks are kept."""
    if not (isinstance(parent, MarkedDict) and isinstance(child, MarkedDict)):
        return child
    out = MarkedDict(child.location)
    for key, value in parent.items():
        if key in child:
            out.put(key, deep_merge(value, child[key]), child.marks[key])
        else:
            out.put(key, value, parent.marks[key])
    for key, value in child.items():
        if key not in out:
            out.put(key, value, child.marks[key])
    return out


def concat_merge(parent: Any, child: Any, key: str | None = None) -> Any:
    """Parent list then child list; with `key`, a child item replaces the parent item with equal `key`."""
    if not (isinstance(parent, MarkedList) and isinstance(child, MarkedList)):
        return child
    out = MarkedList(child.location)
    index: dict[Any, int] = {}
    for value, mark in zip(parent, parent.marks, strict=True):
        if key and isinstance(value, dict) and isinstance(value.get(key), Hashable):
            index[value[key]] = len(out)
        out.put(value, mark)
    for value, mark in zip(child, child.marks, strict=True):
        name = value.get(key) if key and isinstance(value, dict) else None
        if isinstance(name, Hashable) and name in index:
            out[index[name]] = value
            out.marks[index[name]] = mark
        else:
            out.put(value, mark)
    return out


def display_path(path: Path | str, root: Path) -> str:
    """`path` relative to `root` (also after resolving symlinks) for messages; absolute otherwise."""
    p = Path(os.path.abspath(path))
    root = Path(os.path.abspath(root))
    real, real_root = Path(os.path.realpath(p)), Path(os.path.realpath(root))
    for candidate, base in ((p, root), (real, real_root)):
        try:
            return candidate.relative_to(base).as_posix()
        except ValueError:
            continue
    return str(p)
