"""A unified LXD image tarball: metadata.yaml, templates/ and rootfs/ in one deterministic tar.

`lxc image import FILE --alias NAME` (`image export --format lxd`) and the lxd backend's
prepare_image take it as is. The
metadata carries the image's architecture, its creation date (the lock's SOURCE_DATE_EPOCH, so
the same image always gives the same bytes and therefore the same LXD fingerprint) and the
sandbox digest; templates give every instance its own /etc/hostname and /etc/hosts from its name
(the image itself has neither: the builder removes them).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import IO, Any

import yaml

from sandbox.events import Event, EventSink
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
        _add_bytes(tar, "metadata.yaml", yaml.safe_dump(meta, sort_keys=True).encode(), sde)
        _add_dir(tar, "templates", sde)
        for tpl, (_, text) in sorted(TEMPLATES.items()):
            _add_bytes(tar, f"templates/{tpl}", text.encode(), sde)
        index = add_tree(tar, root, sde, prefix="rootfs/")
    return {"metadata": meta, "entries": len(index)}
