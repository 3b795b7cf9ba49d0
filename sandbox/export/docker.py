"""The docker export: a `docker load` archive of an image, proven by `docker load` + `docker run`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sandbox.events import Event, EventSink
from sandbox.imageformats.docker import write_docker_archive
from sandbox.store import ImageStore
from sandbox.workspace import Workspace


def export_docker(
    ws: Workspace, store: ImageStore, digest: str, path: Path, sink: EventSink
) -> dict[str, Any]:
    sink(Event("progress", phase="export", message=f"writing the docker archive of {digest[7:19]}"))
    with open(path, "wb") as f:
        return write_docker_archive(store, digest, f)
