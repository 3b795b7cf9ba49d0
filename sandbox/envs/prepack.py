"""Compressed copies of a new image's layers, made by `sandbox build` when an env profile of the
workspace puts that recipe on production hosts: the first ship of the image then sends the kept
copies (sandbox/store/packed.py) instead of compressing while every host waits.

What it costs: the compression at build time (zstd -3 on every core, about a second per 250 MB
here) and about a third more disk for the image's blobs. A workspace without hosts pays nothing. A
profile that does not load is skipped: a build never fails because of a profile being edited.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from sandbox.envs.profiles import profile_for
from sandbox.errors import SandboxError
from sandbox.events import Event, EventSink
from sandbox.settings import Settings
from sandbox.store import ImageStore
from sandbox.store.packed import packed_copy
from sandbox.workspace import Workspace


def shipped_codec(ws: Workspace, settings: Settings, recipe: str) -> str | None:
    """The codec a ship of an image of `recipe` to hosts uses, if a profile puts it on hosts."""
    if settings.hosts.compression == "none" or not ws.profiles.is_dir():
        return None
    for path in sorted(ws.profiles.glob("*.yaml")):
        try:
            spec = profile_for(ws, path.stem).data
        except SandboxError:
            continue
        if spec.get("hosts") and spec.get("recipe") == recipe:
            return settings.hosts.compression
    return None


def prepack(store: ImageStore, digest: str, codec: str, sink: EventSink) -> dict[str, str]:
    """Each layer blob of image `digest` with its kept `codec` copy: {blob: kept|made|remade}."""
    sink(Event("progress", phase="pack", message=f"compressing the layers for hosts ({codec})"))
    done: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix=".prepack-", dir=store.root) as tmp:
        for layer in store.manifest(digest)["layers"]:
            link, how = packed_copy(store, codec, layer["digest"], Path(tmp))
            link.unlink()
            done[layer["digest"]] = how
    return done
