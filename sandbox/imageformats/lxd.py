"""A unified LXD image tarball: metadata.yaml, templates/ and rootfs/ in one deterministic tar.

`lxc image import FILE --alias NAME` (`image export --format lxd`) and the lxd backend's
prepare_image take it as is. The
metadata carries the image's architecture, its creation date (the lock's SOURCE_DATE_EPOCH, so
the same image always gives the same bytes and therefore the same LXD fingerprint) and the
sandbox digest; templates give every instance its own /etc/hostname and /etc/hosts from its name
(the image itself has neither: the builder removes them). metadata.yaml is written as JSON, which
is YAML too: the host agent writes this tarball on a host whose python3 may lack PyYAML.

`import_lxd_image` is the one import sequence (does the alias name the fingerprint recorded for the
digest? tarball, its sha256, upload unless LXD holds those bytes already, alias), run against an
`LxdImageApi`: pylxd on the control machine (sandbox/backends/lxdapi.py), HTTP over LXD's unix socket
on a host (sandbox/hostagent/lxdops.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Protocol

from sandbox.errors import SandboxError
from sandbox.events import Event, EventSink
from sandbox.fsutil import file_lock
from sandbox.imageformats.hostfiles import host_files
from sandbox.imageformats.rootfs import flattened
from sandbox.imageformats.tartree import add_tree
from sandbox.store import ImageStore

#: dpkg architecture → the kernel name LXD expects in metadata.yaml
LXD_ARCH = {
    "amd64": "x86_64",
    "arm64": "aarch64",
    "armhf": "armv7l",
    "i386": "i686",
    "ppc64el": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
#: what LXD renders into each instance at create and copy time: the files every backend gives an
#: instance, with the instance's name as an LXD template expression
TEMPLATES = {
    f"{rel.rsplit('/', 1)[-1]}.tpl": ("/" + rel, text)
    for rel, text in host_files("{{ container.name }}").items()
}
DIGEST_PROPERTY = "sandbox.digest"


def lxd_metadata(manifest: dict[str, Any], digest: str) -> dict[str, Any]:
    """metadata.yaml of an image (pure)."""
    base = manifest.get("base", {})
    arch = str(base.get("architecture", "amd64"))
    recipe = str(manifest.get("recipe", {}).get("name", "image"))
    return {
        "architecture": LXD_ARCH.get(arch, arch),
        "creation_date": int(manifest["created"]),
        "properties": {
            "architecture": arch,
            "description": f"sandbox {recipe} {digest[7:19]} ({base.get('distro')} {base.get('suite')})",
            "os": str(base.get("distro", "")),
            "release": str(base.get("suite", "")),
            "variant": str(base.get("variant", "")),
            DIGEST_PROPERTY: digest,
            "sandbox.recipe": recipe,
        },
        "templates": {
            target: {"when": ["create", "copy"], "create_only": False, "template": tpl, "properties": {}}
            for tpl, (target, _) in TEMPLATES.items()
        },
    }


def metadata_yaml(meta: dict[str, Any]) -> bytes:
    """metadata.yaml's bytes: JSON (a YAML document LXD reads), deterministic, stdlib only."""
    return (json.dumps(meta, sort_keys=True, indent=2) + "\n").encode()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int, mode: int = 0o644) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = len(data), mtime, mode
    ti.uname = ti.gname = ""
    tar.addfile(ti, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, mtime: int) -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mtime, ti.mode = tarfile.DIRTYPE, mtime, 0o755
    ti.uname = ti.gname = ""
    tar.addfile(ti)


