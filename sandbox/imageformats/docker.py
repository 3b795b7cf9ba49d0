"""An image as a `docker load` archive: one docker layer per sandbox layer, no flattening.

Sandbox's layer blobs are already what docker calls layers (uncompressed tars with OCI
whiteouts, named by the sha256 of their bytes, which is docker's diff_id), so the
archive is those blobs plus a config and a manifest. The config runs the recipe's app
the way its systemd unit does (same script, user, workdir and env), so a plain
`docker run` of the archive serves the app. The archive is deterministic: the same
image always gives the same bytes.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import IO, Any

from sandbox.store import ImageStore
from sandbox.store.layers import read_top_file

APP_JSON = "/etc/sandbox/app.json"
APP_SCRIPT = "/usr/local/bin/sandbox-app"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LABEL_DIGEST = "io.sandbox.digest"
LABEL_RECIPE = "io.sandbox.recipe"


def repo_tag(store: ImageStore, digest: str) -> str:
    """The name the image gets in docker: sandbox/RECIPE:DIGEST12."""
    recipe = store.manifest(digest).get("recipe", {}).get("name", "image")
    return f"sandbox/{recipe}:{digest[7:19]}"


@functools.lru_cache(maxsize=32)
def _app_meta(images: Path, digest: str) -> str:
    store = ImageStore(images)
    blobs = [store.blob_path(la["digest"]) for la in store.manifest(digest)["layers"]]
    raw = read_top_file(blobs, APP_JSON)
    return raw.decode() if raw else "{}"


def app_meta(store: ImageStore, digest: str) -> dict[str, Any]:
    """The recipe's app as the image records it (/etc/sandbox/app.json), or {} without an app."""
    meta: dict[str, Any] = json.loads(_app_meta(store.root, digest))
    return meta


def image_config(store: ImageStore, digest: str) -> dict[str, Any]:
    """The docker image config (pure but for reading the store)."""
    manifest = store.manifest(digest)
    meta = app_meta(store, digest)
    app = meta.get("app") or {}
    created = dt.datetime.fromtimestamp(int(manifest["created"]), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    config: dict[str, Any] = {
        "Env": [f"PATH={PATH}", *(f"{k}={v}" for k, v in sorted((meta.get("env") or {}).items()))],
        "Labels": {
            LABEL_DIGEST: digest,
            LABEL_RECIPE: manifest.get("recipe", {}).get("name", ""),
        },
        "Cmd": [APP_SCRIPT] if app else ["/bin/sh"],
    }
    if app.get("user"):
        config["User"] = app["user"]
    if app.get("workdir"):
        config["WorkingDir"] = app["workdir"]
    if app.get("port"):
        config["ExposedPorts"] = {f"{app['port']}/tcp": {}}
    return {
        "architecture": manifest.get("base", {}).get("architecture", "amd64"),
        "os": "linux",
        "created": created,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [la["digest"] for la in manifest["layers"]]},
        "history": [
            {"created": created, "created_by": f"sandbox {la['kind']} layer"} for la in manifest["layers"]
        ],
    }


def write_docker_archive(store: ImageStore, digest: str, out: IO[bytes]) -> dict[str, Any]:
    """Write the `docker load` archive of `digest` to `out`; returns its tag and config digest."""
    manifest = store.manifest(digest)
    mtime = int(manifest["created"])
    config = json.dumps(image_config(store, digest), sort_keys=True, separators=(",", ":")).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    tag = repo_tag(store, digest)
    layers = [f"{la['digest'][7:]}/layer.tar" for la in manifest["layers"]]
    index = [{"Config": f"{config_hex}.json", "RepoTags": [tag], "Layers": layers}]

    def add(name: str, data: bytes | None = None, path: Path | None = None) -> None:
        ti = tarfile.TarInfo(name)
        ti.mtime, ti.mode, ti.uname, ti.gname = mtime, 0o644, "", ""
        if name.endswith("/"):
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(ti)
        elif path is not None:
            ti.size = path.stat().st_size
            with open(path, "rb") as f:
                tar.addfile(ti, f)
        else:
            assert data is not None
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))

    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for la, name in zip(manifest["layers"], layers, strict=True):
            add(name.rsplit("/", 1)[0] + "/")
            add(name, path=store.blob_path(la["digest"]))
        add(f"{config_hex}.json", config)
        add("manifest.json", json.dumps(index, separators=(",", ":")).encode())
        repo, _, version = tag.partition(":")
        add("repositories", json.dumps({repo: {version: layers[-1].split("/")[0]}}).encode())
    return {"tag": tag, "config": f"sha256:{config_hex}"}
