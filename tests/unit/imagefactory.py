"""Synthetic images for store/CLI tests: real write_layer tars in a real ImageStore, no mmdebstrap."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.build.normalize import write_layer
from sandbox.store.layers import merge_indexes
from sandbox.store.store import ImageStore

# older than any file a test creates: every mtime is clamped, so equal trees give equal bytes
SDE = 1_600_000_000

BASE_FILES: dict[str, bytes] = {
    "etc/os-release": b"PRETTY_NAME=test\n",
    "usr/bin/tool": b"#!/bin/sh\necho tool\n",
}
BASE_PACKAGES = {"base-files": "12.4", "libc6": "2.36-9"}


@dataclass
class Image:
    digest: str
    base: str
    app: str
    manifest: dict[str, Any]


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Create `root` with `files` (relative path → content); "x/" keys make empty dirs."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    for rel, data in files.items():
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, 0o755 if data.startswith(b"#!") else 0o644)
    for dirpath, dirs, _files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(dirpath, d), 0o755)
    return root


def put_layer(
    store: ImageStore, tree: Path, *, overlay_upper: bool = False
) -> tuple[str, int, dict[str, Any]]:
    digest, size, index = store.put_blob(lambda f: write_layer(tree, f, SDE, overlay_upper=overlay_upper))
    store.put_layer_index(digest, index)
    return digest, size, index


def make_image(
    store: ImageStore,
    work: Path,
    name: str = "web",
    *,
    tags: tuple[str, ...] = ("latest",),
    base_files: dict[str, bytes] | None = None,
    app_files: dict[str, bytes] | None = None,
    packages: dict[str, str] | None = None,
    app_command: str = "gunicorn app:app",
    app_meta: dict[str, Any] | None = None,
) -> Image:
    """Build a two-layer image like Builder._commit does and point RECIPE:TAG at it."""
    work.mkdir(parents=True, exist_ok=True)
    n = len(list(work.iterdir()))
    base_tree = make_tree(work / f"base{n}", BASE_FILES if base_files is None else base_files)
    app_tree = make_tree(
        work / f"app{n}",
        {"srv/app/main.py": b"print('hello')\n"} if app_files is None else app_files,
    )
    base, base_size, base_index = put_layer(store, base_tree)
    app, app_size, app_index = put_layer(store, app_tree, overlay_upper=True)
    manifest: dict[str, Any] = {
        "schema": 1,
        "recipe": {"name": name, "digest": "0" * 64, "sources": [f"recipes/{name}.yaml"]},
        "lock": {"digest": "1" * 64, "source_date_epoch": SDE},
        "base": {"distro": "debian", "suite": "bookworm", "variant": "minbase", "architecture": "amd64"},
        "created": SDE,
        "layers": [
            {"kind": "base", "digest": base, "size": base_size},
            {"kind": "app", "digest": app, "size": app_size},
        ],
        "packages": dict(BASE_PACKAGES if packages is None else packages),
        "users": [{"name": "app", "uid": None, "shell": "/bin/bash", "home": None, "groups": [], "sudo": []}],
        "app": app_meta or {"command": app_command, "user": "app", "port": 8000, "health": "/healthz"},
        "files": merge_indexes([base_index, app_index]),
    }
    digest = store.put_manifest(manifest)
    for tag in tags:
        store.set_ref(name, tag, digest)
    return Image(digest=digest, base=base, app=app, manifest=manifest)
