"""`sandbox image export`: an image from the store as a file another tool runs.

Each format is its own module, imported only when used:

- tar (rootfs.py): the flattened root filesystem as one deterministic tar.
- docker (docker.py): a `docker save` archive, one layer per sandbox layer;
  proven by `docker load` + `docker run`.
- lxd (lxd.py): a unified LXD image tarball (metadata.yaml, templates/, rootfs/);
  proven by `lxc image import` + `lxc launch`.
- qcow2 (qcow2.py): a bootable disk of the image's VM flavour (kernel + ext4 root);
  proven by qemu booting to the app's health endpoint.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxError
from sandbox.events import EventSink, null_sink
from sandbox.store import ImageStore
from sandbox.workspace import Workspace

FORMATS: dict[str, str] = {
    "tar": "sandbox.export.rootfs:export_tar",
    "docker": "sandbox.export.docker:export_docker",
    "lxd": "sandbox.export.lxd:export_lxd",
    "qcow2": "sandbox.export.qcow2:export_qcow2",
}
SUFFIX = {"tar": ".tar", "docker": ".docker.tar", "lxd": ".lxd.tar", "qcow2": ".qcow2"}


class ExportError(SandboxError):
    """An image could not be exported."""


@dataclass
class Exported:
    format: str
    image: str
    path: str
    size: int
    extra: dict[str, Any] = field(default_factory=dict)


Exporter = Callable[[Workspace, ImageStore, str, Path, EventSink], dict[str, Any]]


def default_name(store: ImageStore, digest: str, fmt: str) -> str:
    recipe = store.manifest(digest).get("recipe", {}).get("name", "image")
    return f"{recipe}-{digest[7:19]}{SUFFIX[fmt]}"


TEMP_PREFIX = ".sandbox-export-"


def temp_path(path: Path) -> Path:
    """Where an exporter writes before the rename to `path`: in a new private directory beside it
    (mkdtemp: 0700, an unpredictable name), so that no one can plant a link at the name first, even
    when `path` is in a world-writable directory like /tmp."""
    return Path(tempfile.mkdtemp(dir=path.parent, prefix=TEMP_PREFIX)) / path.name


def final_path(tmp: Path) -> Path:
    """The path an exporter's temp file is renamed to (for files an exporter writes beside it)."""
    if tmp.parent.name.startswith(TEMP_PREFIX):
        return tmp.parent.parent / tmp.name
    return tmp


def export_image(
    ws: Workspace, ref: str, fmt: str, out: Path | None = None, sink: EventSink = null_sink
) -> Exported:
    """Write image `ref` as `fmt` to `out` (atomically: a temp file renamed at the end)."""
    target = FORMATS.get(fmt)
    if target is None:
        raise ExportError(f"unknown export format {fmt!r}", hint=f"formats: {', '.join(FORMATS)}")
    store = ImageStore(ws.images)
    digest = store.resolve(ref)
    name = default_name(store, digest, fmt)
    path = (out or Path.cwd() / name).absolute()
    if path.is_dir():
        path = path / name
    if not path.parent.is_dir():
        raise ExportError(f"cannot write {path}: {path.parent} is not a directory", hint="create it first")
    module, _, func = target.partition(":")
    try:
        exporter: Exporter = getattr(importlib.import_module(module), func)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise ExportError(f"export format {fmt!r} is not available yet", hint="use --format tar") from e
    tmp = temp_path(path)
    try:
        extra = exporter(ws, store, digest, tmp, sink)
        for f in sorted(tmp.parent.iterdir(), key=lambda f: f == tmp):  # the image last
            os.replace(f, final_path(f))  # replaces a link at the name, never writes through it
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
    return Exported(fmt, digest, str(path), path.stat().st_size, extra)