def write_lxd_tarball(
    store: ImageStore, digest: str, out: IO[bytes], tmp: Path, sink: EventSink
) -> dict[str, Any]:
    """Stream the unified tarball of `digest` to `out`; returns its metadata and entry count."""
    manifest = store.manifest(digest)
    meta = lxd_metadata(manifest, digest)
    sde = int(manifest["created"])
    sink(Event("progress", phase="export", message=f"flattening {digest[7:19]} for LXD"))
    with (
        flattened(store, digest, tmp) as root,
        tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        _add_bytes(tar, "metadata.yaml", metadata_yaml(meta), sde)
        _add_dir(tar, "templates", sde)
        for tpl, (_, text) in sorted(TEMPLATES.items()):
            _add_bytes(tar, f"templates/{tpl}", text.encode(), sde)
        index = add_tree(tar, root, sde, prefix="rootfs/")
    return {"metadata": meta, "entries": len(index)}


class LxdImageApi(Protocol):
    """What importing an image needs from an LXD."""

    def alias_target(self, alias: str) -> str | None:
        """The fingerprint `alias` names, or None: there is no such alias."""
        ...

    def has_image(self, fingerprint: str) -> bool: ...

    def upload(self, tarball: Path) -> str:
        """Import the unified tarball; LXD's fingerprint of it."""
        ...

    def set_alias(self, alias: str, fingerprint: str, description: str, *, exists: bool) -> None:
        """Make `alias` name `fingerprint` (`exists`: it names another image now)."""
        ...


def import_lxd_image(
    store: ImageStore, digest: str, alias: str, api: LxdImageApi, tmp: Path, sink: EventSink
) -> tuple[str, bool]:
    """Import `digest` into an LXD as `alias`, once; (LXD's fingerprint of it, whether this imported).

    An image in LXD is trusted by its fingerprint, which LXD computes from the bytes it holds (the
    sha256 of the unified tarball), never by its alias or properties, which anyone who may import
    images there can set: the fingerprint of the tarball this store wrote for `digest` is recorded in
    the store (`ImageStore.lxd_fingerprint`), and an alias that names another image is pointed at
    ours. The tarball is written only when the store has no record yet or LXD lacks those bytes:
    under a lock in `tmp` (a second importer waits), as a temp file there (`.lxd-PID-*`:
    `remove_stale_temps` clears one its process left). An upload whose fingerprint is not the
    tarball's sha256 is refused. Instances are made from the fingerprint this returns."""
    known = store.lxd_fingerprint(digest)
    if known is not None and api.alias_target(alias) == known:
        return known, False
    with file_lock(tmp / "lxd-import.lock"):
        known, target = store.lxd_fingerprint(digest), api.alias_target(alias)
        if known is not None and target == known:
            return known, False
        t0 = time.monotonic()
        if known is None or not api.has_image(known):
            known = _upload(store, digest, api, tmp, sink)
        if target != known:
            if target is not None:
                sink(
                    Event(
                        "log",
                        phase="up",
                        message=f"LXD's {alias} named image {target[:12]}: now {known[:12]}",
                    )
                )
            api.set_alias(alias, known, f"sandbox image {digest}", exists=target is not None)
    sink(Event("log", phase="up", message=f"imported into LXD in {time.monotonic() - t0:.1f}s"))
    return known, True


def _upload(store: ImageStore, digest: str, api: LxdImageApi, tmp: Path, sink: EventSink) -> str:
    """Write the tarball, record its sha256, and upload it unless LXD holds those bytes already."""
    sink(Event("progress", phase="up", message=f"importing image {digest[7:19]} into LXD (once)"))
    fd, tmp_tar = tempfile.mkstemp(dir=tmp, prefix=f".lxd-{os.getpid()}-", suffix=".tar")
    try:
        with os.fdopen(fd, "wb") as f:
            write_lxd_tarball(store, digest, f, tmp, sink)
        with open(tmp_tar, "rb") as f:
            fingerprint = hashlib.file_digest(f, "sha256").hexdigest()
        store.put_lxd_fingerprint(digest, fingerprint)
        if not api.has_image(fingerprint):
            got = api.upload(Path(tmp_tar))
            if got != fingerprint:
                raise SandboxError(
                    f"LXD imported image {digest[7:19]} as {str(got)[:64]!r}, not {fingerprint}",
                    hint="the tarball changed on its way into LXD: run the command again",
                )
    finally:
        os.unlink(tmp_tar)
    return fingerprint
