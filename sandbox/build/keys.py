"""The cache keys of a build: a digest of a JSON document and of a file tree (names, modes, links,
contents), and a path shown relative to the workspace."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def doc_digest(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
        h.update(b"x" if os.access(path, os.X_OK) else b"-")
        return h.hexdigest()
    for dirpath, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, path)
            if os.path.islink(full):
                h.update(f"L {rel} {os.readlink(full)}\n".encode())
            else:
                with open(full, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
                h.update(f"F {rel} {os.access(full, os.X_OK)} {content}\n".encode())
        for d in dirs:
            h.update(f"D {os.path.relpath(os.path.join(dirpath, d), path)}\n".encode())
    return h.hexdigest()


def rel_to(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
